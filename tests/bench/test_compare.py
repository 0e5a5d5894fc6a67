"""Pools compared on the same tasks, from results.json files alone."""

from __future__ import annotations

import json

import pytest

from sale_graph.bench.compare import compare_runs, comparison_markdown, pool_verdicts
from sale_graph.bench.records import Record

TASKS = [f"t{i}" for i in range(20)]


def _rec(method: str, task: str, passed: bool, cost: float, agent: str = "large") -> dict:
    # a staged row assessing from memory alone spends no auction token
    auction = 50 if method.startswith("SALE") else 0
    return Record(method=method, task_id=task, domain="coding", bin="easy", agent=agent,
                  passed=passed, tokens_auction=auction, tokens_execution=100,
                  seconds_auction=0.0,
                  seconds_execution=1.0, cost_auction=0.0, cost_execution=cost,
                  tried=(agent,)).to_dict()


def _run(tmp_path, name: str, pool: str, rows: dict, tasks=TASKS) -> str:
    """``rows``: method -> (passes the first n tasks, cost per task)."""
    records = [_rec(m, t, i < n, cost) for m, (n, cost) in rows.items()
               for i, t in enumerate(tasks)]
    d = tmp_path / name
    d.mkdir()
    (d / "results.json").write_text(json.dumps(
        {"largest": "large", "meta": {"config": {"pool": pool, "methods": "staged"}},
         "records": records}))
    return str(d)


def _singles(n_direct: int = 15) -> dict:
    return {"single: large (direct)": (n_direct, 1.0), "single: large": (n_direct, 1.2)}


def test_each_pool_gets_its_cheapest_row_that_keeps_the_largest_agents_quality(tmp_path):
    a = _run(tmp_path, "a", "local", {**_singles(), "staged": (15, 0.5), "SALE": (15, 3.0)})
    b = _run(tmp_path, "b", "local-coder",
             {**_singles(), "staged": (8, 0.3), "kNN": (15, 0.5), "staged reserve 0.7": (15, 0.8)})
    comparison = compare_runs([a, b])
    assert comparison["references"] == ["single: large (direct)", "single: large"]
    assert comparison["rows"]["local-coder"] == [
        "staged [local-coder]", "kNN [local-coder]", "staged reserve 0.7 [local-coder]"]
    paired = comparison["paired"]["single: large (direct)"]
    assert paired["staged [local]"]["cost_ratio"]["estimate"] == pytest.approx(0.5)
    assert paired["staged [local-coder]"]["pass_diff"]["hi"] < 0  # 7 tasks worse: not noise
    verdicts = pool_verdicts(comparison)
    assert verdicts["local"]["method"] == "staged [local]"
    # the router is cheaper, but a preset defaults to an auction configuration
    assert verdicts["local-coder"]["method"] == "staged reserve 0.7 [local-coder]"
    md = comparison_markdown(comparison)
    assert "| staged [local-coder] | 40.0 |" in md
    assert "- local-coder: staged reserve 0.7 [local-coder], 0.80x the cost" in md
    alone = pool_verdicts(compare_runs([a]))  # one run: its own verdict
    assert alone == {"local": verdicts["local"]}


def test_a_pool_without_any_row_at_the_largest_agents_quality_says_so(tmp_path):
    a = _run(tmp_path, "a", "local", {**_singles(20), "staged": (5, 0.2)})
    b = _run(tmp_path, "b", "local-coder", {**_singles(20), "staged": (6, 0.2)})
    assert pool_verdicts(compare_runs([a, b])) == {"local": None, "local-coder": None}


def test_a_run_is_labelled_by_the_preset_that_names_its_agents_today(tmp_path):
    three = ["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]
    a = _run(tmp_path, "a", "local", {**_singles(), "staged": (15, 0.5)})
    data = json.loads((tmp_path / "a" / "results.json").read_text())
    (tmp_path / "a" / "results.json").write_text(json.dumps({**data, "agents": three}))
    b = _run(tmp_path, "b", "local-coder", {**_singles(), "staged": (15, 0.5)})
    assert compare_runs([a, b])["pools"] == ["local-three", "local-coder"]


def test_runs_on_different_tasks_or_the_same_pool_are_refused(tmp_path):
    a = _run(tmp_path, "a", "local", {**_singles(), "staged": (15, 0.5)})
    b = _run(tmp_path, "b", "local-coder", {**_singles(), "staged": (15, 0.5)}, TASKS[:10])
    with pytest.raises(ValueError, match="differ in their test tasks"):
        compare_runs([a, b])
    c = _run(tmp_path, "c", "local", {**_singles(), "staged": (15, 0.5)})
    with pytest.raises(ValueError, match="same pool"):
        compare_runs([a, c])
    with pytest.raises(ValueError, match="no results.json"):
        compare_runs([a, str(tmp_path / "missing")])


def test_sale_compare_writes_markdown_and_json(tmp_path, capsys):
    from sale_graph.cli import main

    a = _run(tmp_path, "a", "local", {**_singles(), "staged": (15, 0.5)})
    b = _run(tmp_path, "b", "local-coder", {**_singles(), "staged": (15, 0.4)})
    out = tmp_path / "pools.md"
    assert main(["compare", a, b, "-o", str(out)]) == 0
    assert "staged [local-coder]" in out.read_text()
    assert json.loads(out.with_suffix(".json").read_text())["verdicts"]["local-coder"]
    assert main(["compare", a, str(tmp_path / "nowhere"), "-o", str(out)]) == 2
    assert "no results.json" in capsys.readouterr().err
