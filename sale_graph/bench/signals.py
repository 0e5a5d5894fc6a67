"""What the auction's paid steps achieve: jury votes that know, refinements that help.

Votes: how well each juror's votes pick out plans that pass.

The full auction pays for its votes. A listwise jury asks each juror once per round
rather than once per bid, and a self-jury lets each bidder rate only its own plan.
Whether they are as informative is measured here on the test auctions: for each
juror, the AUC of its round-0 votes (expected values) for "the bidder passes this
task executing its plan alone" (the outcome bank). Round-0 bids are the same in
every row (their calls replay), so each row's AUC is compared with SALE's per-bid
jury on the same tasks, resampling tasks for both at once.

Refinement: in each test auction a refined bid won, did the task pass where the
provisional winner's own round-0 plan (the outcome bank, executed the same way)
would have failed, or the reverse?
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sale_graph.bench.bank import OutcomeBank
from sale_graph.bench.config import (
    BenchConfig,
    Method,
    _direct_key,
    _outcome_key,
    _result_key,
    methods_for,
)
from sale_graph.bench.metrics import LEVEL, N_BOOT, _interval, _resamples

REFERENCE = "SALE"

Vote = tuple[float, bool, str]  # the vote, whether the bidder passed, the bidder
Votes = dict[str, list[Vote]]  # task -> its round-0 bids' votes


def jury_methods(config: BenchConfig) -> list[Method]:
    """SALE and the rows that ask its jurors differently (the listwise format).

    Rows with SALE's jury replay its very votes; so does a self-jury, whose vote on a
    bid is the same call as SALE's, only restricted to the bidder's own plans (its
    AUC there would differ from SALE's by which bids are rated, not by the votes).
    """
    return [m for m in methods_for(config)
            if m.auction == "full" and m.jury == "all" and not m.zero
            and m.weights == "fitted" and (m.name == REFERENCE or m.jury_format != "per_bid")]


Records = Mapping[str, Mapping[str, Any]]  # a bank namespace, read once: key -> record


def _votes(results: Records, outcomes: Records, method: str,
           test_ids: Sequence[str]) -> dict[str, Votes] | None:
    """``{juror: {task: [(vote, passed), ...]}}`` of a row's first order; None if unfinished."""
    out: dict[str, Votes] = {}
    for t in test_ids:
        row = results.get(_result_key(method, 0, t))
        if row is None:
            return None
        for bid in (row.get("audit") or {}).get("bids") or ():  # rows of old runs: none
            outcome = outcomes.get(_outcome_key(t, bid["agent"]))
            if bid.get("round") != 0 or outcome is None:
                continue
            for juror, vote in (bid.get("votes") or {}).items():
                if vote is not None:
                    out.setdefault(juror, {}).setdefault(t, []).append(
                        (float(vote), bool(outcome["passed"]), bid["agent"]))
    return out


def auc(votes: Sequence[Vote], within_bidder: bool = False) -> float:
    """P(a passing bid's vote > a failing one's), ties counting half; nan without both.

    ``within_bidder`` compares only bids of the same bidder: what the vote knows beyond
    who bid (the bidder's identity alone separates passes well on a mixed pool).
    """
    groups: dict[str, list[Vote]] = {}
    for v in votes:
        groups.setdefault(v[2] if within_bidder else "", []).append(v)
    wins, pairs = 0.0, 0
    for group in groups.values():
        pos = np.array([v for v, passed, _ in group if passed])
        neg = np.array([v for v, passed, _ in group if not passed])
        if len(pos) and len(neg):
            wins += float((pos[:, None] > neg[None, :]).sum()
                          + 0.5 * (pos[:, None] == neg[None, :]).sum())
            pairs += len(pos) * len(neg)
    return wins / pairs if pairs else float("nan")


def _auc_over(votes: Votes, tasks: Sequence[str], within_bidder: bool) -> float:
    return auc([v for t in tasks for v in votes.get(t, ())], within_bidder)


def boot_auc(
    votes: Votes, tasks: Sequence[str], idx: np.ndarray, within_bidder: bool
) -> np.ndarray:
    """``auc`` over each resample of ``tasks`` (rows of task indices ``idx``) at once.

    Why: thousands of resamples each rebuilding its vote list made the jury section
    most of ``--from-bank``'s time. Votes take few distinct values, so each task is a
    histogram of its passing and failing votes per value, a resample is a weighted sum
    of those, and the pairs a passing vote wins are counted from the failing votes
    below it. The counts are whole numbers, so each AUC equals ``auc``'s exactly.
    """
    flat = [v for t in tasks for v in votes.get(t, ())]
    if not flat:
        return np.full(len(idx), np.nan)
    values = sorted({v for v, _, _ in flat})
    column = {v: k for k, v in enumerate(values)}
    groups = sorted({b for _, _, b in flat}) if within_bidder else [""]
    row = {g: i for i, g in enumerate(groups)}
    hist = np.zeros((2, len(groups), len(tasks), len(values)))  # [passed?, group, task, value]
    for i, t in enumerate(tasks):
        for v, passed, bidder in votes.get(t, ()):
            hist[int(passed), row[bidder if within_bidder else ""], i, column[v]] += 1
    weights = np.zeros((len(idx), len(tasks)))
    np.add.at(weights, (np.arange(len(idx))[:, None], idx), 1.0)
    pos = np.einsum("bt,gtk->bgk", weights, hist[1])
    neg = np.einsum("bt,gtk->bgk", weights, hist[0])
    below = np.cumsum(neg, axis=2) - neg  # failing votes strictly below each value
    wins = (pos * (below + 0.5 * neg)).sum(axis=(1, 2))
    pairs = (pos.sum(axis=2) * neg.sum(axis=2)).sum(axis=1)
    return np.where(pairs > 0, wins / np.maximum(pairs, 1.0), np.nan)


def jury_signal(
    bank: OutcomeBank,
    config: BenchConfig,
    test_ids: Sequence[str],
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, dict[str, Any]]:
    """Per finished row and juror: bids rated, AUC with its interval, and against SALE.

    Tasks are resampled (a task's bids move together); resamples where one side has
    no passing or no failing bid are left out of that interval.
    """
    results, outcomes = bank.records("result"), bank.records("outcome")
    rows = {m.name: (m, v) for m in jury_methods(config)
            if (v := _votes(results, outcomes, m.name, test_ids)) is not None}
    reference = rows[REFERENCE][1] if REFERENCE in rows else {}
    tasks = list(test_ids)
    idx = _resamples(len(tasks), n_boot, seed)
    ref_boot = {(juror, within): boot_auc(votes, tasks, idx, within)  # once, not per row
                for juror, votes in reference.items() for within in (False, True)}
    out: dict[str, dict[str, Any]] = {}
    for name, (method, by_juror) in rows.items():
        jurors: dict[str, Any] = {}
        for juror, votes in sorted(by_juror.items()):
            entry: dict[str, Any] = {"bids": sum(len(v) for v in votes.values())}
            for key, within in (("auc", False), ("auc_within_bidder", True)):
                boot = ref_boot[juror, within] if name == REFERENCE else boot_auc(
                    votes, tasks, idx, within)
                entry[key] = _finite_interval(boot, _auc_over(votes, tasks, within), level)
                ref = reference.get(juror)
                if name != REFERENCE and ref and entry[key]["estimate"] is not None:
                    diff = boot - ref_boot[juror, within]
                    entry[key + "_vs_reference"] = _finite_interval(
                        diff, entry[key]["estimate"] - _auc_over(ref, tasks, within), level)
            jurors[juror] = entry
        listwise = method.jury_format != "per_bid"
        out[name] = {"jurors": jurors, **_vote_calls(results, name, test_ids, listwise)}
    return out


def _finite_interval(
    stats: np.ndarray, estimate: float, level: float
) -> dict[str, float | None]:
    """An interval over the finite resamples, or None where nothing is defined.

    An AUC needs a pass and a fail among the bids; None keeps the JSON strict.
    """
    kept = stats[np.isfinite(stats)]
    if not math.isfinite(estimate) or not len(kept):
        return {"estimate": None, "lo": None, "hi": None}
    return dict(_interval(kept, estimate, level))


def _vote_calls(
    results: Records, method: str, test_ids: Sequence[str], listwise: bool
) -> dict[str, float]:
    """Round-0 vote calls per auction, and those votes' share of the auction's cost.

    The audit keeps one vote record per bid in either format; a listwise juror wrote
    all of a round's in one call, so there the calls are the jurors who voted.
    """
    calls, vote_cost, auction_cost = 0, 0.0, 0.0
    for t in test_ids:
        audit = results[_result_key(method, 0, t)].get("audit") or {}
        phases: Mapping[str, Any] = audit.get("phases") or {}
        jury = phases.get("jury") or {}
        if listwise:
            calls += len({j for b in audit.get("bids") or () if b.get("round") == 0
                          for j in (b.get("votes") or {})})
        else:
            calls += int(jury.get("calls") or 0)
        vote_cost += float(jury.get("cost_usd") or 0.0)
        auction_cost += sum(float((phases.get(p) or {}).get("cost_usd") or 0.0)
                            for p in ("bid", "jury", "refine"))
    return {"vote_calls_per_auction": calls / max(len(test_ids), 1),
            "vote_cost_share": vote_cost / auction_cost if auction_cost else 0.0}



def refinement_effect(
    bank: OutcomeBank, config: BenchConfig, test_ids: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per finished row that refines: how often a refined bid won, and what it changed.

    ``helped``: the task passed and the provisional winner would have failed it;
    ``hurt``: the reverse; the rest changed nothing. ``cost_share`` is what refining
    (refined bids and the votes on them) cost, as a share of the row's whole cost.
    """
    results = bank.records("result")
    plans, directs = bank.records("outcome"), bank.records("direct")
    out: dict[str, dict[str, Any]] = {}
    for m in methods_for(config):
        if m.auction != "full" or not m.refine:
            continue
        rows = [results.get(_result_key(m.name, 0, t)) for t in test_ids]
        if not all(rows) or not all((r or {}).get("audit") for r in rows):
            continue
        counts = {"auctions": len(rows), "refined_won": 0, "helped": 0, "hurt": 0,
                  "unjudged": 0}
        refine_cost = total_cost = 0.0
        for t, row in zip(test_ids, rows, strict=True):
            audit, record = row["audit"], row["record"]  # type: ignore[index]
            phases = audit.get("phases") or {}
            refine_cost += float((phases.get("refine") or {}).get("cost_usd") or 0.0)
            total_cost += float(record["cost_auction"]) + float(record["cost_execution"])
            if not audit.get("refined_won"):
                continue
            counts["refined_won"] += 1
            # a row executes every winner the same way (the paper's rows: the plan)
            with_plan = (audit.get("execution") or {}).get("with_plan") is not False
            before = audit.get("provisional_winner") or ""
            table, key = (plans, _outcome_key) if with_plan else (directs, _direct_key)
            would = (table.get(key(t, before)) or {}).get("passed")
            if would is None:
                counts["unjudged"] += 1
                continue
            passed = bool(record["passed"])
            counts["helped"] += int(passed and not would)
            counts["hurt"] += int(would and not passed)
        out[m.name] = {**counts, "net": counts["helped"] - counts["hurt"],
                       "cost_share": refine_cost / total_cost if total_cost else 0.0}
    return out


def refinement_section(effect: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The report's table of :func:`refinement_effect`."""
    if not effect:
        return []
    lines = [
        "", "## What refinement changed", "",
        "First order's test auctions. A refined bid won in the auctions counted; "
        "\"helped\" means the task passed where the provisional winner's own plan (the "
        "outcome bank, executed the same way) fails it, \"hurt\" the reverse. Refining's "
        "cost (refined bids and the votes on them) as a share of the row's whole cost.", "",
        "| method | auctions | refined bid won | helped | hurt | unjudged | net (tasks) "
        "| cost share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, e in effect.items():
        lines.append(f"| {name} | {e['auctions']} | {e['refined_won']} | {e['helped']} "
                     f"| {e['hurt']} | {e['unjudged']} | {e['net']:+d} "
                     f"| {100 * e['cost_share']:.0f}% |")
    return lines


def jury_section(signal: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The report's table: each row's jurors, their AUCs, and the row against SALE's."""
    if not signal:
        return []
    lines = [
        "", "## What a jury vote knows", "",
        "AUC of each juror's round-0 votes (expected values) for \"the bidder passes this task "
        "executing its plan alone\", over the first order's test auctions; \"within bidder\" "
        "compares only plans of the same bidder (what the vote adds to knowing who bid). "
        "Against SALE: the same juror on the same tasks, resampled together "
        f"({LEVEL:.0%} bootstrap over tasks). 0.5 is chance.", "",
        "| method | juror | bids | AUC [95% CI] | vs SALE | AUC within bidder [95% CI] "
        "| vs SALE | round-0 vote calls / auction | their share of auction cost |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(stat: Mapping[str, float | None] | None, signed: bool = False) -> str:
        if not stat:
            return ""
        if stat["estimate"] is None:
            return "n/a"
        spec = "+.2f" if signed else ".2f"
        return f"{stat['estimate']:{spec}} [{stat['lo']:{spec}}, {stat['hi']:{spec}}]"

    for name, row in signal.items():
        for juror, e in row["jurors"].items():
            lines.append(
                f"| {name} | {juror} | {e['bids']} | {cell(e['auc'])} "
                f"| {cell(e.get('auc_vs_reference'), True)} | {cell(e['auc_within_bidder'])} "
                f"| {cell(e.get('auc_within_bidder_vs_reference'), True)} "
                f"| {row['vote_calls_per_auction']:.1f} | {100 * row['vote_cost_share']:.0f}% |"
            )
    return lines


__all__ = ["auc", "jury_methods", "jury_section", "jury_signal", "refinement_effect",
           "refinement_section"]
