"""Bid scoring: S = C - V, lower wins (SALE.md, "Score").

* cost   C = w_c * price * |s|                       (price in $/Mtok, |s| bid tokens)
* value  V = w_h * H(s) + sum_j w_j * gamma_j(s)      (H mean token entropy, gamma_j in 0..5)
           + w_m * p_success(agent)                  (beyond the paper: memory's verified
                                                       success estimate, ``outcomes``; w_m = 0
                                                       by default, which is the paper's score)

Default weights are uncalibrated but chosen so that each term matters on the
default local pool: the largest local agent's 150-token bid costs ~2.6 price x
tokens units, so w_c = 0.5 makes its cost premium over the smallest agent
~1.2, which the jury term (mean vote, 0..5) can outweigh for a clearly better
plan. Fit real weights on your own workload with ``sale fit`` (min-max MILP).
The ``local`` preset ships weights fitted that way (``Context.resolved_weights``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from langgraph.types import Command

from sale_graph.errors import SaleError
from sale_graph.runtime import auction_weights, pool_of, run_context

DEFAULT_COST_WEIGHT = 0.5
DEFAULT_ENTROPY_WEIGHT = 0.5


@dataclass(frozen=True, kw_only=True)
class Weights:
    """The weight vector w = (w_c, w_h, {w_j}).

    ``jury`` maps juror name -> weight; jurors not named get ``jury_default``
    divided by the number of jurors who voted, so by default the jury term is the
    mean vote (0..5) whatever the pool size.
    """

    cost: float = DEFAULT_COST_WEIGHT
    entropy: float = DEFAULT_ENTROPY_WEIGHT
    jury: Mapping[str, float] = field(default_factory=dict)
    jury_default: float = 1.0
    memory: float = 0.0

    def __post_init__(self) -> None:
        for name in ("cost", "entropy", "jury_default", "memory"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
                value
            ):
                raise SaleError(f"weight {name!r} must be a finite number, got {value!r}")
        if not isinstance(self.jury, Mapping):
            raise SaleError(
                f"weight 'jury' must map juror names to numbers, got {self.jury!r}"
            )
        for juror, value in self.jury.items():
            if not isinstance(juror, str):
                raise SaleError(f"jury weights are keyed by juror name, got {juror!r}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
                value
            ):
                raise SaleError(f"jury weight for {juror!r} must be a finite number, got {value!r}")

    def juror_weight(self, juror: str, n_voters: int) -> float:
        """Weight of one juror's vote; unnamed jurors share jury_default equally."""
        if juror in self.jury:
            return float(self.jury[juror])
        return self.jury_default / max(n_voters, 1)

    def heeds(self, juror: str) -> bool:
        """Whether the juror's vote can move a score; a juror weighted 0 is not asked."""
        return float(self.jury.get(juror, self.jury_default)) != 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy (what ``sale fit`` writes)."""
        data = asdict(self)
        data["jury"] = dict(self.jury)
        return data

    @classmethod
    def coerce(cls, value: Weights | Mapping[str, Any] | str | Path | None) -> Weights:
        """Accept Weights, a dict, a path to a JSON weights file, or None (defaults)."""
        if value is None:
            return cls()
        if isinstance(value, Weights):
            return value
        if isinstance(value, (str, Path)):
            path = Path(value)
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise SaleError(f"cannot read weights file {path}: {exc}") from exc
            if not isinstance(data, Mapping):
                raise SaleError(f"weights file {path} must hold a JSON object")
            try:
                return cls.coerce(data)
            except SaleError as exc:
                raise SaleError(f"weights file {path}: {exc}") from exc
        if isinstance(value, Mapping):
            known = {"cost", "entropy", "jury", "jury_default", "memory"}
            # a weights file may also carry the staged auction's policy (``staged``)
            # and the fitted plan-or-direct choice per agent (``execute_plan``)
            unknown = set(value) - known - {"staged", "execute_plan", "defaults"}
            if unknown:
                raise SaleError(
                    f"unknown weight fields {sorted(unknown)}; expected {sorted(known)}"
                )
            return cls(**{k: value[k] for k in known if k in value})
        raise SaleError(
            f"weights must be Weights, a dict or a JSON path, got {type(value).__name__}"
        )


@dataclass(frozen=True)
class BidScore:
    """The parts of one bid's score, kept for the audit."""

    cost: float
    entropy_term: float
    jury_term: float
    jury_mean: float | None
    value: float
    score: float
    memory_term: float = 0.0


def bid_cost(price: float, tokens: int, weights: Weights) -> float:
    """C = w_c * price * |s|: a long plan predicts a long, costly, risky trajectory."""
    return weights.cost * price * tokens


def bid_value(
    entropy: float | None, votes: Mapping[str, float | None], weights: Weights
) -> BidScore:
    """V = w_h * H + sum_j w_j * gamma_j over the votes that were cast (dropped votes skipped)."""
    cast = {j: v for j, v in votes.items() if v is not None}
    entropy_term = weights.entropy * (entropy or 0.0)
    jury_term = sum(weights.juror_weight(j, len(cast)) * v for j, v in cast.items())
    mean = sum(cast.values()) / len(cast) if cast else None
    value = entropy_term + jury_term
    return BidScore(0.0, entropy_term, jury_term, mean, value, -value)


def score_bid(
    *, price: float, tokens: int, entropy: float | None, votes: Mapping[str, float | None],
    weights: Weights, memory_p: float | None = None,
) -> BidScore:
    """S = C - V for one bid, with its parts (``memory_p``: the agent's success estimate)."""
    cost = bid_cost(price, tokens, weights)
    v = bid_value(entropy, votes, weights)
    memory_term = weights.memory * memory_p if memory_p is not None else 0.0
    value = v.value + memory_term
    return BidScore(cost, v.entropy_term, v.jury_term, v.jury_mean, value, cost - value,
                    memory_term)


def best(scored: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The winning bid: lowest score; ties go to the cheaper agent, then the name.

    Why the tie-break: the market's point is to save money, so an even contest goes
    to the cheaper agent; the name makes the order total (reproducible audits).
    """
    if not scored:
        raise ValueError("no scored bids")
    return min(scored, key=lambda b: (b["score"], b["price"], b["agent"], b["round"]))


async def score(
    state: Mapping[str, Any], runtime: Any, bound: Any
) -> Command[Literal["memory_retrieve", "award"]]:
    """Graph node, steps 2c/3/5: S = C - V for the round's bids; pick the (provisional) winner."""
    from sale_graph.jury import vote_value
    from sale_graph.refinement import eligible_refiners

    ctx = run_context(runtime, bound)
    weights = await auction_weights(state, ctx)
    round_ = state.get("round", 0)
    estimates = state.get("estimates") or {}
    votes: dict[str, dict[str, float | None]] = {}
    for v in state.get("votes", []):
        votes.setdefault(v["bid_id"], {})[v["juror"]] = vote_value(v, ctx.jury_vote)
    scores: dict[str, dict[str, Any]] = {}
    scored: list[dict[str, Any]] = []
    for b in state.get("bids", []):
        if b["round"] != round_:
            continue
        memory_p = (estimates.get(b["agent"]) or {}).get("p") if weights.memory else None
        parts = score_bid(price=b["price"], tokens=b["tokens"], entropy=b.get("entropy"),
                          votes=votes.get(b["id"], {}), weights=weights, memory_p=memory_p)
        scores[b["id"]] = {
            "cost": parts.cost, "entropy_term": parts.entropy_term,
            "jury_term": parts.jury_term, "jury_mean": parts.jury_mean,
            "memory_term": parts.memory_term, "value": parts.value, "score": parts.score,
        }
        scored.append({**b, "score": parts.score})

    if round_ == 0:
        winner = best(scored)
        agents = await pool_of(ctx)
        refiners = eligible_refiners(winner["price"], [b["agent"] for b in scored], agents)
        update = {"scores": scores, "provisional_winner": winner["id"], "refiners": refiners}
        if ctx.refine and refiners:
            return Command(update=update, goto="memory_retrieve")
        return Command(update={**update, "winning_bid": winner["id"],
                               "stop": "full auction: best score"}, goto="award")

    provisional = str(state["provisional_winner"])
    all_scores = {**state.get("scores", {}), **scores}
    winning = provisional
    if scored:
        challenger = best(scored)
        if challenger["score"] < all_scores[provisional]["score"]:
            winning = challenger["id"]
    return Command(update={"scores": scores, "winning_bid": winning,
                           "stop": "full auction: best score after refinement"}, goto="award")
