"""``sale bench --smoke`` on the real local models, then resume and --from-bank on its bank.

One smoke run (a few minutes on two cores) is shared by the tests of this module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sale_graph.bench import runner
from sale_graph.bench.bank import OutcomeBank

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BASELINES = {"single: smollm2-135m", "single: qwen2.5-coder-0.5b", "random", "oracle", "WTP",
             "CARROT", "cascade", "cascade (fitted)", "kNN on verified outcomes",
             "perfect accept (staged ceiling)",
             "perfect no-loss (ceiling against the dearest)"}  # fmt: skip


def _sale(*args: str, timeout: float = 900, code: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", code, *args] if code else [
        sys.executable, "-m", "sale_graph.cli", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    done = _sale("bench", "--smoke", "--run-dir", str(run_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| SALE |" in done.stdout  # the table is printed
    steps = re.findall(r"\] (\d+)/(\d+) ", done.stderr)
    assert steps and steps[-1][0] == steps[-1][1], steps[-3:]  # the progress line reached the end
    return run_dir


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())["summary"]


def test_smoke_writes_sane_results(smoke_run: Path) -> None:
    for name in ("results.json", "results.md", "pareto.png", "win_rate.png", "bank.jsonl.gz",
                 "results.jsonl", "weights.json"):  # fmt: skip
        assert (smoke_run / name).stat().st_size > 0, name
    summary = _summary(smoke_run)
    direct = {"single: smollm2-135m (direct)", "single: qwen2.5-coder-0.5b (direct)"}
    assert set(summary) == BASELINES | direct | {"SALE", "staged"}
    for method, s in summary.items():
        o = s["overall"]
        assert o["n"] == 3, method  # the test split: 2 coding + 1 reasoning task
        assert 0.0 <= o["pass_at_1"]["mean"] <= 1.0
        assert o["cost_usd"]["mean"] > 0 and o["tokens"]["mean"] > 0
    singles = [summary[m]["overall"]["pass_at_1"]["mean"] for m in BASELINES if "single" in m]
    assert summary["oracle"]["overall"]["pass_at_1"]["mean"] >= max(singles)
    staged = summary["staged"]["overall"]  # its calls replay the outcomes' bids and answers
    assert staged["n"] == 3 and 0.0 <= staged["auction_token_share"]["mean"] < 1.0
    sale = summary["SALE"]["overall"]
    assert 0.0 < sale["auction_token_share"]["mean"] < 1.0
    assert 0.0 < sale["auction_time_share"]["mean"] < 1.0
    assert summary["oracle"]["overall"]["auction_token_share"]["mean"] == 0.0
    records = json.loads((smoke_run / "results.json").read_text())["records"]
    sale_records = [r for r in records if r["method"] == "SALE"]
    assert sorted(r["position"] for r in sale_records) == [0, 1, 2]
    assert all(r["seconds_auction"] > 0 and r["seconds_execution"] > 0 for r in sale_records)
    md = (smoke_run / "results.md").read_text()
    assert "| SALE | 1 | 3 |" in md and "## pass@1 (%) and cost ($) per bin" in md
    weights = json.loads((smoke_run / "weights.json").read_text())
    assert set(weights["jury"]) == {"smollm2-135m", "qwen2.5-coder-0.5b"}
    assert set(weights["staged"]["agents"]) == {"smollm2-135m"}  # all but the dearest


def test_from_bank_rebuilds_the_same_tables_without_models(smoke_run: Path, tmp_path) -> None:
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(smoke_run / "bank.jsonl.gz", alone / "bank.jsonl.gz")
    code = (
        "import sys\n"
        "from sale_graph.cli import main\n"
        "rc = main(['bench', '--from-bank', '--run-dir', sys.argv[1]])\n"
        "heavy = ('llama_cpp', 'sentence_transformers', 'torch')\n"
        "loaded = [m for m in heavy if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "sys.exit(rc)\n"
    )
    done = _sale(str(alone), code=code, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (alone / "results.md").read_text() == (smoke_run / "results.md").read_text()
    assert _summary(alone) == _summary(smoke_run)
    assert (alone / "pareto.png").exists() and not (alone / runner.BANK_DB).exists()


def test_resume_replays_every_call_from_the_bank(smoke_run: Path, tmp_path) -> None:
    run_dir = tmp_path / "resumed"
    shutil.copytree(smoke_run, run_dir)
    bank = OutcomeBank(run_dir / runner.BANK_DB)
    before = bank.records("result")
    bank.clear_records("result")  # forget SALE; its memory store still holds 3 auctions
    bank.close()
    done = _sale("bench", "--resume", "--run-dir", str(run_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    bank = OutcomeBank(run_dir / runner.BANK_DB)
    after = bank.records("result")
    bank.close()
    assert set(after) == set(before)
    for key, row in after.items():
        # the memory was rebuilt to what each position saw, so every prompt repeats
        assert row["new_calls"] == 0, key
        assert row["record"] == before[key]["record"], key
    assert (run_dir / "results.md").read_text() == (smoke_run / "results.md").read_text()
