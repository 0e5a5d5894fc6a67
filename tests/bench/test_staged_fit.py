"""The staged policy's fit on synthetic training rows (no model, no bank)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from sale_graph.bench.staged_fit import StagedRow, fit_staged, memory_estimate, simulate
from sale_graph.staged import Signals, bid_free

ORDER = ("small", "mid", "large")


def _row(t, a, *, passed, entropy=1.0, memory_p=0.4, direct=None, bid_cost=1.0, cost=10.0):
    return StagedRow(task_id=t, agent=a, entropy=entropy, tokens=100, bid_cost=bid_cost,
                     memory_p=memory_p, prior=0.4, passed_plan=passed, cost_plan=cost,
                     passed_direct=passed if direct is None else direct, cost_direct=cost)


def test_simulate_pays_every_bid_it_asks_for_and_stops_at_the_first_accepted():
    rows = {("t", "small"): _row("t", "small", passed=False, cost=1.0),
            ("t", "mid"): _row("t", "mid", passed=True, cost=3.0),
            ("t", "large"): _row("t", "large", passed=True, cost=9.0)}
    probs = {("t", "small"): 0.2, ("t", "mid"): 0.8}
    plan = {"small": True, "mid": True}
    (r,) = simulate(["t"], ORDER, rows, probs, {"small": 0.5, "mid": 0.5}, plan, None)
    assert (r["agent"], r["passed"], r["asked"]) == ("mid", True, ["small", "mid"])
    assert r["cost"] == pytest.approx(1.0 + 1.0 + 3.0)  # two bids and mid's execution
    # a bid-free assessment: the rejected small agent is never asked, and mid, answering
    # directly, does not bid either
    (free,) = simulate(["t"], ORDER, rows, probs, {"small": 0.5, "mid": 0.5},
                       {"small": True, "mid": False}, None, bid_free=True)
    assert free["asked"] == ["mid"] and free["cost"] == pytest.approx(3.0)
    # nobody clears the reserve: the dearest agent answers directly
    (top,) = simulate(["t"], ORDER, rows, probs, {"small": 0.9, "mid": 0.9}, plan, None)
    assert top["agent"] == "large" and top["cost"] == pytest.approx(2.0 + 9.0)


def _training(n=40, seed=0):
    """small passes exactly the tasks where its bid's entropy is low; mid never passes."""
    rng = random.Random(seed)
    tasks, rows = [], {}
    for i in range(n):
        t = f"t{i}"
        tasks.append(t)
        ok = i % 2 == 0
        rows[(t, "small")] = _row(t, "small", passed=ok, entropy=rng.uniform(0.1, 0.4) if ok
                                  else rng.uniform(1.5, 2.0), bid_cost=0.1, cost=1.0)
        rows[(t, "mid")] = _row(t, "mid", passed=False, bid_cost=0.3, cost=3.0)
        rows[(t, "large")] = _row(t, "large", passed=True, cost=10.0)
    return tasks, rows


def test_fit_finds_the_signal_and_skips_an_agent_never_worth_its_bid():
    tasks, rows = _training()
    policy, report = fit_staged(tasks, ORDER, rows, lam=0.1)
    assert "entropy" in report["chosen"]["features"] and report["chosen"]["juror"] is None
    small, mid = policy.for_agent("small"), policy.for_agent("mid")
    assert small.offered and small.entropy < 0 and 0.0 < small.reserve <= 1.0
    assert not mid.offered  # never passes: not even asked
    best = next(c for c in report["candidates"]
                if c["features"] == report["chosen"]["features"] and c["juror"] is None)
    assert best["train_pass"] == 1.0 and best["train_cost_ratio"] < 0.7
    low = Signals(entropy=0.2, tokens=100, memory_p=0.4, memory_n=0.0, prior=0.4)
    high = Signals(entropy=1.8, tokens=100, memory_p=0.4, memory_n=0.0, prior=0.4)
    assert policy.assess("small", low) >= small.reserve > policy.assess("small", high)
    assert not bid_free(policy, "small")
    assert report["execute_plan"]["large"] is False


def test_plan_or_direct_follows_which_passed_more_training_tasks():
    tasks, rows = _training(12)
    for t in tasks:  # small passes every task when it answers directly
        rows[(t, "small")] = StagedRow(**{**rows[(t, "small")].__dict__, "passed_direct": True})
    _, report = fit_staged(tasks, ORDER, rows, lam=0.1)
    assert report["execute_plan"]["small"] is False and report["execute_plan"]["mid"] is True


def test_memory_estimate_weighs_neighbours_by_similarity_with_a_prior():
    vectors = {"a": np.array([1.0, 0.0]), "b": np.array([1.0, 0.0]),
               "c": np.array([0.0, 1.0]), "d": np.array([-1.0, 0.0])}
    passed = {("b", "x"): True, ("c", "x"): False, ("d", "x"): False}
    # b (similarity 1) passed; c (0) and d (-1) carry no weight
    assert memory_estimate("a", "x", ["b", "c", "d"], passed, vectors, 8, 0.4) == pytest.approx(
        (0.4 + 1.0) / (1.0 + 1.0))
    assert memory_estimate("a", "x", ["c", "d"], passed, vectors, 8, 0.4) == pytest.approx(0.4)
    assert math.isfinite(memory_estimate("a", "y", ["b"], passed, vectors, 8, 0.4))


def test_memory_remembers_each_agent_the_way_it_executes_on_winning():
    from sale_graph.bench.staged_fit import remembered_outcomes

    tasks = ["a", "b"]
    outcomes = {("a", "small"): {"passed": True}, ("b", "small"): {"passed": False},
                ("a", "large"): {"passed": False}, ("b", "large"): {"passed": False}}
    direct = {("a", "small"): {"passed": True}, ("b", "small"): {"passed": True},
              ("a", "large"): {"passed": True}, ("b", "large"): {"passed": False}}
    got = remembered_outcomes(tasks, ["small", "large"], outcomes, direct)
    # small answers directly (2 passes against 1); the dearest always answers directly
    assert got == {("a", "small"): True, ("b", "small"): True,
                   ("a", "large"): True, ("b", "large"): False}
    # without direct answers, the plan's outcomes
    assert remembered_outcomes(tasks, ["small", "large"], outcomes, {})[("b", "small")] is False


def test_standardised_fit_predicts_like_the_raw_one_but_shrinks_fairly():
    from sale_graph.bench.staged_fit import logistic, logistic_scaled

    rng = np.random.default_rng(0)
    n = 200
    small = rng.normal(0, 0.1, n)  # a signal in tenths (like memory's p - prior)
    big = rng.normal(0, 2.0, n)  # one in nats, pure noise
    y = (small + rng.normal(0, 0.05, n) > 0).astype(float)
    x = np.column_stack([np.ones(n), small, big])
    raw = logistic(x, y)
    scaled = logistic_scaled(x, y)
    acc = lambda w: float(np.mean(((x @ w) > 0) == (y > 0)))  # noqa: E731
    # the unscaled penalty crushes the small-unit signal; standardised, it carries the model
    assert abs(scaled[1]) * 0.1 > 5 * abs(raw[1]) * 0.1
    assert acc(scaled) > 0.85 and acc(scaled) >= acc(raw)
    assert abs(scaled[2]) * 2.0 < abs(scaled[1]) * 0.1


def test_a_tie_keeps_the_free_signal_that_predicts_best():
    # the cheaper agents' bids cost more than anything they could save, so every
    # candidate hands every task to the dearest agent; memory still predicts small
    tasks, rows = _training(30)
    for i, t in enumerate(tasks):
        ok = i % 3 == 0
        rows[(t, "small")] = _row(t, "small", passed=ok, memory_p=0.8 if ok else 0.1,
                                  bid_cost=50.0, cost=1.0)
        rows[(t, "mid")] = _row(t, "mid", passed=False, bid_cost=50.0, cost=3.0)
    policy, report = fit_staged(tasks, ORDER, rows, lam=0.1)
    assert all(abs(c["loss"] - report["chosen"]["loss"]) < 1e-9 for c in report["candidates"])
    assert report["chosen"]["features"] == ["memory"] and report["chosen"]["juror"] is None
    assert not policy.for_agent("small").offered and policy.for_agent("small").memory > 0
    assert bid_free(policy, "small")


def test_against_the_dearest_the_cheapest_keeps_what_the_dearest_fails_too():
    # half the tasks nobody passes (memory knows the dearest fails them), half only the
    # dearest passes; small never passes, so a plain assessment never accepts it
    tasks, rows = [], {}
    for i in range(30):
        t, hard = f"t{i}", i % 2 == 0
        tasks.append(t)
        rows[(t, "small")] = _row(t, "small", passed=False, bid_cost=0.1, cost=1.0)
        rows[(t, "mid")] = _row(t, "mid", passed=False, bid_cost=0.3, cost=3.0)
        rows[(t, "large")] = _row(t, "large", passed=not hard, memory_p=0.05 if hard else 0.9,
                                  cost=10.0)
    plain, plain_report = fit_staged(tasks, ORDER, rows, lam=0.1, against_dearest=(False,))
    assert plain.dearest is None and not plain.for_agent("small").offered
    policy, report = fit_staged(tasks, ORDER, rows, lam=0.1)
    assert report["chosen"]["against_dearest"] and policy.dearest is not None
    assert policy.dearest.memory > 0  # memory's estimate predicts the dearest agent
    best = next(c for c in report["candidates"] if c["against_dearest"]
                and c["features"] == report["chosen"]["features"] and c["juror"] is None)
    # nothing lost against the dearest, at a little over half its cost
    assert best["train_pass"] == 0.5 and best["train_cost_ratio"] < 0.6
    assert report["chosen"]["loss"] < plain_report["chosen"]["loss"]
    # at run time: the hard task goes to small, the easy one up to large
    sig = dict(entropy=1.0, tokens=100, memory_p=0.4, memory_n=0.0, prior=0.4)
    small = policy.for_agent("small")
    assert policy.assess("small", Signals(**sig, dearest_memory_p=0.05)) >= small.reserve
    assert policy.assess("small", Signals(**sig, dearest_memory_p=0.9)) < small.reserve
    # the policy survives its JSON form
    from sale_graph.staged import StagedPolicy

    again = StagedPolicy.coerce(policy.to_dict())
    assert again.dearest == policy.dearest and again == policy
    with pytest.raises(ValueError, match="needs memory"):
        fit_staged(tasks, ORDER, rows, lam=0.1, use_memory=False, against_dearest=(True,))
