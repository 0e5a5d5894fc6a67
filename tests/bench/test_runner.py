"""The benchmark runner's parts that need no model: metering, keys, tasks, report, fit, CLI."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import numpy as np
import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import RunnableLambda

from sale_graph.bench import runner
from sale_graph.bench.bank import OutcomeBank
from sale_graph.bench.records import Record
from sale_graph.bench.runner import (
    SMOKE,
    BenchConfig,
    CallLedger,
    Method,
    build_tasks,
    metered,
    methods_for,
    report_from_bank,
    report_from_export,
)

# --------------------------------------------------------------------------- metering


def test_ledger_replays_recorded_seconds_and_counts_new_calls(tmp_path, scripted) -> None:
    bank = OutcomeBank(tmp_path / "bank.sqlite")
    ledger = CallLedger(bank)
    model = scripted(replies=["plan A", "plan B"], cache=ledger)
    with ledger.measure() as first:
        assert model.invoke([HumanMessage("task")]).content == "plan A"
    with ledger.measure() as second:
        assert model.invoke([HumanMessage("task")]).content == "plan A"  # from the bank
    assert model.calls == 1
    assert (first.new, len(first.calls)) == (1, 1)
    assert (second.new, len(second.calls)) == (0, 1)
    # the replay reports the seconds recorded when the call really ran, not ~0
    assert second.seconds() == pytest.approx(0.5) == first.seconds()
    assert (ledger.hits, ledger.misses) == (1, 1)


def test_metered_executor_calls_count_as_execution(tmp_path, scripted) -> None:
    ledger = CallLedger(OutcomeBank(tmp_path / "bank.sqlite"))
    model = scripted(replies=["bid", "answer"], cache=ledger)

    async def execute(inputs: dict, config) -> str:
        return (await inputs["model"].ainvoke([HumanMessage("execute " + inputs["task"])])).content

    executor = metered(RunnableLambda(execute))

    async def job() -> str:
        await model.ainvoke([HumanMessage("bid on t")])
        return await executor.ainvoke({"task": "t", "model": model})

    with ledger.measure() as meter:
        assert asyncio.run(job()) == "answer"
    assert [c["phase"] for c in meter.calls] == ["auction", "execute"]
    assert meter.seconds("auction") == pytest.approx(0.5)
    assert meter.seconds("execute") == pytest.approx(0.5)


def test_banked_local_model_is_keyed_by_digest_and_a_hit_skips_llama(tmp_path, monkeypatch):
    from sale_graph.local import LlamaCppChatModel
    from sale_graph.model_files import MODELS

    runs = []

    def fake_run(self, messages, stop, cancel, options):
        runs.append(self.model_path)
        message = AIMessage(
            content="1. read 2. code",
            usage_metadata={"input_tokens": 7, "output_tokens": 5, "total_tokens": 12},
            response_metadata={"generation_seconds": 2.5, "mean_token_entropy": 0.3},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    monkeypatch.setattr(LlamaCppChatModel, "_run", fake_run)
    cls = runner._banked_model_class()
    ledger = CallLedger(OutcomeBank(tmp_path / "bank.sqlite"))
    here = cls(model_path="/site-packages/a.gguf", model_name="smollm2-135m", cache=ledger)
    there = cls(model_path="/elsewhere/a.gguf", model_name="smollm2-135m", cache=ledger)
    llm_string = here._get_llm_string(max_tokens=5)
    assert MODELS["smollm2-135m"].sha256 in llm_string and "a.gguf" not in llm_string

    msgs = [HumanMessage("plan this")]
    with ledger.measure() as meter:
        first = asyncio.run(here.ainvoke(msgs, max_tokens=5))
        again = asyncio.run(there.ainvoke(msgs, max_tokens=5))  # other path, same weights
        other = asyncio.run(here.ainvoke(msgs, max_tokens=6))  # other decoding: a new call
    assert runs == ["/site-packages/a.gguf", "/site-packages/a.gguf"]
    assert again.content == first.content and again.usage_metadata["output_tokens"] == 5
    assert other.content == first.content
    assert meter.new == 2 and meter.seconds() == pytest.approx(7.5)


# --------------------------------------------------------------------------- tasks and plan


def test_tasks_are_spread_over_bins_and_generators() -> None:
    config = BenchConfig(per_domain={"coding": 12, "reasoning": 18})
    tasks = build_tasks(config)
    assert [t.id for t in tasks] == [t.id for t in build_tasks(config)]
    coding = Counter(t.bin for t in tasks if t.domain == "coding")
    reasoning = Counter((t.bin, t.payload["generator"]) for t in tasks if t.domain == "reasoning")
    assert coding == {"easy": 4, "medium": 4, "hard": 4}
    assert set(reasoning.values()) == {2} and len(reasoning) == 9
    assert len({t.id for t in tasks}) == 30


def test_smoke_preset_has_train_and_test_tasks() -> None:
    tasks = build_tasks(SMOKE)
    train, test = runner._split(SMOKE, tasks)
    assert len(tasks) == 5 and {t.bin for t in tasks} == {"easy"}
    assert len(train) == 2 and len(test) == 3
    assert {t.domain for t in train} == {t.domain for t in test} == {"coding", "reasoning"}


def test_schedule_runs_sales_first_order_then_ablations_then_its_other_orders() -> None:
    paper = BenchConfig(orders=3, methods="paper")
    plan = runner._schedule(methods_for(paper))
    names = [(m.name, k) for m, k in plan]
    assert names[:2] == [("SALE", 0), ("SALE w/o memory", 0)]
    assert names[-2:] == [("SALE", 1), ("SALE", 2)]
    assert len(names) == 3 + 6 and len(set(names)) == len(names)
    assert methods_for(BenchConfig(ablations=False, methods="paper")) == [
        Method("SALE", orders=5)]


def test_staged_suite_runs_the_cheap_staged_rows_first() -> None:
    plan = runner._schedule(methods_for(BenchConfig(orders=3)))
    names = [(m.name, k) for m, k in plan]
    staged = [n for n in names if n[0].startswith("staged")]
    assert names[: len(staged)] == staged and ("staged", 2) in staged
    assert names[len(staged)] == ("SALE", 0) and len(set(names)) == len(names)
    assert {m.name for m in methods_for(BenchConfig(ablations=False))} == {"SALE", "staged"}
    from sale_graph.bench.config import STAGED_FITS

    fits = {m.staged_fit for m, _ in plan if m.auction == "staged"}
    assert fits == set(STAGED_FITS)  # every staged row names a fit the runner makes


def test_config_stored_before_the_staged_rows_reads_as_the_paper_suite() -> None:
    old = BenchConfig().to_dict()
    del old["methods"]
    assert BenchConfig.from_dict(old).methods == "paper"
    assert BenchConfig.from_dict(BenchConfig().to_dict()).methods == "staged"


def test_self_jury_weighs_every_juror_like_the_fitted_jury() -> None:
    fitted = {"cost": 0.0, "entropy": 0.5, "jury": {"a": 0.0, "b": 0.0, "c": 0.8}}
    weights = runner._weights_for(Method("x", jury="self"), fitted)
    assert weights["jury"] == {"a": 0.8, "b": 0.8, "c": 0.8}


def test_ablation_weights_zero_one_term() -> None:
    fitted = {"cost": 0.2, "entropy": 1.5, "jury": {"a": 0.4}}
    assert runner._weights_for(Method("x", zero=("entropy",)), fitted) == {
        "cost": 0.2, "entropy": 0.0, "jury": {"a": 0.4},
    }  # fmt: skip
    assert runner._weights_for(Method("x", zero=("cost",)), fitted)["cost"] == 0.0
    default = runner._weights_for(Method("x", weights="default"), fitted)
    assert default["jury"] == {} and default["cost"] == 0.5


def test_resume_refuses_a_different_configuration(tmp_path) -> None:
    bank = OutcomeBank(tmp_path / "bank.sqlite")
    tasks = build_tasks(SMOKE)
    runner._check_config(bank, SMOKE, tasks, resume=False)  # empty bank: fine
    bank.put("meta", "config", SMOKE.to_dict())
    with pytest.raises(RuntimeError, match="--resume"):
        runner._check_config(bank, SMOKE, tasks, resume=False)
    runner._check_config(bank, SMOKE, tasks, resume=True)
    other = BenchConfig.from_dict({**SMOKE.to_dict(), "orders": 2})
    with pytest.raises(RuntimeError, match="orders"):
        runner._check_config(bank, other, tasks, resume=True)
    assert BenchConfig.from_dict(SMOKE.to_dict()) == SMOKE


def test_a_run_keeps_its_agents_when_a_preset_changes_its_meaning(tmp_path) -> None:
    """"local" once named three agents; a run stored under it resumes only under the
    preset that names them now, and may be renamed to it, never rerun on other agents."""
    bank = OutcomeBank(tmp_path / "bank.sqlite")
    tasks = build_tasks(SMOKE)
    three = ["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]
    old = BenchConfig.from_dict({**SMOKE.to_dict(), "pool": "local"})
    bank.put("meta", "config", old.to_dict())
    bank.put("meta", "pool", {"agents": [{"name": n, "price": 1.0} for n in three]})
    with pytest.raises(RuntimeError, match="resume with --pool local-three"):
        runner._check_config(bank, old, tasks, resume=True)
    renamed = BenchConfig.from_dict({**SMOKE.to_dict(), "pool": "local-three"})
    runner._check_config(bank, renamed, tasks, resume=True)  # the same agents: accepted
    other = BenchConfig.from_dict({**SMOKE.to_dict(), "pool": "local-small"})
    with pytest.raises(RuntimeError, match="differs in: \\['pool'\\]"):
        runner._check_config(bank, other, tasks, resume=True)


def test_the_bench_command_takes_every_preset_the_runner_may_ask_for(tmp_path, capsys) -> None:
    from sale_graph.cli import main

    for preset in ("local-three", "local", "local-coder", "local-small"):
        # past argparse (which exits), to the missing bank (which returns 2)
        assert main(["bench", "--pool", preset, "--from-bank", "--run-dir",
                     str(tmp_path)]) == 2
        assert "no exported bank" in capsys.readouterr().err


# --------------------------------------------------------------------------- report from a bank

AGENTS = [("small", 0.1), ("large", 1.0)]


def _audit(task: str, votes: dict[str, dict[str, int]], tokens: dict[str, int]) -> dict:
    return {
        "task": task,
        "bids": [
            {"agent": a, "price": p, "tokens": tokens[a], "entropy": 0.5, "votes": votes[a],
             "round": 0}
            for a, p in AGENTS
        ],
    }  # fmt: skip


def _synthetic_bank(path, *, orders_done: int, orders: int = 2) -> OutcomeBank:
    """4 train + 4 test tasks; 'small' passes even tasks, 'large' passes all but t7."""
    bank = OutcomeBank(path)
    config = BenchConfig(
        pool="local-small", domains=("coding",), per_domain={"coding": 8}, orders=orders,
        ablations=False,
    )  # fmt: skip
    ids = [f"t{i}" for i in range(8)]
    bank.put("meta", "config", config.to_dict())
    bank.put("meta", "pool", {"agents": [{"name": a, "price": p} for a, p in AGENTS]})
    bank.put("meta", "tasks", {"tasks": [
        {"id": t, "domain": "coding", "bin": "easy" if i % 2 else "hard",
         "split": "train" if i < 4 else "test"} for i, t in enumerate(ids)
    ]})  # fmt: skip
    rng = np.random.default_rng(0)
    for i, t in enumerate(ids):
        bank.put("embedding", t, {"vector": rng.normal(size=8).tolist()})
        for a, p in AGENTS:
            passed = (i % 2 == 0) if a == "small" else (i != 7)
            bank.put("outcome", f"{t}|{a}", {
                "passed": passed, "tokens": 1000, "cost": 1000 * p / 1e6, "seconds": 1.0,
                "confidence": 1.0 if passed else 0.0,
            })  # fmt: skip
        if i < 4:  # the jury rates the small agent's plan 5 exactly where it passes
            good = 5 if i % 2 == 0 else 0
            votes = {"small": {"small": good, "large": good}, "large": {"small": 3, "large": 3}}
            bank.put("train_audit", t, {"audit": _audit(t, votes, {"small": 50, "large": 50})})
    test = ids[4:]
    for k in range(orders_done + 1):
        for pos, t in enumerate(test if k < orders_done else test[:2]):
            rec = Record(
                method="SALE", task_id=t, domain="coding", bin="easy" if int(t[1]) % 2 else "hard",
                agent="large", passed=t != "t7", tokens_auction=100, tokens_execution=900,
                seconds_auction=0.5, seconds_execution=2.0, cost_auction=1e-5, cost_execution=9e-4,
                order=k, position=pos, tried=("large",),
            )  # fmt: skip
            bank.put("result", f"SALE|{k}|{t}", {"record": rec.to_dict(), "calls": 10,
                                                  "new_calls": 4})  # fmt: skip
    return bank


def test_report_from_bank_has_baselines_and_only_complete_orders(tmp_path) -> None:
    bank = _synthetic_bank(tmp_path / "bank.sqlite", orders_done=1)
    paths = report_from_bank(bank, tmp_path / "out", plots=False)
    data = json.loads(paths["json"].read_text())
    summary = data["summary"]
    assert {"SALE", "oracle", "random", "WTP", "CARROT", "cascade", "single: small",
            "single: large"} <= set(summary)  # fmt: skip
    # order 1 covers only 2 of 4 test tasks: it must not enter the mean
    assert summary["SALE"]["n_orders"] == 1 and summary["SALE"]["overall"]["n"] == 4
    assert summary["SALE"]["overall"]["pass_at_1"]["mean"] == pytest.approx(0.75)
    assert summary["single: small"]["overall"]["pass_at_1"]["mean"] == pytest.approx(0.5)
    assert summary["oracle"]["overall"]["pass_at_1"]["mean"] == pytest.approx(0.75)
    # the oracle takes the small agent wherever it passes: cheaper than large alone
    assert (summary["oracle"]["overall"]["cost_usd"]["mean"]
            < summary["single: large"]["overall"]["cost_usd"]["mean"])  # fmt: skip
    assert summary["SALE"]["overall"]["auction_token_share"]["mean"] == pytest.approx(0.1)
    md = paths["markdown"].read_text()
    assert "SALE: 1/2 orders complete (6 auctions)" in md
    assert data["meta"]["sale_model_calls"]["SALE"] == {"calls": 40, "new_calls": 16}

    # the same tables from the export alone
    bank.export(tmp_path / "bank.jsonl.gz")
    again = report_from_export(tmp_path / "bank.jsonl.gz", tmp_path / "again", plots=False)
    assert again["markdown"].read_text() == md
    assert json.loads(again["json"].read_text()) == data


def test_report_waits_for_complete_outcomes(tmp_path) -> None:
    bank = _synthetic_bank(tmp_path / "bank.sqlite", orders_done=0)
    bank.clear_records("outcome")
    paths = report_from_bank(bank, tmp_path / "out", plots=False)
    data = json.loads(paths["json"].read_text())
    assert data["summary"] == {}
    assert "Baselines: not yet" in paths["markdown"].read_text()


def test_fit_from_bank_and_sale_fit_write_weights_context_reads(tmp_path) -> None:
    from sale_graph.cli import main
    from sale_graph.context import Context

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    bank = _synthetic_bank(run_dir / runner.BANK_DB, orders_done=0)
    result = runner.fit_from_bank(bank)
    # the jury separates the tasks the small agent solves: every training task passes
    assert result.train_pass_rate == 1.0
    assert result.selected == {"t0": "small", "t1": "large", "t2": "small", "t3": "large"}
    # both jurors separate the tasks; priced from the audits, the dear one is dropped
    for t, row in bank.records("train_audit").items():
        row["audit"]["phases"] = {"jury": {"by_juror": {"small": 1e-6, "large": 5e-4}}}
        bank.put("train_audit", t, row)
    priced = runner.fit_from_bank(bank)
    assert priced.heeded_jurors == ["small"] and priced.train_pass_rate == 1.0
    bank.close()

    out = tmp_path / "w.json"
    assert main(["fit", "--run-dir", str(run_dir), "-o", str(out)]) == 0
    weights = Context(weights=str(out)).resolved_weights()
    assert set(weights.jury) == {"small", "large"}
    assert weights.to_dict()["cost"] == pytest.approx(result.weights["cost"])


def test_fit_with_memory_gives_each_bid_its_leave_one_out_estimate(tmp_path, monkeypatch) -> None:
    from sale_graph.bench import fit as fit_module
    from sale_graph.bench.staged_fit import memory_estimate
    from sale_graph.cli import main
    from sale_graph.context import Context

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    bank = _synthetic_bank(run_dir / runner.BANK_DB, orders_done=0)
    seen = {}
    real = fit_module.fit_weights

    def spy(tasks, **kw):
        seen.update(tasks)
        return real(tasks, **kw)

    monkeypatch.setattr(fit_module, "fit_weights", spy)
    result = runner.fit_from_bank(bank, memory=True)
    assert "memory" in result.weights and result.train_pass_rate == 1.0
    vectors = {t: np.asarray(bank.get("embedding", t)["vector"]) for t in ("t0", "t1", "t2", "t3")}
    passed = {(t, a): a == "large" or int(t[1]) % 2 == 0
              for t in vectors for a in ("small", "large")}
    small_t0 = next(b for b in seen["t0"] if b.agent == "small")
    assert small_t0.memory_p == pytest.approx(
        memory_estimate("t0", "small", ["t1", "t2", "t3"], passed, vectors, 8, 0.4))
    plain = runner.fit_from_bank(bank)
    assert "memory" not in plain.weights
    bank.close()
    out = tmp_path / "w.json"
    assert main(["fit", "--run-dir", str(run_dir), "--memory", "--auction", "staged",
                 "-o", str(out)]) == 0
    weights = Context(weights=str(out)).resolved_weights()
    assert weights.memory == pytest.approx(result.weights["memory"])
    assert Context(weights=str(out)).resolved_auction() == "staged"


def test_fit_ships_a_point_of_the_reserve_sweep_as_the_pools_default(tmp_path) -> None:
    from sale_graph.cli import main
    from sale_graph.context import Context

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _synthetic_bank(run_dir / runner.BANK_DB, orders_done=0).close()
    out = tmp_path / "w.json"
    assert main(["fit", "--run-dir", str(run_dir), "--auction", "staged", "--staged-fit",
                 "staged-dearest", "--reserve", "0.3", "-o", str(out)]) == 0
    ctx = Context(weights=str(out))
    policy = ctx.resolved_staged()
    # every cheaper agent offered at the swept reserve, as Context(reserve=0.3) would run
    assert policy.dearest is not None and policy.fitted
    assert {a: (p.reserve, p.offered) for a, p in policy.agents.items()} == {"small": (0.3, True)}
    assert ctx.resolved_auction() == "staged"
    fitted = tmp_path / "fitted.json"
    assert main(["fit", "--run-dir", str(run_dir), "-o", str(fitted)]) == 0
    plain = Context(weights=str(fitted)).resolved_staged()
    assert plain.dearest is None  # on a tie the fit keeps the plain assessment
    with pytest.raises(SystemExit):
        main(["fit", "--run-dir", str(run_dir), "--reserve", "1.5", "-o", str(out)])
    # a fit the run stored (its rows ran with it) is what ships, not a refit
    from sale_graph.staged import AgentPolicy, StagedPolicy

    measured = StagedPolicy(agents={"small": AgentPolicy(bias=1.25, reserve=0.6)}, fitted=True)
    bank = OutcomeBank(run_dir / runner.BANK_DB)
    bank.put("fit", "staged", {"policy": measured.to_dict(), "execute_plan": {"small": False},
                               "chosen": {"features": []}})
    bank.close()
    assert main(["fit", "--run-dir", str(run_dir), "-o", str(fitted)]) == 0
    assert Context(weights=str(fitted)).resolved_staged() == measured
    assert Context(weights=str(fitted)).resolved_execute_plan() == {"small": False}


def test_fit_with_an_explicit_staged_choice_fails_when_there_is_no_staged_fit(
    tmp_path, capsys
) -> None:
    from sale_graph.cli import main

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    bank = _synthetic_bank(run_dir / runner.BANK_DB, orders_done=0)
    bank.clear_records("embedding")  # the staged fit needs the task embeddings
    bank.close()
    out = tmp_path / "w.json"
    assert main(["fit", "--run-dir", str(run_dir), "-o", str(out)]) == 0  # SALE's weights
    assert main(["fit", "--run-dir", str(run_dir), "--reserve", "0.3", "-o", str(out)]) == 2
    assert "no staged policy to write" in capsys.readouterr().err


def test_fit_refuses_incomplete_training_data(tmp_path) -> None:
    bank = _synthetic_bank(tmp_path / "bank.sqlite", orders_done=0)
    bank.clear_records("train_audit")
    with pytest.raises(ValueError, match="incomplete"):
        runner.fit_from_bank(bank)


# --------------------------------------------------------------------------- CLI


def test_bench_and_fit_are_registered_with_handlers() -> None:
    from sale_graph.bench.cli import _config, bench_command, fit_command
    from sale_graph.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["bench", "--smoke", "--limit", "4", "--orders", "2"])
    assert args.handler is bench_command
    config = _config(args)
    assert config.pool == "local-small" and config.orders == 2
    assert config.per_domain == {"coding": 4, "reasoning": 4}
    args = parser.parse_args(["bench", "--domains", "reasoning", "--test-fraction", "0.25"])
    assert _config(args).domains == ("reasoning",) and _config(args).test_fraction == 0.25
    assert _config(args).pool == "local"
    args = parser.parse_args(["fit", "--run-dir", "x", "-o", "w.json"])
    assert args.handler is fit_command and args.objective == "minmax"
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--domains", "chess"])


def test_from_bank_without_an_export_fails_cleanly(tmp_path, capsys) -> None:
    from sale_graph.cli import main

    assert main(["bench", "--from-bank", "--run-dir", str(tmp_path)]) == 2
    assert "no exported bank" in capsys.readouterr().err


def test_a_failing_job_is_retried_once_then_left_for_resume() -> None:
    import io

    stream = io.StringIO()
    progress = runner.Progress({"x": 2}, {}, stream)
    calls = []

    async def flaky(n: int) -> int:
        calls.append(n)
        if len(calls) == 1:
            raise OSError("sandbox hiccup")
        return n * 2

    async def broken() -> None:
        raise RuntimeError("model gone")

    assert asyncio.run(runner._attempt(progress, "flaky", flaky, 21)) == 42
    assert calls == [21, 21]
    assert asyncio.run(runner._attempt(progress, "broken", broken)) is None
    log = stream.getvalue()
    assert "flaky failed (attempt 1/2): OSError: sandbox hiccup" in log
    assert "broken failed (attempt 2/2)" in log


def test_changed_prompts_invalidate_stored_results_but_keep_calls(tmp_path, scripted) -> None:
    bank = _synthetic_bank(tmp_path / "bank.sqlite", orders_done=1)
    model = scripted(replies=["x"], cache=bank)
    model.invoke([HumanMessage("kept")])
    fingerprint = runner.prompt_fingerprint()
    assert fingerprint == runner.prompt_fingerprint() and len(fingerprint) == 16
    # results made before fingerprints were stored have unknown prompts: stale
    assert runner.invalidate_stale(bank, fingerprint)
    assert all(not bank.records(ns) for ns in runner.DERIVED)
    assert len(bank) == 1 and bank.get("embedding", "t0") is not None
    bank.put("outcome", "t0|small", {"passed": True})
    assert not runner.invalidate_stale(bank, fingerprint)  # same prompts: kept
    assert bank.get("outcome", "t0|small") == {"passed": True}
    assert runner.invalidate_stale(bank, "0123456789abcdef")
    assert bank.get("outcome", "t0|small") is None


def test_timeouts_anywhere_in_an_auction_are_detected() -> None:
    assert runner._audit_timeout({"events": [], "dropped_votes": [], "execution": {}}) is None
    bid = {"events": [{"kind": "bid_failed", "agent": "a", "detail": "timeout: a exceeded 300s"}]}
    assert "bid_failed a" in runner._audit_timeout(bid)
    vote = {"dropped_votes": [{"juror": "b", "error": "timeout; timeout"}]}
    assert "vote by b" in runner._audit_timeout(vote)
    assert runner._audit_timeout({"execution": {"error": "timeout"}}) == "execution: timeout"
    unreadable = {"dropped_votes": [{"juror": "b", "error": "unreadable vote ['7']"}]}
    assert runner._audit_timeout(unreadable) is None


def test_a_rerun_replays_the_coding_fix_round_too(tmp_path, scripted) -> None:
    from sale_graph.bench.coding_executor import build_coding_executor

    ledger = CallLedger(OutcomeBank(tmp_path / "bank.sqlite"))
    model = scripted(replies=["```python\ndef f(x):\n    return 0\n```"], cache=ledger)
    executor = build_coding_executor(max_rounds=2)
    task = 'def f(x):\n    """Double it.\n    >>> f(1)\n    2\n    """\n'
    inputs = {"task": task, "strategy": "return 2x", "model": model, "agent": "a"}
    with ledger.measure() as first:
        out = executor.invoke(inputs)
    assert out["rounds"] == 2 and not out["examples_passed"]
    with ledger.measure() as again:
        assert executor.invoke(inputs)["answer"] == out["answer"]
    assert (first.new, again.new, len(again.calls)) == (2, 0, 2)


def test_direct_rows_and_an_oracle_over_both_modes(tmp_path) -> None:
    bank = _synthetic_bank(tmp_path / "bank.sqlite", orders_done=1)
    plain = json.loads(report_from_bank(bank, tmp_path / "plain", plots=False)["json"].read_text())
    assert not [m for m in plain["summary"] if "(direct)" in m]  # no direct records: no rows
    assert plain["references"] == ["single: large"]
    # answering directly: 'small' passes every test task but t7, 'large' only t7 (half price)
    for i in range(4, 8):
        for a, p in AGENTS:
            passed = (i != 7) if a == "small" else (i == 7)
            bank.put("direct", f"t{i}|{a}|direct", {
                "passed": passed, "tokens": 500, "cost": 500 * p / 1e6, "seconds": 0.5,
                "confidence": None,
            })  # fmt: skip
    paths = report_from_bank(bank, tmp_path / "out", plots=False)
    data = json.loads(paths["json"].read_text())
    s = data["summary"]
    assert s["single: small (direct)"]["overall"]["pass_at_1"]["mean"] == pytest.approx(0.75)
    assert s["single: large (direct)"]["overall"]["pass_at_1"]["mean"] == pytest.approx(0.25)
    # the oracle takes the cheapest passing (agent, mode): small direct on t4-t6, large direct
    # on t7 (which large fails after planning); executors are named by agent, not by mode
    oracle = s["oracle"]["overall"]
    assert oracle["pass_at_1"]["mean"] == pytest.approx(1.0)
    assert oracle["largest_share"]["mean"] == pytest.approx(0.25)
    assert oracle["cost_usd"]["mean"] == pytest.approx(3 * 500 * 0.1 / 1e6 + 500 / 1e6)
    assert data["references"] == ["single: large", "single: large (direct)"]
    assert set(data["paired"]["single: large (direct)"]) >= {"SALE", "oracle", "single: large"}
    md = paths["markdown"].read_text()
    assert "| single: large (direct) | 1 | 4 |" in md
    assert "cheapest passing (agent, mode) pair" in md
    # only complete direct rows count: one missing record and the rows wait
    bank.clear_records("direct")
    bank.put("direct", "t4|small|direct", {"passed": True, "tokens": 1, "cost": 0.0,
                                           "seconds": 0.0})  # fmt: skip
    partial = json.loads(report_from_bank(bank, tmp_path / "p", plots=False)["json"].read_text())
    assert partial["summary"]["oracle"] == plain["summary"]["oracle"]
    assert not [m for m in partial["summary"] if "(direct)" in m]


def test_fit_writes_the_training_evaluation_as_a_seed_file(tmp_path) -> None:
    """The staged rows' memory held the training split's graded outcomes; shipping the
    policy without them would route every task of a new memory to the dearest agent."""
    from sale_graph.cli import main
    from sale_graph.seeds import load_seeds

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    bank = _synthetic_bank(run_dir / runner.BANK_DB, orders_done=0)
    for key, row in bank.records("outcome").items():
        bank.put("outcome", key, {**row, "plan": f"plan for {key}"})
    bank.close()
    out, seeds_path = tmp_path / "w.json", tmp_path / "seeds.jsonl.gz"
    assert main(["fit", "--run-dir", str(run_dir), "--seeds-out", str(seeds_path),
                 "-o", str(out)]) == 0
    seeds = load_seeds(seeds_path)
    assert len(seeds) == 8  # 4 training tasks x 2 agents, never a test task
    assert {s["task"] for s in seeds} == {"t0", "t1", "t2", "t3"}
    small = {s["task"]: s["passed"] for s in seeds if s["winner"] == "small"}
    assert small == {"t0": True, "t1": False, "t2": True, "t3": False}
    assert all(s["bids"][0]["price"] == dict(AGENTS)[s["winner"]] for s in seeds)
    bank = OutcomeBank(run_dir / runner.BANK_DB)  # a training task without its auction
    audits = bank.records("train_audit")
    bank.clear_records("train_audit")
    for key, row in audits.items():
        if key != "t1":
            bank.put("train_audit", key, row)
    with pytest.raises(ValueError, match="training task"):
        runner.seeds_from_bank(bank, None)  # never a silently shorter seed file
    bank.close()
