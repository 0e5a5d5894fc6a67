"""What a jury vote knows: AUCs of votes against the outcome bank, paired across rows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sale_graph.bench.bank import OutcomeBank
from sale_graph.bench.config import BenchConfig, _direct_key, _outcome_key, _result_key
from sale_graph.bench.signals import (
    auc,
    boot_auc,
    jury_section,
    jury_signal,
    refinement_effect,
    refinement_section,
)


def test_auc_counts_ties_half_and_can_look_within_each_bidder():
    # the big agent passes and is voted up: identity alone separates the pool ...
    votes = [(5.0, True, "big"), (4.0, False, "big"), (1.0, False, "small"), (2.0, True, "small")]
    assert auc(votes) == pytest.approx(3 / 4)
    # ... within each bidder the vote ranks both pairs right
    assert auc(votes, within_bidder=True) == 1.0
    assert auc([(3.0, True, "a"), (3.0, False, "a")]) == 0.5
    assert math.isnan(auc([(3.0, True, "a")]))


@pytest.mark.parametrize("within", [False, True])
def test_the_bootstrap_auc_equals_auc_on_every_resample(within):
    rng = np.random.default_rng(3)
    tasks = [f"t{i}" for i in range(15)]
    votes = {t: [(float(rng.integers(0, 6)) / (2 if i % 3 else 1), bool(rng.random() < 0.5),
                  str(rng.choice(["a", "b", "c"]))) for _ in range(int(rng.integers(0, 4)))]
             for i, t in enumerate(tasks)}
    idx = rng.integers(0, len(tasks), size=(300, len(tasks)))
    idx[0] = 0  # a resample drawing one task every time: one side has no vote, no AUC
    fast = boot_auc(votes, tasks, idx, within)
    slow = [auc([v for i in draw for v in votes[tasks[i]]], within) for draw in idx]
    assert fast.shape == (300,)
    for f, s in zip(fast, slow, strict=True):
        assert (math.isnan(f) and math.isnan(s)) or f == s  # exact, not approximate
    assert not np.isnan(fast).all()


def _audit(votes_by_bid: dict[str, dict[str, float]]) -> dict:
    bids = [{"agent": agent, "round": 0, "votes": votes} for agent, votes in votes_by_bid.items()]
    bids.append({"agent": "big", "round": 1, "votes": {"big": 0.0}})  # refined: not counted
    jury = {"calls": 2 * len(votes_by_bid), "cost_usd": 2.0}
    return {"bids": bids, "phases": {"bid": {"cost_usd": 1.0}, "jury": jury,
                                     "refine": {"cost_usd": 1.0}}}


def test_rows_are_compared_with_sales_jury_on_the_same_tasks(tmp_path):
    bank = OutcomeBank(tmp_path / "bank.sqlite")
    config = BenchConfig(orders=1)
    tasks = [f"t{i}" for i in range(12)]
    for i, t in enumerate(tasks):
        small_passes = i % 2 == 0
        bank.put("outcome", _outcome_key(t, "small"), {"passed": small_passes})
        bank.put("outcome", _outcome_key(t, "big"), {"passed": True})
        # SALE's juror votes the same whatever passes; the listwise juror tells them apart
        flat = _audit({"small": {"big": 3.0}, "big": {"big": 3.0}})
        sharp = _audit({"small": {"big": 4.0 if small_passes else 1.0}, "big": {"big": 4.0}})
        bank.put("result", _result_key("SALE", 0, t), {"audit": flat})
        bank.put("result", _result_key("SALE listwise jury", 0, t), {"audit": sharp})
    signal = jury_signal(bank, config, tasks, n_boot=200)
    assert set(signal) == {"SALE", "SALE listwise jury"}  # the self-jury row has not run
    sale = signal["SALE"]["jurors"]["big"]
    listwise = signal["SALE listwise jury"]["jurors"]["big"]
    assert sale["bids"] == listwise["bids"] == 24
    assert sale["auc"]["estimate"] == 0.5 and listwise["auc"]["estimate"] == 1.0
    assert listwise["auc_vs_reference"]["estimate"] == 0.5
    assert listwise["auc_vs_reference"]["lo"] > 0  # told apart beyond noise
    # the audit keeps a vote record per bid in both formats; listwise made one call
    assert signal["SALE"]["vote_calls_per_auction"] == 4.0
    assert signal["SALE listwise jury"]["vote_calls_per_auction"] == 1.0
    assert signal["SALE"]["vote_cost_share"] == 0.5
    table = "\n".join(jury_section(signal))
    assert "| SALE listwise jury | big | 24 | 1.00 [1.00, 1.00] | +0.50 [" in table


def test_a_juror_whose_bids_all_pass_has_no_auc(tmp_path):
    bank = OutcomeBank(tmp_path / "bank.sqlite")
    for t in ("t0", "t1"):
        bank.put("outcome", _outcome_key(t, "big"), {"passed": True})
        bank.put("result", _result_key("SALE", 0, t), {"audit": _audit({"big": {"big": 3.0}})})
    signal = jury_signal(bank, BenchConfig(orders=1), ["t0", "t1"], n_boot=20)
    assert signal["SALE"]["jurors"]["big"]["auc"] == {"estimate": None, "lo": None, "hi": None}
    assert "| SALE | big | 2 | n/a |" in "\n".join(jury_section(signal))


def test_an_unfinished_row_is_left_out(tmp_path):
    bank = OutcomeBank(tmp_path / "bank.sqlite")
    bank.put("outcome", _outcome_key("t0", "big"), {"passed": True})
    bank.put("result", _result_key("SALE", 0, "t0"), {"audit": _audit({"big": {"big": 3.0}})})
    assert jury_signal(bank, BenchConfig(orders=1), ["t0", "t1"], n_boot=10) == {}
    assert jury_section({}) == []


def test_refinement_is_credited_only_where_it_changed_a_task(tmp_path):
    """A refined winner that passes where the provisional winner's own plan fails
    helped; the reverse hurt; a refined winner as good as the first changed nothing."""
    bank = OutcomeBank(tmp_path / "bank.sqlite")
    cases = {  # task: (refined bid won, passed, provisional winner's plan passes, with plan)
        "t0": (True, True, False, True),    # helped
        "t1": (True, False, True, True),    # hurt
        "t2": (True, False, True, False),   # hurt, judged on the direct answer
        "t3": (True, True, True, True),     # no change
        "t4": (False, False, True, True),   # not refined: not counted
    }
    for t, (refined, passed, would, with_plan) in cases.items():
        key = _outcome_key if with_plan else _direct_key
        bank.put("outcome" if with_plan else "direct", key(t, "big"), {"passed": would})
        audit = {"refined_won": refined, "provisional_winner": "big",
                 "execution": {"with_plan": with_plan},
                 "phases": {"refine": {"cost_usd": 1.0}}}
        record = {"passed": passed, "cost_auction": 3.0, "cost_execution": 1.0}
        for row in ("SALE", "SALE w/o memory"):
            bank.put("result", _result_key(row, 0, t), {"audit": audit, "record": record})
    effect = refinement_effect(bank, BenchConfig(orders=1), list(cases))
    assert set(effect) == {"SALE"}  # the row without refinement is not listed
    assert effect["SALE"] == {"auctions": 5, "refined_won": 4, "helped": 1, "hurt": 2,
                              "unjudged": 0, "net": -1, "cost_share": 0.25}
    assert "| SALE | 5 | 4 | 1 | 2 | 0 | -1 | 25% |" in "\n".join(refinement_section(effect))
