"""Pools side by side: the same test tasks run on different agent pools.

Each run directory's ``results.json`` holds its per-task records. A single agent's
row is the same agent on the same tasks in every pool that has it (the second run
replays the first's calls), so single agents are taken from the first run only;
every other row (auctions, routers, the oracle) is suffixed with its pool, e.g.
``staged [local-coder]``. All rows are then paired against the first run's largest
agent, answering directly and planning, on the same resampled tasks
(``metrics.paired_comparisons``).

The verdict the README's preset choice rests on: among each pool's auction rows (the
configurations a preset can default to: the rows its configuration runs through an
auction, ``config.methods_for``, whether or not their assessment spent tokens) whose
pass@1 is not below the largest agent answering directly (paired interval), the
cheapest; a pool with no such row is reported as such. One run alone gives its own
verdict. Nothing here loads a model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sale_graph.bench.config import BenchConfig, methods_for
from sale_graph.bench.metrics import (
    LEVEL,
    N_BOOT,
    auction_rows,
    intervals,
    paired_comparisons,
)
from sale_graph.bench.records import Record
from sale_graph.bench.report import _ci
from sale_graph.local import PRESETS

__all__ = ["compare_runs", "pool_verdicts"]


def _load(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "results.json"
    if not path.is_file():
        raise ValueError(f"{run_dir} has no results.json (run `sale bench --from-bank` there)")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not data.get("records"):
        raise ValueError(f"{path} holds no per-task records yet")
    return data


def _test_tasks(data: Mapping[str, Any]) -> set[str]:
    return {r["task_id"] for r in data["records"] if r["method"].startswith("single: ")}


def _auction_methods(data: Mapping[str, Any], records: Sequence[Record]) -> set[str]:
    """The run's auction rows by its configuration (``metrics.auction_rows``).

    A staged row that assesses bids from memory alone spends no auction token, yet it
    is an auction configuration a preset can default to; a router never is.
    """
    stored = (data.get("meta") or {}).get("config")
    named = [m.name for m in methods_for(BenchConfig.from_dict(stored))] if stored else None
    return set(auction_rows(records, named))


def _pool(data: Mapping[str, Any], run_dir: Path) -> str:
    """The run's pool by the preset that names its agents today.

    A run keeps the name its pool had when it ran; a preset may since name other
    agents ("local" named three before the two-agent pool became the default).
    """
    name = str(((data.get("meta") or {}).get("config") or {}).get("pool") or run_dir.name)
    agents = list(data.get("agents") or [])
    if not agents or list(PRESETS.get(name, agents)) == agents:
        return name
    today = [p for p, names in PRESETS.items() if list(names) == agents]
    return today[0] if today else f"{name} ({', '.join(agents)})"


def compare_runs(run_dirs: Sequence[str | Path]) -> dict[str, Any]:
    """Records of every run, renamed per pool, and their paired comparisons.

    Raises ``ValueError`` when the runs do not share their test tasks (a comparison
    across task sets would pair nothing) or name the same pool twice.
    """
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise ValueError("compare needs at least one run directory")
    runs = [_load(d) for d in dirs]
    pools = [_pool(data, d) for data, d in zip(runs, dirs, strict=True)]
    if len(set(pools)) != len(pools):
        raise ValueError(f"two runs of the same pool: {pools}")
    tasks = _test_tasks(runs[0])
    for d, data in zip(dirs[1:], runs[1:], strict=True):
        if _test_tasks(data) != tasks:
            raise ValueError(f"{d} and {dirs[0]} differ in their test tasks")
    largest = str(runs[0]["largest"])
    references = [f"single: {largest} (direct)", f"single: {largest}"]
    records: list[Record] = []
    rows: dict[str, list[str]] = {}
    auctions: set[str] = set()
    for i, (data, pool) in enumerate(zip(runs, pools, strict=True)):
        names: list[str] = []
        run_auctions = _auction_methods(
            data, [Record.from_dict(raw) for raw in data["records"]])
        for raw in data["records"]:
            method = str(raw["method"])
            if method.startswith("single: "):
                if i:
                    continue  # the same agent on the same tasks: the first run's row
                name = method
            else:
                name = f"{method} [{pool}]"
            if name not in names:
                names.append(name)
            if method in run_auctions:
                auctions.add(name)
            records.append(Record.from_dict({**raw, "method": name}))
        rows[pool] = names
    references = [r for r in references if any(rec.method == r for rec in records)]
    return {
        "pools": pools,
        "largest": largest,
        "references": references,
        "rows": rows,
        "auctions": sorted(auctions),
        "intervals": intervals(records),
        "paired": paired_comparisons(records, references),
        "n_tasks": len(tasks),
    }


def pool_verdicts(comparison: Mapping[str, Any]) -> dict[str, dict[str, Any] | None]:
    """Per pool: its cheapest auction row not below the largest agent answering directly."""
    ref = comparison["references"][0] if comparison["references"] else None
    paired = comparison["paired"].get(ref, {}) if ref else {}
    out: dict[str, dict[str, Any] | None] = {}
    for pool, names in comparison["rows"].items():
        fine = [
            (paired[m]["cost_ratio"]["estimate"], m) for m in names
            if m in paired and m in comparison["auctions"]
            and paired[m]["pass_diff"]["hi"] >= 0.0
        ]
        if not fine:
            out[pool] = None
            continue
        ratio, method = min(fine)
        out[pool] = {"method": method, "cost_ratio": paired[method]["cost_ratio"],
                     "pass_diff": paired[method]["pass_diff"], "against": ref}
    return out


def comparison_markdown(comparison: Mapping[str, Any]) -> str:
    """The comparison as a Markdown table plus the per-pool verdicts."""
    pools = comparison["pools"]
    lines = [
        f"# Pools compared: {', '.join(pools)}",
        "",
        f"{comparison['n_tasks']} shared test tasks. Rows other than single agents carry "
        "their pool in brackets; single agents are the same runs in every pool. Paired "
        f"against the largest agent ({N_BOOT} bootstrap resamples of the tasks, "
        f"{LEVEL:.0%} percentile intervals): pass@1 difference in points, total-cost ratio.",
        "",
    ]
    refs = comparison["references"]
    head = "| method | pass@1 % | 95% CI | cost/task $ |"
    rule = "|---|---|---|---|"
    for ref in refs:
        head += f" vs {ref}: diff | 95% CI | cost ratio | 95% CI |"
        rule += "---|---|---|---|"
    lines += [head, rule]
    ordered = [m for pool in pools for m in comparison["rows"][pool]]
    for m in ordered:
        iv = comparison["intervals"][m]
        p, c = iv["pass_at_1"], iv["cost_per_task"]
        row = (f"| {m} | {100 * p['estimate']:.1f} | {_ci(p, 100, '.1f')} "
               f"| {c['estimate']:.3g} |")
        for ref in refs:
            pair = comparison["paired"].get(ref, {}).get(m)
            if pair is None:
                row += " - | - | - | - |"
                continue
            d, r = pair["pass_diff"], pair["cost_ratio"]
            row += (f" {100 * d['estimate']:+.1f} | {_ci(d, 100, '+.1f')} "
                    f"| {r['estimate']:.2f} | {_ci(r, 1, '.2f')} |")
        lines.append(row)
    lines += ["", "## Per pool: the cheapest auction row not below the largest agent "
              "answering directly", ""]
    for pool, v in pool_verdicts(comparison).items():
        if v is None:
            lines.append(f"- {pool}: no auction row whose pass@1 interval reaches the "
                         "largest agent's.")
            continue
        d, r = v["pass_diff"], v["cost_ratio"]
        lines.append(
            f"- {pool}: {v['method']}, {r['estimate']:.2f}x the cost {_ci(r, 1, '.2f')}, "
            f"pass@1 {100 * d['estimate']:+.1f} points {_ci(d, 100, '+.1f')}."
        )
    return "\n".join(lines) + "\n"


def write_comparison(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Compare the runs and write ``out`` (Markdown) and its JSON twin beside it."""
    comparison = compare_runs(run_dirs)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(comparison_markdown(comparison), encoding="utf-8")
    path.with_suffix(".json").write_text(
        json.dumps({**comparison, "verdicts": pool_verdicts(comparison)}, indent=2,
                   sort_keys=True) + "\n", encoding="utf-8")
    return path
