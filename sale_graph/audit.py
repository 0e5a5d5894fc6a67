"""The audit record of one auction: every number behind the decision.

Built once, at the end, from the graph state. It lists every bid with its
tokens, price, cost, entropy, each juror's vote, value and score; who refined
and how that went; the provisional and final winner; what went wrong (dropped
agents and votes, memory trouble); and the tokens, dollars and wall time of the
auction phase versus the execution phase (SALE's overhead figure).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sale_graph.agents import Agent
from sale_graph.approval import rejected
from sale_graph.calls import describe_error
from sale_graph.errors import MemoryUnavailableError
from sale_graph.jury import vote_value
from sale_graph.runtime import auction_weights, run_context
from sale_graph.scoring import Weights

PHASES = ("bid", "jury", "refine", "execute")


def _span(items: Iterable[Mapping[str, Any]]) -> float:
    """Wall time covered by parallel calls: last end minus first start."""
    spans = [(i["started"], i["ended"]) for i in items if i.get("started") and i.get("ended")]
    if not spans:
        return 0.0
    return max(e for _, e in spans) - min(s for s, _ in spans)


def _phase(items: Sequence[Mapping[str, Any]], prices: Mapping[str, float], who: str) -> dict:
    input_tokens = sum(int(i.get("input_tokens") or 0) for i in items)
    output_tokens = sum(int(i.get("tokens", i.get("output_tokens", 0)) or 0) for i in items)
    cost = sum(
        (int(i.get("input_tokens") or 0) + int(i.get("tokens", i.get("output_tokens", 0)) or 0))
        * prices.get(i.get(who, ""), 0.0)
        for i in items
    ) / 1e6
    return {
        "calls": len(items),
        "seconds": round(_span(items), 3),
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "tokens": input_tokens + output_tokens,
        "cost_usd": cost,
    }


def build_audit(
    state: Mapping[str, Any],
    agents: Sequence[Agent],
    *,
    weights: Mapping[str, Any],
    jury_mode: str,
    jury_vote: str = "expected",
    memory_write: str,
    remember_seconds: float = 0.0,
) -> dict[str, Any]:
    """Assemble the audit record from the final state (pure; JSON-able)."""
    prices = {a.name: a.price for a in agents}
    w = Weights.coerce(weights)
    bids = list(state.get("bids") or [])
    votes = list(state.get("votes") or [])
    scores = dict(state.get("scores") or {})
    events = list(state.get("events") or [])
    execution = dict(state.get("execution") or {})
    by_bid: dict[str, dict[str, float | None]] = {}
    digits: dict[str, dict[str, int | None]] = {}
    for v in votes:
        by_bid.setdefault(v["bid_id"], {})[v["juror"]] = vote_value(v, jury_vote)
        digits.setdefault(v["bid_id"], {})[v["juror"]] = v.get("score")

    bid_rows = []
    for b in sorted(bids, key=lambda b: (b["round"], prices.get(b["agent"], 0.0), b["agent"])):
        s = scores.get(b["id"], {})
        bid_rows.append({
            "id": b["id"], "agent": b["agent"], "round": b["round"], "refined": b["round"] == 1,
            "price": b["price"], "tokens": b["tokens"], "input_tokens": b.get("input_tokens", 0),
            "entropy": b.get("entropy"), "entropy_method": b.get("entropy_method"),
            "votes": by_bid.get(b["id"], {}), "vote_digits": digits.get(b["id"], {}),
            "jury_mean": s.get("jury_mean"),
            "cost": s.get("cost"), "entropy_term": s.get("entropy_term"),
            "jury_term": s.get("jury_term"), "value": s.get("value"), "score": s.get("score"),
            "retrieved_pairs": b.get("retrieved"), "direct": bool(b.get("direct")),
            "seconds": round(b["ended"] - b["started"], 3), "strategy": b["strategy"],
        })

    round0 = [b for b in bids if b["round"] == 0]
    round1 = [b for b in bids if b["round"] == 1]
    ids0 = {b["id"] for b in round0}
    votes0 = [v for v in votes if v["bid_id"] in ids0]
    votes1 = [v for v in votes if v["bid_id"] not in ids0]
    retrieve = state.get("retrieved") or {}
    refine_items: list[Mapping[str, Any]] = [*round1, *votes1]
    if retrieve.get("started"):
        refine_items.append(
            {"started": retrieve["started"], "ended": retrieve["ended"], "agent": ""}
        )

    phases = {
        "bid": _phase(round0, prices, "agent"),
        "jury": _phase(votes0, prices, "juror"),
        "refine": {
            **_phase([*round1, *votes1], prices, "agent"),
            "seconds": round(_span(refine_items), 3),
        },
    }
    # what each juror's round-0 votes cost: the weight fit weighs a juror against its price
    phases["jury"]["by_juror"] = {
        j: _phase([v for v in votes0 if v["juror"] == j], prices, "juror")["cost_usd"]
        for j in sorted({v["juror"] for v in votes0})
    }
    # refine votes are priced by juror, refined bids by bidder
    phases["refine"]["cost_usd"] = (
        _phase(round1, prices, "agent")["cost_usd"] + _phase(votes1, prices, "juror")["cost_usd"]
    )
    exec_tokens_in = int(execution.get("input_tokens") or 0)
    exec_tokens_out = int(execution.get("output_tokens") or 0)
    phases["execute"] = {
        "calls": 1 if execution else 0,
        "seconds": round(float(execution.get("seconds") or 0.0), 3),
        "input_tokens": exec_tokens_in,
        "output_tokens": exec_tokens_out,
        "tokens": exec_tokens_in + exec_tokens_out,
        "cost_usd": (exec_tokens_in + exec_tokens_out)
        * prices.get(execution.get("agent", ""), 0.0) / 1e6,
        "tokens_estimated": bool(execution.get("tokens_estimated")),
    }

    started = float(state.get("started") or 0.0)
    exec_started = float(execution.get("started") or 0.0)
    auction_seconds = (exec_started - started) if exec_started and started else 0.0
    auction_tokens = sum(phases[p]["tokens"] for p in ("bid", "jury", "refine"))
    auction_cost = sum(phases[p]["cost_usd"] for p in ("bid", "jury", "refine"))
    all_tokens = auction_tokens + phases["execute"]["tokens"]
    all_seconds = auction_seconds + phases["execute"]["seconds"]

    provisional = state.get("provisional_winner")
    winning = state.get("winning_bid")
    by_id = {b["id"]: b for b in bids}
    return {
        "auction_id": state.get("auction_id"),
        "task": state.get("task"),
        "mode": state.get("mode") or "full",
        "stop": state.get("stop"),
        "offered": list(state.get("offered") or []),
        "assessments": list(state.get("assessments") or []),
        "estimates": dict(state.get("estimates") or {}),
        "estimated_from": {k: v for k, v in (state.get("estimated") or {}).items()
                           if k in ("count", "ids", "prior")},
        "outcome": state.get("outcome"),
        "weights": dict(weights),
        "jury_mode": jury_mode,
        "jury_vote": jury_vote,
        "unheeded_jurors": sorted(a.name for a in agents if not w.heeds(a.name)),
        "bids": bid_rows,
        "provisional_winner": by_id[provisional]["agent"] if provisional in by_id else None,
        "winner": by_id[winning]["agent"] if winning in by_id and not rejected(state) else None,
        "winning_bid": winning,
        "refined_won": bool(winning in by_id and by_id[winning]["round"] == 1),
        "refiners": list(state.get("refiners") or []),
        "dropped_agents": [e for e in events if e.get("kind") in ("bid_failed",)],
        "dropped_votes": [
            {"bid_id": v["bid_id"], "juror": v["juror"], "error": v.get("error"),
             "raw": v.get("raw")}
            for v in votes if v.get("score") is None
        ],
        "events": events,
        "approval": state.get("approval"),
        "memory": {
            "retrieved_auctions": retrieve.get("count", 0),
            "retrieved_ids": retrieve.get("ids", []),
            "skipped_damaged": retrieve.get("skipped", []),
            "write": memory_write,
            "write_seconds": round(remember_seconds, 3),
        },
        "execution": {
            "agent": execution.get("agent"), "error": execution.get("error"),
            "with_plan": execution.get("with_plan"),
            **({"raw_answer": execution["raw_answer"]} if execution.get("raw_answer") else {}),
            **({"details": execution["details"]} if execution.get("details") else {}),
        },
        "phases": phases,
        "totals": {
            "auction_seconds": round(auction_seconds, 3),
            "execution_seconds": phases["execute"]["seconds"],
            "auction_tokens": auction_tokens,
            "execution_tokens": phases["execute"]["tokens"],
            "auction_cost_usd": auction_cost,
            "execution_cost_usd": phases["execute"]["cost_usd"],
            "total_cost_usd": auction_cost + phases["execute"]["cost_usd"],
            "overhead_token_share": auction_tokens / all_tokens if all_tokens else 0.0,
            "overhead_time_share": auction_seconds / all_seconds if all_seconds else 0.0,
        },
    }


def memory_bids(audit: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The bids as the auction memory stores them: winner labelled, everyone else lost.

    Memory keeps one bid per agent and round. A plan added by a state edit at the
    approval pause stands there for the bid of its agent and round that it replaced
    when it won (the audit lists both); otherwise the agent's first bid is kept.
    """
    kept: dict[tuple[str, int], Mapping[str, Any]] = {}
    for b in audit["bids"]:
        key = (b["agent"], b["round"])
        if key not in kept or b["id"] == audit["winning_bid"]:
            kept[key] = b
    return [
        {
            "agent": b["agent"], "round": b["round"], "strategy": b["strategy"],
            "score": b["score"], "label": "win" if b["id"] == audit["winning_bid"] else "lose",
            "price": b["price"], **({"direct": True} if b.get("direct") else {}),
        }
        for b in kept.values()
    ]


async def remember(state: Mapping[str, Any], runtime: Any, bound: Any) -> dict[str, Any]:
    """Graph node, step 7: the audit record and one idempotent memory write.

    The verified outcome, if any, goes on the same record in the same write.
    """
    ctx = run_context(runtime, bound)
    agents = await asyncio.to_thread(ctx.resolved_agents)
    weights = (await auction_weights(state, ctx)).to_dict()
    audit = build_audit(state, agents, weights=weights, jury_mode=ctx.jury,
                        jury_vote=ctx.jury_vote, memory_write="pending")
    status = "disabled"
    started = time.time()
    if rejected(state):
        status = "skipped: rejected before execution"
    elif ctx.remember:
        status = await _write_memory(ctx, state, audit)
    audit["memory"]["write"] = status
    audit["memory"]["write_seconds"] = round(time.time() - started, 3)
    if status.startswith("failed"):
        audit["events"].append({"kind": "memory_write_failed", "agent": None,
                                "detail": status})
    # AuctionOutput, and the id cleared: it is this run's, and a later run on the same
    # thread that gives none gets a fresh one
    return {"winner": state.get("winner"), "answer": state.get("answer"), "auction": audit,
            "auction_id": None}


async def _write_memory(ctx: Any, state: Mapping[str, Any], audit: dict[str, Any]) -> str:
    """One upsert keyed by the auction id, retried once; never a partial record."""
    memory = ctx.resolved_memory()
    outcome = state.get("outcome") or {}
    verified = None
    if isinstance(outcome.get("passed"), bool):
        verified = {"passed": outcome["passed"], "score": outcome.get("score"),
                    "detail": outcome.get("detail"), "source": outcome.get("source")}
    last = ""
    for _ in range(2):
        try:
            await asyncio.to_thread(
                memory.write, state["auction_id"], state["task"], memory_bids(audit),
                audit["winner"], state.get("started"), None, verified,
            )
            return "ok"
        except (MemoryUnavailableError, OSError, ValueError) as exc:
            last = describe_error(exc)
        except Exception as exc:  # noqa: BLE001 - reported in the audit, never raised
            last = describe_error(exc)
    return f"failed: {last}"
