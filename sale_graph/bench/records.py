"""The benchmark's plain records: what happened, per (agent, task) and per (method, task).

Three shapes, all JSON-able dataclasses:

* ``Outcome``: one agent executing one task (graded). The routers' outcome table
  and the weight fit are built from these.
* ``Bid``: one row of an auction audit (agent, price, bid tokens, entropy, jury
  votes, cost and value terms, score, round). The weight fit reads initial bids.
* ``Record``: one method on one task: who executed, pass/fail, tokens, seconds and
  dollars split into auction and execution. Every metric is computed from these.

Dollar cost of a call = (input + output tokens) x the caller's price per Mtok / 1e6:
the pool is priced per token with no input/output distinction, like the paper's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "Bid",
    "Outcome",
    "Record",
    "bids_from_audit",
    "dollars",
    "record_from_audit",
]


def dollars(tokens: float, price_per_mtok: float) -> float:
    """Cost of ``tokens`` tokens at ``price_per_mtok`` dollars per million tokens."""
    return float(tokens) * float(price_per_mtok) / 1e6


@dataclass(frozen=True)
class Outcome:
    """Agent ``a`` executed task ``t``: graded result and what it consumed.

    ``confidence`` is the agent's own, ground-truth-free reliability signal (for
    coding: 1.0 if the prompt's examples passed, else 0.0); the cascade reads it.
    """

    passed: bool
    tokens: int
    cost: float
    seconds: float
    confidence: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form (for the bank)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Outcome:
        """Inverse of ``to_dict``."""
        return cls(
            passed=bool(d["passed"]),
            tokens=int(d["tokens"]),
            cost=float(d["cost"]),
            seconds=float(d["seconds"]),
            confidence=None if d.get("confidence") is None else float(d["confidence"]),
        )


@dataclass(frozen=True)
class Bid:
    """One scored bid from an auction audit (``round`` 0 = initial, 1 = refined)."""

    agent: str
    price: float
    tokens: int
    entropy: float | None
    votes: Mapping[str, float] = field(default_factory=dict)
    cost: float | None = None
    value: float | None = None
    score: float | None = None
    round: int = 0

    @property
    def cost_feature(self) -> float:
        """Price x bid length: the paper's cost term before its weight ``w_c``."""
        return float(self.price) * float(self.tokens)


@dataclass(frozen=True)
class Record:
    """One method's result on one task; ``order``/``position`` locate it in a task order."""

    method: str
    task_id: str
    domain: str
    bin: str
    agent: str
    passed: bool
    tokens_auction: int = 0
    tokens_execution: int = 0
    seconds_auction: float = 0.0
    seconds_execution: float = 0.0
    cost_auction: float = 0.0
    cost_execution: float = 0.0
    order: int = 0
    position: int = 0
    tried: tuple[str, ...] = ()

    @property
    def tokens(self) -> int:
        """All tokens the method spent on this task."""
        return self.tokens_auction + self.tokens_execution

    @property
    def seconds(self) -> float:
        """All wall time the method spent on this task."""
        return self.seconds_auction + self.seconds_execution

    @property
    def cost(self) -> float:
        """All dollars the method spent on this task."""
        return self.cost_auction + self.cost_execution

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        d = asdict(self)
        d["tried"] = list(self.tried)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Record:
        """Inverse of ``to_dict``."""
        kw = dict(d)
        kw["tried"] = tuple(kw.get("tried") or ())
        return cls(**kw)


def bids_from_audit(audit: Mapping[str, Any]) -> list[Bid]:
    """Read the bids of an auction audit as ``Bid`` rows.

    Reads ``audit["bids"]`` as ``sale_graph.audit.build_audit`` writes it: ``agent``,
    ``price``, ``tokens``, ``entropy``, ``votes`` ({juror: 0..5 or None}) and
    ``cost``, ``value``, ``score``, ``round``. Dropped (None) votes are left out.
    """
    out = []
    for b in audit.get("bids") or []:
        votes = {str(k): float(v) for k, v in (b.get("votes") or {}).items() if v is not None}
        out.append(
            Bid(
                agent=str(b["agent"]),
                price=float(b["price"]),
                tokens=int(b["tokens"]),
                entropy=None if b.get("entropy") is None else float(b["entropy"]),
                votes=votes,
                cost=None if b.get("cost") is None else float(b["cost"]),
                value=None if b.get("value") is None else float(b["value"]),
                score=None if b.get("score") is None else float(b["score"]),
                round=int(b.get("round", 0)),
            )
        )
    return out


def record_from_audit(
    method: str,
    *,
    task_id: str,
    domain: str,
    bin: str,
    audit: Mapping[str, Any],
    passed: bool,
    order: int = 0,
    position: int = 0,
) -> Record:
    """Turn one auction's audit (``sale_graph.audit.build_audit``) and its grade into a Record.

    Reads ``audit["winner"]`` and ``audit["totals"]``: ``auction_tokens``,
    ``execution_tokens``, ``auction_seconds``, ``execution_seconds``,
    ``auction_cost_usd`` and ``execution_cost_usd`` (auction calls priced per
    calling agent, execution at the winner's price).
    """
    totals = audit["totals"]
    winner = str(audit["winner"])
    return Record(
        method=method,
        task_id=task_id,
        domain=domain,
        bin=bin,
        agent=winner,
        passed=bool(passed),
        tokens_auction=int(totals.get("auction_tokens", 0)),
        tokens_execution=int(totals.get("execution_tokens", 0)),
        seconds_auction=float(totals.get("auction_seconds", 0.0)),
        seconds_execution=float(totals.get("execution_seconds", 0.0)),
        cost_auction=float(totals.get("auction_cost_usd", 0.0)),
        cost_execution=float(totals.get("execution_cost_usd", 0.0)),
        order=order,
        position=position,
        tried=(winner,),
    )
