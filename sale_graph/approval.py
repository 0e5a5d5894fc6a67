"""Optional human gate before execution: approve the winner, override it, or reject.

With ``Context.approval`` set, the ``approve`` node interrupts the run with the
winning plan and its expected cost; the run resumes with the person's decision.
An unreadable reply is asked again, with the reason, never raised.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from langgraph.types import Command, interrupt

from sale_graph.errors import SaleError
from sale_graph.runtime import pool_of, run_context
from sale_graph.state import Event


async def approve(
    state: Mapping[str, Any], runtime: Any, bound: Any
) -> Command[Literal["execute", "remember"]]:
    """Graph node: pass through, or ask a person (``Context.approval``)."""
    ctx = run_context(runtime, bound)
    if not ctx.approval:
        return Command(goto="execute")
    winning = next(b for b in state["bids"] if b["id"] == state["winning_bid"])
    agents = await pool_of(ctx)
    price = agents[winning["agent"]].price
    scores = state.get("scores", {})
    request = {
        "question": "Execute this plan? Reply {'action': 'approve'}, "
                    "{'action': 'override', 'winner': AGENT} or "
                    "{'action': 'reject', 'reason': TEXT}.",
        "auction_id": state["auction_id"],
        "task": state["task"],
        "winner": winning["agent"],
        "strategy": winning["strategy"],
        "score": scores.get(winning["id"], {}).get("score"),
        "expected_cost_usd_max": price * (ctx.max_answer_tokens + winning["tokens"]
                                          + winning.get("input_tokens", 0)) / 1e6,
        "alternatives": sorted({b["agent"] for b in state["bids"]} - {winning["agent"]}),
    }
    bidders = sorted({b["agent"] for b in state["bids"]})
    problem = None
    while True:  # an unreadable reply is asked again, with the reason, not raised
        asked = {**request, "error": problem} if problem else request
        try:
            decision = decision_of(interrupt(asked), bidders)
            break
        except SaleError as exc:
            problem = str(exc)
    record = {"action": decision["action"], "by": "human", **{
        k: v for k, v in decision.items() if k != "action"}}
    if decision["action"] == "approve":
        return Command(update={"approval": record}, goto="execute")
    if decision["action"] == "reject":
        event = Event(kind="rejected", agent=winning["agent"],
                      detail=str(decision.get("reason") or "rejected before execution"))
        return Command(update={"approval": record, "events": [event],
                               "winner": None, "answer": None}, goto="remember")
    chosen = decision["winner"]
    own = [b for b in state["bids"] if b["agent"] == chosen]
    best_own = min(own, key=lambda b: scores.get(b["id"], {}).get("score", float("inf")))
    event = Event(kind="winner_overridden", agent=chosen,
                  detail=f"{winning['agent']} -> {chosen} by a human")
    return Command(update={"approval": record, "winning_bid": best_own["id"],
                           "events": [event]}, goto="execute")


def decision_of(raw: Any, bidders: list[str]) -> dict[str, Any]:
    """Normalise a resume value: "approve"/"reject" or a dict with an action."""
    if isinstance(raw, str):
        raw = {"action": raw}
    if not isinstance(raw, Mapping) or raw.get("action") not in ("approve", "override", "reject"):
        raise SaleError(
            f"approval reply {raw!r} is not understood: resume with {{'action': 'approve'}}, "
            "{'action': 'override', 'winner': AGENT} or {'action': 'reject'}"
        )
    if raw["action"] == "override" and not isinstance(raw.get("winner"), str):
        raise SaleError("an override needs the agent's name: {'action': 'override', 'winner': ...}")
    if raw["action"] == "override" and raw["winner"] not in bidders:
        raise SaleError(
            f"cannot override the winner with {raw['winner']!r}: it has no bid in this auction "
            f"(bidders: {', '.join(bidders)})"
        )
    return dict(raw)
