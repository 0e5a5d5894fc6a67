"""Baselines that SALE is compared with, as pure functions over an outcome table.

Every agent executes every task once (``table[task_id][agent] -> Outcome``); a
router only *chooses*, so all methods are judged on identical executions and
differ only in who they pick. Routers return ``Route``s; ``routes_to_records``
does the accounting (a cascade pays for every agent it tried).

* single agent / largest only: always the same agent.
* random: a uniformly random agent per task (seeded).
* oracle: the cheapest agent that passes (an upper bound; if none passes, the
  cheapest agent, which fails at the lowest cost).
* perfect accept: the cheapest agent that passes, else the *dearest* agent. On a
  table where each cheaper agent passes if its plan or its direct answer does, it is
  the ceiling of any cheapest-first auction that only decides whether to accept a
  cheaper agent (the staged auction's plain assessment), with a free, perfect
  signal; what it leaves to the oracle is the tasks nobody passes.
* WTP (RouterBench): the k = 50 training tasks nearest by cosine similarity of
  embeddings; score_a = lambda * (a's mean success on them) - (a's mean dollar cost
  on them); the highest score wins. ``lambda`` is dollars one would pay per success.
* CARROT: the same kNN estimates p_a (success) and c_a (cost); pick the minimum of
  (1 - mu) * (1 - p_a) + mu * c_a / c_max, where c_max is the largest per-task cost
  in the training table, so both terms lie in [0, 1] and mu in [0, 1] is a trade-off.
* kNN on verified outcomes (no auction): the cheapest agent whose success rate on
  the k most similar training tasks reaches a threshold tau, else the dearest agent;
  what a memory of verified outcomes alone can route, with no bid and no jury.
* cascade (FrugalGPT style): agents from cheapest to dearest; stop at the first
  whose own confidence signal clears its threshold; the last agent always answers.
  Default threshold 0.5 on a 0/1 signal ("the prompt's examples pass");
  ``fit_cascade_thresholds`` instead learns per-agent thresholds on the training
  split (the smallest threshold whose training precision reaches a target).

Ties are broken towards the cheaper agent, then by name, everywhere.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sale_graph.bench.records import Outcome, Record

__all__ = [
    "OutcomeTable",
    "Route",
    "KnnEstimator",
    "by_price",
    "single_agent",
    "largest_only",
    "random_router",
    "oracle",
    "perfect_accept",
    "wtp",
    "carrot",
    "cascade",
    "knn_threshold",
    "fit_cascade_thresholds",
    "routes_to_records",
]

OutcomeTable = Mapping[str, Mapping[str, Outcome]]


@dataclass(frozen=True)
class Route:
    """A router's decision: ``agent`` answers; ``tried`` are all agents that ran."""

    task_id: str
    agent: str
    tried: tuple[str, ...]


def by_price(prices: Mapping[str, float]) -> list[str]:
    """Agents from cheapest to dearest (name breaks price ties)."""
    return sorted(prices, key=lambda a: (prices[a], a))


def single_agent(task_ids: Sequence[str], agent: str) -> list[Route]:
    """Route every task to ``agent``."""
    return [Route(t, agent, (agent,)) for t in task_ids]


def largest_only(task_ids: Sequence[str], prices: Mapping[str, float]) -> list[Route]:
    """Route every task to the dearest agent (the paper's "largest agent alone")."""
    return single_agent(task_ids, by_price(prices)[-1])


def random_router(task_ids: Sequence[str], agents: Sequence[str], seed: int = 0) -> list[Route]:
    """Route each task to a uniformly random agent, reproducible from ``seed``."""
    rng = random.Random(seed)
    pool = sorted(agents)
    out = []
    for t in task_ids:
        a = rng.choice(pool)
        out.append(Route(t, a, (a,)))
    return out


def oracle(
    task_ids: Sequence[str], table: OutcomeTable, prices: Mapping[str, float]
) -> list[Route]:
    """Route to the cheapest agent that passes (by the dollars it spent on the task)."""
    out = []
    for t in task_ids:
        row = table[t]
        ranked = sorted(row, key=lambda a: (row[a].cost, prices.get(a, 0.0), a))
        passing = [a for a in ranked if row[a].passed]
        a = passing[0] if passing else ranked[0]
        out.append(Route(t, a, (a,)))
    return out


def perfect_accept(
    task_ids: Sequence[str], table: OutcomeTable, prices: Mapping[str, float]
) -> list[Route]:
    """Cheapest first, accept the first agent that passes, else the dearest answers."""
    order = by_price(prices)
    out = []
    for t in task_ids:
        ranked = [a for a in order if a in table[t]]
        a = next((a for a in ranked if table[t][a].passed), ranked[-1])
        out.append(Route(t, a, (a,)))
    return out


def perfect_no_loss(
    task_ids: Sequence[str], table: OutcomeTable, prices: Mapping[str, float]
) -> list[Route]:
    """Cheapest first, accept the first agent that loses nothing to the dearest.

    It passes, or the dearest fails the task too: the ceiling of a staged auction
    assessed against the dearest agent, which may also spare the dearest the tasks
    nobody passes (a perfect accept signal still pays the dearest for those).
    """
    order = by_price(prices)
    out = []
    for t in task_ids:
        ranked = [a for a in order if a in table[t]]
        hopeless = not table[t][ranked[-1]].passed
        a = next((a for a in ranked if hopeless or table[t][a].passed), ranked[-1])
        out.append(Route(t, a, (a,)))
    return out


# --------------------------------------------------------------------------- kNN routers


class KnnEstimator:
    """Per-agent success rate and mean dollar cost over the k nearest training tasks."""

    def __init__(
        self,
        train_ids: Sequence[str],
        table: OutcomeTable,
        embeddings: Mapping[str, np.ndarray],
        agents: Sequence[str],
        k: int = 50,
    ) -> None:
        """Index the training tasks' embeddings and their outcome rows."""
        if not train_ids:
            raise ValueError("the kNN routers need at least one training task")
        if k < 1:
            raise ValueError("k must be >= 1")
        self.train_ids = sorted(train_ids)
        self.agents = list(agents)
        self.k = min(k, len(self.train_ids))
        self._emb = _normalise(np.stack([np.asarray(embeddings[t], float) for t in self.train_ids]))
        self._passed = np.array(
            [[float(table[t][a].passed) for a in self.agents] for t in self.train_ids]
        )
        self._cost = np.array([[table[t][a].cost for a in self.agents] for t in self.train_ids])
        self.max_cost = float(self._cost.max()) if self._cost.size else 0.0

    def neighbours(self, embedding: np.ndarray) -> np.ndarray:
        """Return the indices of the k most similar training tasks (stable on ties)."""
        q = _normalise(np.asarray(embedding, float)[None, :])[0]
        sims = self._emb @ q
        return np.argsort(-sims, kind="stable")[: self.k]

    def estimate(self, embedding: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
        """(success probability, expected dollar cost) per agent."""
        idx = self.neighbours(embedding)
        p = self._passed[idx].mean(axis=0)
        c = self._cost[idx].mean(axis=0)
        return (
            {a: float(p[j]) for j, a in enumerate(self.agents)},
            {a: float(c[j]) for j, a in enumerate(self.agents)},
        )


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def wtp(
    train_ids: Sequence[str],
    test_ids: Sequence[str],
    table: OutcomeTable,
    embeddings: Mapping[str, np.ndarray],
    prices: Mapping[str, float],
    lam: float,
    k: int = 50,
) -> list[Route]:
    """Willingness-to-pay router: maximise lambda * p_a - cost_a over kNN estimates."""

    def choose(agents: list[str], p: dict[str, float], c: dict[str, float], _: float) -> str:
        # max score; among equal scores the cheaper agent (earlier in `agents`) wins
        return max(agents, key=lambda a: (lam * p[a] - c[a], -agents.index(a)))

    return _knn_routes(train_ids, test_ids, table, embeddings, prices, k, choose)


def _knn_routes(
    train_ids: Sequence[str],
    test_ids: Sequence[str],
    table: OutcomeTable,
    embeddings: Mapping[str, np.ndarray],
    prices: Mapping[str, float],
    k: int,
    choose: Callable[[list[str], dict[str, float], dict[str, float], float], str],
) -> list[Route]:
    """One route per test task, chosen from the kNN estimates (p, cost, max training cost)."""
    agents = by_price(prices)
    est = KnnEstimator(train_ids, table, embeddings, agents, k)
    out = []
    for t in test_ids:
        p, c = est.estimate(embeddings[t])
        best = choose(agents, p, c, est.max_cost)
        out.append(Route(t, best, (best,)))
    return out


def knn_threshold(
    train_ids: Sequence[str],
    test_ids: Sequence[str],
    table: OutcomeTable,
    embeddings: Mapping[str, np.ndarray],
    prices: Mapping[str, float],
    tau: float,
    k: int = 10,
) -> list[Route]:
    """Cheapest agent whose kNN success estimate reaches ``tau``; else the dearest."""

    def choose(agents: list[str], p: dict[str, float], c: dict[str, float], _: float) -> str:
        return next((a for a in agents[:-1] if p[a] >= tau), agents[-1])

    return _knn_routes(train_ids, test_ids, table, embeddings, prices, k, choose)


def carrot(
    train_ids: Sequence[str],
    test_ids: Sequence[str],
    table: OutcomeTable,
    embeddings: Mapping[str, np.ndarray],
    prices: Mapping[str, float],
    mu: float,
    k: int = 50,
) -> list[Route]:
    """CARROT: minimise (1 - mu)(1 - p_a) + mu * cost_a / c_max over kNN estimates."""
    if not 0.0 <= mu <= 1.0:
        raise ValueError("mu must be in [0, 1]")

    def choose(agents: list[str], p: dict[str, float], c: dict[str, float], c_max: float) -> str:
        scale = c_max if c_max > 0 else 1.0
        return min(
            agents, key=lambda a: ((1 - mu) * (1 - p[a]) + mu * c[a] / scale, agents.index(a))
        )

    return _knn_routes(train_ids, test_ids, table, embeddings, prices, k, choose)


# --------------------------------------------------------------------------- cascade


def fit_cascade_thresholds(
    train_ids: Sequence[str],
    table: OutcomeTable,
    prices: Mapping[str, float],
    target_precision: float = 0.9,
) -> dict[str, float]:
    """Per-agent stop thresholds learned on the training split.

    For every agent but the dearest: the smallest threshold tau such that, among
    training tasks where the agent's confidence >= tau, at least ``target_precision``
    of its answers passed. ``inf`` (never stop there) when no tau reaches it.
    """
    agents = by_price(prices)
    out: dict[str, float] = {}
    for a in agents[:-1]:
        pairs: list[tuple[float, bool]] = []
        for t in train_ids:
            conf = table[t][a].confidence
            if conf is not None:
                pairs.append((conf, table[t][a].passed))
        tau = math.inf
        for cand in sorted({c for c, _ in pairs}):
            kept = [ok for c, ok in pairs if c >= cand]
            if kept and sum(kept) / len(kept) >= target_precision:
                tau = float(cand)
                break
        out[a] = tau
    return out


def cascade(
    task_ids: Sequence[str],
    table: OutcomeTable,
    prices: Mapping[str, float],
    thresholds: Mapping[str, float] | None = None,
) -> list[Route]:
    """Cheapest first; accept the first answer whose confidence clears its threshold.

    Without ``thresholds`` every agent stops at confidence >= 0.5 (a passed self-check).
    A missing confidence never stops the cascade.
    """
    agents = by_price(prices)
    out = []
    for t in task_ids:
        tried: list[str] = []
        for a in agents:
            tried.append(a)
            if a == agents[-1]:
                break
            conf = table[t][a].confidence
            tau = 0.5 if thresholds is None else thresholds.get(a, math.inf)
            if conf is not None and conf >= tau:
                break
        out.append(Route(t, tried[-1], tuple(tried)))
    return out


# --------------------------------------------------------------------------- accounting


def routes_to_records(
    method: str,
    routes: Sequence[Route],
    table: OutcomeTable,
    domains: Mapping[str, str],
    bins: Mapping[str, str],
) -> list[Record]:
    """Charge each route for every agent it ran; grade it by the answering agent."""
    out = []
    for position, r in enumerate(routes):
        ran = [table[r.task_id][a] for a in r.tried]
        out.append(
            Record(
                method=method,
                task_id=r.task_id,
                domain=domains[r.task_id],
                bin=bins[r.task_id],
                agent=r.agent,
                passed=table[r.task_id][r.agent].passed,
                tokens_execution=sum(o.tokens for o in ran),
                seconds_execution=sum(o.seconds for o in ran),
                cost_execution=sum(o.cost for o in ran),
                position=position,
                tried=r.tried,
            )
        )
    return out
