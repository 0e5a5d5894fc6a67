"""Metric arithmetic and report files on hand-made records."""

from __future__ import annotations

import json

import pytest

from sale_graph.bench.metrics import group_metrics, mean_std, summarise, win_rate_curve
from sale_graph.bench.records import Record, bids_from_audit, dollars, record_from_audit
from sale_graph.bench.report import (
    analyse,
    break_even_lines,
    break_even_section,
    learning_reference,
    markdown_report,
    pareto_front,
    write_report,
)

AGENTS = ["small", "large"]


def _rec(method, task, agent, passed, *, order=0, position=0, bin="easy", domain="coding",
         ta=0, te=100, sa=0.0, se=1.0, ca=0.0, ce=1.0) -> Record:  # fmt: skip
    return Record(
        method=method, task_id=task, domain=domain, bin=bin, agent=agent, passed=passed,
        tokens_auction=ta, tokens_execution=te, seconds_auction=sa, seconds_execution=se,
        cost_auction=ca, cost_execution=ce, order=order, position=position,
    )  # fmt: skip


def test_group_metrics_arithmetic() -> None:
    recs = [
        _rec("m", "t1", "small", True, ta=10, te=90, sa=0.5, se=1.5, ca=0.1, ce=0.9),
        _rec("m", "t2", "large", True, ta=30, te=270, sa=0.5, se=5.5, ca=0.2, ce=2.8),
        _rec("m", "t3", "large", False, ta=0, te=600, sa=0.0, se=2.0, ca=0.0, ce=4.0),
        _rec("m", "t4", "small", False, ta=0, te=0, sa=0.0, se=0.0, ca=0.0, ce=0.0),
    ]
    g = group_metrics(recs, "large", AGENTS)
    assert g["n"] == 4
    assert g["pass_at_1"] == 0.5
    assert g["cost_usd"] == pytest.approx(8.0)
    assert g["tokens"] == 1000
    assert g["usd_per_mtok"] == pytest.approx(8.0 / 1000 * 1e6)
    assert g["largest_share"] == 0.5
    assert g["auction_token_share"] == pytest.approx(40 / 1000)
    assert g["auction_time_share"] == pytest.approx(1.0 / 10.0)
    assert g["auction_cost_share"] == pytest.approx(0.3 / 8.0)
    assert g["win_share"] == {"small": 0.5, "large": 0.5}
    empty = group_metrics([], "large", AGENTS)
    assert empty["pass_at_1"] == 0.0 and empty["usd_per_mtok"] == 0.0


def test_mean_std_uses_sample_std() -> None:
    assert mean_std([1.0, 3.0]) == {"mean": 2.0, "std": pytest.approx(2**0.5)}
    assert mean_std([5.0]) == {"mean": 5.0, "std": 0.0}


def _sale_orders() -> list[Record]:
    recs = []
    # order 0: 3 of 4 pass; order 1: 1 of 4 pass. Tasks t0..t3, bins easy/hard.
    for order, passes in ((0, [1, 1, 1, 0]), (1, [1, 0, 0, 0])):
        for pos, ok in enumerate(passes):
            task = f"t{(pos + order) % 4}"
            recs.append(
                _rec("sale", task, "small" if pos >= 2 else "large", bool(ok), order=order,
                     position=pos, bin="easy" if task in ("t0", "t1") else "hard", ta=10)
            )  # fmt: skip
    return recs


def test_summary_over_orders_and_bins() -> None:
    baseline = [_rec("largest", f"t{i}", "large", i < 3) for i in range(4)]
    s = summarise(_sale_orders() + baseline, "large", AGENTS)
    sale = s["sale"]
    assert sale["n_orders"] == 2
    assert sale["overall"]["pass_at_1"]["mean"] == pytest.approx(0.5)
    assert sale["overall"]["pass_at_1"]["std"] == pytest.approx(mean_std([0.75, 0.25])["std"])
    assert sale["overall"]["win_share"]["small"]["mean"] == 0.5
    assert sale["overall"]["auction_token_share"]["mean"] == pytest.approx(40 / 440)
    assert set(sale["by_bin"]) == {"easy", "hard"}
    assert sale["by_bin"]["easy"]["n"] == 2
    assert set(sale["by_domain_bin"]) == {"coding/easy", "coding/hard"}
    assert s["largest"]["n_orders"] == 1
    assert s["largest"]["overall"]["pass_at_1"] == {"mean": 0.75, "std": 0.0}


def test_orders_over_different_tasks_are_refused() -> None:
    recs = [_rec("m", "t1", "small", True, order=0), _rec("m", "t2", "small", True, order=1)]
    with pytest.raises(ValueError, match="different task sets"):
        summarise(recs, "large", AGENTS)


def test_win_rate_curve_blocks_and_cumulative() -> None:
    recs = []
    for order in range(2):
        for pos in range(8):  # small wins the second half only
            recs.append(_rec("sale", f"t{pos}", "small" if pos >= 4 else "large", True,
                             order=order, position=pos))  # fmt: skip
    c = win_rate_curve(recs, "large", blocks=4)
    assert c["tasks_seen"] == [2, 4, 6, 8]
    assert c["mean"] == [0.0, 0.0, 1.0, 1.0]
    assert c["std"] == [0.0] * 4
    cum = win_rate_curve(recs, "large", blocks=2, cumulative=True)
    assert cum["mean"] == [0.0, 0.5]
    assert win_rate_curve(recs, "large", blocks=2, agent="large")["mean"] == [1.0, 0.0]


def test_pareto_front() -> None:
    pts = {"a": (1.0, 50.0), "b": (2.0, 60.0), "c": (3.0, 55.0), "d": (1.0, 40.0)}
    assert pareto_front(pts) == ["a", "b"]


def test_write_report_files(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    baseline = [_rec("largest", f"t{i}", "large", i < 3, bin="easy" if i < 2 else "hard")
                for i in range(4)]  # fmt: skip
    paths = write_report(
        _sale_orders() + baseline, tmp_path, largest="large", agents=AGENTS, blocks=2,
        meta={"seed": 0},
    )  # fmt: skip
    data = json.loads(paths["json"].read_text())
    assert data["meta"] == {"seed": 0}
    assert set(data["summary"]) == {"sale", "largest"}
    assert list(data["win_rate_curves"]) == ["sale"]
    assert len(data["records"]) == 12
    md = paths["markdown"].read_text()
    assert "| sale | 2 | 4 | 50.0 ± 35.4 |" in md
    assert "| largest | 1 | 4 | 75.0 |" in md
    assert "per bin" in md and "easy" in md
    # per bin, each pass@1 and total cost carries its interval over the bin's tasks
    assert "| largest | 100.0 [100.0, 100.0] / 2 [2, 2] | 50.0 [0.0, 100.0] / 2 " in md
    assert "## Plots" in md and "(learning.png)" in md
    # t0 and t2 were met in both halves of the two orders: t0 failed late, t2 passed
    assert "| sale | 2 | 2 | +0.0 [-100.0, +100.0], within noise |" in md
    for key in ("pareto", "win_rate", "learning", "break_even"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_targets_section_judges_sale_against_the_largest_agent() -> None:
    # SALE: 3/4 pass, cost 1.0 each of which 0.5 is auction; the largest alone: 2/4 at 2.0
    recs = [_rec("SALE", f"t{i}", "small" if i else "large", i < 3, ta=50, te=50,
                 ca=0.5, ce=0.5) for i in range(4)]  # fmt: skip
    recs += [_rec("single: large", f"t{i}", "large", i < 2, ce=2.0) for i in range(4)]
    md = markdown_report(summarise(recs, "large", AGENTS), AGENTS, largest="large")
    assert "| pass@1 >= largest | 75.0% | 50.0% | met |" in md
    assert "| cost <= 60% of largest | 4 $ (50%) | 8 $ | met |" in md
    assert "| largest executes <= 50% | 25.0% | 100% | met |" in md
    assert "| auction overhead (tokens) vs paper < 1% | 50.0% | - | **missed** |" in md
    assert "| (cost without the auction's calls) | 25% of largest | - | - |" in md
    # no SALE row, no targets
    assert "Targets" not in markdown_report(summarise(recs[4:], "large", AGENTS), AGENTS)


def test_markdown_without_groups_still_has_win_shares() -> None:
    s = summarise([_rec("x", "t", "small", True)], "large", AGENTS)
    md = markdown_report(s, AGENTS)
    assert "| x | 100.0 | 0.0 |" in md


def test_audit_records_feed_metrics() -> None:
    """The shape ``sale_graph.audit.build_audit`` returns (only the keys read here)."""
    audit = {
        "winner": "small",
        "bids": [
            {
                "agent": "small",
                "price": 0.05,
                "tokens": 120,
                "entropy": 1.2,
                "votes": {"small": 4, "large": None},
                "score": -3.0,
                "round": 0,
            },
            {
                "agent": "large",
                "price": 0.36,
                "tokens": 200,
                "entropy": None,
                "votes": {"small": 3, "large": 5},
                "round": 0,
            },
        ],  # fmt: skip
        "totals": {
            "auction_tokens": 2000,
            "execution_tokens": 3000,
            "auction_seconds": 2.0,
            "execution_seconds": 20.0,
            "auction_cost_usd": dollars(900, 0.05) + dollars(1100, 0.36),
            "execution_cost_usd": dollars(3000, 0.05),
        },  # fmt: skip
    }
    bids = bids_from_audit(audit)
    assert bids[0].votes == {"small": 4.0} and bids[0].cost_feature == pytest.approx(6.0)
    assert bids[1].entropy is None
    r = record_from_audit("sale", task_id="t", domain="coding", bin="easy", audit=audit,
                          passed=True, order=2, position=7)  # fmt: skip
    assert r.tokens == 5000 and r.seconds == 22.0 and r.agent == "small"
    assert r.cost == pytest.approx(dollars(900, 0.05) + dollars(1100, 0.36) + dollars(3000, 0.05))
    assert Record.from_dict(r.to_dict()) == r
    g = group_metrics([r], "large", AGENTS)
    assert g["auction_token_share"] == pytest.approx(0.4)
    assert g["auction_time_share"] == pytest.approx(2.0 / 22.0)


# --------------------------------------------------------------------------- analysis sections

LARGE = "single: large"


def _crec(method, task, passed, *, order=0, position=0, ta=0, te=1000, ca=0.0, ce=1.0) -> Record:
    return _rec(method, task, "large", passed, order=order, position=position, ta=ta, te=te,
                ca=ca, ce=ce)


def _largest(n: int = 20) -> list[Record]:
    return [_crec(LARGE, f"t{i:02d}", i % 2 == 0) for i in range(n)]



def test_report_sections_name_both_largest_rows_and_noise() -> None:
    direct = [_crec(f"{LARGE} (direct)", r.task_id, r.passed, te=500, ce=0.5)
              for r in _largest()]  # fmt: skip
    sale = [_crec("SALE", f"t{i:02d}", i % 2 == 0, ta=10, ca=0.2, ce=0.5, order=k, position=i)
            for k in range(2) for i in range(20)]  # fmt: skip
    recs = _largest() + direct + sale
    analysis = analyse(recs, "large", AGENTS)
    assert analysis["references"] == [LARGE, f"{LARGE} (direct)"]
    assert set(analysis["paired"][f"{LARGE} (direct)"]) == {"SALE", LARGE}
    md = markdown_report(summarise(recs, "large", AGENTS), AGENTS, largest="large",
                         analysis=analysis)  # fmt: skip
    assert "## Paired comparisons against the largest agent" in md
    assert f"| SALE | {LARGE} | 20 | +0.0 | [+0.0, +0.0] | within noise | 0.70 |" in md
    assert f"| SALE | {LARGE} (direct) | 20 | +0.0 |" in md
    assert "## Break-even execution length" in md
    row = next(ln for ln in md.splitlines() if ln.startswith("| SALE | single: large | 0.2 |"))
    lstar = analysis["break_even"][LARGE]["SALE"]["break_even_tokens"]
    assert f"| 0.50 [0.50, 0.50] | {lstar:,.0f} [{lstar:,.0f}, {lstar:,.0f}] |" in row
    assert "## Longest executions (top tercile)" in md
    assert "## Learning along the task order" in md
    json.dumps(analysis, allow_nan=False)  # the report writes it as strict JSON


def test_a_staged_auction_that_spends_nothing_on_its_auction_has_a_break_even_row() -> None:
    # assessed from memory alone: no auction token, executions at 0.6 of the largest's
    free = [_crec("staged", f"t{i:02d}", i % 2 == 0, ce=0.6) for i in range(20)]
    dear = [_crec("staged dear", f"t{i:02d}", i % 2 == 0, ce=1.2) for i in range(20)]
    router = [_crec("WTP", f"t{i:02d}", i % 2 == 0, ce=0.5) for i in range(20)]
    recs = _largest() + free + dear + router
    analysis = analyse(recs, "large", AGENTS, auction_methods=["staged", "staged dear"])
    rows = analysis["break_even"][LARGE]
    assert set(rows) == {"staged", "staged dear"}  # the router is no auction
    assert rows["staged"]["break_even_tokens"] == 0.0 and rows["staged dear"][
        "break_even_tokens"] is None
    assert set(analysis["length_bins"]["methods"]) == {"staged", "staged dear"}
    md = "\n".join(break_even_section(analysis))
    assert f"| staged | {LARGE} | 0 | 0.60 [0.60, 0.60] | any | - |" in md
    assert f"| staged dear | {LARGE} | 0 | 1.20 [1.20, 1.20] | never | - |" in md
    # without the run's list, only spending tells: no row
    assert analyse(recs, "large", AGENTS)["break_even"][LARGE] == {}


def test_break_even_plot_names_free_auctions_once_instead_of_drawing_them() -> None:
    # a dozen memory-only staged rows all lie at 0%: drawn, they hide each other
    free = [_crec("staged", f"t{i:02d}", i % 2 == 0, ce=0.6) for i in range(20)]
    paid = [_crec("SALE", f"t{i:02d}", i % 2 == 0, ta=10, ca=0.2, ce=0.6) for i in range(20)]
    analysis = analyse(_largest() + free + paid, "large", AGENTS,
                       auction_methods=["staged", "SALE"])  # fmt: skip
    lines, named = break_even_lines(analysis["length_bins"])
    assert named == ["staged"] and list(lines) == ["SALE"]
    assert all(0 < share < 100 for _, share in lines["SALE"])
    assert break_even_lines({}) == ({}, [])


def test_learning_curves_are_read_against_the_largest_agent_answering_directly() -> None:
    direct = [_crec(f"{LARGE} (direct)", r.task_id, r.passed and r.task_id < "t10", ce=0.5)
              for r in _largest()]  # fmt: skip
    analysis = analyse(_largest() + direct, "large", AGENTS)
    assert learning_reference(analysis) == (f"{LARGE} (direct)", 0.25, 0.5)
    only_planning = analyse(_largest(), "large", AGENTS)
    assert learning_reference(only_planning) == (LARGE, 0.5, 1.0)
    assert learning_reference({}) is None


def test_bar_section_holds_auction_rows_to_quality_cost_and_auction_share() -> None:
    # the largest agent: 10 of 20 pass at 1.0 each
    ok = [_crec("staged", f"t{i:02d}", i % 2 == 0, ca=0.1, ce=0.6) for i in range(20)]
    dear = [_crec("staged dear", f"t{i:02d}", i % 2 == 0, ca=0.2, ce=0.7) for i in range(20)]
    worse = [_crec("SALE", f"t{i:02d}", i % 2 == 0 and i < 10, ca=0.1, ce=0.2)
             for i in range(20)]  # fmt: skip
    router = [_crec("WTP", f"t{i:02d}", i % 2 == 0, ce=0.5) for i in range(20)]
    recs = _largest() + ok + dear + worse + router
    auctions = ["SALE", "staged", "staged dear", "not run"]
    md = markdown_report(summarise(recs, "large", AGENTS), AGENTS, largest="large",
                         analysis=analyse(recs, "large", AGENTS), auction_methods=auctions)
    bar = md.split("## The bar")[1].split("\n## ")[0]
    rows = {line.split(" | ")[0]: line for line in bar.splitlines() if line.startswith("| ")}
    assert rows["| staged"].endswith("| 0.70 [0.70, 0.70] | yes | 14.3% | yes | **met** |")
    assert "| 0.90 [0.90, 0.90] | no | 22.2% | yes | missed |" in rows["| staged dear"]
    assert rows["| SALE"].startswith(f"| SALE | {LARGE} | -25.0 [")
    assert "| no | 0.30 [" in rows["| SALE"] and rows["| SALE"].endswith("| missed |")
    assert "WTP" not in bar and "not run" not in bar
    # without auction rows there is no bar
    assert "## The bar" not in markdown_report(summarise(recs, "large", AGENTS), AGENTS,
                                               analysis=analyse(recs, "large", AGENTS))
