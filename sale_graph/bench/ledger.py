"""The metered outcome bank: every model call of a run, its phase and its recorded seconds.

The bank (``bank.py``) stores calls; this module sees them as a run does: which job
made each call, whether it was replayed, and how many compute seconds it took when
it first ran. It also builds the bank-backed pool and guards the bank's contents
(its configuration, and results made from prompts that have since changed).
"""

from __future__ import annotations

import contextvars
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.caches import RETURN_VAL_TYPE, BaseCache

from sale_graph.bench.bank import OutcomeBank
from sale_graph.bench.config import BANK_DB, BANK_EXPORT, BenchConfig

__all__ = [
    "CallLedger",
    "DERIVED",
    "Meter",
    "bank_pool",
    "invalidate_stale",
    "metered",
    "open_bank",
    "prompt_fingerprint",
    "stored_config",
]

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
