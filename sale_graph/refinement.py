"""Refinement: cheaper losers get a second chance, taught by the auction memory.

Only agents priced below the provisional winner refine (SALE.md step 4), so an
auction that a cheap agent already won costs nothing extra. Each refiner sees
(losing, winning) plan pairs from the most similar past auctions, at least one
with its own losing plan where memory holds one, and writes a refined bid.

Beyond the paper, ``Context.refine_from="outcomes"`` teaches from what *worked*
rather than from what the jury liked: pairs are (a plan that failed, a plan that
passed) on similar past tasks, from verified outcomes (``outcomes``); where memory
holds no nearby verified success, nobody refines, so nothing is paid to refine from
noise. On the local pool, refinement from votes changed the winner in 12 of 180
auctions, every time to an agent that then failed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from langgraph.types import Command, Send

from sale_graph.agents import Agent
from sale_graph.bidding import write_bid
from sale_graph.calls import describe_error
from sale_graph.prompts import refine_messages
from sale_graph.runtime import pool_of, run_context
from sale_graph.state import BidRequest, Event


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


def outcome_pairs(past_auctions: Sequence[Any], agent: str, max_pairs: int) -> list[dict]:
    """Up to ``max_pairs`` (failed plan, passed plan) pairs from verified past auctions.

    The executed plan of each verified auction is its winning bid; a passed one is a
    positive example, a failed one a negative. The refiner's own failures come first.
    Without a verified success there is nothing to learn from: no pairs.
    """
    passed: list[Any] = []
    failed: list[Any] = []
    for past in past_auctions:
        outcome = getattr(past, "outcome", None)
        if not outcome or past.similarity is None:
            continue
        plan = next((b for b in past.bids if b.get("label") == "win"), None)
        if not plan or not str(plan.get("strategy") or "").strip():
            continue  # answered directly: no plan to learn from
        (passed if outcome.get("passed") else failed).append((past, plan))
    if not passed or not failed:
        return []
    failed.sort(key=lambda pb: (pb[1].get("agent") != agent, -float(pb[0].similarity)))
    passed.sort(key=lambda pb: -float(pb[0].similarity))
    pairs = []
    for (bad_past, bad), (good_past, good) in zip(failed, passed, strict=False):
        pair = _pair(good_past, bad, good)
        pair["similarity"] = float(min(bad_past.similarity, good_past.similarity))
        pair["task"] = good_past.task
        pairs.append(pair)
    return pairs[:max_pairs]


async def memory_retrieve(
    state: Mapping[str, Any], runtime: Any, bound: Any
) -> Command[Literal["refine", "award"]]:
    """Graph node, step 4a: fetch the k most similar past auctions; pairs for each refiner."""
    ctx = run_context(runtime, bound)
    started = time.time()
    verified = ctx.refine_from == "outcomes"
    try:
        past = await asyncio.to_thread(
            ctx.resolved_memory().similar, state["task"], ctx.k, verified=verified
        )
    except Exception as exc:  # noqa: BLE001 - no memory means no refinement, not no auction
        event = Event(kind="memory_retrieve_failed", agent=None,
                      detail=f"refinement skipped: {describe_error(exc)}")
        return Command(
            update={"events": [event], "winning_bid": state["provisional_winner"],
                    "stop": "full auction: best score (memory unavailable)",
                    "retrieved": {"count": 0, "started": started, "ended": time.time()}},
            goto="award",
        )
    retrieved: dict[str, Any] = {
        "count": len(past), "ids": [p.auction_id for p in past],
        "started": started, "ended": time.time(), "from": ctx.refine_from,
        "skipped": list(getattr(past, "skipped", [])),  # damaged records, left out
    }
    own = {b["agent"]: b["strategy"] for b in state["bids"] if b["round"] == 0}
    sends = []
    for name in state.get("refiners", []):
        if verified:
            pairs = outcome_pairs(past, name, ctx.max_pairs)
        else:
            candidates = list(past)
            if not any(_lost_in(p, name) for p in past):
                # the paper wants a refiner to see one of its own losing plans: look
                # past the top-k for the most similar auction this agent lost
                candidates += await _own_auctions(ctx, state["task"], name, retrieved["ids"])
            pairs = contrastive_pairs(candidates, name, ctx.max_pairs)
        if pairs:
            sends.append(Send("refine", BidRequest(task=state["task"], agent=name, round=1,
                                                   pairs=pairs, own_bid=own[name])))
    update: dict[str, Any] = {"retrieved": retrieved, "round": 1}
    if not sends:
        why = ("no nearby verified (failed, passed) plans" if verified
               else "no past auctions with (losing, winning) pairs")
        update["winning_bid"] = state["provisional_winner"]
        update["stop"] = "full auction: best score (nobody refined)"
        update["events"] = [Event(kind="refinement_skipped", agent=None, detail=why)]
        return Command(update=update, goto="award")
    return Command(update=update, goto=sends)


async def refine(request: BidRequest, runtime: Any, bound: Any) -> dict[str, Any]:
    """Graph node, step 4b: a cheaper loser rewrites its bid after studying past pairs."""
    ctx = run_context(runtime, bound)
    agent = (await pool_of(ctx))[request["agent"]]
    messages = refine_messages(agent.name, request["task"], request["own_bid"],
                               request["pairs"])
    try:
        new = await write_bid(agent, messages, round_=1, max_tokens=ctx.max_bid_tokens,
                              timeout=ctx.call_timeout)
    except Exception as exc:  # noqa: BLE001
        return {"events": [Event(kind="refine_failed", agent=agent.name,
                                 detail=describe_error(exc))]}
    new["retrieved"] = len(request["pairs"])
    return {"bids": [new]}


def _lost_in(past: Any, agent: str) -> bool:
    return any(b.get("agent") == agent and b.get("label") == "lose" for b in past.bids)


async def _own_auctions(ctx: Any, task: str, agent: str, seen: list[str]) -> list[Any]:
    """Most similar past auctions the agent bid in and lost, beyond the top-k."""
    try:
        found = await asyncio.to_thread(
            ctx.resolved_memory().similar, task, ctx.k, agent=agent, exclude=seen
        )
    except Exception:  # noqa: BLE001 - optional extra context; the top-k is enough to refine
        return []
    return [p for p in found if _lost_in(p, agent)][:1]
