"""Fit SALE's scoring weights with a mixed-integer program (the paper's min-max MILP).

Score of agent i's bid on task t (lower wins), linear in the weights w:

    S_ti = w_c * c_ti - (w_h * H_ti + sum_j w_j * g_tij + w_m * p_ti)    c = price x bid tokens

(p_ti, memory's verified success estimate for agent i on task t, enters only when the
bids carry one: ``fit_from_bank(memory=True)`` gives each training bid the estimate a
memory holding the *other* training tasks' verified outcomes would give.)

Per training task, binaries x_ti (sum_i x_ti = 1) must pick exactly the bid the
auction would pick for the chosen w. With big-M (M = 1e4 unless the feature range
needs more), for every pair (i, k):

    S_ti - S_tk + delta_ik <= M (1 - x_ti)

where delta_ik = ``margin`` if k would win a tie against i (k is earlier in the tie
order, by default the cheaper agent), else 0. So the selected bid is the argmin
with the auction's tie-breaking; without the margin, w = 0 would make every bid a
tie and let the solver pick the best agent per task for free. Features are
constants, so all constraints are linear in (w, x): a proper MILP.

Loss of picking agent i on task t (executing its own bid):

    L_ti = (1 - passed_ti) + lam * execution_cost_ti / max execution cost in training

i.e. a failure costs 1 and cost is a secondary term in [0, lam].

* ``objective="minmax"`` (the paper): minimise Q subject to
  sum_i (L_ti - min_k L_tk) x_ti <= Q for all t, i.e. the worst task's *regret*
  (loss beyond that task's best pick). With the plain loss, Q is decided by a task
  every agent fails (loss >= 1 whatever the weights) and bounding it there forces
  the cheapest agent's win on that one task; measured on our 36 training tasks that
  gave weights handing the 135M model 31 tasks (train pass 11% against 61%). Regret
  is 0 where nothing could be done, so Q speaks about the tasks the choice decides.
  Q alone still leaves much of the solution free, so a second solve minimises the
  mean loss with Q fixed at its optimum (lexicographic).
* ``objective="mean"``: minimise the mean of sum_i L_ti x_ti.

Jurors cost money too (on a pool of small models a juror's votes can cost as much
as the execution). Given ``juror_costs`` (what juror j's votes cost on task t), a
binary z_j says whether j is heeded: w_j <= w_j,max * z_j, and the mean loss gains
lam * sum_j z_j * mean_t juror_cost_tj / (the same cost scale). A juror whose signal
does not pay for its votes gets w_j = 0, and the auction then does not ask it. The
juror term stays out of the min-max rows: it is the same overhead on every task, so
there it would only ever say "ask nobody" (the worst task is one every agent fails,
where no vote can help), which is a question for the mean.

Weights live in boxes (``bounds``); positive rescaling of w never changes the
argmin, so the boxes only fix the scale. The fit names every juror, so fitted
weights never fall back to ``Weights.jury_default``. A dropped vote and a missing
entropy count as 0, and ties go to the cheaper agent, then the name: all as at run
time (``sale_graph.scoring``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import lil_matrix

from sale_graph.bench.records import Outcome, bids_from_audit

__all__ = [
    "DEFAULT_BOUNDS",
    "FitResult",
    "TrainingBid",
    "fit_weights",
    "load_weights",
    "loss_table",
    "save_weights",
    "score",
    "select",
    "training_bids",
]

DEFAULT_BOUNDS: dict[str, tuple[float, float]] = {
    "cost": (0.0, 1.0),
    "entropy": (0.0, 10.0),
    "jury": (0.0, 10.0),
    "memory": (0.0, 10.0),
}


@dataclass(frozen=True)
class TrainingBid:
    """Agent ``agent``'s initial bid on a training task, and what executing it gave."""

    agent: str
    price: float
    tokens: int
    entropy: float | None
    votes: Mapping[str, float]
    passed: bool
    execution_cost: float
    memory_p: float | None = None  # memory's success estimate for this agent on this task

    @property
    def cost_feature(self) -> float:
        """Price x bid tokens (the paper's C without w_c)."""
        return float(self.price) * float(self.tokens)


@dataclass
class FitResult:
    """Fitted weights plus what the fit achieved on its own training data."""

    weights: dict[str, Any]
    objective: str
    status: str
    train_max_loss: float
    train_mean_loss: float
    train_pass_rate: float
    selected: dict[str, str]
    big_m: float
    seconds: float
    mismatches: list[str] = field(default_factory=list)
    heeded_jurors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON form, for the benchmark report."""
        return {
            "weights": self.weights,
            "objective": self.objective,
            "status": self.status,
            "train_max_loss": self.train_max_loss,
            "train_mean_loss": self.train_mean_loss,
            "train_pass_rate": self.train_pass_rate,
            "selected": self.selected,
            "big_m": self.big_m,
            "seconds": self.seconds,
            "mismatches": self.mismatches,
            "heeded_jurors": self.heeded_jurors,
        }


def training_bids(
    audit: Mapping[str, Any],
    outcomes: Mapping[str, Outcome],
    memory_p: Mapping[str, float] | None = None,
) -> list[TrainingBid]:
    """One training task's rows: every agent's initial bid joined with its own execution.

    ``outcomes[agent]`` must be the graded result of that agent executing its own
    round-0 strategy; agents without an outcome are left out. ``memory_p[agent]``:
    memory's success estimate for the agent on this task (None: no memory term).
    """
    rows = []
    for b in bids_from_audit(audit):
        if b.round != 0 or b.agent not in outcomes:
            continue
        o = outcomes[b.agent]
        rows.append(
            TrainingBid(
                agent=b.agent,
                price=b.price,
                tokens=b.tokens,
                entropy=b.entropy,
                votes=dict(b.votes),
                passed=o.passed,
                execution_cost=o.cost,
                memory_p=None if memory_p is None else float(memory_p[b.agent]),
            )
        )
    return rows


def score(bid: TrainingBid, weights: Mapping[str, Any]) -> float:
    """C - V for one bid under ``weights`` (lower is better)."""
    jury = weights.get("jury") or {}
    value = float(weights["entropy"]) * float(bid.entropy or 0.0) + sum(
        float(w) * float(bid.votes.get(j, 0.0)) for j, w in jury.items()
    ) + float(weights.get("memory", 0.0)) * float(bid.memory_p or 0.0)
    return float(weights["cost"]) * bid.cost_feature - value


def _default_tie_order(tasks: Mapping[str, Sequence[TrainingBid]]) -> list[str]:
    prices: dict[str, float] = {}
    for bids in tasks.values():
        for b in bids:
            prices.setdefault(b.agent, b.price)
    return sorted(prices, key=lambda a: (prices[a], a))


def select(
    bids: Sequence[TrainingBid],
    weights: Mapping[str, Any],
    tie_order: Sequence[str],
    tol: float = 1e-9,
) -> TrainingBid:
    """Pick the winning bid: lowest score; within ``tol``, the earliest in ``tie_order``."""
    rank = {a: r for r, a in enumerate(tie_order)}
    scores = [score(b, weights) for b in bids]
    best = min(scores)
    tied = [b for b, s in zip(bids, scores, strict=True) if s <= best + tol]
    return min(tied, key=lambda b: rank.get(b.agent, len(rank)))


def cost_scale(tasks: Mapping[str, Sequence[TrainingBid]]) -> float:
    """The largest execution cost in training: the loss's unit of money."""
    costs = [b.execution_cost for bids in tasks.values() for b in bids]
    return max(costs) if costs and max(costs) > 0 else 1.0


def loss_table(tasks: Mapping[str, Sequence[TrainingBid]], lam: float) -> dict[str, list[float]]:
    """L_ti = (1 - passed) + lam * execution cost / the largest execution cost."""
    scale = cost_scale(tasks)
    return {
        t: [(0.0 if b.passed else 1.0) + lam * b.execution_cost / scale for b in bids]
        for t, bids in tasks.items()
    }


def fit_weights(
    tasks: Mapping[str, Sequence[TrainingBid]],
    *,
    objective: Literal["minmax", "mean"] = "minmax",
    lam: float = 0.1,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    jurors: Sequence[str] | None = None,
    tie_order: Sequence[str] | None = None,
    margin: float = 1e-3,
    big_m: float = 1e4,
    time_limit: float | None = 120.0,
    juror_costs: Mapping[str, Mapping[str, float]] | None = None,
) -> FitResult:
    """Solve the weight-fitting MILP with HiGHS (``scipy.optimize.milp``).

    ``tasks`` maps a training task id to the initial bids of every agent on it;
    ``juror_costs`` (task id -> juror -> dollars) lets the fit drop costly jurors.
    """
    if objective not in ("minmax", "mean"):
        raise ValueError("objective must be 'minmax' or 'mean'")
    task_ids = sorted(t for t, bids in tasks.items() if bids)
    if not task_ids:
        raise ValueError("no training task has any bid")
    box = {**DEFAULT_BOUNDS, **(bounds or {})}
    if jurors is None:
        jurors = sorted({j for t in task_ids for b in tasks[t] for j in b.votes})
    jurors = list(jurors)
    order = list(tie_order) if tie_order is not None else _default_tie_order(tasks)
    rank = {a: r for r, a in enumerate(order)}
    started = time.monotonic()

    # with memory estimates on the bids, w_m is fitted too (its column comes last)
    with_memory = any(b.memory_p is not None for t in task_ids for b in tasks[t])
    # Decision vector: [w_c, w_h, w_j..., (w_m), z_j..., x_ti..., Q]
    n_w = 2 + len(jurors) + int(with_memory)
    n_z = len(jurors)
    extra = ["memory"] if with_memory else []
    w_lo = np.array([box["cost"][0], box["entropy"][0]] + [box["jury"][0]] * len(jurors)
                    + [box[e][0] for e in extra])
    w_hi = np.array([box["cost"][1], box["entropy"][1]] + [box["jury"][1]] * len(jurors)
                    + [box[e][1] for e in extra])
    w_abs = np.maximum(np.abs(w_lo), np.abs(w_hi))

    def features(b: TrainingBid) -> np.ndarray:
        """S = w . f, with f = (c, -H, -g_1, ..., -g_J[, -p])."""
        return np.array(
            [b.cost_feature, -float(b.entropy or 0.0)]
            + [-float(b.votes.get(j, 0.0)) for j in jurors]
            + ([-float(b.memory_p or 0.0)] if with_memory else [])
        )

    x_index: dict[tuple[str, int], int] = {}
    for t in task_ids:
        for i in range(len(tasks[t])):
            x_index[(t, i)] = n_w + n_z + len(x_index)
    q_col = n_w + n_z + len(x_index)
    n_var = q_col + 1

    feats = {t: [features(b) for b in tasks[t]] for t in task_ids}
    spread = max(
        (float(w_abs @ np.abs(fi - fk)) for t in task_ids for fi in feats[t] for fk in feats[t]),
        default=0.0,
    )
    m = max(big_m, 1.01 * (spread + margin))

    losses = loss_table({t: tasks[t] for t in task_ids}, lam)
    scale = cost_scale({t: tasks[t] for t in task_ids})
    # jury_loss[t][r]: what heeding juror r adds to task t's loss
    jury_loss = {
        t: [lam * float((juror_costs or {}).get(t, {}).get(j, 0.0)) / scale for j in jurors]
        for t in task_ids
    }
    rows: list[tuple[dict[int, float], float, float]] = []
    for r in range(n_z):  # w_j <= w_j,max * z_j: an unheeded juror weighs nothing
        rows.append(({2 + r: 1.0, n_w + r: -float(w_hi[2 + r])}, -math.inf, 0.0))
    for t in task_ids:
        bids = tasks[t]
        rows.append(({x_index[(t, i)]: 1.0 for i in range(len(bids))}, 1.0, 1.0))
        for i, bi in enumerate(bids):
            for k, bk in enumerate(bids):
                if i == k:
                    continue
                delta = (
                    margin if rank.get(bk.agent, len(rank)) < rank.get(bi.agent, len(rank)) else 0.0
                )
                coef = {d: float(v) for d, v in enumerate(feats[t][i] - feats[t][k]) if v != 0.0}
                coef[x_index[(t, i)]] = m
                rows.append((coef, -math.inf, m - delta))
    loss_rows = []
    for t in task_ids:
        best = min(losses[t])  # Q bounds the regret: the loss beyond the task's best pick
        coef = {x_index[(t, i)]: losses[t][i] - best for i in range(len(tasks[t]))}
        coef[q_col] = -1.0
        loss_rows.append((coef, -math.inf, 0.0))

    def matrix(spec: list[tuple[dict[int, float], float, float]]) -> LinearConstraint:
        a = lil_matrix((len(spec), n_var))
        lo = np.empty(len(spec))
        hi = np.empty(len(spec))
        for r, (coef, lb, ub) in enumerate(spec):
            for col, v in coef.items():
                a[r, col] = v
            lo[r], hi[r] = lb, ub
        return LinearConstraint(a.tocsr(), lo, hi)

    base = matrix(rows)
    integrality = np.zeros(n_var)
    integrality[n_w:q_col] = 1
    lb = np.concatenate([w_lo, np.zeros(n_z + len(x_index)), [0.0]])
    ub = np.concatenate([w_hi, np.ones(n_z + len(x_index)), [math.inf]])
    options: dict[str, Any] = {"disp": False, "mip_rel_gap": 0.0}
    if time_limit is not None:
        options["time_limit"] = float(time_limit)

    mean_c = np.zeros(n_var)
    for (t, i), col in x_index.items():
        mean_c[col] = losses[t][i] / len(task_ids)
    for r in range(n_z):
        mean_c[n_w + r] = sum(jury_loss[t][r] for t in task_ids) / len(task_ids)

    if objective == "mean":
        res = milp(mean_c, integrality=integrality, bounds=Bounds(lb, ub),
                   constraints=[base], options=options)  # fmt: skip
    else:
        q_c = np.zeros(n_var)
        q_c[q_col] = 1.0
        first = milp(q_c, integrality=integrality, bounds=Bounds(lb, ub),
                     constraints=[base, matrix(loss_rows)], options=options)  # fmt: skip
        if first.x is None:
            raise RuntimeError(f"weight fit failed: {first.message}")
        ub2 = ub.copy()
        ub2[q_col] = float(first.x[q_col]) + 1e-6
        res = milp(mean_c, integrality=integrality, bounds=Bounds(lb, ub2),
                   constraints=[base, matrix(loss_rows)], options=options)  # fmt: skip
        if res.x is None:  # keep the min-max solution if the refinement fails
            res = first
    if res.x is None:
        raise RuntimeError(f"weight fit failed: {res.message}")

    w = np.clip(res.x[:n_w], w_lo, w_hi)  # HiGHS may step outside a box by ~1e-12
    heeded = [j for r, j in enumerate(jurors) if res.x[n_w + r] > 0.5]
    weights: dict[str, Any] = {
        "cost": float(w[0]),
        "entropy": float(w[1]),
        # exactly 0 for an unheeded juror, so the auction skips its votes
        "jury": {j: float(w[2 + r]) if j in heeded else 0.0 for r, j in enumerate(jurors)},
    }
    if with_memory:
        weights["memory"] = float(w[-1])
    # Judge the weights by the auction's own argmin, not by the solver's binaries.
    selected: dict[str, str] = {}
    realised: list[float] = []  # routing loss per task (what the min-max bounds)
    jury_paid: list[float] = []  # plus the heeded jurors' share, per task
    mismatches: list[str] = []
    passed = 0
    for t in task_ids:
        bids = tasks[t]
        win = select(bids, weights, order)
        i = bids.index(win)
        selected[t] = win.agent
        realised.append(losses[t][i])
        jury_paid.append(
            sum(c for r, c in enumerate(jury_loss[t]) if weights["jury"][jurors[r]] != 0.0)
        )
        passed += int(win.passed)
        milp_pick = max(range(len(bids)), key=lambda j: res.x[x_index[(t, j)]])
        if milp_pick != i:
            mismatches.append(t)
    return FitResult(
        weights=weights,
        objective=objective,
        status=str(res.message),
        train_max_loss=float(max(realised)),
        train_mean_loss=float(np.mean(realised) + np.mean(jury_paid)),
        train_pass_rate=passed / len(task_ids),
        selected=selected,
        big_m=m,
        seconds=time.monotonic() - started,
        mismatches=mismatches,
        heeded_jurors=[j for j in jurors if weights["jury"][j] != 0.0],
    )


def save_weights(
    weights: Mapping[str, Any],
    path: str | Path,
    staged: Mapping[str, Any] | None = None,
    execute_plan: Mapping[str, bool] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """Write ``{"cost", "entropy", "jury": {agent: w}[, "memory"]}`` (and the staged policy)."""
    data: dict[str, Any] = {
        "cost": float(weights["cost"]),
        "entropy": float(weights["entropy"]),
        "jury": {str(k): float(v) for k, v in (weights.get("jury") or {}).items()},
    }
    if weights.get("memory"):
        data["memory"] = float(weights["memory"])
    if staged is not None:
        data["staged"] = dict(staged)
    if execute_plan is not None:  # read by Context.resolved_execute_plan
        data["execute_plan"] = {str(k): bool(v) for k, v in execute_plan.items()}
    if defaults:  # read by Context.resolved_auction: what the benchmark measured best
        data["defaults"] = dict(defaults)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_weights(path: str | Path) -> dict[str, Any]:
    """Read weights written by ``save_weights`` (checks the three keys; ``memory`` is optional)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    missing = {"cost", "entropy", "jury"} - set(data)
    if missing:
        raise ValueError(f"{path}: weights file lacks {', '.join(sorted(missing))}")
    out = {
        "cost": float(data["cost"]),
        "entropy": float(data["entropy"]),
        "jury": {str(k): float(v) for k, v in data["jury"].items()},
    }
    if "memory" in data:
        out["memory"] = float(data["memory"])
    return out
