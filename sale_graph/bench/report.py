"""Write a benchmark's results: JSON, a Markdown table and PNG plots.

Outputs in ``out_dir`` (``benchmarks/results/`` by convention):

* ``results.json``: the full summary (every metric, every group, mean and std),
  the small-agent win-rate curves, and whatever run metadata the caller passes;
* ``results.md``: overall table, pass@1 per bin, win shares;
* ``pareto.png``: pass@1 against total dollars for every method, with the
  non-dominated methods joined;
* ``win_rate.png``: small-agent win rate against tasks seen (methods with orders).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sale_graph.bench.metrics import summarise, win_rate_curve
from sale_graph.bench.records import Record

__all__ = ["markdown_report", "pareto_front", "write_report"]


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


def markdown_report(
    summary: Mapping[str, Mapping[str, Any]],
    agents: Sequence[str],
    preamble: str = "",
    largest: str | None = None,
) -> str:
    """Tables of the summary: overall, pass@1 per bin and per domain, win shares.

    ``preamble`` (Markdown) goes under the title: what was run and how to read it.
    """
    lines = ["# Benchmark results", ""]
    if preamble.strip():
        lines += [preamble.strip(), ""]
    lines += [
        "| method | orders | n | pass@1 (%) | cost ($) | $/Mtok | largest agent (%) "
        "| auction tokens (%) | auction time (%) | auction cost (%) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, s in summary.items():
        o = s["overall"]
        lines.append(
            f"| {method} | {s['n_orders']} | {o['n']} | {_fmt(o['pass_at_1'], 100)} "
            f"| {_fmt(o['cost_usd'], 1, '.4g')} | {_fmt(o['usd_per_mtok'], 1, '.4g')} "
            f"| {_fmt(o['largest_share'], 100)} | {_fmt(o['auction_token_share'], 100, '.2f')} "
            f"| {_fmt(o['auction_time_share'], 100, '.2f')} "
            f"| {_fmt(o.get('auction_cost_share', {}), 100, '.2f')} |"
        )
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
        lines += ["", f"## pass@1 (%) and cost ($) per {title}", ""]
        lines.append("| method | " + " | ".join(labels) + " |")
        lines.append("|---|" + "---|" * len(labels))
        for method, s in summary.items():
            cells = []
            for label in labels:
                g = s.get(group, {}).get(label)
                cells.append(
                    ""
                    if g is None
                    else f"{_fmt(g['pass_at_1'], 100)} / {_fmt(g['cost_usd'], 1, '.4g')}"
                )
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += targets_section(summary, largest or (agents[-1] if agents else None))
    lines += ["", "## Share of tasks executed per agent (%)", ""]
    lines.append("| method | " + " | ".join(agents) + " |")
    lines.append("|---|" + "---|" * len(agents))
    for method, s in summary.items():
        ws = s["overall"]["win_share"]
        lines.append(f"| {method} | " + " | ".join(_fmt(ws[a], 100) for a in agents) + " |")
    return "\n".join(lines) + "\n"


# The targets, on the coding test split (HumanEval), SALE against the largest agent.
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


def _plot_pareto(summary: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = {
        m: (s["overall"]["cost_usd"]["mean"], 100 * s["overall"]["pass_at_1"]["mean"])
        for m, s in summary.items()
    }
    fig, ax = plt.subplots(figsize=(8, 5.5))
    colours = plt.get_cmap("tab20").colors
    markers = "osD^vP*Xh<>"
    for n, (m, s) in enumerate(summary.items()):
        o = s["overall"]
        ax.errorbar(
            o["cost_usd"]["mean"],
            100 * o["pass_at_1"]["mean"],
            xerr=o["cost_usd"]["std"] or None,
            yerr=100 * o["pass_at_1"]["std"] or None,
            fmt=markers[n % len(markers)],
            color=colours[n % len(colours)],
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
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
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
) -> dict[str, Path]:
    """Summarise ``records`` and write JSON, Markdown and plots; returns the paths.

    ``curve_methods`` defaults to every method run over more than one task order.
    Tables list the methods of ``method_order`` first, in that order, then the rest.
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
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md"}
    payload = {
        "meta": dict(meta or {}),
        "agents": list(agents),
        "largest": largest,
        "summary": summary,
        "win_rate_curves": curves,
        "records": [r.to_dict() for r in recs],
    }
    paths["json"].write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    markdown = markdown_report(summary, agents, preamble, largest)
    paths["markdown"].write_text(markdown, encoding="utf-8")
    if plots:
        paths["pareto"] = out / "pareto.png"
        _plot_pareto(summary, paths["pareto"])
        paths["win_rate"] = out / "win_rate.png"
        _plot_curves(curves, paths["win_rate"])
    return paths
