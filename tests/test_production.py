"""Production behaviour with real parts: worker processes, kills and resumes, lost servers.

Worker processes (``tests/workers/``) share one real ``chroma run`` server on loopback;
durable runs use a real SQLite checkpointer file and a real SIGKILL. Models are
scripted (and log every call) because what is under test is the orchestration.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from sale_graph import Context, graph
from sale_graph.memory import AuctionMemory
from tests.chroma_server import ChromaServer
from tests.workers.common import (
    WEIGHTS,
    HashEmbedder,
    make_pool,
    parse_log,
)

REPO = Path(__file__).resolve().parents[1]
WORKER_TIMEOUT = 90.0


def worker_env() -> dict[str, str]:
    """Environment for worker processes: the repo importable, nothing phoning home."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, ANONYMIZED_TELEMETRY="False",
                LANGSMITH_TRACING="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


class Worker:
    """A worker process whose output goes to files (no pipe can fill up and stall it)."""

    def __init__(self, directory: Path, name: str, module: str, *args: str) -> None:
        self.out, self.err = directory / f"{name}.out", directory / f"{name}.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", f"tests.workers.{module}", *args],
                cwd=REPO, env=worker_env(), stdout=out, stderr=err, stdin=subprocess.DEVNULL,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=max(1.0, timeout))

    def kill(self) -> None:
        """SIGKILL this process (no-op once it has exited) and reap it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")[-3000:]

    def tagged(self, tag: str) -> list[Any]:
        lines = self.out.read_text().splitlines()
        return [json.loads(line[len(tag) + 1:]) for line in lines if line.startswith(tag + " ")]


def unique_collection(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:8]}"


def server_memory(host: str, port: int, collection: str) -> AuctionMemory:
    """A handle for checking what the server holds (reads need no embeddings)."""
    return AuctionMemory.server(host, port, collection=collection, embedder=HashEmbedder())


def assert_well_formed(memory: AuctionMemory, auction_id: str, task: str) -> None:
    stored = memory.get(auction_id)
    assert stored is not None, f"{auction_id} is missing from memory"
    assert stored.task == task
    labels = Counter(b["label"] for b in stored.bids)
    assert labels["win"] == 1, f"{auction_id}: {labels['win']} winning bids"
    assert stored.winning_bid["agent"] == stored.winner
    keys = [(b["agent"], b["round"]) for b in stored.bids]
    assert len(keys) == len(set(keys))


# ---- 1. one memory, many workers --------------------------------------------------------

N_WORKERS = 4
JOBS_PER_WORKER = 10
REDELIVERED_PER_WORKER = 2


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_many_worker_processes_store_every_auction_exactly_once(chroma_server, tmp_path):
    """4 processes x 12 concurrent auctions; 8 jobs are delivered to two workers at once."""
    host, port = chroma_server
    url = f"http://{host}:{port}"
    collection = unique_collection("workers")
    jobs = [{"auction_id": f"job-{i:03d}", "task": f"Task {i}: add the numbers {i} and {7 * i}."}
            for i in range(N_WORKERS * JOBS_PER_WORKER)]
    plans = []
    for w in range(N_WORKERS):
        own = jobs[w * JOBS_PER_WORKER:(w + 1) * JOBS_PER_WORKER]
        nxt = (w + 1) % N_WORKERS
        # the next worker's first jobs, first in this list too: both run them at the same time
        twice = jobs[nxt * JOBS_PER_WORKER:nxt * JOBS_PER_WORKER + REDELIVERED_PER_WORKER]
        plans.append(twice + own)
    procs = []
    try:
        for w, plan in enumerate(plans):
            path = tmp_path / f"jobs-{w}.json"
            path.write_text(json.dumps(plan))
            procs.append(Worker(tmp_path, f"worker-{w}", "auction_worker", "--url", url,
                                "--collection", collection, "--jobs", str(path),
                                "--concurrency", "6"))
        deadline = time.monotonic() + WORKER_TIMEOUT
        for proc in procs:
            assert proc.wait(deadline - time.monotonic()) == 0, proc.stderr()
    finally:
        for proc in procs:
            proc.kill()
    rows = [row for proc in procs for row in proc.tagged("RESULT")]

    delivered = Counter(r["auction_id"] for r in rows)
    assert len(rows) == sum(len(p) for p in plans)
    assert sorted(delivered) == [j["auction_id"] for j in jobs]
    twice = {a for a, n in delivered.items() if n == 2}
    assert len(twice) == N_WORKERS * REDELIVERED_PER_WORKER
    for aid in twice:  # really run by two different processes
        assert len({r["pid"] for r in rows if r["auction_id"] == aid}) == 2
    assert all(r["write"] == "ok" for r in rows), [r for r in rows if r["write"] != "ok"]
    # memory was read while others wrote: later auctions found pairs and refined
    assert any(r["retrieved"] > 0 and r["refined_won"] for r in rows)

    memory = server_memory(host, port, collection)
    assert memory.count() == len(jobs)  # no duplicates, no extras
    for job in jobs:  # no record missing, each whole
        assert_well_formed(memory, job["auction_id"], job["task"])


# ---- 2. durable runs: kill -9 after the bids, resume in a new process ---------------------

def persisted_writes(db: Path, thread: str) -> Counter:
    """Channels of the pending writes the checkpointer has saved for a thread."""
    try:
        with closing(sqlite3.connect(db, timeout=1.0)) as conn:
            rows = conn.execute("SELECT channel FROM writes WHERE thread_id = ?", (thread,))
            return Counter(r[0] for r in rows)
    except sqlite3.OperationalError:  # not created yet, or busy for a moment
        return Counter()


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_killed_auction_resumes_without_repeating_paid_calls(chroma_server, tmp_path):
    """SIGKILL while jurors vote; a new process resumes the thread and finishes once.

    LangGraph saves each finished task's writes as they complete (durability
    "async", the default), so after the kill the bids are in a checkpoint and the
    three votes that had finished are saved as pending writes of the voting step;
    on resume only the six unfinished vote tasks run again.
    """
    host, port = chroma_server
    url = f"http://{host}:{port}"
    collection = unique_collection("durable")
    db, log, thread = tmp_path / "checkpoints.sqlite", tmp_path / "calls.log", "auction-t1"
    common = ["--db", str(db), "--thread", thread, "--log", str(log), "--url", url,
              "--collection", collection]
    task = "Add the numbers 19 and 23 and explain the carry."

    first = Worker(tmp_path, "first", "durable_worker", *common, "--start", task,
                   "--auction-id", "durable-1", "--slow-votes", "mid=120", "large=120")
    deadline = time.monotonic() + 60.0
    try:
        while True:
            assert first.proc.poll() is None, f"worker exited early: {first.stderr()}"
            calls = parse_log(str(log))
            assert time.monotonic() < deadline, f"never reached the voting step: {calls}"
            ends = Counter(r["kind"] for r in calls if r["phase"] == "end")
            saved = persisted_writes(db, thread)
            if ends["bid"] == 3 and saved["bids"] == 3 and saved["votes"] >= 3:
                break
            time.sleep(0.1)
    finally:
        first.kill()
    assert first.proc.returncode == -signal.SIGKILL
    memory = server_memory(host, port, collection)
    assert memory.count() == 0  # the auction did not finish
    killed = parse_log(str(log))
    pid1 = killed[0]["pid"]

    second = Worker(tmp_path, "second", "durable_worker", *common, "--resume")
    try:
        assert second.wait(WORKER_TIMEOUT) == 0, second.stderr()
    finally:
        second.kill()
    (pending,) = second.tagged("PENDING")
    (result,) = second.tagged("RESULT")
    # parked in the voting step with 6 of its 9 tasks left: 3 finished votes were saved
    assert pending == ["vote"] * 6
    calls = parse_log(str(log))
    resumed = [r for r in calls if r["pid"] != pid1]
    assert resumed and {r["pid"] for r in resumed} == {str(second.pid)}

    def ended(rows, kind):
        return Counter((r["agent"], r["target"]) for r in rows
                       if r["phase"] == "end" and r["kind"] == kind)

    # every bid exactly once, all of them before the kill
    assert ended(calls, "bid") == {(a, a): 1 for a in ("small", "mid", "large")}
    assert not [r for r in resumed if r["kind"] == "bid"]
    # votes finished before the kill are not repeated; the interrupted ones run once more
    before = ended(killed, "vote")
    after = ended(resumed, "vote")
    assert set(before) == {("small", t) for t in ("small", "mid", "large")}
    assert not set(before) & set(after)
    assert {r["agent"] for r in resumed if r["kind"] == "vote"} == {"mid", "large"}
    assert sum((before + after).values()) == 9 and set((before + after).values()) == {1}
    interrupted = {(r["agent"], r["target"]) for r in killed
                   if r["kind"] == "vote" and r["phase"] == "begin"} - set(before)
    assert interrupted == set(after)  # at-least-once: a call cut off by the kill is redone
    # the auction finished once, with every vote counted exactly once
    assert ended(calls, "execute") == {("mid", "mid"): 1}
    assert result["next"] == [] and result["write"] == "ok" and result["winner"] == "mid"
    assert len({(j, a) for j, a, _ in result["votes"]}) == len(result["votes"]) == 9
    assert all(v is not None for _, _, v in result["votes"])
    assert memory.count() == 1
    assert_well_formed(memory, "durable-1", task)


# ---- 3. faults beyond test_graph_mechanics ------------------------------------------------

def seed(memory: AuctionMemory, task: str, auction_id: str = "seed-1") -> None:
    """One past auction in which small lost to mid, so small has something to refine from."""
    memory.write(auction_id, task, [
        {"agent": "small", "round": 0, "strategy": "[small] add", "score": 1.0,
         "label": "lose", "price": 0.05},
        {"agent": "mid", "round": 0, "strategy": "[mid] add and test", "score": -2.0,
         "label": "win", "price": 0.16},
    ], "mid")


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_memory_server_dies_between_retrieval_and_write(tmp_path):
    """The server is stopped during execution: the auction completes, nothing partial is kept."""
    server = ChromaServer(tmp_path / "data")
    server.start()
    try:
        memory = server_memory(server.host, server.port, "faults")
        seed(memory, "Add the numbers 3 and 4.")

        def stop_server_then(answer: str):
            def reply(prompt: str) -> str:
                server.stop()
                return answer
            return reply

        pool = make_pool(script={n: {"execute": stop_server_then(f"answer from {n}")}
                                 for n in ("small", "mid", "large")})
        context = Context(agents=pool, memory=memory, weights=WEIGHTS)
        job = {"task": "Add the numbers 5 and 6.", "auction_id": "fault-1"}
        out = asyncio.run(graph.ainvoke(job, context=context))
        audit = out["auction"]
        assert server.process is None  # it really went away mid-run
        assert audit["memory"]["retrieved_auctions"] == 1  # retrieval ran against the live server
        assert audit["refined_won"] and out["answer"] == "answer from small"
        assert audit["memory"]["write"].startswith("failed")
        assert "memory_write_failed" in [e["kind"] for e in audit["events"]]

        server.start(port=server.port)  # same data directory, same port
        reopened = server_memory(server.host, server.port, "faults")
        assert reopened.count() == 1 and reopened.get("fault-1") is None
        assert reopened.get("seed-1") is not None

        # a retry of the same job now stores it, once (the old handle reconnects)
        retry = make_pool()
        out = asyncio.run(graph.ainvoke(job, context=Context(agents=retry, memory=memory,
                                                             weights=WEIGHTS)))
        assert out["auction"]["memory"]["write"] == "ok" and reopened.count() == 2
        assert_well_formed(reopened, "fault-1", job["task"])
    finally:
        server.stop()


@pytest.fixture()
def local_memory(tmp_path) -> AuctionMemory:
    memory = AuctionMemory.persistent(tmp_path / "memory", collection="faults",
                                      embedder=HashEmbedder())
    seed(memory, "Add the numbers 3 and 4.")
    return memory


def run_auction(pool, memory, task="Add the numbers 5 and 6."):
    context = Context(agents=pool, memory=memory, weights=WEIGHTS)
    return asyncio.run(graph.ainvoke({"task": task}, context=context))


@pytest.mark.parametrize("reply", ["", "  \n\t ", RuntimeError("refine crashed")],
                         ids=["empty", "blank", "raises"])
def test_refiner_with_no_usable_reply_leaves_the_provisional_winner(local_memory, reply):
    pool = make_pool(script={"small": {"refine": reply}})
    out = run_auction(pool, local_memory)
    audit = out["auction"]
    assert audit["refiners"] == ["small"] and pool[0].model.calls["refine"] == 1
    failed = [e for e in audit["events"] if e["kind"] == "refine_failed"]
    assert [e["agent"] for e in failed] == ["small"]
    assert out["winner"] == "mid" and out["answer"] == "answer from mid"
    stored = local_memory.get(audit["auction_id"])
    assert stored is not None and {b["round"] for b in stored.bids} == {0}
    assert [b["agent"] for b in stored.bids if b["label"] == "win"] == ["mid"]


def test_garbage_refined_bid_is_judged_like_any_other(local_memory):
    """Nonsense is still a plan to the graph: voted on, scored, stored as a loser."""
    from tests.scripted import votes_by_plan
    from tests.workers.common import VOTES

    jury = votes_by_plan({"}{#": "0", **VOTES})
    pool = make_pool(script={n: {"vote": jury} for n in ("small", "mid", "large")}
                     | {"small": {"vote": jury, "refine": "}{# ~~ \x00 ]]"}})
    out = run_auction(pool, local_memory)
    audit = out["auction"]
    refined = [b for b in audit["bids"] if b["refined"]]
    assert len(refined) == 1 and set(refined[0]["votes"].values()) == {0}
    assert out["winner"] == "mid" and not audit["refined_won"]
    stored = local_memory.get(audit["auction_id"])
    assert {(b["agent"], b["round"]): b["label"] for b in stored.bids}[("small", 1)] == "lose"


def test_executor_that_raises_is_audited_and_the_auction_still_remembered(local_memory):
    pool = make_pool(script={n: {"execute": RuntimeError("executor crashed")}
                             for n in ("small", "mid", "large")})
    out = run_auction(pool, local_memory)
    audit = out["auction"]
    assert out["winner"] == "small" and out["answer"] is None
    assert "executor crashed" in audit["execution"]["error"]
    assert "execution_failed" in [e["kind"] for e in audit["events"]]
    # the auction's decision is still worth learning from; the record says who won it
    assert audit["memory"]["write"] == "ok"
    assert local_memory.get(audit["auction_id"]).winner == "small"


@pytest.mark.parametrize("reply", ["", "   \n"], ids=["empty", "blank"])
def test_executor_with_an_empty_answer_is_reported(local_memory, reply):
    pool = make_pool(script={n: {"execute": reply} for n in ("small", "mid", "large")})
    out = run_auction(pool, local_memory)
    audit = out["auction"]
    assert audit["execution"]["error"] and "empty" in audit["execution"]["error"]
    assert "execution_failed" in [e["kind"] for e in audit["events"]]
