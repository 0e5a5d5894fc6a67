"""Run a benchmark: SALE, its ablations and every baseline on one pool and one task set.

What runs, in this order (each step resumable, each result stored as it completes):

1. **Tasks**: HumanEval and reasoning-gym items, sampled evenly over bins (and
   generators), split into train and test (stratified, seeded). Task embeddings
   (all-MiniLM-L6-v2) are stored for the kNN routers.
2. **Outcomes**: every agent plans (its own round-0 bid, the very call the auction
   makes, so the bank serves it to both) and executes the plan with the executor
   SALE uses; the answer is graded. These feed every baseline (single agents,
   random, oracle, WTP, CARROT, cascade) and the weight fit.
3. **Training auctions**: one auction per training task without refinement, to
   record every agent's bid and every juror's vote; with (2) they are the rows
   of the min-max MILP that fits the weights (``fit.py``).
4. **SALE** on the test split, per seeded task order, memory growing along the
   order from an empty store; then the ablations (one order each).

Every model call goes through the outcome bank (``bank.py``), keyed by model file,
prompt and decoding parameters: bids, votes and executions shared between methods
run once, and a rerun replays everything. Results live in the bank too, so
``report_from_bank`` rebuilds the tables from an exported bank alone, with no model.

The phases live in their own modules: ``config.py`` (what a run is), ``ledger.py``
(the metered bank and pool), ``jobs.py`` (one outcome, training auction or SALE
auction each), ``analysis.py`` (fit, baselines, report). This module orders them.

Seconds are llama.cpp compute seconds as recorded when a call was first generated
(``generation_seconds``), also for calls replayed from the bank: wall time of a
replay would be meaningless. The pool generates one call at a time, so the sum
over calls is the compute time the work needs on this machine.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sale_graph.bench.analysis import fit_from_bank, report_from_bank, report_from_export
from sale_graph.bench.bank import OutcomeBank
from sale_graph.bench.config import BANK_DB as BANK_DB
from sale_graph.bench.config import (
    BANK_EXPORT,
    FIT_LAM,
    RESULTS_LOG,
    SMOKE,
    STAGED_FITS,
    BenchConfig,
    Method,
    _direct_key,
    _outcome_key,
    _result_key,
    _split,
    build_tasks,
    methods_for,
)
from sale_graph.bench.jobs import Progress, _rebuild_memory, _Runner, _weights_for
from sale_graph.bench.jobs import _audit_timeout as _audit_timeout
from sale_graph.bench.ledger import DERIVED as DERIVED
from sale_graph.bench.ledger import (
    CallLedger,
    bank_pool,
    invalidate_stale,
    open_bank,
    prompt_fingerprint,
    stored_config,
)
from sale_graph.bench.ledger import _banked_model_class as _banked_model_class
from sale_graph.bench.ledger import metered as metered
from sale_graph.bench.tasks import Task
from sale_graph.local import PRESETS

__all__ = [
    "BenchConfig",
    "CallLedger",
    "Method",
    "SMOKE",
    "bank_pool",
    "build_tasks",
    "methods_for",
    "fit_from_bank",
    "invalidate_stale",
    "open_bank",
    "prompt_fingerprint",
    "report_from_bank",
    "report_from_export",
    "stored_config",
    "run_bench",
]


# --------------------------------------------------------------------------- the run


def _check_config(bank: OutcomeBank, config: BenchConfig, tasks: list[Task], resume: bool) -> None:
    """Refuse to mix two configurations (or two task sets) in one bank."""
    stored = bank.get("meta", "config")
    if stored is None:
        return
    if not resume:
        raise RuntimeError(
            f"{bank.path} already holds a run; pass --resume to continue it or pick a new --run-dir"
        )
    ran = [a["name"] for a in (bank.get("meta", "pool") or {}).get("agents") or []]
    if stored != config.to_dict():
        diff = sorted(k for k in stored if stored.get(k) != config.to_dict().get(k))
        renamed = diff == ["pool"] and ran and _preset_agents(config.pool) == ran
        if not renamed:  # a preset under its new name (same agents) is the same run
            raise RuntimeError(f"--resume with a different configuration (differs in: {diff})")
    elif ran and _preset_agents(config.pool) not in (None, ran):
        same = [p for p in PRESETS if _preset_agents(p) == ran]
        hint = f"; resume with --pool {same[0]}, which names them" if same else ""
        raise RuntimeError(
            f"this run's pool was {ran}, but the preset {config.pool!r} now names "
            f"{_preset_agents(config.pool)}{hint}"
        )
    known = [t["id"] for t in (bank.get("meta", "tasks") or {}).get("tasks", [])]
    if known and known != [t.id for t in tasks]:
        raise RuntimeError("the task set changed since this run started (dataset versions?)")


def _preset_agents(pool: str) -> list[str] | None:
    """The agents a preset names today (None for a pool file); no model is loaded."""
    return list(PRESETS[pool]) if pool in PRESETS else None


async def _run(
    config: BenchConfig, run_dir: Path, bank: OutcomeBank, tasks: list[Task], stream: Any
) -> None:
    from sale_graph.bench.tasks import task_orders

    train, test = _split(config, tasks)
    r = _Runner(config, run_dir, bank, tasks, train, test, stream)
    bank.put("meta", "pool", {"agents": [{"name": a.name, "price": a.price} for a in r.agents]})
    methods = methods_for(config)
    orders = task_orders(test, config.orders, config.seed)

    stored = {"outcome": bank.records("outcome"), "direct": bank.records("direct")}
    outcomes = stored["outcome"]
    audits = bank.records("train_audit")
    results = bank.records("result")
    plan = {
        "outcome": len(tasks) * len(r.agents) * (2 if config.direct else 1),
        "train auction": len(train),
        "SALE": sum(m.orders for m in methods) * len(test),
    }
    done = {
        "outcome": sum(_outcome_key(t.id, a.name) in outcomes for t in tasks for a in r.agents)
        + config.direct * sum(
            _direct_key(t.id, a.name) in stored["direct"] for t in tasks for a in r.agents),
        "train auction": sum(t.id in audits for t in train),
        "SALE": sum(
            _result_key(m.name, k, t.id) in results
            for m in methods
            for k in range(m.orders)
            for t in test
        ),
    }
    progress = Progress(plan, done, stream)
    progress.note(
        f"{len(tasks)} tasks ({len(train)} train, {len(test)} test), "
        f"{len(r.agents)} agents, run dir {run_dir}"
    )

    # 1. embeddings for the kNN routers (stored: the report must not need the model)
    missing = [t for t in tasks if bank.get("embedding", t.id) is None]
    if missing:
        from sale_graph.embeddings import get_embedder

        vectors = await asyncio.to_thread(get_embedder().embed, [t.prompt for t in missing])
        for t, v in zip(missing, vectors, strict=True):
            bank.put("embedding", t.id, {"vector": v})

    # 2. every agent on every training task, planning then executing and (config.direct)
    # answering directly; 3. the training auctions and the fits; then the same outcomes
    # on the test split. Training first: the fits need only the training split, so they
    # (and the defaults they decide) are ready a third of the way into a long run.
    await _outcomes(r, progress, train, stored)
    await _train_auctions(r, progress, train, audits)
    fits = _fits(bank, methods, progress)
    r.refresh_report()
    await _outcomes(r, progress, test, stored)
    if fits is None:
        r.maybe_export(force=True)
        return
    fit, fit_outcomes, staged_fits = fits
    r.refresh_report()

    # 4. SALE and ablations on the test split
    for method in _schedule(methods):
        m, k = method
        order = orders[k]
        # SALE with verified outcomes in memory scores with w_m, fitted with it
        fitted = fit_outcomes if m.outcomes and m.auction == "full" else fit
        weights = _weights_for(m, fitted["weights"])
        staged = staged_fits.get(m.staged_fit) if m.auction == "staged" else None
        if m.auction == "staged" and staged is None:
            continue  # its policy could not be fitted (noted above)
        keys = [_result_key(m.name, k, t.id) for t in order]
        if all(key in results for key in keys):
            continue
        memory_path = run_dir / "memory" / f"{m.slug}-o{k}" if m.uses_memory else None
        if memory_path is not None:
            from sale_graph.context import Context

            memory = Context(memory_path=str(memory_path)).resolved_memory()
            completed = [results[key] for key in keys if key in results]
            seeds = _outcome_seeds(bank, r, staged) if m.outcomes else []
            if memory.count() != len(seeds) + len(completed):
                await asyncio.to_thread(_rebuild_memory, memory, completed, seeds)
        for position, task in enumerate(order):
            key = keys[position]
            if key in results:
                continue
            what = f"{m.name} order {k} #{position} {task.id}"
            args = (task, m, k, position, weights, memory_path, staged)
            row = await _attempt(progress, what, r.sale, *args)
            if row is None:  # the order cannot go on without this task's memory
                progress.note(f"{m.name} order {k} stops here; --resume retries it")
                break
            bank.put("result", key, row)
            results[key] = row
            rec = row["record"]
            r._log({"kind": "sale", **rec})
            progress.step(
                "SALE",
                f"{m.name} order {k} #{position} {task.id} -> "
                f"{rec['agent']} {'pass' if rec['passed'] else 'fail'}",
                row["wall_seconds"],
                row["new_calls"],
                row["calls"],
            )
            r.maybe_export()
        r.refresh_report()
    r.maybe_export(force=True)
    progress.note(f"done: {r.ledger.misses} new model calls, {r.ledger.hits} replayed this session")


async def _outcomes(
    r: _Runner, progress: Progress, tasks: Sequence[Task], stored: dict[str, dict[str, Any]]
) -> None:
    """Every agent on each task: plan then execute, and (``config.direct``) answer directly."""
    kinds = [("outcome", False)] + ([("direct", True)] if r.config.direct else [])
    for task in tasks:
        for agent in r.agents:
            for kind, direct in kinds:
                key = _direct_key(task.id, agent.name) if direct else _outcome_key(
                    task.id, agent.name)
                if key in stored[kind]:
                    continue
                label = f"{agent.name} on {task.id}{' (direct)' if direct else ''}"
                row = await _attempt(progress, label, r.outcome, task, agent, direct)
                if row is None:
                    continue
                r.bank.put(kind, key, row)
                stored[kind][key] = row
                r._log({"kind": kind, "task_id": task.id, "agent": agent.name,
                        **{k: row[k] for k in ("passed", "tokens", "cost", "seconds")}})
                progress.step("outcome", f"{label} {'pass' if row['passed'] else 'fail'}",
                              row["wall_seconds"], row["new_calls"], row["calls"])
                r.maybe_export()


async def _train_auctions(
    r: _Runner, progress: Progress, train: Sequence[Task], audits: dict[str, Any]
) -> None:
    """One auction per training task recording every bid and every vote (the fit's rows)."""
    for task in train:
        if task.id in audits:
            continue
        row = await _attempt(progress, f"auction on {task.id}", r.train_audit, task)
        if row is None:
            continue
        r.bank.put("train_audit", task.id, row)
        audits[task.id] = row
        r._log({"kind": "train auction", "task_id": task.id, "winner": row["audit"]["winner"]})
        progress.step("train auction", task.id, row["wall_seconds"], row["new_calls"],
                      row["calls"])
        r.maybe_export()


async def _attempt(progress: Progress, what: str, job: Any, *args: Any) -> Any:
    """Run one job, retrying once; after a second failure log it and return None.

    Hours into a run, one failing job (a sandbox error, a model timeout) should not
    cost the rest of the session; the job stays undone and ``--resume`` retries it.
    """
    for attempt in (1, 2):
        try:
            return await job(*args)
        except Exception as exc:  # noqa: BLE001 - logged; interrupts are BaseException
            progress.note(f"{what} failed (attempt {attempt}/2): {type(exc).__name__}: {exc}")
    return None


def _schedule(methods: Sequence[Method]) -> list[tuple[Method, int]]:
    """Staged rows first (they replay nearly every call), then SALE's first order.

    After it: the rows without refinement, the ablations with it (they decide the
    defaults: refinement, jury format), then SALE's other orders, which only measure
    its spread over task orders.
    """
    staged = [(m, k) for m in methods if m.auction == "staged" for k in range(m.orders)]
    full = [m for m in methods if m.auction != "staged"]
    if not full:
        return staged
    first, *rest = full
    plan = [*staged, (first, 0)]
    plan += [(m, 0) for m in rest if not m.refine]
    plan += [(m, 0) for m in rest if m.refine]
    plan += [(first, k) for k in range(1, first.orders)]
    return plan


def _fits(
    bank: OutcomeBank, methods: Sequence[Method], progress: Progress
) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, Any]]] | None:
    """The fits the test split's auctions use, made once on the training split and stored.

    Returns the min-max weights, the same with memory's term (for SALE with verified
    outcomes) and the staged policies; None while the training split is incomplete:
    the test outcomes still run, the auctions wait for a resume.
    """
    fit = bank.get("fit", "minmax")
    if fit is None:
        try:
            fit = fit_from_bank(bank, "minmax").to_dict()
        except ValueError as exc:
            progress.note(f"no fit, so no SALE yet: {exc}")
            return None
        bank.put("fit", "minmax", fit)
    progress.note(
        f"fitted weights (min-max, train pass {fit['train_pass_rate']:.0%}): "
        f"{json.dumps(fit['weights'], sort_keys=True)}"
    )
    staged_fits = _staged_fits(bank, methods, progress)
    fit_outcomes = fit
    if any(m.outcomes and m.auction == "full" for m in methods):
        fit_outcomes = bank.get("fit", "minmax-outcomes")
        if fit_outcomes is None:
            fit_outcomes = fit_from_bank(bank, "minmax", memory=True).to_dict()
            bank.put("fit", "minmax-outcomes", fit_outcomes)
        progress.note(
            f"fitted weights with memory's success estimates (for SALE with verified "
            f"outcomes): {json.dumps(fit_outcomes['weights'], sort_keys=True)}"
        )
    return fit, fit_outcomes, staged_fits


def _staged_fits(
    bank: OutcomeBank, methods: Sequence[Method], progress: Progress
) -> dict[str, dict[str, Any]]:
    """The staged policies the methods need, fitted once on the training split and stored."""
    from sale_graph.bench.staged_fit import fit_staged_from_bank

    fits: dict[str, dict[str, Any]] = {}
    for name in sorted({m.staged_fit for m in methods if m.auction == "staged"}):
        stored = bank.get("fit", name)
        if stored is None:
            try:
                policy, report = fit_staged_from_bank(
                    bank, lam=FIT_LAM, **STAGED_FITS[name])
            except ValueError as exc:
                progress.note(f"no {name} policy, so no staged rows yet: {exc}")
                continue
            stored = {"policy": policy.to_dict(), "execute_plan": report["execute_plan"],
                      "chosen": report["chosen"], "candidates": report["candidates"]}
            bank.put("fit", name, stored)
        chosen = stored["chosen"]
        reserves = {a: p["reserve"] if p.get("offered", True) else "skip"
                    for a, p in stored["policy"]["agents"].items()}
        against = ", against the dearest" if chosen.get("against_dearest") else ""
        progress.note(f"{name} policy: features {chosen['features']}{against}, "
                      f"juror {chosen['juror']}, reserves {json.dumps(reserves)}")
        fits[name] = stored
    return fits


def _outcome_seeds(
    bank: OutcomeBank, r: _Runner, staged: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    """The training split's graded outcomes, as memory records of verified auctions.

    One record per (training task, agent), won by that agent, its outcome the way the
    agent would execute when it wins (with its plan, or directly): what a user who
    evaluated each agent once on a training set would have in memory.
    """
    return training_seeds(bank, [(t.id, t.prompt.strip()) for t in r.train],
                          [(a.name, a.price) for a in r.agents], staged)


def training_seeds(
    bank: OutcomeBank, train: Sequence[tuple[str, str]], agents: Sequence[tuple[str, float]],
    staged: Mapping[str, Any] | None,
) -> list[dict[str, Any]]:
    """The seed records of (task id, task text) x (agent name, price), from the bank's outcomes."""
    execute_plan = (staged or {}).get("execute_plan") or {}
    outcomes, direct = bank.records("outcome"), bank.records("direct")
    seeds = []
    for task_id, text in train:
        for name, price in agents:
            plan_row = outcomes.get(_outcome_key(task_id, name))
            direct_row = direct.get(_direct_key(task_id, name))
            with_plan = execute_plan.get(name, True) or direct_row is None
            row = plan_row if with_plan else direct_row
            if plan_row is None or row is None:
                continue
            seeds.append({
                "auction_id": "seed-" + re.sub(r"[^A-Za-z0-9._:-]", "-", f"{task_id}-{name}"),
                "task": text, "winner": name, "passed": bool(row["passed"]),
                "bids": [{"agent": name, "round": 0,
                          "strategy": (plan_row.get("plan") or "") if with_plan else "",
                          "score": None, "label": "win", "price": price}],
            })
    return seeds


def seeds_from_bank(bank: OutcomeBank, staged: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The training split's seeds as the staged rows' memory held them, from the bank alone.

    The split and the pool are the run's own (``meta``); a training task's text is
    the one its stored training auction ran on. A training task without one is an
    error, never a silently missing seed.
    """
    audits = bank.records("train_audit")
    tasks = (bank.get("meta", "tasks") or {}).get("tasks") or []
    train_ids = [t["id"] for t in tasks if t.get("split") == "train"]
    missing = [t for t in train_ids if t not in audits]
    if missing or not train_ids:
        raise ValueError(f"no training auction (task text) for {len(missing)} training "
                         f"task(s), e.g. {missing[:3]}: finish the run's training split first"
                         if missing else "the run holds no training split")
    train = [(t, audits[t]["audit"]["task"]) for t in train_ids]
    pool = (bank.get("meta", "pool") or {}).get("agents") or []
    agents = [(a["name"], a["price"]) for a in pool]
    return training_seeds(bank, train, agents, staged)


def run_bench(
    config: BenchConfig, run_dir: str | Path, *, resume: bool = False, stream: Any = None
) -> dict[str, Path]:
    """Run (or resume) a benchmark into ``run_dir``; returns the report's paths."""
    run_dir = Path(run_dir)
    out = stream or sys.stderr
    tasks = build_tasks(config)
    train, test = _split(config, tasks)
    if not train or not test:
        raise ValueError(
            f"the split has {len(train)} train and {len(test)} test tasks; "
            "both must be non-empty (more tasks or another --test-fraction)"
        )
    bank = open_bank(run_dir)
    try:
        _check_config(bank, config, tasks, resume)
        if invalidate_stale(bank, prompt_fingerprint()):
            print(
                "[bench] prompts changed since the stored results were made: recomputing "
                "them (unchanged calls replay from the bank)",
                file=out,
                flush=True,
            )
            with open(run_dir / RESULTS_LOG, "a", encoding="utf-8") as f:
                f.write(json.dumps({"kind": "invalidated", "reason": "prompts changed"}) + "\n")
        bank.put("meta", "config", config.to_dict())
        test_ids = {t.id for t in test}
        bank.put(
            "meta",
            "tasks",
            {
                "tasks": [
                    {
                        "id": t.id,
                        "domain": t.domain,
                        "bin": t.bin,
                        "split": "test" if t.id in test_ids else "train",
                    }
                    for t in tasks
                ]
            },
        )
        previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            asyncio.run(_run(config, run_dir, bank, tasks, out))
        finally:
            signal.signal(signal.SIGTERM, previous)
            bank.export(run_dir / BANK_EXPORT)
        return report_from_bank(bank, run_dir)
    finally:
        bank.close()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
