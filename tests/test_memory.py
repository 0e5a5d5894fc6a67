"""The auction memory against real Chroma: an embedded store and a `chroma run` server.

Every behavioural test runs twice, once per backend; the server variants are
integration tests (loopback only). Embeddings come from the real MiniLM model.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from sale_graph.embeddings import Embedder, get_embedder
from sale_graph.errors import InvalidTaskError, MemoryUnavailableError
from sale_graph.memory import (
    AuctionMemory,
    AuctionRecordError,
    PastAuction,
    validate_collection_name,
)

try:  # importable as a package with `python -m pytest` or pythonpath=["."]
    from tests.chroma_server import ChromaServer, free_port
except ModuleNotFoundError:  # plain `pytest` puts tests/ itself on sys.path
    from chroma_server import ChromaServer, free_port  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[1]

LINKED_LIST = "Write a Python function that reverses a singly linked list in place."
LINKED_LIST_PARAPHRASE = "Implement in-place reversal of a singly linked list using Python."
CANADA = "What was the population of Canada according to the 1901 census?"
EIGEN = "Compute the eigenvalues of the 3x3 matrix [[2,0,0],[0,3,4],[0,4,9]]."


def bid(
    agent: str,
    label: str = "lose",
    *,
    rnd: int = 0,
    score: float | None = 0.5,
    price: float = 0.1,
    strategy: str | None = None,
) -> dict[str, Any]:
    return {
        "agent": agent,
        "round": rnd,
        "strategy": strategy if strategy is not None else f"{agent} plan r{rnd}",
        "score": score,
        "label": label,
        "price": price,
    }


def auction(winner: str = "large") -> list[dict[str, Any]]:
    """A typical auction: three bidders, the small one also refined."""
    agents = {"small": 0.05, "medium": 0.16, "large": 0.36}
    bids = [bid(a, "win" if a == winner else "lose", price=p) for a, p in agents.items()]
    bids.append(bid("small", "lose", rnd=1, price=0.05, score=-0.2))
    return bids


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return get_embedder()


def _collection_name(request: pytest.FixtureRequest) -> str:
    stem = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")[:40] or "t"
    return f"t-{stem}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["persistent", pytest.param("server", marks=pytest.mark.integration)])
def memory(
    request: pytest.FixtureRequest, tmp_path: Path, embedder: Embedder
) -> Iterator[AuctionMemory]:
    """A fresh, empty memory on either backend (the server is shared; collections are not)."""
    name = _collection_name(request)
    if request.param == "persistent":
        mem = AuctionMemory.persistent(tmp_path / "memory", collection=name, embedder=embedder)
    else:
        host, port = request.getfixturevalue("chroma_server")
        mem = AuctionMemory.server(host, port, collection=name, embedder=embedder)
    mem.ping()
    yield mem
    if request.param == "server":
        mem.clear()


# ----------------------------------------------------------------- no store needed


@pytest.mark.parametrize("name", ["ab", "-abc", "abc_", "a..b", "10.0.0.1", "a b c", "x" * 513])
def test_invalid_collection_names_are_rejected_with_the_rule(name: str) -> None:
    with pytest.raises(ValueError, match="collection name"):
        validate_collection_name(name)
    with pytest.raises(ValueError, match="collection name"):
        AuctionMemory.persistent("/nonexistent/never-created", collection=name)


@pytest.mark.parametrize("name", ["abc", "sale_auctions", "a.b-c_d", "x" * 512])
def test_valid_collection_names_pass(name: str) -> None:
    assert validate_collection_name(name) == name


def test_opening_touches_neither_disk_nor_model(tmp_path: Path) -> None:
    target = tmp_path / "not-yet"
    mem = AuctionMemory.persistent(target)
    assert not target.exists()
    assert mem._embedder is None
    assert "not-yet" in repr(mem)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("localhost:8000", "http://host:port"),
        ("ftp://localhost:8000", "http://host:port"),
        ("http://", "http://host:port"),
        ("http://localhost:8000/api", "path"),
        ("http://localhost:99999", "port"),
    ],
)
def test_bad_urls_are_rejected_before_any_connection(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AuctionMemory.from_url(url)


def test_url_defaults() -> None:
    assert AuctionMemory.from_url("http://example.invalid").location.endswith(
        "http://example.invalid:8000"
    )
    assert AuctionMemory.from_url("https://example.invalid").location.endswith(
        "https://example.invalid:443"
    )


def test_ping_on_a_file_instead_of_a_directory_explains(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(MemoryUnavailableError, match="not a directory"):
        AuctionMemory.persistent(blocker).ping()


def test_a_collection_in_another_distance_space_is_refused(tmp_path: Path) -> None:
    import chromadb

    chromadb.PersistentClient(path=str(tmp_path)).create_collection(
        "euclid", configuration={"hnsw": {"space": "l2"}}, embedding_function=None
    )
    with pytest.raises(MemoryUnavailableError, match="'l2' distance"):
        AuctionMemory.persistent(tmp_path, collection="euclid").ping()


def test_embedder_returns_unit_vectors_that_rank_paraphrases(embedder: Embedder) -> None:
    a, b, c = embedder.embed([LINKED_LIST, LINKED_LIST_PARAPHRASE, CANADA])
    assert len(a) == embedder.dimension == 384
    assert math.isclose(sum(x * x for x in a), 1.0, rel_tol=1e-4)
    dot = lambda u, v: sum(x * y for x, y in zip(u, v, strict=True))  # noqa: E731
    assert dot(a, b) > dot(a, c) + 0.3
    assert embedder.embed([]) == []
    with pytest.raises(TypeError):
        embedder.embed("a single string")  # type: ignore[arg-type]
    assert get_embedder() is embedder


# ----------------------------------------------------------------- both backends


def test_write_then_get_roundtrip(memory: AuctionMemory) -> None:
    bids = auction("medium")
    memory.write("auc-1", LINKED_LIST, bids, "medium", created_at=1234.5, extra={"bench": "x"})
    got = memory.get("auc-1")
    assert isinstance(got, PastAuction)
    assert got.auction_id == "auc-1"
    assert got.task == LINKED_LIST
    assert got.winner == "medium"
    assert got.created_at == 1234.5
    assert got.similarity is None
    assert got.extra == {"bench": "x"}
    assert list(got.bids) == bids
    assert got.winning_bid["agent"] == "medium"
    assert [b["agent"] for b in got.losing_bids] == ["small", "large", "small"]
    assert [b["round"] for b in got.bids_of("small")] == [0, 1]
    assert memory.get("never-written") is None
    assert memory.count() == 1


def test_same_id_twice_is_one_record_holding_the_latest(memory: AuctionMemory) -> None:
    memory.write("dup", LINKED_LIST, auction("large"), "large")
    memory.write("dup", LINKED_LIST, auction("small"), "small")
    assert memory.count() == 1
    got = memory.get("dup")
    assert got is not None and got.winner == "small"


def test_a_rewrite_keeps_nothing_of_the_earlier_attempt(memory: AuctionMemory) -> None:
    """Chroma's upsert merges metadata: a bidder, extra or score of the old record must go."""
    memory.write("again", LINKED_LIST, auction("large"), "large", extra={"attempt": 1},
                 outcome={"passed": True, "score": 0.9})
    memory.write("again", LINKED_LIST, [bid("large", "win", price=0.36)], "large",
                 outcome={"passed": False})
    raw = memory._col().get(ids=["again"], include=["metadatas"])["metadatas"][0]
    assert "bid__small" not in raw and "x_attempt" not in raw
    got = memory.get("again")
    assert got is not None and [b["agent"] for b in got.bids] == ["large"] and got.extra == {}
    assert got.outcome is not None and got.outcome["passed"] is False
    assert got.outcome["score"] is None
    # a retry won by another agent drops the outcome of the earlier winner's answer;
    # one won by the same agent keeps it (feedback that arrived in between)
    memory.write("again", LINKED_LIST, auction("large"), "large", outcome={"passed": True})
    memory.write("again", LINKED_LIST, auction("large"), "large")
    kept = memory.get("again")
    assert kept is not None and kept.outcome is not None and kept.outcome["passed"] is True
    memory.write("again", LINKED_LIST, auction("small"), "small")
    dropped = memory.get("again")
    assert dropped is not None and dropped.winner == "small" and dropped.outcome is None
    # the same id reused for another task (a reused key): no verdict on another answer
    memory.write("again", LINKED_LIST, auction("large"), "large", outcome={"passed": True})
    memory.write("again", "Sort a list of words by length.", auction("large"), "large")
    moved = memory.get("again")
    assert moved is not None and moved.task.startswith("Sort") and moved.outcome is None
    # feedback replaces the whole outcome: an earlier feedback's score does not linger
    memory.record_outcome("again", passed=True, score=0.7)
    memory.record_outcome("again", passed=False)
    got = memory.get("again")
    assert got is not None and got.outcome is not None and got.outcome["score"] is None
    assert memory.count() == 1


def test_similar_ranks_a_paraphrase_first_and_respects_k(memory: AuctionMemory) -> None:
    assert memory.similar(LINKED_LIST_PARAPHRASE, k=8) == []
    memory.write("canada", CANADA, auction(), "large")
    memory.write("list", LINKED_LIST, auction("small"), "small")
    memory.write("eigen", EIGEN, auction("medium"), "medium")

    top = memory.similar(LINKED_LIST_PARAPHRASE, k=2)
    assert [p.auction_id for p in top][0] == "list"
    assert len(top) == 2
    assert top[0].similarity is not None and top[1].similarity is not None
    assert top[0].similarity > top[1].similarity
    assert top[0].similarity > 0.7
    assert top[0].winner == "small" and top[0].task == LINKED_LIST

    everything = memory.similar(LINKED_LIST_PARAPHRASE, k=8)
    assert {p.auction_id for p in everything} == {"canada", "list", "eigen"}
    sims = [p.similarity for p in everything]
    assert sims == sorted(sims, reverse=True)
    assert memory.search(LINKED_LIST_PARAPHRASE, 1)[0].auction_id == "list"
    assert memory.similar(LINKED_LIST_PARAPHRASE, k=0) == []


def test_similar_can_filter_by_bidder_and_exclude_ids(memory: AuctionMemory) -> None:
    memory.write("list", LINKED_LIST, auction("small"), "small")
    memory.write("solo", CANADA, [bid("tiny", "win", price=0.01)], "tiny")
    assert [p.auction_id for p in memory.similar(LINKED_LIST, k=8, agent="tiny")] == ["solo"]
    assert memory.similar(LINKED_LIST, k=8, agent="nobody") == []
    assert [p.auction_id for p in memory.similar(LINKED_LIST, k=8, exclude=["list"])] == ["solo"]


@pytest.mark.parametrize(
    ("bids", "winner", "task", "error"),
    [
        ([bid("a"), bid("b")], "a", LINKED_LIST, "exactly one"),
        ([bid("a", "win"), bid("b", "win")], "a", LINKED_LIST, "exactly one"),
        ([bid("a", "win")], "a", "   ", "empty task"),
        ([], "a", LINKED_LIST, "at least one bid"),
        ([bid("a", "won")], "a", LINKED_LIST, "label"),
        ([bid("a", "win")], "b", LINKED_LIST, "does not match"),
        ([bid("a", "win"), bid("a")], "a", LINKED_LIST, "two bids in round 0"),
        ([bid("a", "win", rnd=2)], "a", LINKED_LIST, "round"),
        ([bid("a", "win", score=float("nan"))], "a", LINKED_LIST, "finite"),
        ([bid("a", "win", price=-1.0)], "a", LINKED_LIST, "price"),
        ([{"agent": "a", "label": "win"}], "a", LINKED_LIST, "lacks"),
    ],
)
def test_invalid_auctions_write_nothing(
    memory: AuctionMemory, bids: list[dict[str, Any]], winner: str, task: str, error: str
) -> None:
    memory.write("kept", EIGEN, auction(), "large")
    with pytest.raises((AuctionRecordError, InvalidTaskError), match=error):
        memory.write("bad", task, bids, winner)
    assert memory.count() == 1
    assert memory.get("bad") is None


def test_empty_id_and_bad_extra_are_rejected(memory: AuctionMemory) -> None:
    with pytest.raises(AuctionRecordError, match="auction_id"):
        memory.write("", LINKED_LIST, auction(), "large")
    with pytest.raises(AuctionRecordError, match="extra"):
        memory.write("x", LINKED_LIST, auction(), "large", extra={"nested": {"a": 1}})
    assert memory.count() == 0


def test_stats_count_wins_and_refined_bids(memory: AuctionMemory) -> None:
    memory.write("a1", LINKED_LIST, auction("large"), "large", created_at=10.0)
    memory.write("a2", EIGEN, auction("large"), "large", created_at=30.0)
    refined_win = [
        bid("small", "lose", price=0.05),
        bid("large", "lose", price=0.36),
        bid("small", "win", rnd=1, price=0.05),
    ]
    memory.write("a3", CANADA, refined_win, "small", created_at=20.0)
    stats = memory.stats()
    assert stats["auctions"] == 3
    assert stats["wins"] == {"large": 2, "small": 1}
    assert stats["bids"] == {"large": 3, "medium": 2, "small": 6}
    assert stats["refined_bids"] == 3
    assert stats["refined_wins"] == 1
    assert (stats["first_created_at"], stats["last_created_at"]) == (10.0, 30.0)
    json.dumps(stats)  # the CLI prints it as JSON


def test_clear_empties_the_collection(memory: AuctionMemory) -> None:
    for i in range(3):
        memory.write(f"c{i}", f"{EIGEN} variant {i}", auction(), "large")
    assert memory.count() == 3
    memory.clear()
    assert memory.count() == 0
    assert memory.similar(EIGEN) == []


def test_concurrent_writers_never_duplicate(memory: AuctionMemory) -> None:
    ids = [f"job-{i % 6}" for i in range(18)]  # every id written three times

    def put(aid: str) -> None:
        memory.write(aid, f"{LINKED_LIST} ({aid})", auction(), "large")

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(put, ids))
    assert memory.count() == 6
    assert all(memory.get(f"job-{i}") is not None for i in range(6))


# ----------------------------------------------------------------- persistence


def _read_in_subprocess(path: Path, collection: str) -> dict[str, Any]:
    """Open the store from a fresh interpreter: a real re-open, and proof it loads no model."""
    code = (
        "import json, sys\n"
        "from sale_graph.memory import AuctionMemory\n"
        f"m = AuctionMemory.persistent({str(path)!r}, collection={collection!r})\n"
        "m.ping()\n"
        "p = m.get('p1')\n"
        "print(json.dumps({'count': m.count(), 'winner': p and p.winner,\n"
        "  'bids': p and list(p.bids), 'stats': m.stats(),\n"
        "  'model_loaded': 'sentence_transformers' in sys.modules}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), ANONYMIZED_TELEMETRY="False")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_persistent_store_survives_a_new_process(tmp_path: Path, embedder: Embedder) -> None:
    path = tmp_path / "store"
    mem = AuctionMemory.persistent(path, collection="persist", embedder=embedder)
    mem.write("p1", LINKED_LIST, auction("medium"), "medium")
    mem.write("p2", CANADA, auction("large"), "large")
    mem.close()  # an embedded store belongs to one process at a time
    seen = _read_in_subprocess(path, "persist")
    assert seen["count"] == 2
    assert seen["winner"] == "medium"
    assert seen["bids"] == auction("medium")
    assert seen["stats"]["wins"] == {"large": 1, "medium": 1}
    assert seen["model_loaded"] is False


@pytest.mark.integration
def test_server_store_survives_a_restart(tmp_path: Path, embedder: Embedder) -> None:
    with ChromaServer(tmp_path / "data") as server:
        mem = AuctionMemory.from_url(server.url, collection="restart", embedder=embedder)
        mem.write("r1", LINKED_LIST, auction("small"), "small")
        mem.write("r2", EIGEN, auction("large"), "large")
        server.restart()
        reopened = AuctionMemory.from_url(server.url, collection="restart", embedder=embedder)
        reopened.ping()
        assert reopened.count() == 2
        assert reopened.similar(LINKED_LIST_PARAPHRASE, k=1)[0].auction_id == "r1"
        # The first handle reconnects too: the HTTP client holds no server state.
        got = mem.get("r2")
        assert got is not None and got.winner == "large"


# ----------------------------------------------------------------- unreachable


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_ping_on_a_closed_port_raises_with_advice() -> None:
    port = free_port()
    mem = AuctionMemory.server("127.0.0.1", port)
    with pytest.raises(MemoryUnavailableError, match=f"chroma run --path DIR --port {port}"):
        mem.ping()
    with pytest.raises(MemoryUnavailableError):
        mem.count()
    with pytest.raises(MemoryUnavailableError):
        mem.write("x", LINKED_LIST, auction(), "large")
    assert mem._embedder is None  # failing fast means not loading the model first


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_ping_on_a_server_that_never_answers_raises() -> None:
    # A listener that accepts connections (the kernel completes the handshake) but
    # never reads or replies: the Chroma client alone would wait forever.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        with pytest.raises(MemoryUnavailableError, match="no Chroma server answers"):
            AuctionMemory.server("127.0.0.1", port).ping()


@pytest.mark.integration
def test_ping_on_something_that_is_not_chroma_raises() -> None:
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class NotChroma(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b"nope")

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), NotChroma)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(MemoryUnavailableError, match="HTTP 404"):
            AuctionMemory.server("127.0.0.1", server.server_address[1]).ping()
    finally:
        server.shutdown()
        server.server_close()


class CountingEmbedder:
    """The real embedder, counting the texts it is asked to embed."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.texts: list[str] = []

    def embed(self, texts: list[str]) -> list[list[float]]:
        self.texts.extend(texts)
        return self.inner.embed(texts)


def test_one_auction_embeds_its_task_once(tmp_path: Path, embedder: Embedder) -> None:
    counting = CountingEmbedder(embedder)
    mem = AuctionMemory.persistent(tmp_path / "memory", embedder=counting)
    mem.write("seed", "Sort a list of numbers.", auction(), "large")
    task = "Sort a list of integers in Python."
    # retrieve, two refiners looking up their own losing plans, then the write
    first = mem.similar(task, 8)
    mem.similar(task, 8, agent="small")
    mem.similar(task, 8, agent="medium")
    mem.write("now", task, auction(), "large")
    assert counting.texts.count(task) == 1
    assert [p.auction_id for p in mem.similar(task, 8)] == ["now", *[p.auction_id for p in first]]
