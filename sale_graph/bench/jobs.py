"""The jobs of a run, one model-facing unit each: an outcome, a training auction, a SALE auction.

``_Runner`` holds a run's live state (bank, pool, executors); each job returns a
JSON-able row that the orchestration (``runner.py``) stores under its bank key. A
job that hits a timeout raises instead of returning: the load, not the model, made it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sale_graph.bench.analysis import report_from_bank
from sale_graph.bench.bank import OutcomeBank
from sale_graph.bench.config import BANK_EXPORT, RESULTS_LOG, BenchConfig, Method
from sale_graph.bench.ledger import CallLedger, Meter, bank_pool, metered
from sale_graph.bench.records import dollars
from sale_graph.bench.tasks import Task

EXPORT_EVERY = 600.0  # seconds between exports of the bank (and report refreshes)


class _NoPlan(Exception):
    """Internal: skip the bid of a direct outcome."""


# --------------------------------------------------------------------------- progress


class Progress:
    """One plain line per finished job on stderr, with an ETA from this session's pace."""

    def __init__(self, plan: Mapping[str, int], done: Mapping[str, int], stream: Any = None):
        """``plan``/``done``: job counts per kind (outcome, train auction, SALE)."""
        self.plan = dict(plan)
        self.done = Counter(done)
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.spent: dict[str, list[float]] = defaultdict(list)

    def _eta(self) -> float | None:
        pace_all = [s for v in self.spent.values() for s in v]
        if not pace_all:
            return None
        fallback = sum(pace_all) / len(pace_all)
        left = 0.0
        for kind, total in self.plan.items():
            remaining = max(0, total - self.done[kind])
            pace = self.spent.get(kind)
            left += remaining * (sum(pace) / len(pace) if pace else fallback)
        return left

    def step(self, kind: str, label: str, seconds: float, new_calls: int, calls: int) -> None:
        """Record one finished job and print the progress line."""
        self.done[kind] += 1
        self.spent[kind].append(seconds)
        total, done = sum(self.plan.values()), sum(self.done.values())
        eta = self._eta()
        bar_len = 24
        filled = int(bar_len * done / total) if total else bar_len
        line = (
            f"[{'#' * filled}{'.' * (bar_len - filled)}] {done}/{total} "
            f"{_hms(time.monotonic() - self.started)} elapsed, ETA "
            f"{_hms(eta) if eta is not None else '?'} | {kind}: {label} "
            f"({seconds:.0f}s, {new_calls}/{calls} calls new)"
        )
        print(line, file=self.stream, flush=True)

    def note(self, text: str) -> None:
        """A free-form line (phase changes, warnings)."""
        print(f"[bench] {text}", file=self.stream, flush=True)


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


# --------------------------------------------------------------------------- the jobs


class _Runner:
    """Holds the live state of one run: bank, pool, tasks, executors, progress."""

    def __init__(
        self,
        config: BenchConfig,
        run_dir: Path,
        bank: OutcomeBank,
        tasks: list[Task],
        train: list[Task],
        test: list[Task],
        stream: Any = None,
    ) -> None:
        from sale_graph.bench.coding_executor import build_coding_executor
        from sale_graph.bench.reasoning_executor import reasoning_executor

        self.config = config
        self.run_dir = run_dir
        self.bank = bank
        self.ledger = CallLedger(bank)
        self.tasks, self.train, self.test = tasks, train, test
        self.agents = bank_pool(config.pool, self.ledger, max_seconds=config.call_timeout)
        self.executors = {
            "coding": metered(build_coding_executor(max_rounds=config.coding_rounds)),
            "reasoning": metered(reasoning_executor),
        }
        self.stream = stream or sys.stderr
        self.last_export = time.monotonic()
        self.log_path = run_dir / RESULTS_LOG

    # ---------------------------------------------------------------- bookkeeping

    def _log(self, row: Mapping[str, Any]) -> None:
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True, default=str) + "\n")

    def maybe_export(self, force: bool = False) -> None:
        """Every ``EXPORT_EVERY`` seconds (and when forced): export the bank, refresh the report."""
        if force or time.monotonic() - self.last_export > EXPORT_EVERY:
            self.bank.export(self.run_dir / BANK_EXPORT)
            self.refresh_report()
            self.last_export = time.monotonic()

    def refresh_report(self) -> None:
        """Rewrite the report from the bank; a report problem must not stop the run."""
        try:
            report_from_bank(self.bank, self.run_dir)
        except Exception as exc:  # noqa: BLE001 - logged; the next refresh tries again
            print(f"[bench] report failed: {type(exc).__name__}: {exc}", file=self.stream)

    def context(self, task: Task, **overrides: Any) -> Any:
        """The auction Context for a task of this run (executor by domain)."""
        from sale_graph.context import Context

        base: dict[str, Any] = {
            "agents": self.agents,
            "executor": self.executors[task.domain],
            "max_bid_tokens": self.config.max_bid_tokens,
            "max_answer_tokens": self.config.max_answer_tokens,
            "call_timeout": self.config.call_timeout,
            "execute_timeout": self.config.execute_timeout,
        }
        return Context(**{**base, **overrides})

    # ---------------------------------------------------------------- outcomes

    async def outcome(self, task: Task, agent: Any, direct: bool = False) -> dict[str, Any]:
        """``agent`` plans (its round-0 bid) and executes the plan; graded.

        ``direct``: no plan, the agent answers the task with the same executor. That
        is what a user of the largest model alone does, so it is the fair baseline.
        """
        from sale_graph.bench.tasks import verify
        from sale_graph.bidding import write_bid
        from sale_graph.execution import execute
        from sale_graph.prompts import bid_messages

        started = time.monotonic()
        prompt = task.prompt.strip()  # as the auction sees it (validate_task strips)
        bid_error = None
        with self.ledger.measure() as meter:
            try:
                if direct:
                    raise _NoPlan
                bid = await write_bid(
                    agent,
                    bid_messages(agent.name, prompt),
                    round_=0,
                    max_tokens=self.config.max_bid_tokens,
                    timeout=self.config.call_timeout,
                )
                strategy, plan_tokens = bid["strategy"], bid["tokens"] + bid["input_tokens"]
            except _NoPlan:
                strategy, plan_tokens = "", 0
            except TimeoutError:
                raise  # the machine's load, not the model: retry rather than record
            except Exception as exc:  # noqa: BLE001 - no plan: the agent still tries the task
                bid_error, strategy, plan_tokens = f"{type(exc).__name__}: {exc}", "", 0
            result = await execute(
                agent,
                self.executors[task.domain],
                task=prompt,
                strategy=strategy,
                timeout=self.config.execute_timeout,
                max_tokens=self.config.max_answer_tokens,
            )
        if _is_timeout(result["error"]):
            raise TimeoutError(f"execution: {result['error']}")
        answer = result["answer"] or ""
        passed = result["error"] is None and bool(answer.strip())
        if passed:
            passed = await asyncio.to_thread(verify, task, answer)
        details = result.get("details") or {}
        confidence = None
        if task.domain == "coding" and "examples_passed" in details:
            confidence = 1.0 if details["examples_passed"] else 0.0
        exec_tokens = int(result["input_tokens"]) + int(result["output_tokens"])
        tokens = plan_tokens + exec_tokens
        return {
            "passed": bool(passed),
            "tokens": tokens,
            "cost": dollars(tokens, agent.price),
            "seconds": meter.seconds(),
            "confidence": confidence,
            "plan_tokens": plan_tokens,
            "execution_tokens": exec_tokens,
            "plan": strategy,
            "answer": answer,
            "error": result["error"] or bid_error,
            "rounds": details.get("rounds"),
            "examples_checked": details.get("examples_checked"),
            "calls": len(meter.calls),
            "new_calls": meter.new,
            "wall_seconds": time.monotonic() - started,
        }

    # ---------------------------------------------------------------- auctions

    async def auction(
        self, task: Task, ctx: Any, auction_id: str | None = None
    ) -> tuple[dict[str, Any], Meter, float]:
        """One auction of ``task``; returns its output, its meter and its wall seconds."""
        from sale_graph.graph import graph
        from sale_graph.state import AuctionInput

        started = time.monotonic()
        request = AuctionInput(task=task.prompt)
        if auction_id:  # idempotent: a retried auction overwrites its own memory record
            request["auction_id"] = auction_id
        with self.ledger.measure() as meter:
            out = await graph.ainvoke(request, context=ctx)
        timeout = _audit_timeout(out["auction"])
        if timeout:
            raise TimeoutError(f"auction: {timeout}")
        return out, meter, time.monotonic() - started

    async def train_audit(self, task: Task) -> dict[str, Any]:
        """Every bid and every vote on a training task (no refinement, no memory)."""
        ctx = self.context(task, refine=False, remember=False, jury="all")
        out, meter, wall = await self.auction(task, ctx)
        return {
            "audit": out["auction"],
            "calls": len(meter.calls),
            "new_calls": meter.new,
            "wall_seconds": wall,
        }

    async def sale(
        self,
        task: Task,
        method: Method,
        order: int,
        position: int,
        weights: Any,
        memory_path: Path | None,
        staged: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One auction of a method on a test task, graded, as a Record plus its audit.

        With verified outcomes (``method.outcomes``) the task's own grader is the
        auction's verifier, so the outcome is stored in memory with the auction, as a
        user's test suite would report it.
        """
        from sale_graph.bench.records import record_from_audit
        from sale_graph.bench.tasks import verify

        overrides: dict[str, Any] = {
            "weights": weights,
            "jury": method.jury,
            "jury_format": method.jury_format,
            "refine": method.refine and method.auction == "full",
            "refine_from": method.refine_from,
            "remember": method.uses_memory,
            "auction": method.auction,
        }
        if staged is not None:
            overrides.update(staged=staged["policy"], execute_plan=staged["execute_plan"],
                             reserve=method.reserve)
        if method.outcomes:
            def grade(x: Mapping[str, Any]) -> bool:
                return bool(x["answer"].strip()) and verify(task, x["answer"])

            overrides["verifier"] = grade
        if memory_path is not None:
            overrides["memory_path"] = str(memory_path)
        auction_id = f"{method.slug}-o{order}-p{position}"
        out, meter, wall = await self.auction(task, self.context(task, **overrides), auction_id)
        audit = out["auction"]
        answer = out.get("answer") or ""
        passed = not audit["execution"].get("error") and bool(answer.strip())
        verdict = (audit.get("outcome") or {}).get("passed")
        if passed and isinstance(verdict, bool):
            passed = verdict  # graded once, by the verifier
        elif passed:
            passed = await asyncio.to_thread(verify, task, answer)
        record = record_from_audit(
            method.name,
            task_id=task.id,
            domain=task.domain,
            bin=task.bin,
            audit=audit,
            passed=bool(passed),
            order=order,
            position=position,
        )
        # honest time: compute seconds recorded per call, also for replayed calls
        record = dataclasses.replace(
            record,
            seconds_auction=meter.seconds("auction"),
            seconds_execution=meter.seconds("execute"),
        )
        return {
            "record": record.to_dict(),
            "audit": audit,
            "answer": answer,
            "calls": len(meter.calls),
            "new_calls": meter.new,
            "wall_seconds": wall,
        }


def _is_timeout(error: str | None) -> bool:
    return bool(error) and "timeout" in str(error).lower()


def _audit_timeout(audit: Mapping[str, Any]) -> str | None:
    """A timeout anywhere in an auction (a dropped bid or vote, the execution), if any.

    A timed-out call changes the auction (an agent drops out), and whether it times
    out depends on the machine's load; such an auction is retried, never recorded.
    """
    for e in audit.get("events") or []:
        if _is_timeout(e.get("detail")):
            return f"{e.get('kind')} {e.get('agent')}: {e.get('detail')}"
    for v in audit.get("dropped_votes") or []:
        if _is_timeout(v.get("error")):
            return f"vote by {v.get('juror')}: {v.get('error')}"
    error = (audit.get("execution") or {}).get("error")
    return f"execution: {error}" if _is_timeout(error) else None


def _weights_for(method: Method, fitted: Mapping[str, Any]) -> dict[str, Any]:
    """The method's weights. Self-jury gives every juror the fitted jury's whole weight.

    With the fitted weights as they are, only the jurors the fit heeded vote; under a
    self-jury that meant only the largest agent's own bid got a vote, so it won every
    task and the row measured nothing. Equal weights per juror make each bid judged
    by its own bidder with the same weight: self-evaluation, as the paper's ablation.
    """
    from sale_graph.scoring import Weights

    base = dict(fitted) if method.weights == "fitted" else Weights().to_dict()
    for term in method.zero:
        base[term] = 0.0
    if method.jury == "self" and isinstance(base.get("jury"), Mapping) and base["jury"]:
        total = float(sum(base["jury"].values()))
        base["jury"] = {j: total for j in base["jury"]}
    return base


def _rebuild_memory(
    memory: Any, rows: Sequence[Mapping[str, Any]], seeds: Sequence[Mapping[str, Any]] = ()
) -> None:
    """Make the store hold exactly the seeds and the stored auctions of completed positions.

    A run killed between the memory write and the result write leaves one auction
    too many; replaying the stored audits (the same upsert the graph does, with the
    verified outcome) restores the store the next task must see.
    """
    from sale_graph.audit import memory_bids

    memory.clear()
    for seed in seeds:
        memory.write(seed["auction_id"], seed["task"], seed["bids"], seed["winner"],
                     outcome={"passed": seed["passed"], "source": "training split"})
    for row in rows:
        audit = row["audit"]
        if audit.get("memory", {}).get("write") == "ok" and audit.get("winner"):
            verdict = (audit.get("outcome") or {}).get("passed")
            outcome = {"passed": verdict, "source": "verifier"} if isinstance(
                verdict, bool) else None
            memory.write(audit["auction_id"], audit["task"], memory_bids(audit), audit["winner"],
                         outcome=outcome)
