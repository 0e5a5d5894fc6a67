"""Bootstrap intervals, paired comparisons, break-even and learning curves on known inputs."""

from __future__ import annotations

import pytest

from sale_graph.bench.metrics import (
    break_even,
    group_intervals,
    intervals,
    learning_curves,
    learning_effect,
    length_bins,
    longest_bin,
    paired_comparisons,
    per_task,
)
from sale_graph.bench.records import Record

LARGE = "single: large"
AGENTS = ["small", "large"]


def _rec(method, task, passed, *, agent="large", order=0, position=0, ta=0, te=1000,
         ca=0.0, ce=1.0) -> Record:  # fmt: skip
    return Record(method=method, task_id=task, domain="coding", bin="easy", agent=agent,
                  passed=passed, tokens_auction=ta, tokens_execution=te, cost_auction=ca,
                  cost_execution=ce, order=order, position=position)  # fmt: skip


def _largest(n: int = 20) -> list[Record]:
    """The largest agent passes the even tasks, at cost 1 per task (1000 tokens)."""
    return [_rec(LARGE, f"t{i:02d}", i % 2 == 0) for i in range(n)]


def test_identical_methods_differ_by_nothing() -> None:
    same = [_rec("copy", r.task_id, r.passed) for r in _largest()]
    cmp = paired_comparisons(_largest() + same, [LARGE])[LARGE]["copy"]
    assert cmp["n_tasks"] == 20
    assert cmp["pass_diff"] == {"estimate": 0.0, "lo": 0.0, "hi": 0.0, "within_noise": True}
    assert cmp["cost_ratio"]["estimate"] == pytest.approx(1.0)
    assert cmp["cost_ratio"]["lo"] == pytest.approx(1.0) == cmp["cost_ratio"]["hi"]
    assert cmp["cost_ratio"]["within_noise"]
    assert LARGE not in paired_comparisons(_largest() + same, [LARGE])[LARGE]  # no self row


def test_passing_what_the_largest_fails_is_a_real_gain_at_a_real_price() -> None:
    better = [_rec("better", f"t{i:02d}", True, ce=2.0) for i in range(20)]
    cmp = paired_comparisons(_largest() + better, [LARGE])[LARGE]["better"]
    assert cmp["pass_diff"]["estimate"] == pytest.approx(0.5)
    assert 0 < cmp["pass_diff"]["lo"] <= 0.5 <= cmp["pass_diff"]["hi"]
    assert not cmp["pass_diff"]["within_noise"]
    assert cmp["cost_ratio"]["estimate"] == pytest.approx(2.0)  # 2 per task against 1
    assert not cmp["cost_ratio"]["within_noise"]


def test_one_task_of_difference_is_within_noise() -> None:
    one = [_rec("one", r.task_id, r.passed or r.task_id == "t01") for r in _largest()]
    cmp = paired_comparisons(_largest() + one, [LARGE])[LARGE]["one"]
    assert cmp["pass_diff"]["estimate"] == pytest.approx(0.05)
    assert cmp["pass_diff"]["within_noise"]


def test_intervals_are_seeded_and_hold_the_estimate() -> None:
    ci = intervals(_largest())
    assert ci == intervals(_largest())  # seeded: a rebuilt report is byte-identical
    p = ci[LARGE]["pass_at_1"]
    assert p["estimate"] == 0.5 and p["lo"] < 0.5 < p["hi"]
    c = ci[LARGE]["cost_per_task"]
    assert c == {"estimate": 1.0, "lo": 1.0, "hi": 1.0}
    assert intervals(_largest(), seed=1)[LARGE]["pass_at_1"] != p  # the seed matters


def test_orders_are_averaged_per_task_first() -> None:
    recs = [_rec("sale", "a", True, order=0), _rec("sale", "a", False, order=1),
            _rec("sale", "b", True, order=0), _rec("sale", "b", True, order=1)]  # fmt: skip
    assert per_task(recs)["sale"]["a"]["passed"] == 0.5
    assert intervals(recs)["sale"]["n_tasks"] == 2  # tasks, not task x order


def test_break_even_on_synthetic_records() -> None:
    # the largest: 1000 tokens for $1 (p = $0.001/token); the auction: $2 per task, and
    # the winners' executions cost half the largest's (rho = 0.5): L* = 2 / (0.001 * 0.5)
    sale = [_rec("sale", f"t{i:02d}", True, ta=10, ca=2.0, ce=0.5) for i in range(20)]
    dear = [_rec("dear", f"t{i:02d}", True, ta=10, ca=2.0, ce=1.5) for i in range(20)]
    out = break_even(_largest() + sale + dear, LARGE)
    assert set(out) == {"sale", "dear"}  # only methods that ran an auction
    assert out["sale"]["auction_cost_per_task"] == pytest.approx(2.0)
    assert out["sale"]["rho"] == pytest.approx(0.5)
    assert out["sale"]["price_per_mtok"] == pytest.approx(1000.0)
    assert out["sale"]["break_even_tokens"] == pytest.approx(4000.0)
    assert out["dear"]["break_even_tokens"] is None  # rho >= 1: never pays
    # every task alike: the interval is the point; rho >= 1 in every resample: no bound
    assert out["sale"]["break_even_interval"] == {"lo": pytest.approx(4000.0),
                                                   "hi": pytest.approx(4000.0)}  # fmt: skip
    assert out["sale"]["rho_interval"]["lo"] == pytest.approx(0.5)
    assert out["dear"]["break_even_interval"] == {"lo": None, "hi": None}
    # half the tasks route to an execution at half the price, half at 1.5x: rho is 1 on
    # the whole run (never), and the resamples reach both a finite L* and never
    mixed = [_rec("mixed", f"t{i:02d}", True, ta=10, ca=2.0, ce=0.5 if i % 2 else 1.5)
             for i in range(20)]  # fmt: skip
    m = break_even(_largest() + mixed, LARGE, n_boot=500)["mixed"]
    assert m["break_even_tokens"] is None
    assert m["break_even_interval"]["lo"] is not None and m["break_even_interval"]["hi"] is None
    assert m["rho_interval"]["lo"] < 1.0 < m["rho_interval"]["hi"]
    assert break_even(sale, LARGE) == {}


def test_length_bins_and_longest_tercile() -> None:
    lengths = {f"t{i:02d}": float(100 * (i + 1)) for i in range(6)}
    # the auction costs 1 everywhere; the execution grows with the task's length
    sale = [_rec("sale", t, True, ta=1, ca=1.0, ce=v / 100) for t, v in lengths.items()]
    bins = length_bins(_largest(6) + sale, lengths, bins=3)
    assert bins["median_tokens"] == [150.0, 350.0, 550.0]
    shares = bins["methods"]["sale"]
    assert shares == sorted(shares, reverse=True)  # longer executions, smaller auction share
    assert shares[0] == pytest.approx(2 / (2 + 3))
    top = longest_bin(_largest(6) + sale, lengths)
    assert (top["n_tasks"], top["min_tokens"], top["max_tokens"]) == (2, 500.0, 600.0)
    assert top["methods"][LARGE] == {"n": 2, "pass_at_1": 0.5, "cost_per_task": 1.0}


def test_learning_curves_average_orders_along_positions() -> None:
    # order 0 passes from position 2 on, order 1 from position 3: memory helps later tasks
    recs = []
    for k, start in ((0, 2), (1, 3)):
        for pos in range(6):
            recs.append(_rec("SALE", f"t{(pos + k) % 6}", pos >= start, order=k, position=pos,
                             agent="small" if pos >= start else "large"))  # fmt: skip
    recs += _largest(6)  # one order: no curve
    curves = learning_curves(recs, AGENTS, window=2)
    assert list(curves) == ["SALE"]
    c = curves["SALE"]
    assert c["tasks_seen"] == [1, 2, 3, 4, 5, 6]
    assert c["pass_at_1"] == pytest.approx([0.0, 0.0, 0.25, 0.75, 1.0, 1.0])
    assert c["win_share"]["small"] == c["pass_at_1"]
    assert c["win_share"]["large"] == pytest.approx([1.0, 1.0, 0.75, 0.25, 0.0, 0.0])



def test_learning_effect_compares_each_task_with_itself() -> None:
    # memory helps: in every order a task passes once it is met in the second half
    helped = [_rec("SALE", f"t{(pos + k) % 6}", pos >= 3, order=k, position=pos,
                   agent="small" if pos >= 3 else "large", ce=1.0 if pos >= 3 else 2.0)
              for k in range(4) for pos in range(6)]  # fmt: skip
    # no learning, but the hard tasks t3-t5 come last in two orders of three: the
    # curve falls from its first window to its last, the same task met late does not
    mixed = [_rec("mix", f"t{i}", i < 3, order=k, position=i if k < 2 else 5 - i)
             for k in range(3) for i in range(6)]  # fmt: skip
    once = [_rec("one order", f"t{i}", True, position=i) for i in range(6)]
    out = learning_effect(helped + mixed + once, "large", n_boot=200)
    assert set(out) == {"SALE", "mix"}  # one order cannot be compared with itself
    h = out["SALE"]
    assert (h["n_tasks"], h["n_orders"]) == (6, 4)
    assert h["pass_diff"]["estimate"] == pytest.approx(1.0)
    assert h["pass_diff"]["lo"] == pytest.approx(1.0) and not h["pass_diff"]["within_noise"]
    assert h["small_share_diff"]["estimate"] == pytest.approx(1.0)
    assert h["cost_ratio"]["estimate"] == pytest.approx(0.5)
    m = out["mix"]
    assert m["n_tasks"] == 6
    assert m["pass_diff"] == {"estimate": 0.0, "lo": 0.0, "hi": 0.0, "within_noise": True}
    assert m["cost_ratio"]["estimate"] == pytest.approx(1.0) and m["cost_ratio"]["within_noise"]
    curve = learning_curves(mixed, AGENTS, window=3)["mix"]["pass_at_1"]
    assert (curve[2], curve[-1]) == pytest.approx((2 / 3, 1 / 3))  # other tasks, not forgetting


def test_learning_effect_leaves_out_tasks_met_in_one_half_only() -> None:
    # two orders that keep every task in the same half: nothing to compare
    same_half = [_rec("SALE", f"t{i}", True, order=k, position=i) for k in range(2)
                 for i in range(4)]  # fmt: skip
    assert learning_effect(same_half, "large") == {}
    one_swapped = same_half + [_rec("SALE", "t0", False, order=2, position=3),
                               _rec("SALE", "t3", True, order=2, position=0),
                               _rec("SALE", "t1", True, order=2, position=1),
                               _rec("SALE", "t2", True, order=2, position=2)]  # fmt: skip
    out = learning_effect(one_swapped, "large", n_boot=100)["SALE"]
    assert out["n_tasks"] == 2  # t0 and t3 were met in both halves
    assert out["pass_diff"]["estimate"] == pytest.approx(-0.5)  # t0: 0 late vs 1 early


def test_group_intervals_resample_each_group_on_its_own() -> None:
    # easy tasks all pass at cost 1, hard ones pass half the time at cost 3
    recs = [Record(method="m", task_id=f"t{i}", domain="coding" if i % 2 else "reasoning",
                   bin="easy" if i < 4 else "hard", agent="large", passed=i < 4 or i % 2 == 0,
                   cost_execution=1.0 if i < 4 else 3.0) for i in range(8)]  # fmt: skip
    out = group_intervals(recs, n_boot=300)
    assert set(out) == {"by_bin", "by_domain", "by_domain_bin"}
    easy, hard = out["by_bin"]["easy"]["m"], out["by_bin"]["hard"]["m"]
    assert easy["n_tasks"] == hard["n_tasks"] == 4
    assert easy["pass_at_1"] == {"estimate": 1.0, "lo": 1.0, "hi": 1.0}
    assert hard["pass_at_1"]["estimate"] == pytest.approx(0.5)
    assert hard["pass_at_1"]["lo"] < 0.5 < hard["pass_at_1"]["hi"]
    assert hard["cost_per_task"]["estimate"] == pytest.approx(3.0)
    assert set(out["by_domain_bin"]) == {"coding/easy", "coding/hard", "reasoning/easy",
                                         "reasoning/hard"}  # fmt: skip
    assert out["by_domain_bin"]["coding/hard"]["m"]["pass_at_1"]["estimate"] == 0.0


def test_learning_effect_weighs_cost_as_a_ratio_of_totals_and_splits_each_order_alone() -> None:
    # task t0 costs 1 early and 3 late, t1 costs 10 early and 10 late: the ratio of totals
    # is 13 / 11, not the mean of the per-task ratios ((3 + 1) / 2)
    recs = []
    for k, (first, second) in enumerate((("t0", "t1"), ("t1", "t0"))):
        for pos, task in enumerate((first, second)):
            late = pos >= 1
            cost = {"t0": 3.0 if late else 1.0, "t1": 10.0}[task]
            recs.append(_rec("SALE", task, True, order=k, position=pos, ce=cost))
    # a third order, twice as long, split at its own middle (position 2), not at 1
    recs += [_rec("SALE", t, True, order=2, position=p, ce=2.0 if t == "t0" else 20.0)
             for p, t in enumerate(("t0", "t1", "t2", "t3"))]  # fmt: skip
    out = learning_effect(recs, "large", n_boot=300)["SALE"]
    assert out["n_tasks"] == 2  # t2 and t3 were met late only
    # t1 at position 1 of the long order is early there (costing 20): early mean 15
    assert out["cost_ratio"]["estimate"] == pytest.approx((3 + 10) / ((1 + 2) / 2 + 15))


def test_learning_effect_over_a_zero_cost_stays_finite_or_none_in_json() -> None:
    import json

    from sale_graph.bench.report import _finite

    # nothing cost anything early, something late: the ratio is infinite, not NaN
    recs = [_rec("free", f"t{(p + k) % 4}", True, order=k, position=p, ce=0.0 if p < 2 else 1.0)
            for k in range(4) for p in range(4)]  # fmt: skip
    ratio = learning_effect(recs, "large", n_boot=200)["free"]["cost_ratio"]
    assert ratio["estimate"] == float("inf") and ratio["lo"] == float("inf")
    assert not any(v != v for v in (ratio["lo"], ratio["hi"]))  # no NaN
    assert json.loads(json.dumps(_finite(ratio), allow_nan=False))["hi"] is None


def test_learning_effect_leaves_out_draws_of_orders_that_meet_no_task_twice() -> None:
    # two orders, each task early in one and late in the other: a draw of the same
    # order twice compares nothing, and must not read as an infinite cost ratio
    recs = [_rec("SALE", f"t{i}", True, order=k, position=i if k == 0 else 3 - i, ce=1.0)
            for k in range(2) for i in range(4)]  # fmt: skip
    ratio = learning_effect(recs, "large", n_boot=200)["SALE"]["cost_ratio"]
    assert ratio == {"estimate": 1.0, "lo": 1.0, "hi": 1.0, "within_noise": True}
