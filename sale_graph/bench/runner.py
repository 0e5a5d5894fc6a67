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

Seconds are llama.cpp compute seconds as recorded when a call was first generated
(``generation_seconds``), also for calls replayed from the bank: wall time of a
replay would be meaningless. The pool generates one call at a time, so the sum
over calls is the compute time the work needs on this machine.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import json
import math
import random
import re
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.caches import RETURN_VAL_TYPE, BaseCache

from sale_graph.bench.bank import OutcomeBank
from sale_graph.bench.records import Outcome, Record, dollars
from sale_graph.bench.tasks import BINS, Task

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

BANK_DB = "bank.sqlite"
BANK_EXPORT = "bank.jsonl.gz"
RESULTS_LOG = "results.jsonl"
FIT_LAM = 0.1  # loss = failure + FIT_LAM x normalised cost: the fit's and the routers' tuning
EXPORT_EVERY = 600.0
KNN_K = (3, 5, 10, 20, 50)  # neighbour counts the kNN routers are tuned over


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class BenchConfig:
    """Everything that decides which calls a run makes; stored in the bank, checked on resume."""

    pool: str = "local"
    domains: tuple[str, ...] = ("coding", "reasoning")
    # 180 tasks, 60 train / 120 test: with 36 test tasks one task moved pass@1 by 2.8
    # points and nothing was distinguishable from noise (benchmarks/README.md)
    per_domain: Mapping[str, int] = field(default_factory=lambda: {"coding": 90, "reasoning": 90})
    bins: tuple[str, ...] = BINS
    test_fraction: float = 2 / 3
    orders: int = 5
    seed: int = 0
    max_bid_tokens: int = 160
    max_answer_tokens: int = 512
    coding_rounds: int = 2
    ablations: bool = True
    direct: bool = True  # also every agent answering without a plan (the user's baseline)
    # Generous: a timeout drops an agent from an auction, and on a shared machine
    # that would make results depend on the load rather than on the models.
    call_timeout: float = 1800.0
    execute_timeout: float = 3600.0

    def to_dict(self) -> dict[str, Any]:
        """JSON form (what the bank stores)."""
        d = dataclasses.asdict(self)
        d["domains"] = list(self.domains)
        d["bins"] = list(self.bins)
        d["per_domain"] = dict(self.per_domain)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BenchConfig:
        """Inverse of ``to_dict``."""
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        kw["domains"] = tuple(kw.get("domains", ()))
        kw["bins"] = tuple(kw.get("bins", BINS))
        kw["per_domain"] = dict(kw.get("per_domain") or {})
        return cls(**kw)


# Small enough for CI on two cores: five easy tasks, the two smallest models, one
# order, short plans and answers, one write-and-check round, no ablations.
SMOKE = BenchConfig(
    pool="local-small",
    per_domain={"coding": 3, "reasoning": 2},
    bins=("easy",),
    orders=1,
    max_bid_tokens=48,
    max_answer_tokens=192,
    coding_rounds=1,
    ablations=False,
)


@dataclass(frozen=True)
class Method:
    """One SALE variant: its weights, memory, jury and how many task orders it runs."""

    name: str
    orders: int = 1
    weights: str = "fitted"  # "fitted" (min-max MILP on train) or "default"
    refine: bool = True
    jury: str = "all"
    zero: tuple[str, ...] = ()  # weight terms switched off: "cost", "entropy"

    @property
    def slug(self) -> str:
        """Directory-safe name (memory stores live under it)."""
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")


def methods_for(config: BenchConfig) -> list[Method]:
    """SALE variants in the order they run: the main rows first, then the ablations."""
    main = [Method("SALE", orders=config.orders)]
    if not config.ablations:
        return main
    return [
        *main,
        Method("SALE w/o memory", refine=False),
        Method("SALE w/o entropy", zero=("entropy",)),
        Method("SALE w/o price", zero=("cost",)),
        Method("SALE w/o jury", jury="none"),
        Method("SALE self-jury", jury="self"),
        Method("SALE default weights", weights="default"),
    ]


# --------------------------------------------------------------------------- tasks


def _sample(tasks: Sequence[Task], n: int, seed: int, key: Any) -> list[Task]:
    """``n`` tasks spread evenly over the groups of ``key`` (round robin, seeded)."""
    groups: dict[Any, list[Task]] = defaultdict(list)
    for t in tasks:
        groups[key(t)].append(t)
    rng = random.Random(seed)
    queues = []
    for k in sorted(groups):
        members = sorted(groups[k], key=lambda t: t.id)
        rng.shuffle(members)
        queues.append(members)
    chosen: set[str] = set()
    while len(chosen) < n and any(queues):
        for q in queues:
            if q and len(chosen) < n:
                chosen.add(q.pop(0).id)
    return [t for t in tasks if t.id in chosen]


def build_tasks(config: BenchConfig) -> list[Task]:
    """The run's tasks: per domain, ``per_domain[d]`` items even over bins (and generators)."""
    out: list[Task] = []
    for domain in config.domains:
        n = int(config.per_domain.get(domain, 0))
        if n <= 0:
            continue
        if domain == "coding":
            from sale_graph.bench.tasks import humaneval_tasks

            pool = [t for t in humaneval_tasks() if t.bin in config.bins]
            out += _sample(pool, n, config.seed, lambda t: t.bin)
        elif domain == "reasoning":
            from sale_graph.bench.tasks import DEFAULT_GENERATORS, reasoning_tasks

            groups = len(config.bins) * len(DEFAULT_GENERATORS)
            per_level = max(1, math.ceil(n / groups))
            pool = [
                t
                for t in reasoning_tasks(per_level=per_level, seed=config.seed)
                if t.bin in config.bins
            ]
            out += _sample(pool, n, config.seed, lambda t: (t.bin, t.payload["generator"]))
        else:
            raise ValueError(f"unknown domain {domain!r}; use coding and/or reasoning")
    return out


# --------------------------------------------------------------------------- the metered bank

_SINK: contextvars.ContextVar[list[dict[str, Any]] | None] = contextvars.ContextVar(
    "bench_sink", default=None
)
_PHASE: contextvars.ContextVar[str] = contextvars.ContextVar("bench_phase", default="auction")


@dataclass
class Meter:
    """The model calls of one job: how many were new, and their recorded compute seconds."""

    calls: list[dict[str, Any]] = field(default_factory=list)

    def seconds(self, phase: str | None = None) -> float:
        """Recorded generation seconds, of one phase or all."""
        # fsum: exact, so the total does not depend on the order calls finished in
        return math.fsum(c["seconds"] for c in self.calls if phase is None or c["phase"] == phase)

    @property
    def new(self) -> int:
        """Calls that really ran a model (the rest were replayed from the bank)."""
        return sum(1 for c in self.calls if not c["hit"])


class CallLedger(BaseCache):
    """The bank, seen through a meter: each call's phase, compute seconds and hit/miss.

    A LangChain cache sees every call of a model that uses it, replayed or not, so
    it is the one place where a replayed call's original compute time is known.
    Calls are attributed to the job whose ``measure()`` block is active (a context
    variable, so concurrent graph nodes of the same job all report to it) and to
    the phase ``_PHASE`` names (``execute`` inside ``metered`` executors).
    """

    def __init__(self, bank: OutcomeBank) -> None:
        """Wrap ``bank``; all storage stays in it."""
        self.bank = bank
        self.hits = 0
        self.misses = 0

    def _note(self, value: RETURN_VAL_TYPE, hit: bool) -> None:
        if hit:
            self.hits += 1
        else:
            self.misses += 1
        sink = _SINK.get()
        if sink is None:
            return
        seconds = 0.0
        for g in value:
            meta = getattr(getattr(g, "message", None), "response_metadata", None) or {}
            seconds += float(meta.get("generation_seconds") or 0.0)
        sink.append({"phase": _PHASE.get(), "seconds": seconds, "hit": hit})

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """Serve a stored call, noting its recorded seconds."""
        value = self.bank.lookup(prompt, llm_string)
        if value is not None:
            self._note(value, hit=True)
        return value

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Store a new call, noting its seconds."""
        self.bank.update(prompt, llm_string, return_val)
        self._note(return_val, hit=False)

    def clear(self, **kwargs: Any) -> None:
        """Forget the stored calls (delegates to the bank)."""
        self.bank.clear(**kwargs)

    @contextmanager
    def measure(self) -> Iterator[Meter]:
        """Collect the calls made inside the block (and in tasks it starts)."""
        meter = Meter()
        token = _SINK.set(meter.calls)
        try:
            yield meter
        finally:
            _SINK.reset(token)


def metered(executor: Any) -> Any:
    """Wrap an executor so the calls it makes count as execution, not auction."""
    from langchain_core.runnables import RunnableConfig, RunnableLambda

    async def run(inputs: dict[str, Any], config: RunnableConfig) -> Any:
        token = _PHASE.set("execute")
        try:
            return await executor.ainvoke(inputs, config)
        finally:
            _PHASE.reset(token)

    return RunnableLambda(run, name=getattr(executor, "name", None) or "executor")


# --------------------------------------------------------------------------- the pool


def _banked_model_class() -> type:
    from sale_graph.local import LlamaCppChatModel
    from sale_graph.model_files import MODELS

    class BankedLlamaChatModel(LlamaCppChatModel):
        """A local model whose bank key names the GGUF by digest, not by path.

        Paths differ between machines (site-packages, cache dirs); the digest does
        not, so a committed bank replays anywhere the same weights are installed.
        """

        @property
        def _identifying_params(self) -> dict[str, Any]:
            params = dict(super()._identifying_params)
            spec = MODELS.get(self.model_name)
            if spec is not None:
                params.pop("model_path", None)
                params["model_sha256"] = spec.sha256
            return params

    return BankedLlamaChatModel


def bank_pool(preset: str, cache: BaseCache, max_seconds: float | None = None) -> list[Any]:
    """The default local pool with every model reading and writing ``cache``.

    ``max_seconds`` replaces the models' compute deadline (not part of the bank key):
    on a shared machine a deadline hit is the load's doing, not the model's.
    """
    from sale_graph.agents import Agent
    from sale_graph.local import default_pool

    cls = _banked_model_class()
    fields = (
        "model_path",
        "model_name",
        "n_ctx",
        "n_threads",
        "temperature",
        "max_tokens",
        "seed",
        "max_seconds",
        "verbose",
    )
    agents = []
    for a in default_pool(preset):
        params = {f: getattr(a.model, f) for f in fields}
        if max_seconds is not None:
            params["max_seconds"] = max_seconds
        model = cls(**params, cache=cache)
        agents.append(
            Agent(name=a.name, model=model, price=a.price, max_concurrency=a.max_concurrency)
        )
    return agents


# --------------------------------------------------------------------------- bank access


def open_bank(run_dir: Path) -> OutcomeBank:
    """The run's working bank, seeded from its export when the database is missing."""
    run_dir.mkdir(parents=True, exist_ok=True)
    db = run_dir / BANK_DB
    export = run_dir / BANK_EXPORT
    fresh = not db.exists()
    bank = OutcomeBank(db)
    if fresh and export.exists():
        bank.import_(export)
    return bank


def stored_config(run_dir: str | Path) -> BenchConfig | None:
    """The configuration a run directory was started with, if any."""
    run_dir = Path(run_dir)
    if not (run_dir / BANK_DB).exists() and not (run_dir / BANK_EXPORT).exists():
        return None
    bank = open_bank(run_dir)
    try:
        stored = bank.get("meta", "config")
    finally:
        bank.close()
    return BenchConfig.from_dict(stored) if stored else None


DERIVED = ("outcome", "direct", "train_audit", "fit", "result")


def prompt_fingerprint() -> str:
    """Digest of every prompt text and prompt constant a run's calls are built from.

    Stored results were graded on answers to these prompts; when one changes they
    are stale, although most model calls (keyed by their own prompts) still hold.
    """
    import hashlib
    import importlib

    parts: dict[str, str] = {}
    for name in (
        "sale_graph.prompts",
        "sale_graph.jury",
        "sale_graph.bench.prompts",
        "sale_graph.bench.reasoning_executor",
        "sale_graph.bench.tasks",
    ):
        module = importlib.import_module(name)
        for key, value in vars(module).items():
            if key.isupper() and isinstance(value, (str, int, float, tuple)):
                parts[f"{name}.{key}"] = repr(value)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def invalidate_stale(bank: OutcomeBank, fingerprint: str) -> bool:
    """Drop the stored results if the prompts changed since they were made (calls stay).

    Recomputing them replays every call whose prompt did not change, so this costs
    little but the calls that really are new. Returns whether anything was dropped.
    """
    stored = (bank.get("meta", "prompts") or {}).get("fingerprint")
    stale = stored != fingerprint and any(bank.records(ns) for ns in DERIVED)
    if stale:
        for ns in DERIVED:
            bank.clear_records(ns)
    bank.put("meta", "prompts", {"fingerprint": fingerprint})
    return stale


class _NoPlan(Exception):
    """Internal: skip the bid of a direct outcome."""


def _direct_key(task_id: str, agent: str) -> str:
    return _outcome_key(task_id, agent) + "|direct"


def _outcome_key(task_id: str, agent: str) -> str:
    return f"{task_id}|{agent}"


def _result_key(method: str, order: int, task_id: str) -> str:
    return f"{method}|{order}|{task_id}"


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
    ) -> dict[str, Any]:
        """One SALE auction on a test task, graded, as a Record plus its audit."""
        from sale_graph.bench.records import record_from_audit
        from sale_graph.bench.tasks import verify

        overrides: dict[str, Any] = {
            "weights": weights,
            "jury": method.jury,
            "refine": method.refine,
            "remember": method.refine,
        }
        if memory_path is not None:
            overrides["memory_path"] = str(memory_path)
        auction_id = f"{method.slug}-o{order}-p{position}"
        out, meter, wall = await self.auction(task, self.context(task, **overrides), auction_id)
        audit = out["auction"]
        answer = out.get("answer") or ""
        passed = not audit["execution"].get("error") and bool(answer.strip())
        if passed:
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
    from sale_graph.scoring import Weights

    base = dict(fitted) if method.weights == "fitted" else Weights().to_dict()
    for term in method.zero:
        base[term] = 0.0
    return base


def _rebuild_memory(memory: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """Make the store hold exactly the stored auctions of the completed positions.

    A run killed between the memory write and the result write leaves one auction
    too many; replaying the stored audits (the same upsert the graph does) restores
    the store the next task must see.
    """
    from sale_graph.audit import memory_bids

    memory.clear()
    for row in rows:
        audit = row["audit"]
        if audit.get("memory", {}).get("write") == "ok" and audit.get("winner"):
            memory.write(audit["auction_id"], audit["task"], memory_bids(audit), audit["winner"])


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
    if stored != config.to_dict():
        diff = sorted(k for k in stored if stored.get(k) != config.to_dict().get(k))
        raise RuntimeError(f"--resume with a different configuration (differs in: {diff})")
    known = [t["id"] for t in (bank.get("meta", "tasks") or {}).get("tasks", [])]
    if known and known != [t.id for t in tasks]:
        raise RuntimeError("the task set changed since this run started (dataset versions?)")


def _split(config: BenchConfig, tasks: list[Task]) -> tuple[list[Task], list[Task]]:
    from sale_graph.bench.tasks import split

    return split(tasks, config.test_fraction, config.seed)


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
    # answering directly; 3. the training auctions; then the same outcomes on the test
    # split. Training first: the fit needs only the training split, so it (and the
    # defaults it decides) is ready a third of the way into a long run.
    await _outcomes(r, progress, train, stored)
    await _train_auctions(r, progress, train, audits)
    await _outcomes(r, progress, test, stored)
    fit = bank.get("fit", "minmax")
    if fit is None:
        try:
            fit = fit_from_bank(bank, "minmax").to_dict()
        except ValueError as exc:
            progress.note(f"no fit, so no SALE yet: {exc}")
            r.maybe_export(force=True)
            return
        bank.put("fit", "minmax", fit)
    progress.note(
        f"fitted weights (min-max, train pass {fit['train_pass_rate']:.0%}): "
        f"{json.dumps(fit['weights'], sort_keys=True)}"
    )
    r.refresh_report()

    # 4. SALE and ablations on the test split
    for method in _schedule(methods):
        m, k = method
        order = orders[k]
        weights = _weights_for(m, fit["weights"])
        keys = [_result_key(m.name, k, t.id) for t in order]
        if all(key in results for key in keys):
            continue
        memory_path = run_dir / "memory" / f"{m.slug}-o{k}" if m.refine else None
        if memory_path is not None:
            from sale_graph.context import Context

            memory = Context(memory_path=str(memory_path)).resolved_memory()
            completed = [results[key] for key in keys if key in results]
            if memory.count() != len(completed):
                await asyncio.to_thread(_rebuild_memory, memory, completed)
        for position, task in enumerate(order):
            key = keys[position]
            if key in results:
                continue
            what = f"{m.name} order {k} #{position} {task.id}"
            args = (task, m, k, position, weights, memory_path)
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
    """SALE's first order, the no-memory row, SALE's other orders, then the ablations."""
    first, *rest = methods
    plan = [(first, 0)]
    plan += [(m, 0) for m in rest if not m.refine]
    plan += [(first, k) for k in range(1, first.orders)]
    plan += [(m, 0) for m in rest if m.refine]
    return plan


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


# --------------------------------------------------------------------------- fit and report


def _pool_meta(bank: OutcomeBank) -> tuple[list[str], dict[str, float]]:
    pool = (bank.get("meta", "pool") or {}).get("agents") or []
    prices = {a["name"]: float(a["price"]) for a in pool}
    return sorted(prices, key=lambda a: (prices[a], a)), prices


def _outcome_table(
    bank: OutcomeBank, task_ids: Sequence[str], agents: Sequence[str]
) -> dict[str, dict[str, Outcome]] | None:
    rows = bank.records("outcome")
    table: dict[str, dict[str, Outcome]] = {}
    for t in task_ids:
        row = {}
        for a in agents:
            d = rows.get(_outcome_key(t, a))
            if d is None:
                return None
            row[a] = Outcome.from_dict(d)
        table[t] = row
    return table


def fit_from_bank(bank: OutcomeBank, objective: str = "minmax", lam: float = FIT_LAM) -> Any:
    """Fit the weights on the training auctions and outcomes stored in ``bank``."""
    from sale_graph.bench.fit import fit_weights, training_bids

    meta = bank.get("meta", "tasks")
    if meta is None:
        raise ValueError(f"{bank.path} holds no benchmark run")
    agents, prices = _pool_meta(bank)
    train_ids = [t["id"] for t in meta["tasks"] if t["split"] == "train"]
    table = _outcome_table(bank, train_ids, agents)
    audits = bank.records("train_audit")
    if table is None or any(t not in audits for t in train_ids):
        raise ValueError("the training outcomes and auctions are incomplete; resume the run first")
    rows = {t: training_bids(audits[t]["audit"], table[t]) for t in train_ids}
    if objective not in ("minmax", "mean"):
        raise ValueError(f"objective must be minmax or mean, got {objective!r}")
    juror_costs = {
        t: dict(((audits[t]["audit"].get("phases") or {}).get("jury") or {}).get("by_juror") or {})
        for t in train_ids
    }
    return fit_weights(
        rows,
        objective="mean" if objective == "mean" else "minmax",
        lam=lam,
        jurors=agents,
        tie_order=agents,
        juror_costs=juror_costs,
    )


def _router_loss(
    routes: Sequence[Any], table: Mapping[str, Mapping[str, Outcome]], scale: float
) -> float:
    """Mean of the fit's loss (failure + FIT_LAM x normalised cost) over routed tasks."""
    losses = []
    for r in routes:
        ran = [table[r.task_id][a] for a in r.tried]
        cost = sum(o.cost for o in ran)
        losses.append((0.0 if table[r.task_id][r.agent].passed else 1.0) + FIT_LAM * cost / scale)
    return sum(losses) / len(losses) if losses else 0.0


def _tune(
    router: Any,
    knobs: Sequence[float],
    train_ids: Sequence[str],
    table: Mapping[str, Mapping[str, Outcome]],
    embeddings: Mapping[str, Any],
    prices: Mapping[str, float],
) -> tuple[int, float]:
    """Pick (k, knob) with the lowest leave-one-out training loss (the fit's loss).

    k is tuned too: the paper's k = 50 assumes a large training set; with fewer
    training tasks than 50 it would average over all of them and ignore the task.
    """
    scale = max((o.cost for t in train_ids for o in table[t].values()), default=0.0) or 1.0
    ks = sorted({k for k in KNN_K if k < len(train_ids)} | {min(50, max(1, len(train_ids) - 1))})
    best = None
    for k in ks:
        for knob in knobs:
            routes = []
            for t in train_ids:
                others = [u for u in train_ids if u != t] or [t]
                routes += router(others, [t], table, embeddings, prices, knob, k=k)
            loss = _router_loss(routes, table, scale)
            if best is None or loss < best[0] - 1e-12:
                best = (loss, k, knob)
    assert best is not None
    return best[1], best[2]


def _baseline_records(
    bank: OutcomeBank,
    train_ids: list[str],
    test_ids: list[str],
    agents: list[str],
    prices: dict[str, float],
    domains: dict[str, str],
    bins: dict[str, str],
) -> tuple[list[Record], dict[str, Any]]:
    import numpy as np

    from sale_graph.bench import routers

    table = _outcome_table(bank, [*train_ids, *test_ids], agents)
    if table is None:
        return [], {}
    stored = {t: bank.get("embedding", t) for t in table}
    if any(v is None for v in stored.values()):
        return [], {}
    emb = {t: np.asarray(v["vector"], dtype=np.float64) for t, v in stored.items() if v}
    c_max = max((o.cost for t in train_ids for o in table[t].values()), default=0.0) or 1.0
    k_wtp, lam = _tune(
        routers.wtp,
        [c_max * f for f in (0.1, 0.3, 1, 3, 10, 100, 1000)],
        train_ids,
        table,
        emb,
        prices,
    )
    k_carrot, mu = _tune(
        routers.carrot, [0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9], train_ids, table, emb, prices
    )
    thresholds = routers.fit_cascade_thresholds(train_ids, table, prices)
    routes = {f"single: {a}": routers.single_agent(test_ids, a) for a in agents}
    routes["random"] = routers.random_router(test_ids, agents, seed=0)
    routes["oracle"] = routers.oracle(test_ids, table, prices)
    routes["WTP"] = routers.wtp(train_ids, test_ids, table, emb, prices, lam, k=k_wtp)
    routes["CARROT"] = routers.carrot(train_ids, test_ids, table, emb, prices, mu, k=k_carrot)
    routes["cascade"] = routers.cascade(test_ids, table, prices)
    routes["cascade (fitted)"] = routers.cascade(test_ids, table, prices, thresholds)
    records = []
    for name, rs in routes.items():
        records += routers.routes_to_records(name, rs, table, domains, bins)
    knobs = {
        "wtp_lambda": lam,
        "wtp_lambda_over_cmax": lam / c_max,
        "carrot_mu": mu,
        "wtp_k": k_wtp,
        "carrot_k": k_carrot,
        "cascade_thresholds": {a: (None if math.isinf(v) else v) for a, v in thresholds.items()},
    }
    return records, knobs


def report_from_bank(
    bank: OutcomeBank, out_dir: str | Path, *, plots: bool = True
) -> dict[str, Path]:
    """Write results.json/.md and the plots from what ``bank`` holds; no model is touched.

    Only complete pieces enter the tables: baselines once every agent has executed
    every task, and each SALE variant's task orders that cover the whole test split.
    """
    from sale_graph.bench.report import write_report

    config = BenchConfig.from_dict(bank.get("meta", "config") or {})
    meta_tasks = (bank.get("meta", "tasks") or {}).get("tasks") or []
    agents, prices = _pool_meta(bank)
    if not meta_tasks or not agents:
        raise ValueError(f"{bank.path} holds no benchmark run")
    train_ids = [t["id"] for t in meta_tasks if t["split"] == "train"]
    test_ids = [t["id"] for t in meta_tasks if t["split"] == "test"]
    domains = {t["id"]: t["domain"] for t in meta_tasks}
    bins = {t["id"]: t["bin"] for t in meta_tasks}

    records, knobs = _baseline_records(bank, train_ids, test_ids, agents, prices, domains, bins)
    results = bank.records("result")
    progress: dict[str, str] = {}
    sale_calls: dict[str, dict[str, int]] = {}
    for m in methods_for(config):
        complete = []
        for k in range(m.orders):
            rows = [results.get(_result_key(m.name, k, t)) for t in test_ids]
            if all(rows):
                complete.append(k)
                records += [Record.from_dict(row["record"]) for row in rows]  # type: ignore[index]
                calls = sale_calls.setdefault(m.name, {"calls": 0, "new_calls": 0})
                for row in rows:
                    calls["calls"] += int(row["calls"])  # type: ignore[index]
                    calls["new_calls"] += int(row["new_calls"])  # type: ignore[index]
        n_done = sum(
            _result_key(m.name, k, t) in results for k in range(m.orders) for t in test_ids
        )
        progress[m.name] = f"{len(complete)}/{m.orders} orders complete ({n_done} auctions)"
    fit = bank.get("fit", "minmax")
    out = Path(out_dir)
    if fit:
        from sale_graph.bench.fit import save_weights

        save_weights(fit["weights"], out / "weights.json")
    meta = {
        "config": config.to_dict(),
        "agents": [{"name": a, "price_usd_per_mtok": prices[a]} for a in agents],
        "tasks": {
            "train": len(train_ids),
            "test": len(test_ids),
            "test_by_domain": dict(Counter(domains[t] for t in test_ids)),
        },
        "fit": fit,
        "router_knobs": knobs,
        "sale_progress": progress,
        "sale_model_calls": sale_calls,
        "bank_calls": len(bank),
        "seconds": "llama.cpp compute seconds recorded at first generation (replayed calls "
        "keep theirs), summed over calls; sandbox time excluded",
    }
    preamble = _preamble(
        config,
        agents,
        prices,
        train_ids,
        test_ids,
        domains,
        fit,
        knobs,
        progress,
        has_baselines=bool(knobs),
        outcomes_done=len(bank.records("outcome")),
    )
    order = [m.name for m in methods_for(config)] + [f"single: {a}" for a in agents[::-1]]
    order += ["random", "oracle", "WTP", "CARROT", "cascade", "cascade (fitted)"]
    return write_report(
        records,
        out,
        largest=agents[-1],
        agents=agents,
        meta=meta,
        plots=plots,
        preamble=preamble,
        method_order=order,
    )


def _preamble(
    config: BenchConfig,
    agents: list[str],
    prices: Mapping[str, float],
    train_ids: list[str],
    test_ids: list[str],
    domains: Mapping[str, str],
    fit: Mapping[str, Any] | None,
    knobs: Mapping[str, Any],
    progress: Mapping[str, str],
    has_baselines: bool,
    outcomes_done: int = 0,
) -> str:
    by_domain = Counter(domains[t] for t in test_ids)
    pool = ", ".join(f"{a} (${prices[a]:.5f}/Mtok)" for a in agents)
    lines = [
        f"Pool: {pool}. Test split: {len(test_ids)} tasks "
        f"({', '.join(f'{n} {d}' for d, n in sorted(by_domain.items()))}); "
        f"{len(train_ids)} training tasks fit the weights and the routers. "
        f"Bins: {', '.join(config.bins)}. Plans <= {config.max_bid_tokens} tokens, "
        f"answers <= {config.max_answer_tokens} tokens per call, coding executor "
        f"<= {config.coding_rounds} write/check rounds.",
        "",
        "- Cost = (input + output tokens) x the agent's price. Every method pays for what "
        "it ran: single agents and routers plan (the agent's own bid) and execute; SALE pays "
        "every bid, vote and refinement plus the winner's execution; a cascade pays every "
        "agent it tried.",
        "- Time shares use llama.cpp compute seconds recorded when each call was first "
        "generated (calls replayed from the outcome bank keep their original seconds), "
        "summed over calls; sandbox runs are not counted.",
    ]
    if fit:
        w = fit["weights"]
        jury = ", ".join(f"{j} {v:.3g}" for j, v in sorted(w["jury"].items()))
        lines.append(
            f"- SALE weights: min-max MILP on the training split (loss = failure + "
            f"{FIT_LAM} x normalised cost): cost {w['cost']:.3g}, entropy {w['entropy']:.3g}, "
            f"jury {{{jury}}}; training pass@1 of the selection "
            f"{100 * fit['train_pass_rate']:.1f}%. Jurors weighted 0 are not asked (the fit "
            "charges each heeded juror its votes' price). Ablations zero one term of these "
            "weights (or change the jury); 'SALE default weights' uses the package defaults."
        )
    if has_baselines:
        lines.append(
            f"- Routers tuned on the training split (leave-one-out, same loss): WTP lambda = "
            f"{knobs['wtp_lambda_over_cmax']:g} x the dearest training execution with "
            f"k = {knobs['wtp_k']} neighbours, CARROT mu = {knobs['carrot_mu']:g} with "
            f"k = {knobs['carrot_k']}; 'cascade' stops when the coding examples pass, "
            "'cascade (fitted)' uses per-agent thresholds fitted for 90% training precision. "
            "Reasoning answers carry no self-check, so cascades always escalate there."
        )
    else:
        total = len(agents) * (len(train_ids) + len(test_ids))
        lines.append(
            f"- Baselines: not yet (every agent must execute every task first; "
            f"{outcomes_done}/{total} done)."
        )
    lines.append(
        f"- SALE runs {config.orders} seeded task order(s) with memory starting empty; "
        "ablations run the first order. Progress: "
        + "; ".join(f"{m}: {p}" for m, p in progress.items())
        + "."
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------- from an export


def report_from_export(
    export: str | Path, out_dir: str | Path, *, plots: bool = True
) -> dict[str, Path]:
    """Rebuild the report from a committed ``bank.jsonl.gz`` (a scratch database, no model)."""
    with tempfile.TemporaryDirectory(prefix="sale-bank-") as tmp:
        bank = OutcomeBank.from_export(export, Path(tmp) / BANK_DB)
        try:
            return report_from_bank(bank, out_dir, plots=plots)
        finally:
            bank.close()
