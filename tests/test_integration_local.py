"""Full auctions on the real embedded models and a real Chroma memory (embedded and server)."""

from __future__ import annotations

import asyncio

import pytest

from sale_graph import Context, Weights, graph
from sale_graph.memory import AuctionMemory

pytestmark = pytest.mark.integration

FIRST = "Write a Python function is_palindrome(s) that ignores case and spaces."
SECOND = "Write a Python function is_anagram(a, b) that ignores case and spaces."

# A price weight < 0 makes the dearer agent the provisional winner whatever the jury
# says, so the cheaper agent is guaranteed a refinement round: the point here is to
# exercise retrieval and refinement on real parts, not to judge the models.
PREFER_DEAR = Weights(cost=-100.0, entropy=1.0)


def small_context(**kw) -> Context:
    return Context(pool="local-small", max_bid_tokens=64, max_answer_tokens=64, **kw)


def run(task: str, context: Context) -> dict:
    return asyncio.run(graph.ainvoke({"task": task}, context=context))


def check_real_auction(out: dict) -> None:
    audit = out["auction"]
    agents = {"smollm2-135m", "qwen2.5-coder-0.5b"}
    assert out["winner"] in agents and out["answer"].strip()
    assert {b["agent"] for b in audit["bids"] if b["round"] == 0} == agents
    for bid in audit["bids"]:
        assert bid["tokens"] > 0 and bid["strategy"].strip()
        assert bid["entropy_method"] == "full-vocabulary" and bid["entropy"] > 0
        for vote in bid["votes"].values():
            assert vote is None or 0 <= vote <= 5
    cast = [v for b in audit["bids"] for v in b["votes"].values() if v is not None]
    assert cast, "the grammar-constrained jury should cast votes"
    assert audit["phases"]["execute"]["tokens"] > 0
    assert 0 < audit["totals"]["overhead_token_share"] < 1


def test_auction_then_similar_task_refines_from_memory(tmp_path):
    context = small_context(memory_path=str(tmp_path / "mem"), weights=PREFER_DEAR)
    first = run(FIRST, context)
    check_real_auction(first)
    assert first["winner"] == "qwen2.5-coder-0.5b"
    # nothing in memory yet: the cheaper agent may not refine
    assert first["auction"]["memory"]["retrieved_auctions"] == 0
    assert not any(b["refined"] for b in first["auction"]["bids"])

    second = run(SECOND, context)
    check_real_auction(second)
    audit = second["auction"]
    assert audit["memory"]["retrieved_ids"] == [first["auction"]["auction_id"]]
    assert audit["refiners"] == ["smollm2-135m"]
    refined = [b for b in audit["bids"] if b["refined"]]
    assert [b["agent"] for b in refined] == ["smollm2-135m"]
    assert refined[0]["retrieved_pairs"] == 1 and refined[0]["score"] is not None

    memory = AuctionMemory.persistent(str(tmp_path / "mem"))
    assert memory.count() == 2
    stored = memory.get(audit["auction_id"])
    assert sum(b["label"] == "win" for b in stored.bids) == 1
    assert any(b["round"] == 1 for b in stored.bids)


def test_auction_against_a_real_chroma_server(chroma_server):
    host, port = chroma_server
    context = small_context(memory_url=f"http://{host}:{port}", collection="itest_auctions",
                            weights=PREFER_DEAR)
    first = run(FIRST, context)
    second = run(SECOND, context)
    check_real_auction(second)
    assert second["auction"]["memory"]["retrieved_ids"] == [first["auction"]["auction_id"]]
    assert second["auction"]["refiners"] == ["smollm2-135m"]
    remote = AuctionMemory.from_url(f"http://{host}:{port}", collection="itest_auctions")
    assert remote.count() == 2


def _defines_function(x: dict) -> dict:
    """A verifier for tests: did the answer define a Python function at all?"""
    return {"passed": "def " in x["answer"], "detail": "looked for a def"}


def test_staged_auction_with_verified_outcomes_on_a_real_chroma_server(chroma_server):
    """Staged auction on real models and a real Chroma server, outcomes closing the loop.

    The 135M model's bid is declined (its reserve cannot be met), so the 0.5B model,
    the dearest of the pool, answers directly; the verifier's outcome is stored on the
    auction's record and, on a similar task, becomes the 0.5B's evidence; feedback
    from a second client then overrides it on the same record.
    """
    from sale_graph import AgentPolicy, StagedPolicy, record_outcome

    host, port = chroma_server
    url = f"http://{host}:{port}"
    # the bid counts (entropy), so the 135M model is asked to bid and then declined
    policy = StagedPolicy(agents={"smollm2-135m": AgentPolicy(bias=0.0, entropy=0.1, memory=0.0,
                                                              reserve=0.99)}, fitted=True)
    context = small_context(memory_url=url, collection="itest_staged", auction="staged",
                            staged=policy, verifier=_defines_function)
    first = run(FIRST, context)
    audit = first["auction"]
    assert audit["mode"] == "staged"
    assert audit["offered"] == ["smollm2-135m", "qwen2.5-coder-0.5b"]
    (assessed,) = audit["assessments"]
    assert assessed["agent"] == "smollm2-135m" and not assessed["accepted"]
    assert assessed["signals"]["entropy"] > 0 and assessed["signals"]["tokens"] > 0
    assert first["winner"] == "qwen2.5-coder-0.5b" and audit["execution"]["with_plan"] is False
    assert audit["stop"].startswith("last resort")
    assert isinstance(audit["outcome"]["passed"], bool)
    assert audit["memory"]["write"] == "ok"

    second = run(SECOND, context)
    evidence = second["auction"]["estimates"]["qwen2.5-coder-0.5b"]
    assert evidence["count"] == 1 and evidence["n"] > 0.3

    remote = Context(memory_url=url, collection="itest_staged")
    stored = record_outcome(audit["auction_id"], passed=False, detail="reviewer said no",
                            context=remote)
    assert stored.outcome["passed"] is False and stored.winner == "qwen2.5-coder-0.5b"
    assert remote.resolved_memory().count() == 2
