"""Writing a bid: the agent's short strategic plan and what it costs.

The same function writes original bids (round 0) and refined bids (round 1);
the prompt differs, the bookkeeping (tokens, entropy, timing) does not.
"""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.messages import BaseMessage

from sale_graph.agents import Agent
from sale_graph.calls import call
from sale_graph.entropy import message_entropy
from sale_graph.state import Bid


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
