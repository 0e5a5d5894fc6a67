"""Write a benchmark's results: JSON, a Markdown table and PNG plots.

Outputs in ``out_dir`` (``benchmarks/results/`` by convention):

* ``results.json``: the full summary (every metric, every group, mean and std),
  the small-agent win-rate curves, and whatever run metadata the caller passes;
* ``results.md``: overall table with bootstrap intervals, pass@1 per bin, paired
  comparisons against the largest agent, break-even execution length, the
  longest executions, learning along the order, win shares;
* ``pareto.png``: pass@1 against total dollars for every method, with the
  non-dominated methods joined;
* ``win_rate.png``: small-agent win rate against tasks seen (methods with orders);
* ``learning.png``: rolling pass@1, cost and win shares along the order;
* ``break_even.png``: the auction's share of cost against execution length.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sale_graph.bench.metrics import (
    LEVEL,
    N_BOOT,
    break_even,
    group_intervals,
    intervals,
    learning_curves,
    learning_effect,
    length_bins,
    longest_bin,
    paired_comparisons,
    summarise,
    win_rate_curve,
)
from sale_graph.bench.records import Record
from sale_graph.bench.signals import jury_section, refinement_section

__all__ = ["analyse", "markdown_report", "pareto_front", "references", "write_report"]


def _fmt(stat: Mapping[str, float], scale: float = 1.0, spec: str = ".1f") -> str:
    mean = stat["mean"] * scale
    if stat["std"] > 0:
        return f"{mean:{spec}} ± {stat['std'] * scale:{spec}}"
    return f"{mean:{spec}}"


_BIN_RANK = {"easy": 0, "medium": 1, "hard": 2}


def _label_key(label: str) -> tuple[str, int, str]:
    """Domains alphabetically, bins from easy to hard, unknown bins last."""
    domain, _, bin_ = label.rpartition("/")
    return (domain, _BIN_RANK.get(bin_, 3), bin_)


def _ci(stat: Mapping[str, float] | None, scale: float = 1.0, spec: str = ".1f") -> str:
    if not stat:
        return ""
    return f"[{stat['lo'] * scale:{spec}}, {stat['hi'] * scale:{spec}}]"


def _mean_ci(stat: Mapping[str, float] | None, spec: str) -> str:
    return f"{stat['estimate']:{spec}} {_ci(stat, 1, spec)}" if stat else ""


def _group_cell(g: Mapping[str, Any], ci: Mapping[str, Any] | None) -> str:
    """pass@1 and total cost of one group, each with its interval when there is one."""
    if not ci:
        return f"{_fmt(g['pass_at_1'], 100)} / {_fmt(g['cost_usd'], 1, '.4g')}"
    n = ci["n_tasks"]
    return (f"{_fmt(g['pass_at_1'], 100)} {_ci(ci['pass_at_1'], 100)} / "
            f"{_fmt(g['cost_usd'], 1, '.4g')} {_ci(ci['cost_per_task'], n, '.4g')}")


def markdown_report(
    summary: Mapping[str, Mapping[str, Any]],
    agents: Sequence[str],
    preamble: str = "",
    largest: str | None = None,
    analysis: Mapping[str, Any] | None = None,
    images: Sequence[tuple[str, str]] = (),
    auction_methods: Sequence[str] = (),
    steps: Mapping[str, Any] | None = None,
) -> str:
    """Tables of the summary: overall, per bin and domain, the ``analysis`` sections, shares.

    ``preamble`` (Markdown) goes under the title: what was run and how to read it.
    ``analysis`` is what ``analyse`` returns; ``images`` are (caption, file) links.
    ``auction_methods`` are the rows held to the bar (``bar_section``).
    """
    analysis = analysis or {}
    ci = analysis.get("intervals") or {}
    lines = ["# Benchmark results", ""]
    if preamble.strip():
        lines += [preamble.strip(), ""]
    lines += [
        "| method | orders | n | pass@1 (%) | pass@1 95% CI | cost ($) | cost/task ($) [95% CI] "
        "| $/Mtok | largest agent (%) | auction tokens (%) | auction time (%) "
        "| auction cost (%) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, s in summary.items():
        o = s["overall"]
        c = ci.get(method) or {}
        lines.append(
            f"| {method} | {s['n_orders']} | {o['n']} | {_fmt(o['pass_at_1'], 100)} "
            f"| {_ci(c.get('pass_at_1'), 100)} "
            f"| {_fmt(o['cost_usd'], 1, '.4g')} | {_mean_ci(c.get('cost_per_task'), '.3g')} "
            f"| {_fmt(o['usd_per_mtok'], 1, '.4g')} "
            f"| {_fmt(o['largest_share'], 100)} | {_fmt(o['auction_token_share'], 100, '.2f')} "
            f"| {_fmt(o['auction_time_share'], 100, '.2f')} "
            f"| {_fmt(o.get('auction_cost_share', {}), 100, '.2f')} |"
        )
    if ci:
        lines += [
            "",
            f"Intervals: {LEVEL:.0%} percentile bootstrap over tasks ({N_BOOT} resamples, "
            "seeded); a method run over several task orders is averaged per task over its "
            "orders first, so the task is the unit.",
        ]
    for group, title in (
        ("by_bin", "bin"),
        ("by_domain", "domain"),
        ("by_domain_bin", "domain/bin"),
    ):
        labels = sorted(
            {label for s in summary.values() for label in s.get(group, {})}, key=_label_key
        )
        if not labels:
            continue
        group_ci = (analysis.get("group_intervals") or {}).get(group, {})
        lines += ["", f"## pass@1 (%) and cost ($) per {title}", ""]
        if group_ci:
            lines += ["pass@1 [95% CI] / total cost [95% CI]: bootstrap intervals over the "
                      "group's tasks, as above (a group holds fewer tasks, so they are "
                      "wider); ± is the spread over a method's orders.", ""]
        lines.append("| method | " + " | ".join(labels) + " |")
        lines.append("|---|" + "---|" * len(labels))
        for method, s in summary.items():
            cells = []
            for label in labels:
                g = s.get(group, {}).get(label)
                cells.append("" if g is None else _group_cell(
                    g, (group_ci.get(label) or {}).get(method)))
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += targets_section(summary, largest or (agents[-1] if agents else None))
    lines += paired_section(analysis.get("paired") or {}, list(summary))
    lines += bar_section(analysis.get("paired") or {}, summary, auction_methods)
    lines += jury_section((steps or {}).get("jury_signal") or {})
    lines += refinement_section((steps or {}).get("refinement") or {})
    lines += break_even_section(analysis)
    lines += longest_section(analysis.get("longest_bin") or {}, list(summary))
    lines += learning_section(analysis.get("learning_curves") or {}, agents,
                              analysis.get("learning_effect") or {})
    lines += ["", "## Share of tasks executed per agent (%)", ""]
    lines.append("| method | " + " | ".join(agents) + " |")
    lines.append("|---|" + "---|" * len(agents))
    for method, s in summary.items():
        ws = s["overall"]["win_share"]
        lines.append(f"| {method} | " + " | ".join(_fmt(ws[a], 100) for a in agents) + " |")
    if images:
        lines += ["", "## Plots", ""]
        for caption, name in images:
            lines += [f"![{caption}]({name})", ""]
        lines.pop()
    return "\n".join(lines) + "\n"


def _verdict(stat: Mapping[str, Any], neutral: float, above: str, below: str) -> str:
    if stat["within_noise"]:
        return "within noise"
    return above if stat["lo"] > neutral else below


def paired_section(
    paired: Mapping[str, Mapping[str, Mapping[str, Any]]], order: Sequence[str]
) -> list[str]:
    """Each method against each largest-agent row on the same resampled tasks."""
    if not paired:
        return []
    lines = [
        "",
        "## Paired comparisons against the largest agent",
        "",
        "Each method against the largest agent on the same tasks, resampled together "
        f"({N_BOOT} bootstrap resamples of the tasks, {LEVEL:.0%} percentile intervals): "
        "the difference in pass@1 (method minus largest, points) and the ratio of total "
        "costs (method / largest). *within noise*: the interval holds 0 (difference) or "
        "1 (ratio), so this benchmark cannot tell the two apart.",
        "",
        "| method | against | tasks | pass@1 diff (points) | 95% CI | pass@1 "
        "| cost ratio | 95% CI | cost |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for ref, rows in paired.items():
        for method in [m for m in order if m in rows]:
            d, r = rows[method]["pass_diff"], rows[method]["cost_ratio"]
            lines.append(
                f"| {method} | {ref} | {rows[method]['n_tasks']} "
                f"| {100 * d['estimate']:+.1f} | {_ci(d, 100, '+.1f')} "
                f"| {_verdict(d, 0.0, 'better', 'worse')} "
                f"| {r['estimate']:.2f} | {_ci(r, 1, '.2f')} "
                f"| {_verdict(r, 1.0, 'dearer', 'cheaper')} |"
            )
    return lines


# The bar an auction must clear to pay for itself: no worse than the largest agent
# (on the same tasks) at no more than 75% of its cost, the auction at most 25% of that
BAR_MAX_COST_RATIO = 0.75
BAR_MAX_AUCTION_SHARE = 0.25


def bar_section(
    paired: Mapping[str, Mapping[str, Mapping[str, Any]]],
    summary: Mapping[str, Mapping[str, Any]],
    auction_methods: Sequence[str],
) -> list[str]:
    """Each auction row against the bar, once per largest-agent row.

    "Not below" reads the paired interval: the benchmark cannot show the row worse
    (its upper end is at or above 0). The point estimate is printed beside it, so a
    row that passes only because the interval is wide shows as such. The cost bar
    reads the point ratio; the auction share is the row's own, over all its orders.
    """
    rows = [m for m in auction_methods if m in summary]
    if not paired or not rows:
        return []
    lines = [
        "",
        f"## The bar: not below the largest agent at <= {BAR_MAX_COST_RATIO:.0%} of its cost",
        "",
        f"An auction pays for itself when its pass@1 is not below the largest agent's on "
        f"the same tasks (the upper end of the paired {LEVEL:.0%} interval of the "
        f"difference is at or above 0), its cost is at most {BAR_MAX_COST_RATIO:.0%} of the "
        f"largest agent's, and the auction's own calls are at most "
        f"{BAR_MAX_AUCTION_SHARE:.0%} of its cost. Each row is held to every largest-agent "
        "row the run has (planning then executing; answering directly). *not below* means "
        "the benchmark cannot show the row worse: with a negative point estimate that is "
        "noise, not equality.",
        "",
        "| method | against | pass@1 diff [95% CI] | not below | cost ratio [95% CI] "
        f"| <= {BAR_MAX_COST_RATIO:.0%} | auction share | <= {BAR_MAX_AUCTION_SHARE:.0%} "
        "| bar |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for ref, against in paired.items():
        for method in [m for m in rows if m in against]:
            d, r = against[method]["pass_diff"], against[method]["cost_ratio"]
            share = summary[method]["overall"].get("auction_cost_share", {}).get("mean", 0.0)
            checks = (
                d["hi"] >= 0.0,
                r["estimate"] <= BAR_MAX_COST_RATIO,
                share <= BAR_MAX_AUCTION_SHARE,
            )
            yes = ["yes" if ok else "no" for ok in checks]
            lines.append(
                f"| {method} | {ref} | {100 * d['estimate']:+.1f} {_ci(d, 100, '+.1f')} "
                f"| {yes[0]} | {r['estimate']:.2f} {_ci(r, 1, '.2f')} | {yes[1]} "
                f"| {100 * share:.1f}% | {yes[2]} | {'**met**' if all(checks) else 'missed'} |"
            )
    return lines


def break_even_section(analysis: Mapping[str, Any]) -> list[str]:
    """Per auction method: the execution length at which its auction pays for itself."""
    table = analysis.get("break_even") or {}
    if not any(table.values()):
        return []
    lengths = analysis.get("execution_lengths") or {}
    values = sorted(lengths.values())
    mean = sum(values) / len(values) if values else 0.0
    lines = [
        "",
        "## Break-even execution length",
        "",
        "An auction costs A dollars per task whatever the execution; routing then makes "
        "the execution cost rho times what the largest agent pays on the same tasks. With "
        "the largest agent's price p per token, an execution of L tokens costs p·L alone "
        "and A + rho·p·L after an auction: the auction pays for itself once "
        "L > L* = A / (p (1 - rho)) tokens, never if rho >= 1, from any length if the "
        "auction costs nothing (a staged auction assessing from memory). Here the largest agent's "
        f"executions are {mean:.0f} tokens on average (longest {values[-1] if values else 0:.0f})"
        ".",
        "",
        "Intervals: 95% bootstrap over the shared tasks (A and rho resampled together); "
        "*never* as a bound means that in at least 2.5% of resamples rho reached 1.",
        "",
        "| method | against | A: auction $/task | rho [95% CI] | L* (tokens) [95% CI] "
        "| L* / mean execution |",
        "|---|---|---|---|---|---|",
    ]
    for ref, rows in table.items():
        for method, b in rows.items():
            lstar = b["break_even_tokens"]
            span = _lstar_ci(b.get("break_even_interval"))
            if lstar is None or not mean:
                tail = "| never | - |"
            elif b["auction_cost_per_task"] <= 0:  # assessed for free: pays from any length
                tail = "| any | - |"
            else:
                tail = f"| {lstar:,.0f}{span} | {lstar / mean:,.0f}x |"
            lines.append(
                f"| {method} | {ref} | {b['auction_cost_per_task']:.3g} "
                f"| {b['rho']:.2f} {_ci(b.get('rho_interval'), 1, '.2f')} " + tail
            )
    return lines


def _lstar_ci(bounds: Mapping[str, float | None] | None) -> str:
    """L*'s interval; an unbounded end reads "never"."""
    if not bounds:
        return ""
    lo, hi = (("never" if bounds[k] is None else f"{bounds[k]:,.0f}") for k in ("lo", "hi"))
    return f" [{lo}, {hi}]"


def _finite(value: Any) -> Any:
    """``value`` with every infinite or NaN float as None: strict JSON has neither.

    A ratio over a zero cost is infinite (a pool priced at nothing); readers of
    ``results.json`` (jq, a browser) refuse the ``Infinity`` Python would write.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def longest_section(longest: Mapping[str, Any], order: Sequence[str]) -> list[str]:
    """Every method on the tasks with the longest executions: where overhead weighs least."""
    methods = longest.get("methods") or {}
    if not methods:
        return []
    lines = [
        "",
        "## Longest executions (top tercile)",
        "",
        f"The {longest['n_tasks']} test tasks whose execution by the largest agent is "
        f"longest ({longest['min_tokens']:.0f}-{longest['max_tokens']:.0f} tokens); "
        "methods with several orders averaged per task first.",
        "",
        "| method | pass@1 (%) | cost/task ($) |",
        "|---|---|---|",
    ]
    for method in [m for m in order if m in methods]:
        m = methods[method]
        lines.append(f"| {method} | {100 * m['pass_at_1']:.1f} | {m['cost_per_task']:.3g} |")
    return lines


def learning_section(
    curves: Mapping[str, Mapping[str, Any]], agents: Sequence[str],
    effect: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[str]:
    """First and last window of each curve (the plot shows the whole path).

    Then each task met late against itself met early: the windows hold different tasks.
    """
    if not curves:
        return []
    lines = [
        "",
        "## Learning along the task order",
        "",
        "Rolling means over the last w tasks of each order, then the mean over orders: "
        "the first window (memory nearly empty) against the last.",
        "",
        "| method | w | pass@1 (%) first -> last | cost/task ($) first -> last | "
        + " | ".join(f"{a} wins (%)" for a in agents)
        + " |",
        "|---|---|---|---|" + "---|" * len(agents),
    ]
    for method, c in curves.items():
        w = c["window"]
        first, last = w - 1, len(c["tasks_seen"]) - 1
        if first > last:
            continue

        wins = " | ".join(_span(c["win_share"][a], first, last, 100, ".0f") for a in agents)
        lines.append(
            f"| {method} | {w} | {_span(c['pass_at_1'], first, last, 100, '.1f')} "
            f"| {_span(c['cost_usd'], first, last, 1, '.3g')} | {wins} |"
        )
    if effect:
        lines += [
            "",
            "The same task met in an order's second half (more in memory) against itself met "
            "in its first half, over the orders that put it in both; 95% bootstrap over "
            "orders and those tasks (an order's tasks share its memory; a draw of orders "
            "that meets no task in both halves is left out, so with few orders the interval "
            "leans on the tasks). *within noise*: the interval holds 0 (difference) or 1 "
            "(ratio).",
            "",
            "| method | orders | tasks | pass@1 late - early (points) [95% CI] | "
            "agents other than the largest, late - early (points) [95% CI] | "
            "cost late / early [95% CI] |",
            "|---|---|---|---|---|---|",
        ]
        for method, e in effect.items():
            lines.append(
                f"| {method} | {e['n_orders']} | {e['n_tasks']} "
                f"| {_points(e['pass_diff'])} | {_points(e['small_share_diff'])} "
                f"| {_ratio(e['cost_ratio'])} |"
            )
    return lines


def _points(d: Mapping[str, Any]) -> str:
    noise = ", within noise" if d["within_noise"] else ""
    return f"{100 * d['estimate']:+.1f} {_ci(d, 100, '+.1f')}{noise}"


def _ratio(d: Mapping[str, Any]) -> str:
    noise = ", within noise" if d["within_noise"] else ""
    return f"{d['estimate']:.2f}x {_ci(d, 1, '.2f')}{noise}"


def _span(values: Sequence[float], first: int, last: int, scale: float, spec: str) -> str:
    return f"{values[first] * scale:{spec}} -> {values[last] * scale:{spec}}"


def references(methods: Iterable[str], largest: str) -> list[str]:
    """The largest agent's rows present: planning then executing, and answering directly."""
    present = set(methods)
    return [m for m in (f"single: {largest}", f"single: {largest} (direct)") if m in present]


def analyse(
    records: Sequence[Record],
    largest: str,
    agents: Sequence[str],
    execution_lengths: Mapping[str, float] | None = None,
    *,
    seed: int = 0,
    auction_methods: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Intervals, paired comparisons, break-even, longest bin and learning curves.

    ``execution_lengths`` (tokens per task) defaults to the execution tokens of the
    largest agent's first row; the caller can pass a purer measure (without the plan).
    ``auction_methods`` (the run's auction rows) default to those that spent on an auction.
    """
    refs = references((r.method for r in records), largest)
    if execution_lengths is None:
        base = refs[0] if refs else None
        execution_lengths = {r.task_id: r.tokens_execution for r in records if r.method == base}
    tested = {r.task_id for r in records}
    lengths = {t: float(v) for t, v in execution_lengths.items() if t in tested}
    return {
        "references": refs,
        "intervals": intervals(records, seed=seed),
        "group_intervals": group_intervals(records, seed=seed),
        "paired": paired_comparisons(records, refs, seed=seed),
        "break_even": {ref: break_even(records, ref, auction_methods=auction_methods)
                       for ref in refs},
        "execution_lengths": lengths,
        "length_bins": length_bins(records, lengths, auction_methods=auction_methods),
        "longest_bin": longest_bin(records, lengths),
        "learning_curves": learning_curves(records, agents),
        "learning_effect": learning_effect(records, largest, seed=seed),
    }


# The issue's targets, on the coding test split (HumanEval), SALE against the largest agent.
TARGET_DOMAIN = "coding"
TARGET_MAX_COST_RATIO = 0.60
TARGET_MAX_LARGEST_SHARE = 0.50
PAPER_OVERHEAD_TOKEN_SHARE = 0.01


def targets_section(summary: Mapping[str, Mapping[str, Any]], largest: str | None) -> list[str]:
    """SALE against the targets: pass@1 >= largest, <= 60% of its cost, largest <= 50%.

    Also the cost ratio without the auction (what routing alone saved), because on a
    pool whose executions are short the auction's own calls decide the cost.
    """
    sale = (summary.get("SALE") or {}).get("by_domain", {}).get(TARGET_DOMAIN)
    alone = (summary.get(f"single: {largest}") or {}).get("by_domain", {}).get(TARGET_DOMAIN)
    if not sale or not alone:
        return []
    p_sale, p_alone = sale["pass_at_1"]["mean"], alone["pass_at_1"]["mean"]
    c_sale, c_alone = sale["cost_usd"]["mean"], alone["cost_usd"]["mean"]
    share = sale["largest_share"]["mean"]
    ratio = c_sale / c_alone if c_alone else float("inf")
    exec_ratio = (
        c_sale * (1 - sale.get("auction_cost_share", {}).get("mean", 0.0)) / c_alone
        if c_alone else float("inf")
    )
    overhead = sale["auction_token_share"]["mean"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    return [
        "", f"## Targets ({TARGET_DOMAIN} test split, SALE mean over orders vs {largest} alone)",
        "",
        "| target | SALE | largest alone | result |",
        "|---|---|---|---|",
        f"| pass@1 >= largest | {100 * p_sale:.1f}% | {100 * p_alone:.1f}% "
        f"| {verdict(p_sale >= p_alone)} |",
        f"| cost <= {TARGET_MAX_COST_RATIO:.0%} of largest | {c_sale:.4g} $ ({ratio:.0%}) "
        f"| {c_alone:.4g} $ | {verdict(ratio <= TARGET_MAX_COST_RATIO)} |",
        f"| largest executes <= {TARGET_MAX_LARGEST_SHARE:.0%} | {100 * share:.1f}% | 100% "
        f"| {verdict(share <= TARGET_MAX_LARGEST_SHARE)} |",
        f"| auction overhead (tokens) vs paper < {PAPER_OVERHEAD_TOKEN_SHARE:.0%} "
        f"| {100 * overhead:.1f}% | - | {verdict(overhead < PAPER_OVERHEAD_TOKEN_SHARE)} |",
        f"| (cost without the auction's calls) | {exec_ratio:.0%} of largest | - | - |",
    ]


def pareto_front(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """Methods no other method beats on both cost (lower) and pass@1 (higher), by cost."""
    front = []
    for name, (cost, acc) in points.items():
        dominated = any(
            (c <= cost and a >= acc) and (c < cost or a > acc)
            for other, (c, a) in points.items()
            if other != name
        )
        if not dominated:
            front.append(name)
    return sorted(front, key=lambda n: points[n][0])


def _series_style(n: int) -> tuple[str, Any]:
    """The n-th series' marker and colour: plots with many rows tell them apart by both."""
    import matplotlib

    return "osD^vP*Xh<>"[n % 11], matplotlib.colormaps["tab20"](n % 20)


def _plot_pareto(summary: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = {
        m: (s["overall"]["cost_usd"]["mean"], 100 * s["overall"]["pass_at_1"]["mean"])
        for m, s in summary.items()
    }
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for n, (m, s) in enumerate(summary.items()):
        o = s["overall"]
        marker, colour = _series_style(n)
        ax.errorbar(
            o["cost_usd"]["mean"],
            100 * o["pass_at_1"]["mean"],
            xerr=o["cost_usd"]["std"] or None,
            yerr=100 * o["pass_at_1"]["std"] or None,
            fmt=marker,
            color=colour,
            capsize=3,
            label=m,
        )
        if m in ("SALE", "oracle"):  # the rest are told apart by the legend: ablations
            # often land on top of each other, and their labels would overlap
            ax.annotate(m, pts[m], textcoords="offset points", xytext=(6, 6), fontsize=8)
    front = pareto_front(pts)
    if len(front) > 1:
        ax.plot([pts[m][0] for m in front], [pts[m][1] for m in front], "k--", lw=0.8,
                label="Pareto front")  # fmt: skip
    costs = [c for c, _ in pts.values() if c > 0]
    if costs and max(costs) / min(costs) > 100:
        ax.set_xscale("log")
    ax.margins(x=0.06, y=0.08)
    ax.set_xlabel("total cost ($)")
    ax.set_ylabel("pass@1 (%)")
    ax.set_title("pass@1 vs cost")
    ax.grid(alpha=0.3)
    if pts:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:  # a run whose test split has no graded row yet
        ax.text(0.5, 0.5, "no test results yet", ha="center", va="center",
                transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_curves(curves: Mapping[str, Mapping[str, list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m, c in curves.items():
        x, y, e = c["tasks_seen"], [100 * v for v in c["mean"]], [100 * v for v in c["std"]]
        ax.plot(x, y, marker="o", ms=3, label=m)
        ax.fill_between(x, [a - b for a, b in zip(y, e, strict=True)],
                        [a + b for a, b in zip(y, e, strict=True)], alpha=0.2)  # fmt: skip
    ax.set_xlabel("tasks seen")
    ax.set_ylabel("small-agent win rate (%)")
    ax.set_title("Small-agent win rate per block of tasks, mean ± std over orders")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def learning_reference(analysis: Mapping[str, Any]) -> tuple[str, float, float] | None:
    """The line a learning curve is read against: the largest agent's whole-run level.

    Its direct answers where the run has them (what a user compares against), else its
    first row: (label, pass@1, cost per task). A curve that climbs without crossing it
    has learned, but not enough to pay.
    """
    refs = list(analysis.get("references") or [])
    ref = next((r for r in refs if r.endswith("(direct)")), refs[0] if refs else None)
    iv = (analysis.get("intervals") or {}).get(ref) if ref else None
    if not iv:
        return None
    return str(ref), float(iv["pass_at_1"]["estimate"]), float(iv["cost_per_task"]["estimate"])


def _plot_learning(
    curves: Mapping[str, Mapping[str, Any]],
    agents: Sequence[str],
    path: Path,
    reference: tuple[str, float, float] | None = None,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    styles = ["-", "--", ":", "-."]
    colours = plt.get_cmap("tab10")
    for n, (m, c) in enumerate(curves.items()):
        x, style = c["tasks_seen"], styles[n % len(styles)]
        axes[0].plot(x, [100 * v for v in c["pass_at_1"]], style, label=m)
        axes[1].plot(x, c["cost_usd"], style, label=m)
        for j, a in enumerate(agents):
            axes[2].plot(x, [100 * v for v in c["win_share"][a]], style,
                         color=colours(j % 10), label=f"{m}: {a}")  # fmt: skip
    if reference is not None:
        label, ref_pass, ref_cost = reference
        axes[0].axhline(100 * ref_pass, color="grey", linestyle="--", linewidth=1, label=label)
        axes[1].axhline(ref_cost, color="grey", linestyle="--", linewidth=1, label=label)
    for ax, title in zip(
        axes, ("rolling pass@1 (%)", "rolling cost per task ($)", "rolling win share (%)"),
        strict=True,
    ):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("tasks seen")
        ax.grid(alpha=0.3)
    if curves:
        window = ", ".join(f"{m} w={c['window']}" for m, c in curves.items())
        fig.suptitle(f"Along the task order, mean over orders ({window})", fontsize=10)
        axes[0].legend(fontsize=7)
        axes[2].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def break_even_lines(
    bins: Mapping[str, Any],
) -> tuple[dict[str, list[tuple[float, float]]], list[str]]:
    """The break-even plot's lines, and the rows left off it because their auction is free.

    A staged auction assessing from memory spends nothing at every length: a dozen such
    rows would lie on top of each other at 0%, so they are named once instead of drawn.
    Returns ``({method: [(median tokens, share %), ...]}, [free methods])``.
    """
    x = bins.get("median_tokens") or []
    lines: dict[str, list[tuple[float, float]]] = {}
    free: list[str] = []
    for m, shares in (bins.get("methods") or {}).items():
        pts = [(xi, 100 * v) for xi, v in zip(x, shares, strict=True) if v is not None]
        if pts and all(share == 0 for _, share in pts):
            free.append(m)
        elif pts:
            lines[m] = pts
    return lines, free


def _plot_break_even(analysis: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines, free = break_even_lines(analysis.get("length_bins") or {})
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for n, (m, pts) in enumerate(lines.items()):
        marker, colour = _series_style(n)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=colour, label=m)
    if free:  # named once, below the axis, instead of a dozen lines on top of each other
        fig.text(0.01, 0.01, "0% at every length (the auction costs nothing): "
                 + ", ".join(free), fontsize=7, wrap=True)  # fmt: skip
    ax.set_xlabel("execution length of the largest agent (tokens; median of each quantile bin)")
    ax.set_ylabel("auction share of cost (%)")
    ax.set_ylim(0, 100)
    ax.set_title("What the auction costs against how long executions are", fontsize=10)
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout(rect=(0, 0.08 if free else 0, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(
    records: Iterable[Record],
    out_dir: str | Path,
    *,
    largest: str,
    agents: Sequence[str],
    curve_methods: Sequence[str] | None = None,
    blocks: int = 10,
    meta: Mapping[str, Any] | None = None,
    plots: bool = True,
    preamble: str = "",
    method_order: Sequence[str] = (),
    execution_lengths: Mapping[str, float] | None = None,
    auction_methods: Sequence[str] = (),
    steps: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Summarise ``records`` and write JSON, Markdown and plots; returns the paths.

    ``curve_methods`` defaults to every method run over more than one task order.
    Tables list the methods of ``method_order`` first, in that order, then the rest.
    ``execution_lengths`` (tokens per task) bins the break-even plot and the longest
    tercile; see ``analyse``. ``auction_methods`` are held to the bar (``bar_section``).
    ``steps`` holds what the auction's paid steps achieved (``sale_graph.bench.signals``:
    ``jury_signal``, ``refinement``).
    """
    recs = list(records)
    summary = summarise(recs, largest, agents)
    rank = {m: i for i, m in enumerate(method_order)}
    summary = {m: summary[m] for m in sorted(summary, key=lambda m: (rank.get(m, len(rank)), m))}
    if curve_methods is None:
        curve_methods = [m for m, s in summary.items() if s["n_orders"] > 1]
    curves = {
        m: win_rate_curve([r for r in recs if r.method == m], largest, blocks=blocks)
        for m in curve_methods
    }
    analysis = analyse(recs, largest, agents, execution_lengths,
                       auction_methods=list(auction_methods) or None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md"}
    payload = {
        "meta": dict(meta or {}),
        "agents": list(agents),
        "largest": largest,
        "summary": summary,
        "win_rate_curves": curves,
        **{k: v for k, v in analysis.items() if k != "execution_lengths"},
        **{k: v for k, v in (steps or {}).items() if v},
        "records": [r.to_dict() for r in recs],
    }
    text = json.dumps(_finite(payload), indent=2, sort_keys=True, allow_nan=False)
    paths["json"].write_text(text + "\n", encoding="utf-8")
    images = [
        ("pass@1 against cost, every method", "pareto.png"),
        ("rolling pass@1, cost and win shares along the task order", "learning.png"),
        ("small-agent win rate per block of tasks", "win_rate.png"),
        ("auction share of cost against execution length", "break_even.png"),
    ]
    markdown = markdown_report(
        summary, agents, preamble, largest, analysis, images if plots else (), auction_methods,
        steps,
    )
    paths["markdown"].write_text(markdown, encoding="utf-8")
    if plots:
        paths["pareto"] = out / "pareto.png"
        _plot_pareto(summary, paths["pareto"])
        paths["win_rate"] = out / "win_rate.png"
        _plot_curves(curves, paths["win_rate"])
        paths["learning"] = out / "learning.png"
        _plot_learning(analysis["learning_curves"], agents, paths["learning"],
                       learning_reference(analysis))
        paths["break_even"] = out / "break_even.png"
        _plot_break_even(analysis, paths["break_even"])
    return paths
