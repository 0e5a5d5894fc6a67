"""The staged auction and verified outcomes, with scripted models (mechanics only)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from langchain_core.runnables import RunnableLambda

from sale_graph import (
    Agent,
    AgentPolicy,
    Context,
    StagedPolicy,
    UnknownAuctionError,
    graph,
    record_outcome,
)
from sale_graph.cli import main as cli_main
from sale_graph.memory import AuctionMemory, AuctionRecordError
from sale_graph.outcomes import success_estimates
from sale_graph.refinement import outcome_pairs
from tests.scripted import ScriptedChatModel

PRICES = {"small": 0.05, "mid": 0.16, "large": 0.36}


def pool(**scripts):
    out = []
    for name, price in PRICES.items():
        script = {"bid": f"{name.upper()} plan one two", "vote": "3",
                  "execute": f"answer from {name}", "direct": f"direct answer from {name}"}
        script.update(scripts.get(name, {}))
        out.append(Agent(name=name, model=ScriptedChatModel(script=script, entropy=0.5),
                         price=price))
    return out


@pytest.fixture()
def memory(tmp_path) -> AuctionMemory:
    return AuctionMemory.persistent(str(tmp_path / "memory"), collection="test_staged")


def policy(**reserves: float) -> StagedPolicy:
    """p(pass) = 0.5 for every bid (scripted entropy 0.5); reserves decide."""
    return StagedPolicy(agents={n: AgentPolicy(bias=-0.5, entropy=1.0, memory=0.0, reserve=r)
                                for n, r in reserves.items()}, fitted=True)


def staged(agents, memory, **kw) -> Context:
    return Context(agents=agents, memory=memory, auction="staged", **kw)


def run(task, context, **inp):
    return asyncio.run(graph.ainvoke({"task": task, **inp}, context=context))


def calls(agents, kind):
    return {a.name: a.model.calls[kind] for a in agents}


def test_stops_at_the_first_bid_that_clears_the_reserve(memory):
    agents = pool()
    out = run("add two numbers", staged(agents, memory, staged=policy(small=0.4, mid=0.4)))
    audit = out["auction"]
    assert out["winner"] == "small" and audit["offered"] == ["small"]
    assert calls(agents, "bid") == {"small": 1, "mid": 0, "large": 0}
    assert audit["assessments"][0]["accepted"] and audit["assessments"][0]["reserve"] == 0.4
    assert "small's bid assessed p=0.50 >= reserve 0.40" == audit["stop"]
    assert out["answer"] == "answer from small"  # executes its plan by default


def test_a_bid_below_the_reserve_passes_the_task_on(memory):
    agents = pool()
    out = run("add two numbers", staged(agents, memory, staged=policy(small=0.9, mid=0.4)))
    assert out["winner"] == "mid" and out["auction"]["offered"] == ["small", "mid"]
    assert [a["accepted"] for a in out["auction"]["assessments"]] == [False, True]
    assert calls(agents, "bid") == {"small": 1, "mid": 1, "large": 0}


def test_the_dearest_agent_answers_directly_without_bid_or_jury(memory):
    agents = pool()
    p = StagedPolicy(agents={"small": AgentPolicy(bias=0.0, jury=1.0, reserve=0.99),
                             "mid": AgentPolicy(bias=0.0, jury=1.0, reserve=0.99)},
                     juror="large", fitted=True)
    out = run("add two numbers", staged(agents, memory, staged=p))
    audit = out["auction"]
    assert out["winner"] == "large" and out["answer"] == "direct answer from large"
    assert audit["offered"] == ["small", "mid", "large"]
    assert audit["stop"].startswith("last resort: large")
    assert calls(agents, "bid")["large"] == 0
    # the juror judged the two cheap bids, nothing of its own
    assert calls(agents, "vote") == {"small": 0, "mid": 0, "large": 2}
    assert audit["execution"]["with_plan"] is False
    assert audit["memory"]["write"] == "ok"
    stored = memory.get(audit["auction_id"])
    assert stored.winner == "large" and stored.winning_bid["strategy"] == ""


def test_a_bid_accepted_without_its_jurors_vote_says_so(memory):
    agents = pool(large={"vote": "seven"})
    p = StagedPolicy(agents={"small": AgentPolicy(bias=1.0, jury=1.0, reserve=0.5)},
                     juror="large", fitted=True, explore=0.0)
    out = run("add two numbers", staged(agents, memory, staged=p))
    audit = out["auction"]
    assert out["winner"] == "small"
    assert "without large's vote" in audit["stop"]
    assert any(e["kind"] == "vote_dropped" for e in audit["events"])


def test_an_agent_memory_rules_out_is_not_asked_to_bid(memory):
    agents = pool()
    memory_only = StagedPolicy(agents={"small": AgentPolicy(bias=0.0, memory=6.0, reserve=0.9),
                                       "mid": AgentPolicy(bias=-0.5, entropy=1.0, reserve=0.4)},
                               fitted=True)
    out = run("t", staged(agents, memory, staged=memory_only))
    audit = out["auction"]
    assert out["winner"] == "mid" and audit["offered"] == ["small", "mid"]
    assert calls(agents, "bid") == {"small": 0, "mid": 1, "large": 0}
    skipped, taken = audit["assessments"]
    assert skipped["skipped"] and skipped["bid_id"] is None and skipped["p_pass"] == 0.5
    assert taken["accepted"]


def test_an_agent_memory_accepts_answers_directly_without_a_bid(memory):
    agents = pool()
    memory_only = StagedPolicy(agents={"small": AgentPolicy(bias=0.0, memory=6.0, reserve=0.4),
                                       "mid": AgentPolicy(bias=0.0, memory=6.0, reserve=0.4)},
                               fitted=True)
    out = run("t", staged(agents, memory, staged=memory_only, execute_plan={"small": False}))
    audit = out["auction"]
    assert out["winner"] == "small" and out["answer"] == "direct answer from small"
    assert calls(agents, "bid") == {"small": 0, "mid": 0, "large": 0}
    assert audit["offered"] == ["small"] and audit["execution"]["with_plan"] is False
    (verdict,) = audit["assessments"]
    assert verdict["accepted"] and verdict["without_bid"] and not verdict["skipped"]
    assert audit["stop"].startswith("memory alone accepts small (p=0.50 >= reserve 0.40)")
    # an agent that would execute its plan still bids: the plan is what it carries out
    agents = pool()
    out = run("t", staged(agents, memory, staged=memory_only, execute_plan=True))
    assert out["winner"] == "small" and out["answer"] == "answer from small"
    assert calls(agents, "bid") == {"small": 1, "mid": 0, "large": 0}


def test_the_fitted_plan_or_direct_choice_comes_with_the_weights_file(memory, tmp_path):
    import json

    from sale_graph.errors import PoolConfigError

    path = tmp_path / "weights.json"
    path.write_text(json.dumps({"cost": 1.0, "entropy": 0.0, "jury": {},
                                "execute_plan": {"small": False, "large": False}}))
    assert Context(weights=str(path)).resolved_execute_plan() == {"small": False,
                                                                  "large": False}
    assert Context(weights=str(path), execute_plan=True).resolved_execute_plan() is True
    assert Context(agents=pool()).resolved_execute_plan() is True  # no fit: the paper's plan
    agents = pool()
    out = run("t", staged(agents, memory, staged=policy(small=0.4), weights=str(path)))
    assert out["winner"] == "small" and out["answer"] == "direct answer from small"
    path.write_text(json.dumps({"cost": 1.0, "entropy": 0.0, "jury": {},
                                "execute_plan": {"small": "no"}}))
    with pytest.raises(PoolConfigError, match="execute_plan"):
        Context(weights=str(path)).resolved_execute_plan()


def test_a_pool_defaults_to_the_auction_mode_its_weights_name(memory, tmp_path):
    import json

    from sale_graph.errors import PoolConfigError

    path = tmp_path / "weights.json"
    path.write_text(json.dumps({"cost": 1.0, "entropy": 0.0, "jury": {},
                                "staged": policy(small=0.4).to_dict(),
                                "defaults": {"auction": "staged"}}))
    agents = pool()
    out = run("t", Context(agents=agents, memory=memory, weights=str(path)))
    assert out["auction"]["mode"] == "staged" and out["winner"] == "small"
    assert calls(agents, "vote") == {"small": 0, "mid": 0, "large": 0}
    agents = pool()  # an explicit mode wins over the measured default
    out = run("t", Context(agents=agents, memory=memory, weights=str(path), auction="full"))
    assert out["auction"]["mode"] == "full" and calls(agents, "bid")["large"] == 1
    assert Context(agents=pool()).resolved_auction() == "full"  # no fit: the paper's
    path.write_text(json.dumps({"cost": 1.0, "entropy": 0.0, "jury": {},
                                "defaults": {"auction": "cheap"}}))
    with pytest.raises(PoolConfigError, match="defaults.auction"):
        Context(weights=str(path)).resolved_auction()


def test_an_explicit_reserve_offers_again_an_agent_the_fit_skipped(memory):
    skipped = StagedPolicy(agents={"small": AgentPolicy(bias=-0.5, entropy=1.0, reserve=1.0,
                                                        offered=False),
                                   "mid": AgentPolicy(bias=-0.5, entropy=1.0, reserve=1.0,
                                                      offered=False)}, fitted=True)
    agents = pool()
    assert run("t", staged(agents, memory, staged=skipped))["winner"] == "large"
    assert calls(agents, "bid") == {"small": 0, "mid": 0, "large": 0}
    agents = pool()  # the user's knob: a bid assessed at 0.5 now clears 0.4
    assert run("t", staged(agents, memory, staged=skipped, reserve=0.4))["winner"] == "small"


def test_reserve_knob_overrides_every_agent(memory):
    agents = pool()
    cheap = run("t", staged(agents, memory, staged=policy(small=0.9, mid=0.9), reserve=0.0))
    dear = run("t", staged(agents, memory, staged=policy(small=0.0, mid=0.0), reserve=1.0))
    assert cheap["winner"] == "small" and dear["winner"] == "large"


def test_a_failing_bidder_passes_the_task_on(memory):
    agents = pool(small={"bid": RuntimeError("boom")})
    out = run("t", staged(agents, memory, staged=policy(small=0.0, mid=0.0)))
    assert out["winner"] == "mid"
    assert out["auction"]["events"][0]["kind"] == "bid_failed"


def test_unfitted_policy_distrusts_agents_without_evidence_but_explores(memory):
    agents = pool()
    p = StagedPolicy(explore=0.0)
    out = run("t", staged(agents, memory, staged=p))
    assert out["winner"] == "large"  # prior 0.4 < reserve 0.5 for both cheaper agents
    explorer = StagedPolicy(explore=1.0)
    out = run("t", staged(pool(), memory, staged=explorer))
    assert out["winner"] == "small" and out["auction"]["assessments"][0]["explored"]


def test_verified_successes_raise_an_agents_estimate_until_it_is_trusted(memory):
    task = "write a function that reverses a string"
    for i in range(3):
        memory.write(f"past-{i}", task, [
            {"agent": "small", "round": 0, "strategy": "plan", "score": 0.0, "label": "win",
             "price": 0.05}], "small", outcome={"passed": True})
    out = run(task, staged(pool(), memory, staged=StagedPolicy(explore=0.0)))
    est = out["auction"]["estimates"]["small"]
    assert est["count"] == 3 and est["p"] > 0.7
    assert out["winner"] == "small"


# --- verified outcomes ---------------------------------------------------------------------------


def test_verifier_pass_fail_and_exception_are_each_written_once_with_the_auction(memory):
    verdicts = {"pass": lambda x: True, "fail": lambda x: {"passed": False, "detail": "wrong"},
                "boom": lambda x: 1 / 0}
    for name, verifier in verdicts.items():
        out = run("t", Context(agents=pool(), memory=memory, verifier=verifier),
                  auction_id=f"a-{name}")
        audit = out["auction"]
        assert audit["memory"]["write"] == "ok"
        stored = memory.get(f"a-{name}")
        if name == "boom":
            assert audit["outcome"]["passed"] is None and "ZeroDivisionError" in audit[
                "outcome"]["error"]
            assert stored.outcome is None
            assert any(e["kind"] == "verifier_failed" for e in audit["events"])
        else:
            assert stored.outcome["passed"] is (name == "pass")
    assert memory.count() == 3


@pytest.mark.parametrize("failure", ["raises", "empty"])
def test_no_answer_is_a_failure_the_verifier_is_not_asked_about(memory, failure):
    """A verifier could pass an empty answer; a winner that gave none failed the task
    (an empty answer was returned as the answer: a 200 with no content from the server)."""
    asked = []

    def verifier(x):
        asked.append(x)
        return True

    def broken_executor(inputs):
        if failure == "empty":
            return " \n"
        raise RuntimeError("sandbox down")

    out = run("t", Context(agents=pool(), memory=memory, verifier=verifier,
                          executor=broken_executor), auction_id="no-answer")
    audit = out["auction"]
    assert not asked and audit["memory"]["write"] == "ok" and out["answer"] is None
    outcome = memory.get("no-answer").outcome
    assert outcome["passed"] is False and outcome["source"] == "execution"
    assert ("sandbox down" if failure == "raises" else "empty answer") in outcome["detail"]
    skipped = [e for e in audit["events"] if e["kind"] == "verifier_skipped"]
    assert len(skipped) == 1 and "recorded as failed" in skipped[0]["detail"]


@pytest.mark.parametrize("wrap", [
    lambda f: f,
    lambda f: RunnableLambda(f).with_config(run_name="check"),
    lambda f: RunnableLambda(f).with_retry(stop_after_attempt=1),
    lambda f: RunnableLambda(lambda x: x) | RunnableLambda(f),
], ids=["function", "with_config", "with_retry", "sequence"])
def test_a_blocking_verifier_is_held_to_the_call_timeout(memory, wrap):
    """Wrapped or not: a blocking part anywhere would borrow the loop's shared pool."""
    release = threading.Event()

    def stuck_verifier(x):
        release.wait(30)
        return True

    try:
        t0 = time.monotonic()
        out = graph.invoke({"task": "t", "auction_id": "slow-check"},
                           context=Context(agents=pool(), memory=memory,
                                           verifier=wrap(stuck_verifier), call_timeout=0.5))
        took = time.monotonic() - t0
    finally:
        release.set()
    assert out["auction"]["outcome"]["error"].startswith("timeout")
    assert memory.get("slow-check").outcome is None
    assert took < 10, f"graph.invoke took {took:.1f}s past a 0.5s verifier deadline"


def test_feedback_for_an_unknown_auction_fails_clearly_and_writes_nothing(memory):
    with pytest.raises(UnknownAuctionError, match="no auction 'nope'"):
        record_outcome("nope", passed=True, context=Context(memory=memory))
    assert memory.count() == 0


def test_repeated_feedback_leaves_one_record_and_the_latest_wins(memory):
    out = run("t", Context(agents=pool(), memory=memory), auction_id="job-1")
    assert out["auction"]["memory"]["write"] == "ok"
    ctx = Context(memory=memory)
    record_outcome("job-1", passed=True, context=ctx)
    record_outcome("job-1", passed=True, context=ctx)
    record_outcome("job-1", passed=False, detail="CI failed", context=ctx)
    assert memory.count() == 1
    stored = memory.get("job-1")
    assert stored.outcome["passed"] is False and stored.outcome["detail"] == "CI failed"
    assert stored.winner == out["winner"]  # the auction itself is untouched


def test_feedback_on_a_damaged_record_writes_nothing(memory):
    memory.write("dmg", "a task", [{"agent": "small", "round": 0, "strategy": "p",
                                    "score": 0.0, "label": "win", "price": 0.05}], "small")
    col = memory._col()
    col.update(ids=["dmg"], metadatas=[{"bids_json": "not json"}])
    with pytest.raises(AuctionRecordError, match="damaged: no outcome written"):
        memory.record_outcome("dmg", passed=True)
    raw = col.get(ids=["dmg"], include=["metadatas"])["metadatas"][0]
    assert not any(k.startswith("outcome_") or k == "has_outcome" for k in raw)


def test_feedback_racing_the_auctions_rewrite_loses_neither(memory):
    bids = [{"agent": "small", "round": 0, "strategy": "p", "score": 0.0, "label": "win",
             "price": 0.05}]
    memory.write("race", "a task", bids, "small")
    errors = []

    def rewrite():
        for _ in range(20):
            memory.write("race", "a task", bids, "small")

    def feedback():
        try:
            for _ in range(20):
                memory.record_outcome("race", passed=True)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=rewrite), threading.Thread(target=feedback)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stored = memory.get("race")
    assert memory.count() == 1 and stored.outcome["passed"] is True and stored.bids


def test_cli_feedback(memory, tmp_path, capsys):
    path = str(tmp_path / "memory")
    out = run("t", Context(agents=pool(), memory=memory), auction_id="cli-1")
    assert out["auction"]["memory"]["write"] == "ok"
    assert cli_main(["memory", "feedback", "cli-1", "--failed", "--detail", "bad",
                     "--memory", path, "--collection", "test_staged"]) == 0
    assert "cli-1" in capsys.readouterr().out
    assert memory.get("cli-1").outcome["passed"] is False
    assert cli_main(["memory", "feedback", "zzz", "--passed", "--memory", path,
                     "--collection", "test_staged"]) == 2
    assert "no auction 'zzz'" in capsys.readouterr().err


def test_success_estimates_weigh_by_similarity():
    class Past:
        def __init__(self, winner, passed, similarity):
            self.winner, self.similarity = winner, similarity
            self.outcome = {"passed": passed}

    est = success_estimates([Past("a", True, 0.9), Past("a", False, 0.1), Past("b", None, 1)],
                            ["a", "b", "c"], prior=0.4, strength=1.0)
    assert est["a"]["p"] == pytest.approx((0.4 + 0.9) / 2.0)
    assert est["a"]["count"] == 2 and est["c"] == {"p": 0.4, "n": 0.0, "count": 0}


def test_outcome_refinement_needs_a_nearby_verified_success(memory):
    memory.write("f", "sort a list", [{"agent": "small", "round": 0, "strategy": "bad plan",
                                       "score": 0.0, "label": "win", "price": 0.05}],
                 "small", outcome={"passed": False})
    past = memory.similar("sort a list", 8, verified=True)
    assert outcome_pairs(past, "small", 3) == []  # failures alone teach nothing
    memory.write("g", "sort a list quickly", [{"agent": "mid", "round": 0,
                                               "strategy": "good plan", "score": 0.0,
                                               "label": "win", "price": 0.16}],
                 "mid", outcome={"passed": True})
    past = memory.similar("sort a list", 8, verified=True)
    (pair,) = outcome_pairs(past, "small", 3)
    assert pair["loser"] == "bad plan" and pair["winner"] == "good plan"


def test_full_auction_with_outcome_refinement_skips_without_successes(memory):
    agents = pool()
    agents[2].model.entropy = 2.0  # large wins on entropy, so the cheaper two may refine
    out = run("t", Context(agents=agents, memory=memory, refine_from="outcomes",
                           weights={"cost": 0.0, "entropy": 1.0, "jury_default": 0.0}))
    assert out["winner"] == "large" and out["auction"]["refiners"] == ["small", "mid"]
    events = [e for e in out["auction"]["events"] if e["kind"] == "refinement_skipped"]
    assert events and "verified" in events[0]["detail"]
    assert sum(a.model.calls["refine"] for a in agents) == 0


# --- listwise jury ----------------------------------------------------------------------------


def test_listwise_jury_asks_each_juror_once_per_round(memory):
    agents = pool(small={"vote": "1 2 5"}, mid={"vote": "1 2 5"}, large={"vote": "1 2 5"})
    out = run("t", Context(agents=agents, memory=memory, jury_format="listwise", refine=False,
                           weights={"cost": 0.0, "entropy": 0.0}))
    audit = out["auction"]
    assert sum(a.model.calls["vote"] for a in agents) == 3  # not 9
    votes = {b["agent"]: b["vote_digits"] for b in audit["bids"]}
    assert votes["small"] == {"small": 1, "mid": 1, "large": 1}
    assert votes["large"] == {"small": 5, "mid": 5, "large": 5}
    assert out["winner"] == "large"


def test_listwise_garbage_is_retried_then_every_vote_of_the_call_dropped(memory):
    agents = pool(mid={"vote": "7 7"})
    out = run("t", Context(agents=agents, memory=memory, jury_format="listwise", refine=False))
    dropped = [v for v in out["auction"]["dropped_votes"] if v["juror"] == "mid"]
    assert len(dropped) == 3 and "unreadable listwise vote" in dropped[0]["error"]
    assert agents[1].model.calls["vote"] == 2


def test_cli_table_shows_the_staged_decisions(memory):
    from sale_graph.cli import format_table

    out = run("t", staged(pool(), memory, staged=policy(small=0.9, mid=0.9)))
    table = format_table(out["auction"])
    lines = table.splitlines()
    assert "p(pass)" in lines[0] and "reserve" in lines[0]
    assert "declined" in lines[2] and "answers directly <==" in lines[-1]
    out = run("t", staged(pool(), memory, staged=StagedPolicy(explore=0.0)))
    lines = format_table(out["auction"]).splitlines()
    assert "not asked" in lines[2] and "not asked" in lines[3]


def test_progress_lines_say_what_the_staged_auction_did():
    from sale_graph.cli import _progress

    stop = "memory alone accepts mid (p=0.50 >= reserve 0.40); it answers directly"
    line = _progress({"offer": {"bids": [{"agent": "mid", "direct": True}], "stop": stop}}, 0)
    assert line is not None and line.endswith(stop)
    line = _progress({"execute": {"winner": "mid", "execution": {"with_plan": False}}}, 0)
    assert line is not None and line.endswith("mid answered directly")
    line = _progress({"execute": {"winner": "mid", "execution": {"with_plan": True}}}, 0)
    assert line is not None and line.endswith("mid executed its plan")
    assert _progress({"open_auction": {"mode": "staged"}}, 0).endswith("auction opened")
    seen = {"agent": "mid", "p_pass": 0.4, "assessed": 0.4, "reserve": 0.5}
    explored = _progress({"assess": {"assessments": [
        {**seen, "accepted": True, "explored": True}]}}, 0)
    assert "0.40 vs reserve 0.50: accepted to explore" in explored
    declined = _progress({"assess": {"assessments": [
        {**seen, "accepted": False, "explored": False}]}}, 0)
    assert declined.endswith("0.40 vs reserve 0.50: declined")


def test_against_the_dearest_a_likely_futile_task_stays_with_the_cheapest(memory):
    def against(bias: float) -> StagedPolicy:
        # small's own p(pass) is 0.5 (scripted entropy 0.5); the dearest's comes from bias
        return StagedPolicy(agents={"small": AgentPolicy(bias=-0.5, entropy=1.0, reserve=0.9),
                                    "mid": AgentPolicy(bias=-0.5, entropy=1.0, reserve=0.9)},
                            dearest=AgentPolicy(bias=bias, memory=0.0), fitted=True)

    agents = pool()
    out = run("t", staged(agents, memory, staged=against(-3.0)))  # the dearest: p = 0.05
    audit = out["auction"]
    (verdict,) = audit["assessments"]
    assert out["winner"] == "small" and calls(agents, "bid")["large"] == 0
    assert verdict["p_pass"] == 0.5 and verdict["p_dearest"] == pytest.approx(0.0474, abs=1e-4)
    assert verdict["assessed"] == pytest.approx(1 - 0.0474 * 0.5, abs=1e-3)
    assert "dearest_memory_p" in verdict["signals"]
    assert audit["stop"].startswith("small's bid assessed p(no loss against large)=0.98")
    agents = pool()  # the dearest likely passes: losing it is likely, so up it goes
    out = run("t", staged(agents, memory, staged=against(3.0)))
    assert out["winner"] == "large"
    assert [a["accepted"] for a in out["auction"]["assessments"]] == [False, False]
    # the plain assessment (no dearest model) reads the same bids as p(pass) alone
    plain = StagedPolicy(agents=against(-3.0).agents, fitted=True)
    assert run("t", staged(pool(), memory, staged=plain))["winner"] == "large"
    # the table and the progress line show what was weighed
    from sale_graph.cli import _progress, format_table

    out = run("t", staged(pool(), memory, staged=against(-3.0)))
    assert "0.50 (no loss 0.98)" in format_table(out["auction"])
    line = _progress({"assess": {"assessments": out["auction"]["assessments"]}}, 0)
    assert line is not None and "p(no loss)=0.98 vs reserve 0.90: accepted" in line


def test_the_assessment_reads_the_dearest_agents_own_estimate_and_name():
    from sale_graph.staged import Signals, _memory_signals

    state = {"estimates": {"small": {"p": 0.9, "n": 2.0}, "large": {"p": 0.1, "n": 3.0}}}
    fitted = StagedPolicy(agents={"small": AgentPolicy(bias=0.0, memory=0.0)},
                          dearest=AgentPolicy(bias=0.0, memory=10.0), dearest_agent="large",
                          fitted=True)
    signals = _memory_signals(state, "small", fitted, "large", entropy=0.5, tokens=40)
    assert (signals.memory_p, signals.memory_n, signals.dearest_memory_p) == (0.9, 2.0, 0.1)
    assert _memory_signals(state, "small", StagedPolicy(), "large").dearest_memory_p is None
    # the dearest's estimate (0.1, below the prior) makes its success unlikely
    p_d = fitted.dearest_pass(signals)
    assert p_d is not None and p_d < 0.05
    assert fitted.assess("small", signals) == pytest.approx(1 - p_d * 0.5)
    assert fitted.judges_against("large") and not fitted.judges_against("huge")
    assert not StagedPolicy().judges_against("large")
    assert fitted.dearest_pass(Signals(entropy=None, tokens=0, memory_p=0.4, memory_n=0.0,
                                       prior=0.4)) is None  # no estimate: plain assessment


def test_a_policy_fitted_for_another_dearest_agent_assesses_plainly(memory):
    foreign = StagedPolicy(agents={"small": AgentPolicy(bias=-0.5, entropy=1.0, reserve=0.9),
                                   "mid": AgentPolicy(bias=-0.5, entropy=1.0, reserve=0.9)},
                           dearest=AgentPolicy(bias=-3.0), dearest_agent="huge", fitted=True)
    out = run("t", staged(pool(), memory, staged=foreign))
    assert out["winner"] == "large"  # 0.5 < 0.9: the foreign model of "huge" is not used
    assert all("p_dearest" not in a for a in out["auction"]["assessments"])


@pytest.mark.parametrize("bad", [{"dearest": "ab"}, {"dearest": {"bias": 0.0, "entropy": 1.0}},
                                 {"agents": {"small": 3}}, {"dearest_agent": 3}])
def test_a_malformed_staged_policy_is_a_clear_error(bad):
    from sale_graph.errors import SaleError

    with pytest.raises(SaleError):
        StagedPolicy.coerce(bad)


# --- seeds: the evaluation a memory starts from ------------------------------------------------


def _seeds(task, small_passes):
    return [{"auction_id": f"seed-{i}-{agent}", "task": f"{task} (variant {i})", "winner": agent,
             "passed": passed, "bids": [{"agent": agent, "round": 0, "strategy": "plan",
                                          "score": None, "label": "win", "price": PRICES[agent]}]}
            for i in range(3) for agent, passed in (("small", small_passes), ("large", True))]


def test_a_seeded_memory_lets_the_staged_auction_trust_a_cheaper_agent(memory, tmp_path):
    """Empty, only the dearest agent ever answers (and is verified): nothing could teach
    memory about the cheaper ones. Seeded with an evaluation, it starts where the
    benchmark's staged rows did."""
    from sale_graph import load_seeds, seed_memory
    from sale_graph.seeds import save_seeds

    task = "write a function that reverses a string"
    trusting = StagedPolicy(agents={"small": AgentPolicy(bias=0.0, memory=6.0, reserve=0.6)},
                            fitted=True)
    assert run(task, staged(pool(), memory, staged=trusting, remember=False))["winner"] == "large"
    path = tmp_path / "seeds.jsonl.gz"
    assert save_seeds(_seeds(task, True), path) == 6
    assert seed_memory(memory, load_seeds(path)) == 6
    assert seed_memory(memory, load_seeds(path)) == 6 and memory.count() == 6  # no copies
    assert memory.get("seed-0-small").outcome["source"] == "evaluation"
    stats = memory.stats()  # seeds are an evaluation, not auctions anyone won
    assert (stats["auctions"], stats["seeds"], stats["wins"]) == (0, 6, {})
    out = run(task, staged(pool(), memory, staged=trusting, remember=False))
    assert out["winner"] == "small" and out["auction"]["estimates"]["small"]["count"] == 3
    memory.clear()
    seed_memory(memory, _seeds(task, False))  # an evaluation it failed keeps it out
    assert run(task, staged(pool(), memory, staged=trusting, remember=False))["winner"] == "large"


@pytest.mark.parametrize(("damage", "needle"), [
    ({"auction_id": "real-1"}, "must start with 'seed-'"),
    ({"passed": "yes"}, "true or false"),
    ({"winner": "mid"}, "winner's own bid"),
    ({"task": None}, "non-empty text"),
    ({"bids": [{"agent": "large", "round": 0, "strategy": "p", "score": None,
                "label": "lose", "price": 0.36}]}, "label"),  # the memory's own check
    ({"bids": [{"agent": "large", "round": 0, "strategy": 7, "score": None,
                "label": "win", "price": 0.36}]}, "strategy"),
])
def test_a_bad_seed_is_refused_before_anything_is_written(memory, damage, needle):
    from sale_graph.seeds import SeedError, seed_memory

    seeds = _seeds("a task", True)
    seeds[-1] = {**seeds[-1], **damage}
    with pytest.raises(SeedError, match=needle):
        seed_memory(memory, seeds)
    assert memory.count() == 0


def test_cli_seeds_a_new_memory_and_refuses_what_it_cannot_read(tmp_path, capsys):
    from sale_graph.seeds import save_seeds

    path = tmp_path / "seeds.jsonl.gz"
    save_seeds(_seeds("a task", True), path)
    target = str(tmp_path / "fresh")
    assert cli_main(["memory", "seed", str(path), "--memory", target,
                     "--collection", "seeded"]) == 0
    assert "with 6 verified outcomes" in capsys.readouterr().out
    assert AuctionMemory.persistent(target, collection="seeded").count() == 6
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"auction_id": "seed-x"}\n')
    assert cli_main(["memory", "seed", str(broken), "--memory", str(tmp_path / "other")]) == 2
    assert "missing task" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()  # checked before the store is opened
    pool_file = tmp_path / "pool.json"
    pool_file.write_text('{"agents": [{"name": "a", "price": 1, "backend": "local", '
                         '"model": "smollm2-135m"}]}')
    assert cli_main(["memory", "seed", "--pool", str(pool_file), "--memory", target]) == 2
    assert "ships no seed file" in capsys.readouterr().err
    own_weights = tmp_path / "w.json"
    own_weights.write_text('{"cost": 1.0}')
    assert cli_main(["memory", "seed", "--weights", str(own_weights), "--memory", target]) == 2
    assert "with --weights" in capsys.readouterr().err
    plain = tmp_path / "seeds.jsonl"  # --seeds-out without .gz reads back too
    save_seeds(_seeds("another task", False), plain)
    assert cli_main(["memory", "seed", str(plain), "--memory", target,
                     "--collection", "seeded"]) == 0
    reseeded = AuctionMemory.persistent(target, collection="seeded")
    assert reseeded.count() == 6  # the same seed ids: replaced, not added
    assert reseeded.get("seed-0-small").outcome["passed"] is False


def test_seed_ids_are_kept_for_seeds(memory):
    from sale_graph import InvalidTaskError

    with pytest.raises(InvalidTaskError, match="kept for memory seeds"):
        run("t", Context(agents=pool(), memory=memory), auction_id="seed-HumanEval-0-small")
    assert memory.count() == 0


def test_an_unseeded_memory_says_so_and_the_shipped_seeds_give_evidence(tmp_path):
    """The local preset's staged default reads memory; empty, it can only send every task
    to the 1.5B, and the audit must say why and what to do. Its shipped seeds fix that."""
    from sale_graph import staged as staged_module
    from sale_graph.seeds import load_seeds, preset_seeds, seed_memory
    from tests.workers.common import HashEmbedder

    mem = AuctionMemory.persistent(str(tmp_path / "m"), collection="seeds", embedder=HashEmbedder())
    task = {"task": "Write a Python function that reverses a list.", "mode": "staged"}
    empty = asyncio.run(staged_module.estimate(task, None, Context(pool="local", memory=mem)))
    assert [e["kind"] for e in empty.update["events"]] == ["memory_unseeded"]
    for told in (Context(pool="local", memory=mem, reserve=0.3),  # the prior may clear it
                 Context(pool="local", memory=mem, staged=StagedPolicy())):  # explores
        quiet = asyncio.run(staged_module.estimate(task, None, told))
        assert quiet.update["events"] == []
    seed_memory(mem, load_seeds(preset_seeds("local")))
    seeded = asyncio.run(staged_module.estimate(task, None, Context(pool="local", memory=mem)))
    assert seeded.update["events"] == []
    assert seeded.update["estimates"]["qwen2.5-coder-0.5b"]["count"] > 0
