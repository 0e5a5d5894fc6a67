"""From a bank to tables, with no model: the weight fit, the baselines and the report.

Only complete pieces enter the tables: baselines once every agent has executed
every task, and each SALE variant's task orders that cover the whole test split.
"""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sale_graph.bench.bank import OutcomeBank
from sale_graph.bench.config import (
    BANK_DB,
    FIT_LAM,
    BenchConfig,
    _direct_key,
    _outcome_key,
    _result_key,
    methods_for,
)
from sale_graph.bench.records import Outcome, Record
from sale_graph.bench.signals import jury_signal, refinement_effect

__all__ = ["fit_from_bank", "report_from_bank", "report_from_export"]

KNN_K = (3, 5, 10, 20, 50)  # neighbour counts the kNN routers are tuned over
# the ceiling of cheapest-first acceptance (routers.perfect_accept)
PERFECT_ACCEPT = "perfect accept (staged ceiling)"
# ... and of acceptance against the dearest agent (routers.perfect_no_loss)
PERFECT_NO_LOSS = "perfect no-loss (ceiling against the dearest)"


# --------------------------------------------------------------------------- fit and report


def _pool_meta(bank: OutcomeBank) -> tuple[list[str], dict[str, float]]:
    pool = (bank.get("meta", "pool") or {}).get("agents") or []
    prices = {a["name"]: float(a["price"]) for a in pool}
    return sorted(prices, key=lambda a: (prices[a], a)), prices


def _outcome_table(
    bank: OutcomeBank, task_ids: Sequence[str], agents: Sequence[str], direct: bool = False
) -> dict[str, dict[str, Outcome]] | None:
    """``table[task][agent]`` of planned (or ``direct``) outcomes; None while incomplete."""
    rows = bank.records("direct" if direct else "outcome")
    key = _direct_key if direct else _outcome_key
    table: dict[str, dict[str, Outcome]] = {}
    for t in task_ids:
        row = {}
        for a in agents:
            d = rows.get(key(t, a))
            if d is None:
                return None
            row[a] = Outcome.from_dict(d)
        table[t] = row
    return table


def fit_from_bank(
    bank: OutcomeBank, objective: str = "minmax", lam: float = FIT_LAM, *, memory: bool = False
) -> Any:
    """Fit the weights on the training auctions and outcomes stored in ``bank``.

    ``memory``: fit ``w_m`` too, each training bid carrying memory's success estimate
    for its agent, leave-one-out over the other training tasks' verified outcomes
    (what a memory seeded with them gives; the same estimate the staged fit uses).
    """
    from sale_graph.bench.fit import fit_weights, training_bids

    meta = bank.get("meta", "tasks")
    if meta is None:
        raise ValueError(f"{bank.path} holds no benchmark run")
    agents, prices = _pool_meta(bank)
    train_ids = [t["id"] for t in meta["tasks"] if t["split"] == "train"]
    table = _outcome_table(bank, train_ids, agents)
    audits = bank.records("train_audit")
    if table is None or any(t not in audits for t in train_ids):
        raise ValueError("the training outcomes and auctions are incomplete; resume the run first")
    estimates = _loo_memory(bank, train_ids, agents, table) if memory else {}
    rows = {t: training_bids(audits[t]["audit"], table[t], estimates.get(t)) for t in train_ids}
    if objective not in ("minmax", "mean"):
        raise ValueError(f"objective must be minmax or mean, got {objective!r}")
    juror_costs = {
        t: dict(((audits[t]["audit"].get("phases") or {}).get("jury") or {}).get("by_juror") or {})
        for t in train_ids
    }
    return fit_weights(
        rows,
        objective="mean" if objective == "mean" else "minmax",
        lam=lam,
        jurors=agents,
        tie_order=agents,
        juror_costs=juror_costs,
    )


def _loo_memory(
    bank: OutcomeBank,
    train_ids: Sequence[str],
    agents: Sequence[str],
    table: Mapping[str, Mapping[str, Outcome]],
) -> dict[str, dict[str, float]]:
    """``estimate[task][agent]``: memory's success estimate with this task left out."""
    from sale_graph.bench.staged_fit import memory_estimate, stored_embeddings
    from sale_graph.outcomes import DEFAULT_PRIOR

    vectors = stored_embeddings(bank, train_ids)
    passed = {(t, a): table[t][a].passed for t in train_ids for a in agents}
    from sale_graph.context import Context

    k = int(Context.__dataclass_fields__["k"].default)  # type: ignore[arg-type] # Context.k
    return {
        t: {a: memory_estimate(t, a, [u for u in train_ids if u != t], passed, vectors, k,
                               DEFAULT_PRIOR) for a in agents}
        for t in train_ids
    }


def _router_loss(
    routes: Sequence[Any], table: Mapping[str, Mapping[str, Outcome]], scale: float
) -> float:
    """Mean of the fit's loss (failure + FIT_LAM x normalised cost) over routed tasks."""
    losses = []
    for r in routes:
        ran = [table[r.task_id][a] for a in r.tried]
        cost = sum(o.cost for o in ran)
        losses.append((0.0 if table[r.task_id][r.agent].passed else 1.0) + FIT_LAM * cost / scale)
    return sum(losses) / len(losses) if losses else 0.0


def _tune(
    router: Any,
    knobs: Sequence[float],
    train_ids: Sequence[str],
    table: Mapping[str, Mapping[str, Outcome]],
    embeddings: Mapping[str, Any],
    prices: Mapping[str, float],
) -> tuple[int, float]:
    """Pick (k, knob) with the lowest leave-one-out training loss (the fit's loss).

    k is tuned too: the paper's k = 50 assumes a large training set; with fewer
    training tasks than 50 it would average over all of them and ignore the task.
    """
    scale = max((o.cost for t in train_ids for o in table[t].values()), default=0.0) or 1.0
    ks = sorted({k for k in KNN_K if k < len(train_ids)} | {min(50, max(1, len(train_ids) - 1))})
    best = None
    for k in ks:
        for knob in knobs:
            routes = []
            for t in train_ids:
                others = [u for u in train_ids if u != t] or [t]
                routes += router(others, [t], table, embeddings, prices, knob, k=k)
            loss = _router_loss(routes, table, scale)
            if best is None or loss < best[0] - 1e-12:
                best = (loss, k, knob)
    assert best is not None
    return best[1], best[2]


def _baseline_records(
    bank: OutcomeBank,
    train_ids: list[str],
    test_ids: list[str],
    agents: list[str],
    prices: dict[str, float],
    domains: dict[str, str],
    bins: dict[str, str],
) -> tuple[list[Record], dict[str, Any]]:
    import numpy as np

    from sale_graph.bench import routers

    table = _outcome_table(bank, [*train_ids, *test_ids], agents)
    if table is None:
        return [], {}
    stored = {t: bank.get("embedding", t) for t in table}
    if any(v is None for v in stored.values()):
        return [], {}
    emb = {t: np.asarray(v["vector"], dtype=np.float64) for t, v in stored.items() if v}
    c_max = max((o.cost for t in train_ids for o in table[t].values()), default=0.0) or 1.0
    k_wtp, lam = _tune(
        routers.wtp,
        [c_max * f for f in (0.1, 0.3, 1, 3, 10, 100, 1000)],
        train_ids,
        table,
        emb,
        prices,
    )
    k_carrot, mu = _tune(
        routers.carrot, [0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9], train_ids, table, emb, prices
    )
    thresholds = routers.fit_cascade_thresholds(train_ids, table, prices)
    # the kNN router answers without a plan where direct answers were run (no bid to follow)
    answers = _outcome_table(bank, [*train_ids, *test_ids], agents, direct=True) or table
    k_knn, tau = _tune(routers.knn_threshold, [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.01],
                       train_ids, answers, emb, prices)
    routes = {f"single: {a}": routers.single_agent(test_ids, a) for a in agents}
    routes["random"] = routers.random_router(test_ids, agents, seed=0)
    routes["oracle"] = routers.oracle(test_ids, table, prices)
    routes["WTP"] = routers.wtp(train_ids, test_ids, table, emb, prices, lam, k=k_wtp)
    routes["CARROT"] = routers.carrot(train_ids, test_ids, table, emb, prices, mu, k=k_carrot)
    routes["cascade"] = routers.cascade(test_ids, table, prices)
    routes["cascade (fitted)"] = routers.cascade(test_ids, table, prices, thresholds)
    records = []
    for name, rs in routes.items():
        records += routers.routes_to_records(name, rs, table, domains, bins)
    knn = routers.knn_threshold(train_ids, test_ids, answers, emb, prices, tau, k=k_knn)
    records += routers.routes_to_records("kNN on verified outcomes", knn, answers, domains, bins)
    best = _best_modes(test_ids, table, _outcome_table(bank, test_ids, agents, direct=True),
                       agents[-1])
    ceiling = routers.perfect_accept(test_ids, best, prices)
    records += routers.routes_to_records(PERFECT_ACCEPT, ceiling, best, domains, bins)
    no_loss = routers.perfect_no_loss(test_ids, best, prices)
    records += routers.routes_to_records(PERFECT_NO_LOSS, no_loss, best, domains, bins)
    direct = _outcome_table(bank, test_ids, agents, direct=True)
    if direct:
        records = [r for r in records if r.method != "oracle"]
        records += _direct_records(test_ids, table, direct, agents, prices, domains, bins)
    knobs = {
        "wtp_lambda": lam,
        "wtp_lambda_over_cmax": lam / c_max,
        "carrot_mu": mu,
        "wtp_k": k_wtp,
        "carrot_k": k_carrot,
        "knn_tau": tau,
        "knn_k": k_knn,
        "cascade_thresholds": {a: (None if math.isinf(v) else v) for a, v in thresholds.items()},
        "direct": bool(direct),
    }
    return records, knobs


def _best_modes(
    test_ids: Sequence[str],
    plan: Mapping[str, Mapping[str, Outcome]],
    direct: Mapping[str, Mapping[str, Outcome]] | None,
    dearest: str,
) -> dict[str, dict[str, Outcome]]:
    """Per task, each cheaper agent's better mode; the dearest answers directly.

    A cheaper agent counts as passing where its plan or its direct answer passed
    (the cheaper such answer is charged), so no choice of plan or direct per agent
    beats it; the staged auction's last resort answers directly. Without direct
    answers, the plans.
    """
    if direct is None:
        return {t: dict(plan[t]) for t in test_ids}
    out: dict[str, dict[str, Outcome]] = {}
    for t in test_ids:
        row = {}
        for a, planned in plan[t].items():
            answered = direct[t][a]
            if a == dearest:
                row[a] = answered
                continue
            passing = [o for o in (planned, answered) if o.passed]
            row[a] = min(passing, key=lambda o: o.cost) if passing else answered
        out[t] = row
    return out


def _direct_records(
    test_ids: list[str],
    table: Mapping[str, Mapping[str, Outcome]],
    direct: Mapping[str, Mapping[str, Outcome]],
    agents: list[str],
    prices: Mapping[str, float],
    domains: Mapping[str, str],
    bins: Mapping[str, str],
) -> list[Record]:
    """Each agent answering with no plan, and the oracle over both modes.

    Answering directly is what a user of one model does, so it is a baseline of its
    own; the oracle's upper bound is the cheapest passing (agent, mode) pair.
    """
    import dataclasses

    from sale_graph.bench import routers

    records = []
    for a in agents:
        rs = routers.single_agent(test_ids, a)
        records += routers.routes_to_records(f"single: {a} (direct)", rs, direct, domains, bins)
    mode = {**{a: a for a in agents}, **{f"{a} (direct)": a for a in agents}}
    both = {t: {**table[t], **{f"{a} (direct)": direct[t][a] for a in agents}} for t in test_ids}
    both_prices = {m: prices[a] for m, a in mode.items()}
    routes = routers.oracle(test_ids, both, both_prices)
    for r in routers.routes_to_records("oracle", routes, both, domains, bins):
        real = mode[r.agent]
        records.append(dataclasses.replace(r, agent=real, tried=(real,)))
    return records


def _execution_lengths(bank: OutcomeBank, test_ids: Sequence[str], agent: str) -> dict[str, float]:
    """Tokens ``agent`` spent executing its plan on each test task (the plan left out)."""
    rows = bank.records("outcome")
    out = {}
    for t in test_ids:
        d = rows.get(_outcome_key(t, agent))
        if d is not None:
            out[t] = float(d.get("execution_tokens", d["tokens"] - (d.get("plan_tokens") or 0)))
    return out


def report_from_bank(
    bank: OutcomeBank, out_dir: str | Path, *, plots: bool = True
) -> dict[str, Path]:
    """Write results.json/.md and the plots from what ``bank`` holds; no model is touched.

    Only complete pieces enter the tables: baselines once every agent has executed
    every task, and each SALE variant's task orders that cover the whole test split.
    """
    from sale_graph.bench.report import write_report

    config = BenchConfig.from_dict(bank.get("meta", "config") or {})
    meta_tasks = (bank.get("meta", "tasks") or {}).get("tasks") or []
    agents, prices = _pool_meta(bank)
    if not meta_tasks or not agents:
        raise ValueError(f"{bank.path} holds no benchmark run")
    train_ids = [t["id"] for t in meta_tasks if t["split"] == "train"]
    test_ids = [t["id"] for t in meta_tasks if t["split"] == "test"]
    domains = {t["id"]: t["domain"] for t in meta_tasks}
    bins = {t["id"]: t["bin"] for t in meta_tasks}

    records, knobs = _baseline_records(bank, train_ids, test_ids, agents, prices, domains, bins)
    results = bank.records("result")
    progress: dict[str, str] = {}
    sale_calls: dict[str, dict[str, int]] = {}
    for m in methods_for(config):
        complete = []
        for k in range(m.orders):
            rows = [results.get(_result_key(m.name, k, t)) for t in test_ids]
            if all(rows):
                complete.append(k)
                records += [Record.from_dict(row["record"]) for row in rows]  # type: ignore[index]
                calls = sale_calls.setdefault(m.name, {"calls": 0, "new_calls": 0})
                for row in rows:
                    calls["calls"] += int(row["calls"])  # type: ignore[index]
                    calls["new_calls"] += int(row["new_calls"])  # type: ignore[index]
        n_done = sum(
            _result_key(m.name, k, t) in results for k in range(m.orders) for t in test_ids
        )
        progress[m.name] = f"{len(complete)}/{m.orders} orders complete ({n_done} auctions)"
    fit = bank.get("fit", "minmax")
    out = Path(out_dir)
    if fit:
        from sale_graph.bench.fit import save_weights

        staged = bank.get("fit", "staged")
        save_weights(fit["weights"], out / "weights.json",
                     staged=staged["policy"] if staged else None,
                     execute_plan=staged["execute_plan"] if staged else None)
    meta = {
        "config": config.to_dict(),
        "agents": [{"name": a, "price_usd_per_mtok": prices[a]} for a in agents],
        "tasks": {
            "train": len(train_ids),
            "test": len(test_ids),
            "test_by_domain": dict(Counter(domains[t] for t in test_ids)),
        },
        "fit": fit,
        # only once fitted, so runs without it rebuild byte-identical
        **({"fit_with_memory": fm} if (fm := bank.get("fit", "minmax-outcomes")) else {}),
        "router_knobs": knobs,
        "sale_progress": progress,
        "sale_model_calls": sale_calls,
        "bank_calls": len(bank),
        "seconds": "llama.cpp compute seconds recorded at first generation (replayed calls "
        "keep theirs), summed over calls; sandbox time excluded",
    }
    preamble = _preamble(
        config,
        agents,
        prices,
        train_ids,
        test_ids,
        domains,
        fit,
        knobs,
        progress,
        has_baselines=bool(knobs),
        outcomes_done=len(bank.records("outcome")),
        fit_outcomes=bank.get("fit", "minmax-outcomes"),
    )
    auctions = [m.name for m in methods_for(config)]
    order = list(auctions)
    for a in agents[::-1]:
        order += [f"single: {a}", f"single: {a} (direct)"]
    order += ["random", "oracle", PERFECT_ACCEPT, PERFECT_NO_LOSS, "WTP", "CARROT",
              "kNN on verified outcomes", "cascade", "cascade (fitted)"]
    return write_report(
        records,
        out,
        largest=agents[-1],
        agents=agents,
        meta=meta,
        plots=plots,
        preamble=preamble,
        method_order=order,
        execution_lengths=_execution_lengths(bank, test_ids, agents[-1]),
        auction_methods=auctions,
        steps={"jury_signal": jury_signal(bank, config, test_ids),
               "refinement": refinement_effect(bank, config, test_ids)},
    )


def _preamble(
    config: BenchConfig,
    agents: list[str],
    prices: Mapping[str, float],
    train_ids: list[str],
    test_ids: list[str],
    domains: Mapping[str, str],
    fit: Mapping[str, Any] | None,
    knobs: Mapping[str, Any],
    progress: Mapping[str, str],
    has_baselines: bool,
    outcomes_done: int = 0,
    fit_outcomes: Mapping[str, Any] | None = None,
) -> str:
    by_domain = Counter(domains[t] for t in test_ids)
    pool = ", ".join(f"{a} (${prices[a]:.5f}/Mtok)" for a in agents)
    lines = [
        f"Pool: {pool}. Test split: {len(test_ids)} tasks "
        f"({', '.join(f'{n} {d}' for d, n in sorted(by_domain.items()))}); "
        f"{len(train_ids)} training tasks fit the weights and the routers. "
        f"Bins: {', '.join(config.bins)}. Plans <= {config.max_bid_tokens} tokens, "
        f"answers <= {config.max_answer_tokens} tokens per call, coding executor "
        f"<= {config.coding_rounds} write/check rounds.",
        "",
        "- Cost = (input + output tokens) x the agent's price. Every method pays for what "
        "it ran: single agents and routers plan (the agent's own bid) and execute; SALE pays "
        "every bid, vote and refinement plus the winner's execution; a cascade pays every "
        "agent it tried.",
        "- Time shares use llama.cpp compute seconds recorded when each call was first "
        "generated (calls replayed from the outcome bank keep their original seconds), "
        "summed over calls; sandbox runs are not counted.",
    ]
    if fit:
        lines.append(
            f"- SALE weights: min-max MILP on the training split (loss = failure + "
            f"{FIT_LAM} x normalised cost): {_weights_text(fit['weights'])}; training pass@1 "
            f"of the selection "
            f"{100 * fit['train_pass_rate']:.1f}%. Jurors weighted 0 are not asked (the fit "
            "charges each heeded juror its votes' price). Ablations zero one term of these "
            "weights (or change the jury); 'SALE default weights' uses the package defaults."
        )
    if fit_outcomes:
        lines.append(
            f"- SALE with verified outcomes in memory fits w_m too (each training bid carries "
            f"memory's leave-one-out success estimate for its agent): "
            f"{_weights_text(fit_outcomes['weights'])}; training pass@1 "
            f"{100 * fit_outcomes['train_pass_rate']:.1f}%."
        )
    if has_baselines:
        lines.append(
            f"- Routers tuned on the training split (leave-one-out, same loss): WTP lambda = "
            f"{knobs['wtp_lambda_over_cmax']:g} x the dearest training execution with "
            f"k = {knobs['wtp_k']} neighbours, CARROT mu = {knobs['carrot_mu']:g} with "
            f"k = {knobs['carrot_k']}; 'cascade' stops when the coding examples pass, "
            "'cascade (fitted)' uses per-agent thresholds fitted for 90% training precision. "
            "Reasoning answers carry no self-check, so cascades always escalate there."
        )
        how = (" (with its plan or directly, whichever passed, the cheaper if both), else "
               "the largest answering directly" if knobs.get("direct") else
               ", else the largest (plans executed: this run has no direct answers)")
        lines.append(
            f"- '{PERFECT_ACCEPT}' takes the cheapest agent that passes{how}, paying for "
            "nothing it rejects: no staged auction that accepts a cheaper agent only when it "
            "would pass can do better, as it still pays the largest for every task nobody "
            f"passes. '{PERFECT_NO_LOSS}' also takes the cheapest agent where the largest "
            "would fail too (no loss against it): the ceiling of assessing bids against "
            "the dearest agent. The oracle takes the cheapest agent on such tasks as well."
        )
        if knobs.get("direct"):
            lines.append(
                "- 'single: X (direct)' is agent X answering with no plan (what a user of one "
                "model does); the oracle picks the cheapest passing (agent, mode) pair."
            )
    else:
        total = len(agents) * (len(train_ids) + len(test_ids))
        lines.append(
            f"- Baselines: not yet (every agent must execute every task first; "
            f"{outcomes_done}/{total} done)."
        )
    lines.append(
        f"- SALE runs {config.orders} seeded task order(s) with memory starting empty; "
        "ablations run the first order. Progress: "
        + "; ".join(f"{m}: {p}" for m, p in progress.items())
        + "."
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------- from an export


def _weights_text(w: Mapping[str, Any]) -> str:
    jury = ", ".join(f"{j} {v:.3g}" for j, v in sorted(w["jury"].items()))
    memory = f", memory {w['memory']:.3g}" if "memory" in w else ""
    return f"cost {w['cost']:.3g}, entropy {w['entropy']:.3g}{memory}, jury {{{jury}}}"


def report_from_export(
    export: str | Path, out_dir: str | Path, *, plots: bool = True
) -> dict[str, Path]:
    """Rebuild the report from a committed ``bank.jsonl.gz`` (a scratch database, no model)."""
    with tempfile.TemporaryDirectory(prefix="sale-bank-") as tmp:
        bank = OutcomeBank.from_export(export, Path(tmp) / BANK_DB)
        try:
            return report_from_bank(bank, out_dir, plots=plots)
        finally:
            bank.close()
