"""Opening an auction: validate everything that can be validated before paying a model.

The task, the pool, the weights and the memory are checked here, so a bad
request fails before the first bid; then the auction goes the way ``Context.auction``
says: the paper's full auction (every agent bids at once) or the staged one
(cheapest first, ``staged``).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any, Literal

from langgraph.config import get_config
from langgraph.runtime import Runtime
from langgraph.types import Command, Overwrite, Send

from sale_graph.approval import require_checkpointer
from sale_graph.context import Context
from sale_graph.errors import InvalidTaskError
from sale_graph.runtime import run_context
from sale_graph.seeds import SEED_PREFIX
from sale_graph.state import REDUCED, AuctionState, BidRequest

_AUCTION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def validate_task(task: Any, max_chars: int) -> str:
    """Reject empty, whitespace-only, non-string and oversized tasks before any model runs."""
    if task is None:
        raise InvalidTaskError(
            "no task: the auction's input is {'task': str} (a parent graph needs a 'task' "
            "key in its state, or calls the auction from a node with one)"
        )
    if not isinstance(task, str):
        raise InvalidTaskError(f"task must be a string, got {type(task).__name__}")
    try:
        task.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate would fail only at the memory write
        raise InvalidTaskError(
            f"task is not valid Unicode text (character {exc.start}: {task[exc.start]!r})"
        ) from exc
    text = task.strip()
    if not text:
        raise InvalidTaskError("task is empty: give the auction something to do")
    if len(text) > max_chars:
        raise InvalidTaskError(
            f"task is {len(text)} characters long; the limit is {max_chars} "
            "(Context.max_task_chars)"
        )
    return text


def fresh_run(state: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Updates that clear what a previous run on this thread left, beside ``update``.

    Studio's second message or a redelivered job starts from none of it. Reduced
    channels are overwritten (their reducer would add); only channels that hold
    something are written, so a new thread's checkpoints carry no empty writes.
    """
    return {k: Overwrite(type(v)()) if k in REDUCED else None
            for k, v in state.items()
            if k not in update and v is not None and not (k in REDUCED and not v)}


def auction_id_for(state: Mapping[str, Any]) -> str:
    """The caller's idempotency key if it gave one (validated), else a fresh id."""
    given = state.get("auction_id")
    if given is None:
        return uuid.uuid4().hex
    if not isinstance(given, str) or not _AUCTION_ID.fullmatch(given):
        raise InvalidTaskError(
            f"auction_id {given!r} is invalid: 1-128 characters of letters, digits, "
            "'.', '_', ':' or '-'"
        )
    if given.startswith(SEED_PREFIX):  # seeding again would replace that record
        raise InvalidTaskError(
            f"auction_id {given!r}: ids starting with {SEED_PREFIX!r} are kept for memory seeds"
        )
    return given


def bid_sends(task: str, agents: Any) -> list[Send]:
    """The paper's step 1: every agent bids, in parallel."""
    return [Send("bid", BidRequest(task=task, agent=a.name, round=0)) for a in agents]


async def open_auction(
    state: AuctionState, runtime: Runtime[Context], bound: Context | None
) -> Command[Literal["bid", "estimate"]]:
    """Validate everything that can be validated before paying for a model call."""
    ctx = run_context(runtime, bound)
    if ctx.approval:  # a paused run without a checkpointer could never be resumed
        require_checkpointer(get_config())
    task = validate_task(state.get("task"), ctx.max_task_chars)
    agents = await asyncio.to_thread(ctx.resolved_agents)
    weights = await asyncio.to_thread(ctx.resolved_weights)
    mode = await asyncio.to_thread(ctx.resolved_auction)
    if ctx.refine or ctx.remember or mode == "staged" or weights.memory:
        memory = await asyncio.to_thread(ctx.resolved_memory)
        await asyncio.to_thread(memory.ping)
    update: dict[str, Any] = {
        "task": task,
        "auction_id": auction_id_for(state),
        "started": time.time(),
        "round": 0,
        "mode": mode,
        "weights": weights.to_dict(),
        # resolved once (a weights file is read here, not in every later node)
        "execute_plan": await asyncio.to_thread(ctx.resolved_execute_plan),
        # decided when the auction opens: a resume sent without approval in its context
        # must not skip the decision the paused run is waiting for
        "approval_required": bool(ctx.approval),
    }
    if mode == "staged":
        policy = await asyncio.to_thread(ctx.resolved_staged)
        update["staged_policy"] = policy.to_dict()
    update.update(fresh_run(state, update))
    if mode == "staged" or weights.memory:
        return Command(update=update, goto="estimate")
    return Command(update=update, goto=bid_sends(task, agents))
