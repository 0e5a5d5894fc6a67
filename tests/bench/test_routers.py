"""Baselines on a synthetic outcome table whose right answers are known."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from sale_graph.bench.records import Outcome
from sale_graph.bench.routers import (
    KnnEstimator,
    by_price,
    carrot,
    cascade,
    fit_cascade_thresholds,
    largest_only,
    oracle,
    random_router,
    routes_to_records,
    single_agent,
    wtp,
)

PRICES = {"small": 0.05, "mid": 0.16, "large": 0.36}


def _outcome(agent: str, passed: bool, confidence: float | None = None) -> Outcome:
    tokens = {"small": 100, "mid": 200, "large": 400}[agent]
    return Outcome(passed, tokens, tokens * PRICES[agent] / 1e6, tokens / 50, confidence)


def _world(n: int = 10):
    """Cluster "a" (easy): small and large pass. Cluster "b" (hard): only large passes."""
    rng = np.random.default_rng(0)
    table, emb = {}, {}
    for c, centre in (("a", np.array([1.0, 0.0, 0.0])), ("b", np.array([0.0, 1.0, 0.0]))):
        for i in range(n):
            t = f"{c}{i}"
            emb[t] = centre + 0.05 * rng.standard_normal(3)
            easy = c == "a"
            table[t] = {
                "small": _outcome("small", easy, 1.0 if easy else 0.0),
                "mid": _outcome("mid", False, 0.0),
                "large": _outcome("large", True, 1.0),
            }
    train = [f"{c}{i}" for c in "ab" for i in range(n // 2)]
    test = [f"{c}{i}" for c in "ab" for i in range(n // 2, n)]
    return table, emb, train, test


def _picks(routes) -> dict[str, str]:
    return {r.task_id: r.agent for r in routes}


def test_by_price_and_fixed_routers() -> None:
    assert by_price(PRICES) == ["small", "mid", "large"]
    assert {r.agent for r in largest_only(["t1", "t2"], PRICES)} == {"large"}
    assert [r.tried for r in single_agent(["t1"], "mid")] == [("mid",)]


def test_random_router_is_seeded_and_uses_every_agent() -> None:
    ids = [f"t{i}" for i in range(60)]
    a = random_router(ids, list(PRICES), seed=4)
    assert a == random_router(ids, list(PRICES), seed=4)
    assert a != random_router(ids, list(PRICES), seed=5)
    assert set(Counter(r.agent for r in a)) == set(PRICES)


def test_oracle_picks_cheapest_passing_agent() -> None:
    table, _, _, test = _world()
    table = dict(table)
    table["none"] = {a: _outcome(a, False) for a in PRICES}
    picks = _picks(oracle([*test, "none"], table, PRICES))
    assert all(picks[t] == "small" for t in test if t.startswith("a"))
    assert all(picks[t] == "large" for t in test if t.startswith("b"))
    assert picks["none"] == "small"


def test_knn_estimator_uses_nearest_neighbours() -> None:
    table, emb, train, _ = _world()
    est = KnnEstimator(train, table, emb, list(PRICES), k=5)
    p, c = est.estimate(np.array([0.0, 1.0, 0.0]))
    assert p == {"small": 0.0, "mid": 0.0, "large": 1.0}
    assert c["large"] == pytest.approx(400 * 0.36 / 1e6)
    assert KnnEstimator(train, table, emb, list(PRICES), k=500).k == len(train)


def test_wtp_large_lambda_picks_the_accurate_agent_zero_lambda_the_cheapest() -> None:
    table, emb, train, test = _world()
    rich = _picks(wtp(train, test, table, emb, PRICES, lam=1e6, k=5))
    assert all(rich[t] == ("small" if t.startswith("a") else "large") for t in test)
    stingy = _picks(wtp(train, test, table, emb, PRICES, lam=0.0, k=5))
    assert set(stingy.values()) == {"small"}


def test_wtp_default_k_blurs_clusters() -> None:
    table, emb, train, test = _world()
    # With k >= all training tasks every query sees the same neighbours: p_small = 0.5.
    picks = _picks(wtp(train, test, table, emb, PRICES, lam=1e-4, k=50))
    assert len(set(picks.values())) == 1


def test_carrot_trades_success_for_cost_with_mu() -> None:
    table, emb, train, test = _world()
    quality = _picks(carrot(train, test, table, emb, PRICES, mu=0.0, k=5))
    assert all(quality[t] == ("small" if t.startswith("a") else "large") for t in test)
    cheap = _picks(carrot(train, test, table, emb, PRICES, mu=1.0, k=5))
    assert set(cheap.values()) == {"small"}
    with pytest.raises(ValueError):
        carrot(train, test, table, emb, PRICES, mu=1.5)


def test_cascade_stops_on_a_passed_self_check_and_pays_for_every_try() -> None:
    table, _, _, test = _world()
    routes = cascade(test, table, PRICES)
    for r in routes:
        if r.task_id.startswith("a"):
            assert r.tried == ("small",)
        else:
            assert r.tried == ("small", "mid", "large") and r.agent == "large"
    recs = routes_to_records(
        "cascade", routes, table, dict.fromkeys(table, "coding"), dict.fromkeys(table, "easy")
    )
    hard = next(r for r in recs if r.task_id.startswith("b"))
    assert hard.cost == pytest.approx(sum(table[hard.task_id][a].cost for a in PRICES))
    assert hard.tokens_execution == 700 and hard.passed
    assert [r.position for r in recs] == list(range(len(recs)))


def test_cascade_thresholds_learn_to_distrust_an_overconfident_agent() -> None:
    table, _, train, test = _world()
    # small always claims success, but fails the hard cluster: precision 0.5 in training
    table = {
        t: {**row, "small": _outcome("small", row["small"].passed, 1.0)} for t, row in table.items()
    }
    thresholds = fit_cascade_thresholds(train, table, PRICES, target_precision=0.9)
    assert thresholds["small"] == math.inf and thresholds["mid"] == math.inf
    assert "large" not in thresholds
    assert {r.agent for r in cascade(test, table, PRICES, thresholds)} == {"large"}
    naive = cascade(test, table, PRICES)
    assert {r.agent for r in naive} == {"small"}
    lenient = fit_cascade_thresholds(train, table, PRICES, target_precision=0.5)
    assert lenient["small"] == 1.0


def test_routes_to_records_grades_by_the_answering_agent() -> None:
    table, _, _, test = _world()
    recs = routes_to_records(
        "small", single_agent(test, "small"), table,
        dict.fromkeys(table, "coding"), {t: "easy" if t[0] == "a" else "hard" for t in table},
    )  # fmt: skip
    assert sum(r.passed for r in recs) == sum(t.startswith("a") for t in test)
    assert {r.bin for r in recs} == {"easy", "hard"}
    assert all(r.tokens_auction == 0 and r.cost_auction == 0 for r in recs)


def test_knn_threshold_takes_the_cheapest_agent_its_neighbours_trust() -> None:
    import numpy as np

    from sale_graph.bench.records import Outcome
    from sale_graph.bench.routers import knn_threshold

    prices = {"small": 1.0, "large": 3.0}

    def o(passed: bool, cost: float) -> Outcome:
        return Outcome(passed=passed, tokens=10, cost=cost, seconds=1.0)

    # two clusters: "easy" tasks the small agent passes, "hard" ones it fails
    table = {"e1": {"small": o(True, 1), "large": o(True, 3)},
             "e2": {"small": o(True, 1), "large": o(True, 3)},
             "h1": {"small": o(False, 1), "large": o(True, 3)},
             "h2": {"small": o(False, 1), "large": o(True, 3)}}
    emb = {"e1": np.array([1.0, 0.0]), "e2": np.array([0.9, 0.1]),
           "h1": np.array([0.0, 1.0]), "h2": np.array([0.1, 0.9]),
           "easy": np.array([1.0, 0.05]), "hard": np.array([0.05, 1.0])}
    routes = knn_threshold(list(table), ["easy", "hard"], table, emb, prices, tau=0.5, k=2)
    assert [(r.task_id, r.agent) for r in routes] == [("easy", "small"), ("hard", "large")]
    never = knn_threshold(list(table), ["easy"], table, emb, prices, tau=1.01, k=2)
    assert never[0].agent == "large"


def test_perfect_accept_falls_back_to_the_dearest_not_the_cheapest() -> None:
    from sale_graph.bench.routers import perfect_accept

    table, _, _, test = _world()
    table = dict(table)
    table["none"] = {a: _outcome(a, False) for a in PRICES}
    picks = _picks(perfect_accept([*test, "none"], table, PRICES))
    assert all(picks[t] == "small" for t in test if t.startswith("a"))
    assert all(picks[t] == "large" for t in test if t.startswith("b"))
    assert picks["none"] == "large"  # the oracle would take small: nobody passes
    assert _picks(oracle(["none"], table, PRICES))["none"] == "small"


def test_perfect_no_loss_spares_the_dearest_the_tasks_it_fails_too() -> None:
    from sale_graph.bench.routers import perfect_no_loss

    table, _, _, test = _world()
    table = dict(table)
    table["none"] = {a: _outcome(a, False) for a in PRICES}
    table["only-mid"] = {a: _outcome(a, a == "mid") for a in PRICES}
    picks = _picks(perfect_no_loss([*test, "none", "only-mid"], table, PRICES))
    assert all(picks[t] == "small" for t in test if t.startswith("a"))
    assert all(picks[t] == "large" for t in test if t.startswith("b"))
    assert picks["none"] == "small"  # the dearest fails it too: nothing to lose
    assert picks["only-mid"] == "small"  # no loss against the dearest, a loss to mid


def test_the_ceiling_counts_either_mode_of_a_cheaper_agent_and_the_dearest_direct() -> None:
    from sale_graph.bench.analysis import _best_modes
    from sale_graph.bench.records import Outcome

    def o(passed, cost):
        return Outcome(passed=passed, tokens=1, cost=cost, seconds=0.0)

    plan = {"t": {"small": o(True, 5.0), "large": o(True, 9.0)},
            "u": {"small": o(False, 5.0), "large": o(True, 9.0)}}
    direct = {"t": {"small": o(True, 2.0), "large": o(False, 3.0)},
              "u": {"small": o(True, 2.5), "large": o(False, 3.0)}}
    best = _best_modes(["t", "u"], plan, direct, "large")
    assert best["t"]["small"].cost == 2.0  # both passed: the cheaper answer is charged
    assert best["u"]["small"].passed and best["u"]["small"].cost == 2.5  # direct alone passed
    assert not best["t"]["large"].passed  # the last resort answers directly
    assert _best_modes(["t"], plan, None, "large")["t"] == plan["t"]
