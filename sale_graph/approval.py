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

The state may be edited at the pause (``update_state``, Studio's "edit state"): the
``award`` node makes the run go on to the decision, the decision checks what the
edit left (a winning bid that exists, by an agent of the pool) and raises
``ApprovalError`` naming the problem before anything is paid for, and the audit
gets a ``state_edited`` event saying what changed.

The per-thread guard is in-process. Across processes, the LangGraph server runs
one run per thread at a time (its ``multitask_strategy`` queues or rejects the rest).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from langgraph.config import get_config
from langgraph.types import interrupt

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
# what the audit reads of every bid: a bid added by a state edit needs them all
_BID_FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": str, "agent": str, "round": int, "strategy": str, "price": (int, float),
    "tokens": int, "started": (int, float), "ended": (int, float),
}


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


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


async def award(state: Mapping[str, Any], runtime: Any, bound: Any) -> dict[str, Any]:
    """Graph node: note the winning bid as the auction chose it, on the way to ``approve``.

    Every route that picks a winner (``score``, ``memory_retrieve``, ``offer``,
    ``assess``) comes here, and this node goes on to ``approve`` by a static edge.
    That edge is why the node exists: LangGraph writes a state edit made at the
    approval pause (``update_state``, Studio's "edit state") as the last node that
    ran and continues along that node's static edges only, and a route's
    ``Command(goto=...)`` is not one, so without it an edit ended the run. The note
    lets ``approve`` tell what an edit changed.
    """
    winning = next(b for b in state["bids"] if b["id"] == state["winning_bid"])
    required = bool(state.get("approval_required", run_context(runtime, bound).approval))
    return {"awarded": _note(state, winning, required)}


def _note(state: Mapping[str, Any], winning: Mapping[str, Any], required: bool) -> dict[str, Any]:
    """What is to be executed, as digests: the yardstick ``edits`` measures a later edit by."""
    return {"bid": winning["id"], "agent": winning["agent"],
            "plan": _digest(winning["strategy"]), "task": _digest(state["task"]),
            "approval": required}


def cleared_for_execution(
    state: Mapping[str, Any], pool: Sequence[str]
) -> tuple[dict[str, Any], list[Event]]:
    """The bid to execute, checked against what was awarded and, if asked for, approved.

    An edit at an executor's pause (applied as ``approve``'s, which goes on to
    ``execute``) may change the task, the plan or the winner. Without approval that is
    the caller's right, and the audit says what changed (``state_edited``). Under
    approval a person decided on something else, or nobody decided (an edit written
    ``as_node="approve"`` skips the pause): :class:`ApprovalError`, before any model
    call, and the thread stays where it is for a corrected edit.
    """
    winning = checked_winner(state, pool)
    noted = state.get("awarded") or {}
    changed = edits(state, winning)
    if noted.get("approval"):
        if not state.get("approval"):
            raise ApprovalError("this auction needs a person's decision and none was taken "
                                "(an edit as 'approve' skips the pause); resume at 'award' "
                                "(update_state(..., as_node='award')) to be asked")
        if changed:
            raise ApprovalError("the state was edited after the decision (" + "; ".join(changed)
                                + "): a person approved something else; edit it back "
                                "(update_state) and resume, or start a new run to decide "
                                "again")
        return winning, []
    if not changed:
        return winning, []
    return winning, [Event(kind="state_edited", agent=winning["agent"],
                           detail="edited at the executor's pause: " + "; ".join(changed))]


def checked_winner(state: Mapping[str, Any], pool: Sequence[str]) -> dict[str, Any]:
    """The bid ``winning_bid`` names, after whatever a state edit at the pause left.

    An edit may name a bid that does not exist, add a bid without the fields the
    audit reads, or give the plan to an agent outside the pool. Refused with
    :class:`ApprovalError` before anything is paid for: the edit is the caller's
    own, so the caller is told (a person asked again could not fix the state), and
    the thread stays paused for a corrected edit.
    """
    fix = "; edit the state again (update_state) and resume"
    task = state.get("task")
    if not isinstance(task, str) or not task.strip():
        raise ApprovalError(f"the task was edited to {_shown(task)}: it must be text{fix}")
    bids = state.get("bids") or []
    for bid in bids:
        if not isinstance(bid, Mapping):
            raise ApprovalError(f"state['bids'] holds {_shown(bid)}, not a bid{fix}")
        wrong = [k for k, kind in _BID_FIELDS.items()
                 if not isinstance(bid.get(k), kind) or isinstance(bid.get(k), bool)]
        if wrong or bid["round"] not in (0, 1):
            raise ApprovalError(
                f"bid {_shown(bid.get('id'))} lacks a valid {', '.join(wrong) or 'round (0 or 1)'}"
                f": a bid added by an edit needs {', '.join(_BID_FIELDS)} (copy a bid and "
                f"change its id, agent and strategy){fix}"
            )
    wanted = state.get("winning_bid")
    winning = next((b for b in bids if b["id"] == wanted), None)
    if winning is None:
        raise ApprovalError(
            f"winning_bid {_shown(wanted)} names no bid of this auction (bids: "
            f"{', '.join(b['id'] for b in bids)}){fix}"
        )
    if winning["agent"] not in pool:
        raise ApprovalError(
            f"winning bid {_shown(wanted)} is by {_shown(winning['agent'])}, which is not in "
            f"the pool ({', '.join(pool)}): only a pool agent can execute it{fix}"
        )
    return dict(winning)


def edits(state: Mapping[str, Any], winning: Mapping[str, Any]) -> list[str]:
    """What a state edit at the pause changed of what ``award`` noted (empty: nothing)."""
    noted = state.get("awarded") or {}
    if not noted:
        return []
    changed = []
    if winning["id"] != noted.get("bid"):
        changed.append(f"winning bid {noted.get('bid')} -> {winning['id']}")
    elif _digest(winning["strategy"]) != noted.get("plan"):
        changed.append(f"plan of {winning['id']} (its votes and score are the old plan's)")
    if _digest(state["task"]) != noted.get("task"):
        changed.append("task (the bids were written for the task as it was)")
    return changed


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


async def approve(state: Mapping[str, Any], runtime: Any, bound: Any) -> dict[str, Any]:
    """Graph node: pass through, or ask a person (``Context.approval``).

    Its edge to ``execute`` is static, so a state edit made while the executor is
    paused (applied as this node's, the last that finished) goes on to the execution;
    a rejection is therefore not a route but a record that ``execute`` honours.
    """
    ctx = run_context(runtime, bound)
    # as the auction opened; an edit at the pause cannot switch the decision off
    noted = (state.get("awarded") or {}).get("approval") is True
    if not (state.get("approval_required", ctx.approval) or noted):
        return {}
    agents = await pool_of(ctx)
    winning = checked_winner(state, sorted(agents))
    request = approval_request(state, winning, agents[winning["agent"]].price,
                               ctx.max_answer_tokens)
    changed = edits(state, winning)
    if changed:
        request["edited"] = changed
    bidders = sorted({b["agent"] for b in state["bids"]} & set(agents))
    decision = ask(request, bidders)
    claim_decision(get_config(), state["auction_id"], decision)
    update: dict[str, Any] = {"approval": audit_record(decision),
                              "awarded": _note(state, winning, True)}  # what was decided
    events = [Event(kind="state_edited", agent=winning["agent"],
                    detail="edited at the approval pause: " + "; ".join(changed))
              ] if changed else []
    if decision["action"] == "reject":
        events.append(Event(kind="rejected", agent=winning["agent"],
                            detail=str(decision.get("reason") or "rejected before execution")))
        update.update(winner=None, answer=None)
    elif decision["action"] != "approve":
        chosen = decision["winner"]
        scores = state.get("scores", {})
        own = [b for b in state["bids"] if b["agent"] == chosen]
        best_own = min(own, key=lambda b: scores.get(b["id"], {}).get("score", float("inf")))
        events.append(Event(kind="winner_overridden", agent=chosen,
                            detail=f"{winning['agent']} -> {chosen} by a human"))
        update["winning_bid"] = best_own["id"]
        update["awarded"] = _note(state, best_own, True)
    return {**update, **({"events": events} if events else {})}


def rejected(state: Mapping[str, Any]) -> bool:
    """Whether a person rejected this auction before execution (nothing is executed)."""
    return (state.get("approval") or {}).get("action") == "reject"


__all__ = [
    "approval_request",
    "approve",
    "ask",
    "audit_record",
    "award",
    "checked_winner",
    "claim_decision",
    "cleared_for_execution",
    "edits",
    "parse_decision",
    "rejected",
    "require_checkpointer",
]
