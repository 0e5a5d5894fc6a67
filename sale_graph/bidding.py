"""Writing a bid: the agent's short strategic plan and what it costs.

The same function writes original bids (round 0) and refined bids (round 1);
the prompt differs, the bookkeeping (tokens, entropy, timing) does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import BaseMessage

from sale_graph.agents import Agent
from sale_graph.calls import call, describe_error
from sale_graph.entropy import message_entropy
from sale_graph.prompts import bid_messages
from sale_graph.runtime import pool_of, run_context
from sale_graph.state import Bid, BidRequest, Event


def bid_id(agent: str, round_: int) -> str:
    """Stable id of an agent's bid in a round ("qwen#0", "qwen#1")."""
    return f"{agent}#{round_}"


class EmptyBidError(ValueError):
    """The model answered with nothing usable as a plan."""


async def write_bid(
    agent: Agent,
    messages: Sequence[BaseMessage],
    *,
    round_: int,
    max_tokens: int,
    timeout: float,
) -> Bid:
    """Ask the agent for a plan; an empty reply is an error (the agent drops out)."""
    reply = await call(agent, messages, timeout=timeout, max_tokens=max_tokens)
    strategy = reply.text.strip()
    if not strategy:
        raise EmptyBidError(f"{agent.name} returned an empty bid")
    entropy, method = message_entropy(reply.metadata)
    return Bid(
        id=bid_id(agent.name, round_),
        agent=agent.name,
        round=round_,
        strategy=strategy,
        price=agent.price,
        tokens=reply.output_tokens,
        input_tokens=reply.input_tokens,
        entropy=entropy,
        entropy_method=method,
        started=reply.started,
        ended=reply.ended,
    )


async def bid(request: BidRequest, runtime: Any, bound: Any) -> dict[str, Any]:
    """Graph node, step 1: one agent writes its plan; a failure drops it from the auction."""
    ctx = run_context(runtime, bound)
    agent = (await pool_of(ctx))[request["agent"]]
    try:
        new = await write_bid(
            agent, bid_messages(agent.name, request["task"]), round_=0,
            max_tokens=ctx.max_bid_tokens, timeout=ctx.call_timeout,
        )
    except Exception as exc:  # noqa: BLE001 - a failing agent drops out, the auction goes on
        return {"events": [Event(kind="bid_failed", agent=agent.name,
                                 detail=describe_error(exc))]}
    return {"bids": [new]}
