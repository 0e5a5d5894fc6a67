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

Whether a difference is real is told over tasks, the unit a benchmark samples:
``intervals`` gives each method's pass@1 and mean cost per task a 95% percentile
bootstrap interval (``group_intervals`` per bin and domain), and
``paired_comparisons`` resamples the same tasks for a method and a reference
(difference in pass@1, ratio of total costs). Methods run over several orders are
averaged per task over orders first. ``break_even`` and
``length_bins`` ask how long executions must be for an auction to pay for itself,
and ``learning_curves`` follow pass@1, cost and win shares along the task order;
``learning_effect`` asks whether a task fares better met late in an order than early.
Everything is seeded, so a report rebuilds byte for byte.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from sale_graph.bench.records import Record

__all__ = [
    "SCALAR_METRICS",
    "auction_rows",
    "break_even",
    "group_intervals",
    "group_metrics",
    "intervals",
    "learning_curves",
    "learning_effect",
    "length_bins",
    "longest_bin",
    "mean_std",
    "paired_comparisons",
    "per_task",
    "summarise",
    "win_rate_curve",
]

N_BOOT = 2000
LEVEL = 0.95

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


# --------------------------------------------------------------------------- over tasks


def per_task(records: Iterable[Record]) -> dict[str, dict[str, dict[str, float]]]:
    """``{method: {task: {"passed", "cost", "cost_auction", "cost_execution"}}}``.

    Each value is the mean over the method's orders: the task is the unit, so a
    method run over five orders does not count five times.
    """
    acc: dict[str, dict[str, list[Record]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        acc[r.method][r.task_id].append(r)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for method, tasks in acc.items():
        out[method] = {
            t: {
                "passed": float(np.mean([r.passed for r in rs])),
                "cost": float(np.mean([r.cost for r in rs])),
                "cost_auction": float(np.mean([r.cost_auction for r in rs])),
                "cost_execution": float(np.mean([r.cost_execution for r in rs])),
            }
            for t, rs in sorted(tasks.items())
        }
    return out


def _resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    """Task indices of ``n_boot`` bootstrap resamples of ``n`` tasks (seeded)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _interval(
    stats: np.ndarray, estimate: float, level: float, *, at_resamples: bool = False
) -> dict[str, float]:
    """A percentile interval of bootstrap ``stats``.

    Bounds are taken at resamples, not between them, when asked or when a resample is
    infinite (a ratio over a zero cost): between two infinite resamples lies NaN.
    """
    tail = 100 * (1 - level) / 2
    if at_resamples or not np.all(np.isfinite(stats)):
        lo = np.percentile(stats, tail, method="lower")
        hi = np.percentile(stats, 100 - tail, method="higher")
    else:
        lo, hi = np.percentile(stats, [tail, 100 - tail])
    return {"estimate": float(estimate), "lo": float(lo), "hi": float(hi)}


def intervals(
    records: Iterable[Record], *, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL
) -> dict[str, dict[str, Any]]:
    """Per method: pass@1 and mean cost per task with a percentile bootstrap interval."""
    out: dict[str, dict[str, Any]] = {}
    for method, tasks in per_task(records).items():
        passed = np.array([v["passed"] for v in tasks.values()])
        cost = np.array([v["cost"] for v in tasks.values()])
        idx = _resamples(len(passed), n_boot, seed)
        out[method] = {
            "n_tasks": len(passed),
            "pass_at_1": _interval(passed[idx].mean(axis=1), passed.mean(), level),
            "cost_per_task": _interval(cost[idx].mean(axis=1), cost.mean(), level),
        }
    return out


def group_intervals(
    records: Iterable[Record], *, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL
) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """``{grouping: {label: intervals(...)}}`` per bin, domain and domain/bin.

    A bin holds a third of the tasks, so its pass@1 moves twice as far by luck as the
    whole run's; the interval says how far.
    """
    recs = list(records)
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for name, key in _GROUPINGS.items():
        labels = sorted({key(r) for r in recs})
        out[name] = {
            label: intervals([r for r in recs if key(r) == label], n_boot=n_boot, seed=seed,
                             level=level)
            for label in labels
        }
    return out


def paired_comparisons(
    records: Iterable[Record],
    references: Sequence[str],
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{reference: {method: ...}}``: each method against each reference on shared tasks.

    The same resampled tasks go to both sides, so what they have in common (easy
    and hard tasks) cancels. ``pass_diff`` is method minus reference (a share);
    ``cost_ratio`` is the method's total cost over the reference's. ``within_noise``
    says the interval holds 0 (difference) or 1 (ratio).
    """
    table = per_task(records)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for ref in references:
        if ref not in table:
            continue
        out[ref] = {}
        for method, tasks in table.items():
            shared = sorted(set(tasks) & set(table[ref]))
            if method == ref or not shared:
                continue
            p_m = np.array([tasks[t]["passed"] for t in shared])
            p_r = np.array([table[ref][t]["passed"] for t in shared])
            c_m = np.array([tasks[t]["cost"] for t in shared])
            c_r = np.array([table[ref][t]["cost"] for t in shared])
            idx = _resamples(len(shared), n_boot, seed)
            diff = _interval(
                p_m[idx].mean(axis=1) - p_r[idx].mean(axis=1), p_m.mean() - p_r.mean(), level
            )
            diff["within_noise"] = bool(diff["lo"] <= 0.0 <= diff["hi"])
            den = c_r[idx].sum(axis=1)
            num = c_m[idx].sum(axis=1)
            ratios = np.divide(num, den, out=np.full_like(num, np.inf), where=den > 0)
            total_r = c_r.sum()
            ratio = _interval(ratios, c_m.sum() / total_r if total_r else math.inf, level)
            ratio["within_noise"] = bool(ratio["lo"] <= 1.0 <= ratio["hi"])
            out[ref][method] = {"n_tasks": len(shared), "pass_diff": diff, "cost_ratio": ratio}
    return out


# --------------------------------------------------------------------------- break-even


def auction_rows(
    records: Sequence[Record], named: Sequence[str] | None = None
) -> list[str]:
    """The auction rows: ``named`` (a run's configuration) if given, else spenders.

    Without ``named``, the methods that spent auction tokens, in first-seen order. A
    staged auction assessing bids from memory alone spends nothing on its auction and
    is still an auction mode: only the caller's list can say so.
    """
    present = list(dict.fromkeys(r.method for r in records))
    if named is not None:
        return [m for m in named if m in present]
    spent = {r.method for r in records if r.tokens_auction > 0}
    return [m for m in present if m in spent]


def break_even(
    records: Iterable[Record],
    reference: str,
    price_per_mtok: float | None = None,
    auction_methods: Sequence[str] | None = None,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, dict[str, Any]]:
    """Per auction method: how long executions must be before its auction pays off.

    With ``A`` the mean auction cost per task and ``rho`` the method's mean execution
    cost over the reference's mean cost (same tasks), an execution the reference
    pays ``p * L`` for costs the method ``A + rho * p * L``: cheaper once
    ``L > L* = A / (p * (1 - rho))`` tokens. If ``rho >= 1`` routing saves nothing
    and the auction never pays (``break_even_tokens`` is None). ``p`` defaults to
    the reference's own dollars per token. ``auction_methods``: see ``auction_rows``
    (an auction that costs nothing pays from the first token wherever ``rho < 1``).
    ``rho_interval`` and ``break_even_interval`` resample the shared tasks (95%
    percentile bootstrap); a bound of None is "never" (resamples where ``rho >= 1``).
    """
    recs = list(records)
    table = per_task(recs)
    ref = table.get(reference)
    if not ref:
        return {}
    if price_per_mtok is None:
        ref_recs = [r for r in recs if r.method == reference]
        tokens = sum(r.tokens for r in ref_recs)
        price_per_mtok = 1e6 * sum(r.cost for r in ref_recs) / tokens if tokens else 0.0
    per_token = price_per_mtok / 1e6
    out: dict[str, dict[str, Any]] = {}
    for method in auction_rows(recs, auction_methods):
        shared = sorted(set(table[method]) & set(ref))
        if not shared:
            continue
        auction = np.array([table[method][t]["cost_auction"] for t in shared])
        execution = np.array([table[method][t]["cost_execution"] for t in shared])
        reference_cost = np.array([ref[t]["cost"] for t in shared])
        a, exec_cost, ref_cost = (float(auction.mean()), float(execution.mean()),
                                  float(reference_cost.mean()))  # fmt: skip
        rho = exec_cost / ref_cost if ref_cost else math.inf
        never = rho >= 1 or per_token <= 0
        idx = _resamples(len(shared), n_boot, seed)
        rhos, lstars = _break_even_draws(auction[idx].mean(axis=1), execution[idx].mean(axis=1),
                                         reference_cost[idx].mean(axis=1), per_token)
        out[method] = {
            "rho_interval": _interval(rhos, rho, level, at_resamples=True),  # as L*'s
            "break_even_interval": _bounds(lstars, level),
            "n_tasks": len(shared),
            "auction_cost_per_task": a,
            "execution_cost_per_task": exec_cost,
            "reference_cost_per_task": ref_cost,
            "rho": rho,
            "price_per_mtok": price_per_mtok,
            "break_even_tokens": None if never else a / (per_token * (1 - rho)),
        }
    return out


def _break_even_draws(
    a: np.ndarray, execution: np.ndarray, reference: np.ndarray, per_token: float
) -> tuple[np.ndarray, np.ndarray]:
    """The ratio rho and L* of each resample (L* infinite where the auction never pays)."""
    rho = np.divide(execution, reference, out=np.full_like(execution, np.inf),
                    where=reference > 0)  # fmt: skip
    pays = (rho < 1) & (per_token > 0)
    lstar = np.full_like(rho, np.inf)
    np.divide(a, per_token * (1 - rho), out=lstar, where=pays)
    return rho, lstar


def _bounds(draws: np.ndarray, level: float) -> dict[str, float | None]:
    """``_interval`` at resamples, an infinite bound as None: "never" stays "never"."""
    iv = _interval(draws, math.nan, level, at_resamples=True)
    return {k: None if math.isinf(iv[k]) else iv[k] for k in ("lo", "hi")}


def length_bins(
    records: Iterable[Record],
    lengths: Mapping[str, float],
    bins: int = 4,
    auction_methods: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Auction share of each auction method's cost per bin of execution length.

    ``lengths`` gives each task's execution length in tokens (the same for every
    method, e.g. the largest agent's), so every method is binned on the same tasks.
    Bins are quantiles of those lengths.
    """
    recs = list(records)
    table = per_task(recs)
    tasks = sorted(lengths, key=lambda t: (lengths[t], t))
    if not tasks:
        return {"edges": [], "median_tokens": [], "methods": {}}
    bins = max(1, min(bins, len(tasks)))
    groups = [tasks[round(len(tasks) * b / bins) : round(len(tasks) * (b + 1) / bins)]
              for b in range(bins)]  # fmt: skip
    out: dict[str, Any] = {
        "edges": [[float(lengths[g[0]]), float(lengths[g[-1]])] for g in groups],
        "median_tokens": [float(np.median([lengths[t] for t in g])) for g in groups],
        "methods": {},
    }
    for method in auction_rows(recs, auction_methods):
        shares = []
        for g in groups:
            rows = [table[method][t] for t in g if t in table[method]]
            cost = sum(r["cost"] for r in rows)
            shares.append(_ratio(sum(r["cost_auction"] for r in rows), cost) if rows else None)
        out["methods"][method] = shares
    return out


def longest_bin(
    records: Iterable[Record], lengths: Mapping[str, float], share: float = 1 / 3
) -> dict[str, Any]:
    """pass@1 and cost per task of every method on the tasks with the longest executions.

    The top ``share`` (a tercile by default) of tasks by ``lengths``: where the
    auction's fixed overhead weighs least, so where it has its best chance.
    """
    ranked = sorted(lengths, key=lambda t: (-lengths[t], t))
    top = set(ranked[: max(1, math.ceil(len(ranked) * share))]) if ranked else set()
    out: dict[str, Any] = {
        "n_tasks": len(top),
        "min_tokens": float(min((lengths[t] for t in top), default=0.0)),
        "max_tokens": float(max((lengths[t] for t in top), default=0.0)),
        "methods": {},
    }
    for method, tasks in per_task(records).items():
        rows = [tasks[t] for t in sorted(top) if t in tasks]
        if rows:
            out["methods"][method] = {
                "n": len(rows),
                "pass_at_1": float(np.mean([r["passed"] for r in rows])),
                "cost_per_task": float(np.mean([r["cost"] for r in rows])),
            }
    return out


# --------------------------------------------------------------------------- learning


def _several_orders(records: Iterable[Record]) -> dict[str, dict[int, list[Record]]]:
    """``{method: {order: records}}`` for the methods run over more than one order."""
    by_method: dict[str, dict[int, list[Record]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_method[r.method][r.order].append(r)
    return {m: dict(orders) for m, orders in by_method.items() if len(orders) > 1}


def learning_curves(
    records: Iterable[Record], agents: Sequence[str], window: int | None = None
) -> dict[str, dict[str, Any]]:
    """Rolling pass@1, cost and win shares along the task order, mean over orders.

    For every method run over more than one order. A point at position ``i`` is the
    mean over the ``window`` tasks ending there (fewer at the start), so the curve
    shows what memory changes as tasks are seen, not the luck of one task.
    """
    out: dict[str, dict[str, Any]] = {}
    for method, orders in _several_orders(records).items():
        n = min(len(v) for v in orders.values())
        w = window or max(3, math.ceil(n / 6))
        series: dict[str, list[np.ndarray]] = defaultdict(list)
        wins: dict[str, list[np.ndarray]] = defaultdict(list)
        for recs in orders.values():
            recs = sorted(recs, key=lambda r: r.position)[:n]
            series["pass_at_1"].append(_rolling([float(r.passed) for r in recs], w))
            series["cost_usd"].append(_rolling([r.cost for r in recs], w))
            for a in agents:
                wins[a].append(_rolling([float(r.agent == a) for r in recs], w))
        out[method] = {
            "window": w,
            "n_orders": len(orders),
            "tasks_seen": list(range(1, n + 1)),
            "pass_at_1": [float(x) for x in np.mean(series["pass_at_1"], axis=0)],
            "cost_usd": [float(x) for x in np.mean(series["cost_usd"], axis=0)],
            "win_share": {a: [float(x) for x in np.mean(wins[a], axis=0)] for a in agents},
        }
    return out


def _rolling(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over ``window`` values (over all values so far at the start)."""
    v = np.asarray(values, dtype=float)
    c = np.concatenate([[0.0], np.cumsum(v)])
    i = np.arange(1, len(v) + 1)
    lo = np.maximum(0, i - window)
    return (c[i] - c[lo]) / (i - lo)


def learning_effect(
    records: Iterable[Record], largest: str, *, n_boot: int = N_BOOT, level: float = LEVEL,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """What memory adds along an order, each task compared with itself: late minus early.

    A learning curve's first and last windows hold different tasks, so a hard run of
    tasks at the end reads as forgetting. Each seeded order puts a task at a random
    place; over several orders most tasks are met both in an order's first half
    (memory holding fewer tasks) and in its second. Per task, the mean over its late
    meetings minus the mean over its early ones cancels its difficulty. For every
    method run over more than one order: ``pass_diff`` (a share), ``small_share_diff``
    (share of executions won by agents other than ``largest``) and ``cost_ratio``
    (late over early total cost), each an interval with ``within_noise``; ``n_tasks``
    compared. The bootstrap resamples orders as well as tasks: the tasks of one order
    share its memory, so resampling tasks alone would understate the noise.
    """
    out: dict[str, dict[str, Any]] = {}
    for method, orders in _several_orders(records).items():
        table = _meetings(orders, largest)
        both = table["late"].any(axis=1) & table["early"].any(axis=1)
        if not both.any():
            continue
        table = {k: v[both] for k, v in table.items()}
        n_tasks, n_orders = table["late"].shape
        rng = np.random.default_rng(seed)
        weights = (np.ones((1, n_tasks)), np.ones((1, n_orders)))
        draws = (rng.multinomial(n_tasks, [1 / n_tasks] * n_tasks, size=n_boot).astype(float),
                 rng.multinomial(n_orders, [1 / n_orders] * n_orders, size=n_boot).astype(float))
        entry: dict[str, Any] = {"n_tasks": n_tasks, "n_orders": n_orders}
        for key, value in (("pass_diff", "passed"), ("small_share_diff", "small")):
            point = _late_minus_early(table, value, *weights)[0]
            d = _late_minus_early(table, value, *draws)
            entry[key] = _interval(d[~np.isnan(d)], point, level)  # a draw may meet none
            entry[key]["within_noise"] = bool(entry[key]["lo"] <= 0.0 <= entry[key]["hi"])
        point = _late_over_early(table, *weights)[0]
        ratios = _late_over_early(table, *draws)
        ratio = _interval(ratios[~np.isnan(ratios)], point, level)
        ratio["within_noise"] = bool(ratio["lo"] <= 1.0 <= ratio["hi"])
        entry["cost_ratio"] = ratio
        out[method] = entry
    return out


def _meetings(orders: Mapping[int, list[Record]], largest: str) -> dict[str, np.ndarray]:
    """Task x order tables: met early or late, passed, won by a smaller agent, cost.

    Each order is split at its own middle.
    """
    keys = sorted(orders)
    tasks = sorted({r.task_id for recs in orders.values() for r in recs})
    row = {t: i for i, t in enumerate(tasks)}
    table = {k: np.zeros((len(tasks), len(keys))) for k in
             ("early", "late", "passed", "small", "cost")}  # fmt: skip
    for j, k in enumerate(keys):
        half = len(orders[k]) / 2
        for r in orders[k]:
            i = row[r.task_id]
            table["late" if r.position >= half else "early"][i, j] = 1.0
            table["passed"][i, j] = float(r.passed)
            table["small"][i, j] = float(r.agent != largest)
            table["cost"][i, j] = r.cost
    return table


def _half_means(
    table: Mapping[str, np.ndarray], value: str, half: str, orders: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per (draw, task): the mean ``value`` over its meetings in one half, and their count.

    A task the drawn orders never met in that half counts 0 (its mean is then 0).
    """
    met = table[half]
    counts = orders @ met.T
    sums = orders @ (met * table[value]).T
    return np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0), counts


def _both_halves(
    table: Mapping[str, np.ndarray], value: str, tasks: np.ndarray, orders: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (draw, task): late mean, early mean, and the task's weight (0 unless met in both)."""
    late, n_late = _half_means(table, value, "late", orders)
    early, n_early = _half_means(table, value, "early", orders)
    return late, early, tasks * ((n_late > 0) & (n_early > 0))


def _late_minus_early(
    table: Mapping[str, np.ndarray], value: str, tasks: np.ndarray, orders: np.ndarray
) -> np.ndarray:
    """Per draw: the task-weighted mean of late minus early, over tasks met in both."""
    late, early, w = _both_halves(table, value, tasks, orders)
    total = w.sum(axis=1)
    return np.divide((w * (late - early)).sum(axis=1), total, out=np.full_like(total, np.nan),
                     where=total > 0)  # fmt: skip


def _late_over_early(
    table: Mapping[str, np.ndarray], tasks: np.ndarray, orders: np.ndarray
) -> np.ndarray:
    """Per draw: total late cost over total early cost, over tasks met in both halves."""
    late, early, w = _both_halves(table, "cost", tasks, orders)
    num, den = (w * late).sum(axis=1), (w * early).sum(axis=1)
    ratio = np.divide(num, den, out=np.full_like(num, np.inf), where=den > 0)
    ratio[w.sum(axis=1) == 0] = np.nan  # a draw of orders that met no task in both halves
    return ratio
