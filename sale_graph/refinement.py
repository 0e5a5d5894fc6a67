"""Refinement: cheaper losers get a second chance, taught by the auction memory.

Only agents priced below the provisional winner refine (SALE.md step 4), so an
auction that a cheap agent already won costs nothing extra. Each refiner sees
(losing, winning) plan pairs from the most similar past auctions, at least one
with its own losing plan where memory holds one, and writes a refined bid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sale_graph.agents import Agent


def eligible_refiners(
    winner_price: float, bidders: Sequence[str], agents: Mapping[str, Agent]
) -> list[str]:
    """Agents that bid and are strictly cheaper than the provisional winner."""
    return [name for name in bidders if agents[name].price < winner_price]


def _pair(past: Any, loser: Mapping[str, Any], winner: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "auction_id": past.auction_id,
        "task": past.task,
        "similarity": float(past.similarity),
        "loser": loser["strategy"],
        "loser_agent": loser["agent"],
        "winner": winner["strategy"],
        "winner_agent": winner["agent"],
    }


def contrastive_pairs(past_auctions: Sequence[Any], agent: str, max_pairs: int) -> list[dict]:
    """Pick up to ``max_pairs`` (loser, winner) pairs for one refiner.

    Past auctions come most-similar first. From each we take one pair: the agent's
    own losing plan if it lost there, else the best-scored loser. The most similar
    pair that involves the agent's own plan is always included (the paper insists
    a refiner learns from its own mistakes); the rest are filled by similarity.
    """
    own: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    for past in past_auctions:
        bids = list(past.bids)
        winners = [b for b in bids if b.get("label") == "win"]
        losers = [b for b in bids if b.get("label") == "lose" and b.get("strategy")]
        if not winners or not losers:
            continue
        winner = winners[0]
        mine = [b for b in losers if b.get("agent") == agent]
        if mine:
            loser = min(mine, key=lambda b: b.get("round", 0))
            own.append(_pair(past, loser, winner))
        else:
            loser = min(losers, key=lambda b: _score_key(b.get("score")))
            others.append(_pair(past, loser, winner))
    chosen = own[:1]
    rest = sorted(own[1:] + others, key=lambda p: -p["similarity"])
    chosen += rest[: max(0, max_pairs - len(chosen))]
    return sorted(chosen, key=lambda p: -p["similarity"])


def _score_key(score: Any) -> float:
    return float(score) if isinstance(score, (int, float)) else float("inf")
