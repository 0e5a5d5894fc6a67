"""Verified outcomes: what actually worked, fed back into the next auctions.

The paper's memory stores which plan *won*; a win says what the jury liked, not
what passed. On the local pool refinement from wins changed the winner in 12 of
180 auctions, every time to a failing agent. So the memory also stores what became
of each auction's answer, from a verifier run after execution
(``Context.verifier``) or from feedback that arrives later
(:func:`record_outcome`, ``sale memory feedback``), and retrieval turns the
outcomes of similar past tasks into a success estimate per agent.

The estimate for agent ``a`` over the ``k`` most similar verified auctions that
``a`` executed is a similarity-weighted Beta mean:

    p_a = (strength * prior + sum_i s_i * passed_i) / (strength + sum_i s_i)

with ``s_i`` the cosine similarity (clipped at 0) of past task ``i``. ``n_a`` =
``sum_i s_i`` is its evidence; with none, ``p_a`` is the prior.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Mapping
from typing import Any

from sale_graph.calls import GRAPH_SIGNALS, ainvoke_bounded, as_runnable, describe_error
from sale_graph.runtime import run_context

DEFAULT_PRIOR = 0.4
PRIOR_STRENGTH = 1.0


def success_estimates(
    past: Iterable[Any],
    agents: Iterable[str],
    *,
    prior: float = DEFAULT_PRIOR,
    strength: float = PRIOR_STRENGTH,
) -> dict[str, dict[str, float]]:
    """Per agent: ``{"p", "n", "count"}`` from past auctions with outcomes."""
    sums = {a: [0.0, 0.0, 0] for a in agents}  # weighted passes, weight, count
    for auction in past:
        outcome = getattr(auction, "outcome", None)
        executed = getattr(auction, "winner", None)
        if not outcome or executed not in sums:
            continue
        s = max(0.0, float(getattr(auction, "similarity", None) or 0.0))
        acc = sums[executed]
        acc[0] += s * (1.0 if outcome.get("passed") else 0.0)
        acc[1] += s
        acc[2] += 1
    return {
        a: {
            "p": (strength * prior + w_pass) / (strength + w),
            "n": round(w, 4),
            "count": int(count),
        }
        for a, (w_pass, w, count) in sums.items()
    }


def read_verdict(raw: Any) -> dict[str, Any]:
    """Normalise a verifier's reply: a bool, a 0-1 score, or ``{"passed", "score", "detail"}``."""
    if isinstance(raw, bool):
        return {"passed": raw, "score": None, "detail": ""}
    if isinstance(raw, (int, float)) and math.isfinite(raw) and 0.0 <= raw <= 1.0:
        return {"passed": raw >= 0.5, "score": float(raw), "detail": ""}
    if isinstance(raw, Mapping) and isinstance(raw.get("passed"), bool):
        score = raw.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))
                                  or not math.isfinite(score)):
            raise ValueError(f"verifier score must be a finite number, got {score!r}")
        return {"passed": raw["passed"], "score": None if score is None else float(score),
                "detail": str(raw.get("detail") or "")}
    raise ValueError(
        f"verifier returned {raw!r}: return a bool, a score in [0, 1], or "
        "{'passed': bool, 'score': float, 'detail': str}"
    )


async def verify(
    verifier: Any, *, task: str, answer: str | None, audit: Mapping[str, Any], timeout: float
) -> dict[str, Any]:
    """Run the verifier once; its failure is recorded (``error``), never raised."""
    try:
        runnable = as_runnable(verifier, "verifier")  # a function of {task, answer, audit}
        inputs = {"task": task, "answer": answer or "", "audit": dict(audit)}
        raw = await asyncio.wait_for(
            ainvoke_bounded(runnable, inputs, {"run_name": "verify"}), timeout
        )
        return {**read_verdict(raw), "error": None, "source": "verifier"}
    except GRAPH_SIGNALS:  # a pause for a human: the run stops here and resumes
        raise
    except Exception as exc:  # noqa: BLE001 - a broken verifier must not lose the auction
        return {"passed": None, "score": None, "detail": "", "error": describe_error(exc),
                "source": "verifier"}


async def verify_node(state: Mapping[str, Any], runtime: Any, bound: Any) -> dict[str, Any]:
    """Graph node: check the answer with ``Context.verifier``, if one is set.

    The outcome is stored on the auction's memory record by ``remember``, in the
    same single write.
    """
    ctx = run_context(runtime, bound)
    execution = state.get("execution") or {}
    if ctx.verifier is None or not execution:
        return {}
    if execution.get("error"):  # no answer to judge: the winner failed the task
        detail = f"execution failed: {execution['error']}"
        return {"outcome": {"passed": False, "score": None, "detail": detail[:200],
                            "error": None, "source": "execution"},
                "events": [{"kind": "verifier_skipped", "agent": None,
                            "detail": f"no answer to verify; recorded as failed ({detail})"}]}
    audit_so_far = {"auction_id": state.get("auction_id"), "winner": state.get("winner"),
                    "execution": {k: v for k, v in execution.items() if k != "details"}}
    outcome = await verify(ctx.verifier, task=state["task"], answer=state.get("answer"),
                           audit=audit_so_far, timeout=ctx.call_timeout)
    update: dict[str, Any] = {"outcome": outcome}
    if outcome["error"]:
        update["events"] = [{"kind": "verifier_failed", "agent": None,
                             "detail": outcome["error"]}]
    return update


def record_outcome(
    auction_id: str,
    *,
    passed: bool,
    score: float | None = None,
    detail: str | None = None,
    context: Any = None,
    source: str = "feedback",
) -> Any:
    """Record what became of an auction's answer, known later (a user's thumbs up, a CI run).

    Stored on the auction's own memory record (idempotent; the latest outcome wins);
    an id the memory does not hold raises ``UnknownAuctionError`` and writes nothing.
    ``context`` names the memory (a ``Context``; default: the default memory).
    """
    from sale_graph.context import Context

    ctx = context if context is not None else Context()
    return ctx.resolved_memory().record_outcome(
        auction_id, passed=passed, score=score, detail=detail, source=source
    )
