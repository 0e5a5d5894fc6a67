"""Human approval before execution: the request, the reply, and one decision per thread.

With ``Context(approval=True)`` the auction pauses (``interrupt``) after scoring and
shows a person the winning plan and its expected cost. The reply approves it,
overrides the winner with another bidder, or rejects the auction. Three rules keep
that gate honest:

* the pause needs a checkpointer, checked before any model is paid for: without
  one a paused run could never be resumed;
* a reply that cannot be read (wrong shape, ``None``, an unknown agent, anything
  not JSON) is asked again with the reason, never raised;
* one thread takes one decision: when two resumes race, the first decision read
  wins and the other caller gets :class:`~sale_graph.errors.ApprovalError`
  instead of being told about an outcome that did not happen. The audit's
  ``by`` field is set here, never taken from the reply.

The per-thread guard is in-process. Across processes, the LangGraph server runs
one run per thread at a time (its ``multitask_strategy`` queues or rejects the rest).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from langgraph.config import get_config
from langgraph.types import Command, interrupt

from sale_graph.errors import ApprovalError, SaleError
from sale_graph.runtime import pool_of, run_context
from sale_graph.state import Event

QUESTION = (
    "Execute this plan? Reply {'action': 'approve'}, {'action': 'override', 'winner': AGENT} "
    "or {'action': 'reject', 'reason': TEXT}."
)
ACTIONS = ("approve", "override", "reject")
MAX_REASON_CHARS = 500
_CLAIMS_KEPT = 10_000


def require_checkpointer(config: Mapping[str, Any] | None) -> None:
    """Refuse an approval run that could never be resumed (call before any model call)."""
    configurable = (config or {}).get("configurable") or {}
    if configurable.get("__pregel_checkpointer") is None:
        raise ApprovalError(
            "approval=True pauses the auction for a human, and a paused run needs a "
            "checkpointer to resume: compile with build_graph(...).compile(checkpointer=...) "
            "(the LangGraph server provides one), or set approval=False"
        )


def approval_request(
    state: Mapping[str, Any], winning: Mapping[str, Any], price: float, max_answer_tokens: int
) -> dict[str, Any]:
    """What the person sees: the winning plan, its score, an upper bound on its cost."""
    scores = state.get("scores", {})
    return {
        "question": QUESTION,
        "auction_id": state["auction_id"],
        "task": state["task"],
        "winner": winning["agent"],
        "strategy": winning["strategy"],
        "score": scores.get(winning["id"], {}).get("score"),
        "expected_cost_usd_max": price * (max_answer_tokens + winning["tokens"]
                                          + winning.get("input_tokens", 0)) / 1e6,
        "alternatives": sorted({b["agent"] for b in state["bids"]} - {winning["agent"]}),
    }


def parse_decision(raw: Any, bidders: Sequence[str]) -> dict[str, Any]:
    """Read a resume value: "approve"/"reject" or a mapping with an action.

    Only ``action``, ``winner`` (override) and ``reason`` (reject) are kept, so a
    reply cannot write other fields (such as ``by``) into the audit.
    """
    if isinstance(raw, str):
        raw = {"action": raw}
    if not isinstance(raw, Mapping) or raw.get("action") not in ACTIONS:
        raise SaleError(
            f"approval reply {_shown(raw)} is not understood: resume with "
            "{'action': 'approve'}, {'action': 'override', 'winner': AGENT} or "
            "{'action': 'reject'}"
        )
    action = raw["action"]
    decision: dict[str, Any] = {"action": action}
    if action == "override":
        winner = raw.get("winner")
        if not isinstance(winner, str):
            raise SaleError(
                "an override needs the agent's name: {'action': 'override', 'winner': ...}"
            )
        if winner not in bidders:
            raise SaleError(
                f"cannot override the winner with {_shown(winner)}: it has no bid in this "
                f"auction (bidders: {', '.join(bidders)})"
            )
        decision["winner"] = winner
    reason = raw.get("reason")
    if action == "reject" and reason is not None:
        if not isinstance(reason, str):
            raise SaleError("a rejection's reason must be text")
        decision["reason"] = reason[:MAX_REASON_CHARS]
    return decision


def ask(request: Mapping[str, Any], bidders: Sequence[str]) -> dict[str, Any]:
    """Interrupt until a readable decision comes back; unreadable replies are asked again."""
    problem = None
    while True:
        asked = {**request, "error": problem} if problem else dict(request)
        try:
            return parse_decision(interrupt(asked), bidders)
        except SaleError as exc:
            problem = str(exc)


def audit_record(decision: Mapping[str, Any]) -> dict[str, Any]:
    """The audit's approval entry; ``by`` is always "human" (the reply cannot set it)."""
    return {**decision, "by": "human"}


class _Claims:
    """Which decision each paused auction took, per thread, in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._taken: OrderedDict[tuple[str, str, str], str] = OrderedDict()

    def claim(self, key: tuple[str, str, str], action: str) -> None:
        with self._lock:
            taken = self._taken.get(key)
            if taken is None:
                self._taken[key] = action
                while len(self._taken) > _CLAIMS_KEPT:
                    self._taken.popitem(last=False)
                return
        # Not "this <action> had no effect": a resume replayed from an already decided
        # checkpoint reads the stored reply, not the caller's, so the action seen here
        # may not be what the caller sent.
        raise ApprovalError(
            f"auction {key[2]!r} on thread {key[0]!r} was already decided ({taken}); a "
            "later resume cannot change that decision (start a new run to decide again)"
        )


_CLAIMS = _Claims()


def claim_decision(
    config: Mapping[str, Any] | None, auction_id: str, decision: Mapping[str, Any]
) -> None:
    """Take the thread's one decision, or raise ApprovalError if another resume took it."""
    configurable = (config or {}).get("configurable") or {}
    key = (str(configurable.get("thread_id")), str(configurable.get("checkpoint_ns", "")),
           auction_id)
    _CLAIMS.claim(key, str(decision["action"]))


def _shown(value: Any, limit: int = 200) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = f"<{type(value).__name__}, not JSON>"
    return text if len(text) <= limit else text[:limit] + "..."


async def approve(
    state: Mapping[str, Any], runtime: Any, bound: Any
) -> Command[Literal["execute", "remember"]]:
    """Graph node: pass through, or ask a person (``Context.approval``)."""
    ctx = run_context(runtime, bound)
    if not state.get("approval_required", ctx.approval):  # as the auction opened
        return Command(goto="execute")
    winning = next(b for b in state["bids"] if b["id"] == state["winning_bid"])
    agents = await pool_of(ctx)
    request = approval_request(state, winning, agents[winning["agent"]].price,
                               ctx.max_answer_tokens)
    decision = ask(request, sorted({b["agent"] for b in state["bids"]}))
    claim_decision(get_config(), state["auction_id"], decision)
    record = audit_record(decision)
    if decision["action"] == "approve":
        return Command(update={"approval": record}, goto="execute")
    if decision["action"] == "reject":
        event = Event(kind="rejected", agent=winning["agent"],
                      detail=str(decision.get("reason") or "rejected before execution"))
        return Command(update={"approval": record, "events": [event],
                               "winner": None, "answer": None}, goto="remember")
    chosen = decision["winner"]
    scores = state.get("scores", {})
    own = [b for b in state["bids"] if b["agent"] == chosen]
    best_own = min(own, key=lambda b: scores.get(b["id"], {}).get("score", float("inf")))
    event = Event(kind="winner_overridden", agent=chosen,
                  detail=f"{winning['agent']} -> {chosen} by a human")
    return Command(update={"approval": record, "winning_bid": best_own["id"],
                           "events": [event]}, goto="execute")


__all__ = [
    "approve",
    "approval_request",
    "ask",
    "audit_record",
    "claim_decision",
    "parse_decision",
    "require_checkpointer",
]
