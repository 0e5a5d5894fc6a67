"""The paper's metrics, computed from per-(method, task) ``Record``s.

For each method, overall and per domain / bin / domain+bin:

* ``pass_at_1``: share of tasks whose single answer passed;
* ``cost_usd`` (total dollars) and ``usd_per_mtok`` (total dollars / total tokens
  x 1e6: the workload's effective price, the paper's "$ per Mtok");
* ``largest_share``: share of tasks executed by the dearest agent;
* ``auction_token_share``, ``auction_time_share`` and ``auction_cost_share``:
  auction tokens (seconds, dollars) over all tokens (seconds, dollars), auction
  included; 0 for methods without an auction;
* ``win_share``: share of tasks each agent executed.

A method run over several task orders (SALE with memory) is summarised per order
first; the summary reports mean and sample standard deviation (ddof = 1) over
orders. A single order gives std 0.

``win_rate_curve`` tracks the share of tasks won by agents other than the dearest
("small agents") as tasks are seen: the order is cut into equal blocks of
positions and the rate is taken per block (or cumulatively), then averaged over
orders.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from sale_graph.bench.records import Record

__all__ = [
    "SCALAR_METRICS",
    "group_metrics",
    "mean_std",
    "summarise",
    "win_rate_curve",
]

SCALAR_METRICS: tuple[str, ...] = (
    "pass_at_1",
    "cost_usd",
    "tokens",
    "usd_per_mtok",
    "largest_share",
    "auction_token_share",
    "auction_time_share",
    "auction_cost_share",
)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def group_metrics(records: Sequence[Record], largest: str, agents: Sequence[str]) -> dict[str, Any]:
    """Metrics of one method, one order, one group of tasks."""
    n = len(records)
    tokens = sum(r.tokens for r in records)
    seconds = sum(r.seconds for r in records)
    cost = sum(r.cost for r in records)
    wins: dict[str, int] = defaultdict(int)
    for r in records:
        wins[r.agent] += 1
    return {
        "n": n,
        "pass_at_1": _ratio(sum(r.passed for r in records), n),
        "cost_usd": cost,
        "tokens": float(tokens),
        "usd_per_mtok": _ratio(cost * 1e6, tokens),
        "largest_share": _ratio(wins[largest], n),
        "auction_token_share": _ratio(sum(r.tokens_auction for r in records), tokens),
        "auction_time_share": _ratio(sum(r.seconds_auction for r in records), seconds),
        "auction_cost_share": _ratio(sum(r.cost_auction for r in records), cost),
        "win_share": {a: _ratio(wins[a], n) for a in agents},
    }


def mean_std(values: Iterable[float]) -> dict[str, float]:
    """Mean and sample std (ddof=1; 0 for a single value)."""
    v = np.asarray(list(values), dtype=float)
    if v.size == 0:
        return {"mean": 0.0, "std": 0.0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0}


def _aggregate(per_order: Sequence[Mapping[str, Any]], agents: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": int(per_order[0]["n"])}
    for m in SCALAR_METRICS:
        out[m] = mean_std(p[m] for p in per_order)
    out["win_share"] = {a: mean_std(p["win_share"][a] for p in per_order) for a in agents}
    return out


_GROUPINGS: dict[str, Callable[[Record], str]] = {
    "by_domain": lambda r: r.domain,
    "by_bin": lambda r: r.bin,
    "by_domain_bin": lambda r: f"{r.domain}/{r.bin}",
}


def summarise(
    records: Iterable[Record], largest: str, agents: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Summarise per method: ``{"n_orders", "overall", "by_domain", "by_bin", "by_domain_bin"}``.

    Every order of a method must cover the same tasks; a mismatch raises, since
    mean +- std over different task sets would be meaningless.
    """
    by_method: dict[str, dict[int, list[Record]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_method[r.method][r.order].append(r)
    out: dict[str, dict[str, Any]] = {}
    for method in sorted(by_method):
        orders = [by_method[method][o] for o in sorted(by_method[method])]
        task_sets = {frozenset(r.task_id for r in recs) for recs in orders}
        if len(task_sets) != 1:
            raise ValueError(f"method {method!r}: task orders cover different task sets")
        summary: dict[str, Any] = {
            "n_orders": len(orders),
            "overall": _aggregate([group_metrics(o, largest, agents) for o in orders], agents),
        }
        for name, key in _GROUPINGS.items():
            labels = sorted({key(r) for r in orders[0]})
            summary[name] = {
                label: _aggregate(
                    [
                        group_metrics([r for r in o if key(r) == label], largest, agents)
                        for o in orders
                    ],
                    agents,
                )
                for label in labels
            }
        out[method] = summary
    return out


def win_rate_curve(
    records: Iterable[Record],
    largest: str,
    *,
    blocks: int = 10,
    cumulative: bool = False,
    agent: str | None = None,
) -> dict[str, list[float]]:
    """Small-agent (or one ``agent``'s) win rate against tasks seen, mean +- std over orders.

    Returns ``{"tasks_seen", "mean", "std"}``; ``tasks_seen`` is the number of tasks
    seen at the end of each block.
    """
    by_order: dict[int, list[Record]] = defaultdict(list)
    for r in records:
        by_order[r.order].append(r)
    if not by_order:
        return {"tasks_seen": [], "mean": [], "std": []}
    curves = []
    n = min(len(v) for v in by_order.values())
    blocks = max(1, min(blocks, n))
    edges = [round(n * (b + 1) / blocks) for b in range(blocks)]
    for recs in by_order.values():
        recs = sorted(recs, key=lambda r: r.position)[:n]
        won = np.array(
            [(r.agent == agent) if agent is not None else (r.agent != largest) for r in recs],
            dtype=float,
        )
        curve, start = [], 0
        for end in edges:
            lo = 0 if cumulative else start
            curve.append(float(won[lo:end].mean()) if end > lo else 0.0)
            start = end
        curves.append(curve)
    arr = np.array(curves)
    std = arr.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(arr.shape[1])
    return {
        "tasks_seen": [float(e) for e in edges],
        "mean": [float(x) for x in arr.mean(axis=0)],
        "std": [float(x) for x in std],
    }
