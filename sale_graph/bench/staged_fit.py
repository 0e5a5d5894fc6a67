"""Fit the staged auction's policy: per agent, an assessment model and a reserve.

Data, per training task and per agent that could be offered the task (all but the
dearest): its round-0 bid (entropy, tokens, what the bid cost), each juror's
expected vote on it and that vote's price, memory's success estimate for the agent
(leave-one-out over the other training tasks' verified outcomes, as a memory seeded
with them would give), and the graded outcome of the agent executing its plan or
answering directly. The dearest agent's row is its direct answer.

1. **Assessment**: per agent, an L2-regularised logistic regression of "passes" on
   a feature set (bias only; memory; entropy + length; both; each with one juror's
   vote), fitted on standardised features so that the penalty does not depend on a
   signal's unit. Predictions used below are leave-one-out, so the reserve is not
   tuned on answers the model has already seen.
2. **Reserves**: coordinate descent over a grid of thresholds, simulating the
   staged auction on every training task (cheapest first, first accepted bid wins,
   the dearest answers directly) and minimising the benchmark's loss: failure +
   ``lam`` x cost / (the dearest agent's mean direct cost). Cost counts every bid,
   every juror vote and the execution.
3. Each candidate is also tried *against the dearest agent*: a memory-only model of
   the dearest agent's direct success (leave-one-out too) turns each assessment into
   the chance of no loss, ``1 - p_d (1 - p_a)`` (``staged.no_loss``), so that tasks
   the dearest agent fails as well can stay with the cheapest.
4. The candidate with the lowest loss wins; on a tie (typically: every candidate
   hands everything to the dearest agent), the one with the cheapest signals (none
   read from a bid, then the bid's own, then a juror's vote), then the plain
   assessment over the one against the dearest, then the lowest leave-one-out
   log-loss. Plan or direct per agent is chosen before, by which passed more
   training tasks.

Pure numpy; nothing here calls a model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sale_graph.staged import AgentPolicy, StagedPolicy, no_loss, reads_bid

FEATURES = ("entropy", "length", "memory", "jury")
# reserves tried per agent; 1.01 = never accept, so the agent is not even offered the task
GRID = tuple(round(float(x), 2) for x in np.linspace(0.0, 1.0, 21)) + (1.01,)
L2 = 1.0


@dataclass(frozen=True)
class StagedRow:
    """One agent on one training task, as the staged auction would see it."""

    task_id: str
    agent: str
    entropy: float | None
    tokens: int
    bid_cost: float
    memory_p: float
    prior: float
    passed_plan: bool
    cost_plan: float  # execution with the plan (the bid not included)
    passed_direct: bool | None = None
    cost_direct: float | None = None
    votes: Mapping[str, float] = field(default_factory=dict)  # juror -> expected vote
    vote_costs: Mapping[str, float] = field(default_factory=dict)  # juror -> $ of that vote

    def outcome(self, with_plan: bool) -> tuple[bool, float]:
        """(passed, execution cost) executing the plan or answering directly."""
        if with_plan or self.passed_direct is None or self.cost_direct is None:
            return self.passed_plan, self.cost_plan
        return self.passed_direct, self.cost_direct


def features(row: StagedRow, names: Sequence[str], juror: str | None) -> list[float]:
    """The assessment's inputs, exactly as ``StagedPolicy.assess`` reads them."""
    out = []
    for name in names:
        if name == "entropy":
            out.append(row.entropy or 0.0)
        elif name == "length":
            out.append(row.tokens / 100.0)
        elif name == "memory":
            out.append(row.memory_p - row.prior)
        elif name == "jury":
            vote = row.votes.get(juror or "")
            out.append(0.0 if vote is None else vote / 5.0 - 0.5)
    return out


def logistic(x: np.ndarray, y: np.ndarray, l2: float = L2, iters: int = 50) -> np.ndarray:
    """Newton/IRLS for L2-penalised logistic regression; column 0 (bias) is not penalised."""
    w = np.zeros(x.shape[1])
    penalty = np.full(x.shape[1], l2)
    penalty[0] = 1e-6
    for _ in range(iters):
        z = np.clip(x @ w, -30, 30)
        p = 1.0 / (1.0 + np.exp(-z))
        grad = x.T @ (p - y) + penalty * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + np.diag(penalty)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return w


def logistic_scaled(x: np.ndarray, y: np.ndarray, l2: float = L2) -> np.ndarray:
    """``logistic`` on standardised features, returned on the raw scale.

    The penalty should not depend on a feature's unit: memory's ``p - prior`` spans a
    few tenths where entropy spans nats, so an unscaled L2 shrank the memory term to
    almost nothing beside the others. Each column (bias excepted) is z-scored, the
    model fitted, and the weights mapped back, since the run time reads raw signals.
    """
    mean = x[:, 1:].mean(axis=0)
    sd = x[:, 1:].std(axis=0)
    sd = np.where(sd > 1e-12, sd, 1.0)  # a constant column stays as it is (weight ~0)
    z = np.column_stack([x[:, :1], (x[:, 1:] - mean) / sd])
    w = logistic(z, y, l2)
    raw = np.empty_like(w)
    raw[1:] = w[1:] / sd
    raw[0] = w[0] - float(np.sum(w[1:] * mean / sd))
    return raw


def _design(rows: Sequence[StagedRow], names: Sequence[str], juror: str | None) -> np.ndarray:
    return np.asarray([[1.0, *features(r, names, juror)] for r in rows], dtype=np.float64)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


def loo_predictions(
    rows: Sequence[StagedRow], names: Sequence[str], juror: str | None, with_plan: bool
) -> np.ndarray:
    """Leave-one-out predicted pass probabilities of one agent's rows."""
    x = _design(rows, names, juror)
    y = np.asarray([1.0 if r.outcome(with_plan)[0] else 0.0 for r in rows])
    out = np.empty(len(rows))
    for i in range(len(rows)):
        keep = np.arange(len(rows)) != i
        w = logistic_scaled(x[keep], y[keep])
        out[i] = _sigmoid(x[i] @ w)
    return out


def simulate(
    tasks: Sequence[str],
    order: Sequence[str],
    rows: Mapping[tuple[str, str], StagedRow],
    probs: Mapping[tuple[str, str], float],
    reserves: Mapping[str, float],
    with_plan: Mapping[str, bool],
    juror: str | None,
    bid_free: bool = False,
) -> list[dict[str, Any]]:
    """The staged auction replayed on each task: who won, passed, and the whole cost.

    ``bid_free``: the assessment reads nothing from a bid (memory and bias only), so,
    as at run time (``staged.offer``), a rejected agent is not asked to bid and an
    accepted one that answers directly does not bid either.
    """
    results = []
    last = order[-1]
    for t in tasks:
        cost, asked = 0.0, []
        winner = last
        for a in order[:-1]:
            if reserves[a] > 1.0:  # never accepted: not offered, so its bid costs nothing
                continue
            row = rows[(t, a)]
            accepted = probs[(t, a)] >= reserves[a]
            if bid_free and not accepted:
                continue  # ruled out before bidding
            asked.append(a)
            if not (bid_free and not with_plan[a]):
                cost += row.bid_cost + (row.vote_costs.get(juror, 0.0) if juror else 0.0)
            if accepted:
                winner = a
                break
        if winner == last:
            passed, exec_cost = rows[(t, last)].outcome(False)
        else:
            passed, exec_cost = rows[(t, winner)].outcome(with_plan[winner])
        results.append({"task_id": t, "agent": winner, "passed": passed,
                        "cost": cost + exec_cost, "asked": asked})
    return results


def _log_loss(
    tasks: Sequence[str],
    cheap: Sequence[str],
    rows: Mapping[tuple[str, str], StagedRow],
    probs: Mapping[tuple[str, str], float],
    with_plan: Mapping[str, bool],
    dearest: str | None = None,
) -> float:
    """Mean leave-one-out log-loss of the assessments over the cheaper agents' rows.

    With ``dearest``, the assessments are chances of no loss against that agent, so
    the label is "passes, or the dearest agent fails too".
    """
    eps = 1e-6
    losses = []
    for a in cheap:
        for t in tasks:
            p = min(1.0 - eps, max(eps, probs[(t, a)]))
            y = rows[(t, a)].outcome(with_plan[a])[0]
            if dearest is not None:
                y = y or not rows[(t, dearest)].outcome(False)[0]
            losses.append(-math.log(p if y else 1.0 - p))
    return float(np.mean(losses)) if losses else 0.0


def _loss(results: Sequence[Mapping[str, Any]], lam: float, scale: float) -> float:
    return float(np.mean([(0.0 if r["passed"] else 1.0) + lam * r["cost"] / scale
                          for r in results])) if results else 0.0


def tune_reserves(
    tasks: Sequence[str],
    order: Sequence[str],
    rows: Mapping[tuple[str, str], StagedRow],
    probs: Mapping[tuple[str, str], float],
    with_plan: Mapping[str, bool],
    juror: str | None,
    lam: float,
    scale: float,
    sweeps: int = 4,
    bid_free: bool = False,
) -> tuple[dict[str, float], float]:
    """Coordinate descent over the reserve grid, starting from 'never accept'."""
    reserves = {a: GRID[-1] for a in order[:-1]}
    best = _loss(simulate(tasks, order, rows, probs, reserves, with_plan, juror, bid_free),
                 lam, scale)
    for _ in range(sweeps):
        improved = False
        for a in order[:-1]:
            for r in GRID:
                trial = {**reserves, a: r}
                loss = _loss(simulate(tasks, order, rows, probs, trial, with_plan, juror,
                                      bid_free), lam, scale)
                if loss < best - 1e-12:
                    best, reserves, improved = loss, trial, True
        if not improved:
            break
    return reserves, best


def fit_staged(
    tasks: Sequence[str],
    order: Sequence[str],
    rows: Mapping[tuple[str, str], StagedRow],
    *,
    lam: float,
    jurors: Sequence[str] = (),
    feature_sets: Sequence[Sequence[str]] | None = None,
    use_memory: bool = True,
    against_dearest: Sequence[bool] = (False, True),
) -> tuple[StagedPolicy, dict[str, Any]]:
    """Fit the policy on training rows; returns it and a report of every candidate.

    ``against_dearest``: which kinds of assessment to try (plain p(pass), and/or the
    chance of no loss against the dearest agent); the latter needs memory.
    """
    if len(order) < 2:
        raise ValueError("a staged auction needs at least two agents")
    cheap = list(order[:-1])
    with_plan = {}
    for a in cheap:
        plan = sum(rows[(t, a)].outcome(True)[0] for t in tasks)
        direct = sum(rows[(t, a)].outcome(False)[0] for t in tasks)
        with_plan[a] = plan >= direct
    scale = float(np.mean([rows[(t, order[-1])].outcome(False)[1] for t in tasks])) or 1.0
    if feature_sets is None:
        base: list[tuple[str, ...]] = [(), ("entropy", "length")]
        if use_memory:
            base += [("memory",), ("entropy", "length", "memory")]
        feature_sets = base
    kinds = [k for k in dict.fromkeys(against_dearest) if use_memory or not k]
    if not kinds:
        raise ValueError("an assessment against the dearest agent needs memory")
    top_rows = [rows[(t, order[-1])] for t in tasks]
    top_loo = dict(zip(tasks, loo_predictions(top_rows, ("memory",), None, False), strict=True))
    pairs: list[tuple[tuple[str, ...], str | None]] = [(tuple(f), None) for f in feature_sets]
    pairs += [((*f, "jury"), j) for f in feature_sets for j in jurors]
    candidates = [(names, juror, rel) for names, juror in pairs for rel in kinds]
    report: dict[str, Any] = {"with_plan": with_plan, "scale": scale, "candidates": []}
    best: tuple[tuple[float, int, bool, float], Any] | None = None
    for names, juror, rel in candidates:
        if juror and any(juror not in rows[(t, a)].votes for t in tasks for a in cheap):
            continue  # no votes of this juror on every training bid
        probs = {}
        for a in cheap:
            agent_rows = [rows[(t, a)] for t in tasks]
            for t, p in zip(tasks, loo_predictions(agent_rows, names, juror, with_plan[a]),
                            strict=True):
                probs[(t, a)] = no_loss(float(p), float(top_loo[t])) if rel else float(p)
        free = not reads_bid(names)  # a juror candidate has "jury" among its names
        reserves, loss = tune_reserves(tasks, order, rows, probs, with_plan, juror, lam, scale,
                                       bid_free=free)
        sim = simulate(tasks, order, rows, probs, reserves, with_plan, juror, free)
        logloss = _log_loss(tasks, cheap, rows, probs, with_plan, order[-1] if rel else None)
        entry = {"features": list(names), "juror": juror, "against_dearest": rel,
                 "loss": loss, "reserves": reserves, "log_loss": logloss,
                 "train_pass": float(np.mean([r["passed"] for r in sim])),
                 "train_cost_ratio": float(np.mean([r["cost"] for r in sim])) / scale}
        report["candidates"].append(entry)
        # Equal routing loss (e.g. every candidate sends everything to the dearest agent)
        # says nothing about paying for signals: keep the cheapest signals (none read
        # from a bid, then the bid's own, then a juror's vote), then the better
        # predictor, so that the reserve knob has something free to act on.
        paid = 2 if juror else 1 if reads_bid(names) else 0
        key = (round(loss, 12), paid, rel, logloss)
        if best is None or key < best[0]:
            best = (key, (names, juror, rel, reserves))
    assert best is not None
    names, juror, rel, reserves = best[1]
    agents = {}
    for a in cheap:
        agent_rows = [rows[(t, a)] for t in tasks]
        x = _design(agent_rows, names, juror)
        y = np.asarray([1.0 if r.outcome(with_plan[a])[0] else 0.0 for r in agent_rows])
        w = logistic_scaled(x, y)
        coef = dict(zip(("bias", *names), (float(v) for v in w), strict=True))
        agents[a] = AgentPolicy(
            bias=coef["bias"], entropy=coef.get("entropy", 0.0), length=coef.get("length", 0.0),
            memory=coef.get("memory", 0.0), jury=coef.get("jury", 0.0),
            reserve=min(1.0, float(reserves[a])),
        )
        if reserves[a] > 1.0:  # never accepted: not offered at all
            agents[a] = AgentPolicy(**{**agents[a].__dict__, "reserve": 1.0, "offered": False})
    dearest = None
    if rel:
        w = logistic_scaled(_design(top_rows, ("memory",), None),
                            np.asarray([1.0 if r.outcome(False)[0] else 0.0 for r in top_rows]))
        dearest = AgentPolicy(bias=float(w[0]), memory=float(w[1]), reserve=1.0)
    policy = StagedPolicy(agents=agents, juror=juror, explore=0.0, fitted=True, dearest=dearest,
                          dearest_agent=order[-1] if dearest else None)
    report.update(chosen={"features": list(names), "juror": juror, "against_dearest": rel,
                          "loss": best[0][0], "log_loss": best[0][3]},
                  execute_plan={**with_plan, order[-1]: False})
    return policy, report


def memory_estimate(
    target: str,
    agent: str,
    others: Sequence[str],
    passed: Mapping[tuple[str, str], bool],
    embeddings: Mapping[str, np.ndarray],
    k: int,
    prior: float,
    strength: float = 1.0,
) -> float:
    """What a memory holding the other tasks' verified outcomes would estimate for target."""
    sims = sorted(((float(embeddings[target] @ embeddings[u]), u) for u in others
                   if (u, agent) in passed), reverse=True)[:k]
    w = sum(max(0.0, s) for s, _ in sims)
    hits = sum(max(0.0, s) * (1.0 if passed[(u, agent)] else 0.0) for s, u in sims)
    return (strength * prior + hits) / (strength + w) if math.isfinite(w) else prior


def remembered_outcomes(
    tasks: Sequence[str],
    order: Sequence[str],
    outcomes: Mapping[tuple[str, str], Mapping[str, Any]],
    direct: Mapping[tuple[str, str], Mapping[str, Any]],
) -> dict[tuple[str, str], bool]:
    """Pass/fail per (task, agent) as the agent would execute on winning.

    The dearest agent answers directly (the staged auction's last resort); a cheaper
    one executes its plan unless answering directly passed more of these tasks (the
    rule ``fit_staged`` decides by). Where a direct answer is missing, the plan's.
    """
    out = {}
    for i, a in enumerate(order):
        has_direct = all((t, a) in direct for t in tasks)
        plan_passes = sum(bool(outcomes[(t, a)]["passed"]) for t in tasks)
        direct_passes = sum(bool(direct[(t, a)]["passed"]) for t in tasks) if has_direct else -1
        use_direct = has_direct and (i == len(order) - 1 or direct_passes > plan_passes)
        for t in tasks:
            out[(t, a)] = bool((direct if use_direct else outcomes)[(t, a)]["passed"])
    return out


def rows_from_records(
    tasks: Sequence[str],
    order: Sequence[str],
    prices: Mapping[str, float],
    audits: Mapping[str, Mapping[str, Any]],
    outcomes: Mapping[tuple[str, str], Mapping[str, Any]],
    direct: Mapping[tuple[str, str], Mapping[str, Any]],
    embeddings: Mapping[str, np.ndarray],
    *,
    k: int = 8,
    prior: float = 0.4,
    use_memory: bool = True,
) -> dict[tuple[str, str], StagedRow]:
    """Training rows from a benchmark bank's records (no model call).

    ``audits``: training auction audits by task (every bid and every juror's vote);
    ``outcomes``/``direct``: graded outcome records by (task, agent), with the plan
    then executed, and answered directly. A plan outcome's cost includes its bid, so
    the execution's own cost is the outcome's minus the bid's. Memory's estimate is
    leave-one-out over the other training tasks' outcomes, by agent, each agent's
    outcomes taken the way it executes when it wins (``remembered_outcomes``): that
    is what a memory seeded with the training split holds at run time.
    """
    passed = remembered_outcomes(tasks, order, outcomes, direct)
    rows: dict[tuple[str, str], StagedRow] = {}
    for t in tasks:
        audit = audits[t]
        bids = {b["agent"]: b for b in audit["bids"] if b["round"] == 0}
        by_juror = ((audit.get("phases") or {}).get("jury") or {}).get("by_juror") or {}
        n_bids = max(1, len(bids))
        others = [u for u in tasks if u != t]
        for a in order:
            bid = bids.get(a) or {}
            bid_cost = (int(bid.get("tokens") or 0) + int(bid.get("input_tokens") or 0)) * prices[
                a] / 1e6
            out = outcomes[(t, a)]
            d = direct.get((t, a))
            memory_p = (memory_estimate(t, a, others, passed, embeddings, k, prior)
                        if use_memory else prior)
            rows[(t, a)] = StagedRow(
                task_id=t, agent=a, entropy=bid.get("entropy"), tokens=int(bid.get("tokens") or 0),
                bid_cost=bid_cost, memory_p=memory_p, prior=prior,
                passed_plan=bool(out["passed"]), cost_plan=max(0.0, float(out["cost"]) - bid_cost),
                passed_direct=None if d is None else bool(d["passed"]),
                cost_direct=None if d is None else float(d["cost"]),
                votes={j: float(v) for j, v in (bid.get("votes") or {}).items() if v is not None},
                vote_costs={j: float(c) / n_bids for j, c in by_juror.items()},
            )
    return rows


def stored_embeddings(bank: Any, task_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """The task embeddings a benchmark bank stored (the kNN memory's view of each task)."""
    out = {}
    for t in task_ids:
        stored = bank.get("embedding", t)
        if stored is None:
            raise ValueError(f"no embedding stored for {t}")
        out[t] = np.asarray(stored["vector"], dtype=np.float64)
    return out


def fit_staged_from_bank(
    bank: Any, *, lam: float, use_memory: bool = True, k: int = 8,
    against_dearest: Sequence[bool] = (False, True),
) -> tuple[StagedPolicy, dict[str, Any]]:
    """Fit the staged policy from a benchmark bank's training split (no model call)."""
    meta = bank.get("meta", "tasks")
    pool = (bank.get("meta", "pool") or {}).get("agents") or []
    if meta is None or not pool:
        raise ValueError("the bank holds no benchmark run")
    prices = {a["name"]: float(a["price"]) for a in pool}
    order = sorted(prices, key=lambda a: (prices[a], a))
    train = [t["id"] for t in meta["tasks"] if t["split"] == "train"]
    outcome_rows = bank.records("outcome")
    direct_rows = bank.records("direct")
    audits = bank.records("train_audit")

    def key(t: str, a: str) -> str:
        return f"{t}|{a}"

    missing = [t for t in train if t not in audits
               or any(key(t, a) not in outcome_rows for a in order)]
    if missing:
        raise ValueError(f"training outcomes or auctions missing for {len(missing)} tasks; "
                         "resume the run first")
    outcomes = {(t, a): outcome_rows[key(t, a)] for t in train for a in order}
    direct = {(t, a): direct_rows[key(t, a) + "|direct"] for t in train for a in order
              if key(t, a) + "|direct" in direct_rows}
    embeddings = stored_embeddings(bank, train)
    rows = rows_from_records(train, order, prices, {t: audits[t]["audit"] for t in train},
                             outcomes, direct, embeddings, k=k, use_memory=use_memory)
    policy, report = fit_staged(train, order, rows, lam=lam, jurors=order, use_memory=use_memory,
                                against_dearest=against_dearest)
    report["train_tasks"] = len(train)
    return policy, report
