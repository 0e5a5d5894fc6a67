"""The auction memory M: past auctions, retrieved by similarity of their tasks.

Storage design: ONE Chroma record per auction.

* id: the auction id chosen by the caller;
* document: the task text;
* embedding: the task's all-MiniLM-L6-v2 vector, computed here and passed with
  ``embeddings=`` (the collection has no embedding function of its own, so Chroma
  never tries to fetch a model) in a cosine-space HNSW index;
* metadata: scalar fields (``winner``, ``created_at``, ``n_bids``, ``n_refined``,
  ``refined_win``, ``schema``), ``bids_json`` (every bid of the auction as one JSON
  string), a ``bid__<agent>`` flag per bidder so retrieval can be restricted to
  auctions an agent took part in, and caller extras under ``x_<key>``.

Why one record: a single ``upsert`` is atomic, so an auction is stored whole or not
at all, and retrying the same id overwrites instead of duplicating; many workers can
write at once without coordination. A persistent directory belongs to one process,
which holds its lock file (``.sale_graph.lock``) while the store is open; several
processes share a memory through ``chroma run`` and :meth:`AuctionMemory.server`.

Every failure of Chroma or of the network surfaces as
:class:`~sale_graph.errors.MemoryUnavailableError`; invalid records raise
:class:`AuctionRecordError` before anything is sent.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
import urllib.parse
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sale_graph.agents import valid_agent_name
from sale_graph.errors import InvalidTaskError, MemoryUnavailableError, SaleError
from sale_graph.seeds import SEED_SOURCE

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_COLLECTION = "sale_auctions"
DEFAULT_PORT = 8000
# The Chroma HTTP client ships with no timeout at all: a server that accepts a
# connection and never answers would hang an auction forever. These bound it.
CONNECT_TIMEOUT = 3.0
REQUEST_TIMEOUT = 30.0
RECENT_EMBEDDINGS = 32  # task vectors kept per store (see _embed)

LABELS = ("win", "lose")
ROUNDS = (0, 1)
_BID_KEYS = ("agent", "round", "strategy", "score", "label", "price")
_FLAG_PREFIX = "bid__"
_EXTRA_PREFIX = "x_"
# A verified outcome lives on its auction's record under these keys, so that the
# auction and what became of it are one record: one upsert, never two records.
_OUTCOME_KEYS = ("outcome_passed", "outcome_score", "outcome_detail", "outcome_source",
                 "outcome_at")
_HAS_OUTCOME = "has_outcome"
MAX_OUTCOME_DETAIL = 500
_PAGE = 500

_NAME_CHARS = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{1,510}[a-zA-Z0-9]$")
_IPV4 = re.compile(r"^\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}$")


class AuctionRecordError(SaleError, ValueError):
    """An auction record is malformed (no winner, two winners, a bad bid...)."""


class UnknownAuctionError(SaleError, KeyError):
    """An outcome was reported for an auction id the memory does not hold."""

    def __init__(self, message: str, auction_id: str | None = None) -> None:
        super().__init__(message)
        self.auction_id = auction_id  # what a server may tell a client (not the store's path)

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class TextEmbedder(Protocol):
    """Anything that turns texts into unit vectors (the default is the shared MiniLM)."""

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Return one vector per text."""
        ...


@dataclass(frozen=True)
class PastAuction:
    """One stored auction as retrieval returns it.

    ``similarity`` is 1 - cosine distance to the query task; it is ``None`` for
    records fetched by id, where no query exists.
    """

    auction_id: str
    task: str
    similarity: float | None
    winner: str
    bids: tuple[dict[str, Any], ...]
    created_at: float
    extra: Mapping[str, Any] = field(default_factory=dict)
    outcome: Mapping[str, Any] | None = None  # the verified outcome, if one was recorded

    @property
    def winning_bid(self) -> dict[str, Any]:
        """The one bid labelled ``win`` (validated at write time)."""
        return next(b for b in self.bids if b["label"] == "win")

    @property
    def losing_bids(self) -> tuple[dict[str, Any], ...]:
        """Every bid labelled ``lose``, in stored order."""
        return tuple(b for b in self.bids if b["label"] == "lose")

    def bids_of(self, agent: str) -> tuple[dict[str, Any], ...]:
        """Return the bids one agent made here (original, then refined)."""
        return tuple(b for b in self.bids if b["agent"] == agent)


class Retrieved(list):
    """Past auctions found by a query; ``skipped`` names damaged records left out."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.skipped: list[str] = []


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidTaskError(
            f"text is not valid Unicode (character {exc.start}: {text[exc.start]!r})"
        ) from exc


def validate_collection_name(name: str) -> str:
    """Apply Chroma's naming rule up front so that the error says what to change."""
    if not isinstance(name, str):
        raise ValueError(f"collection name must be a string, got {type(name).__name__}")
    problem = None
    if not _NAME_CHARS.match(name):
        problem = (
            "use 3-512 characters of [a-zA-Z0-9._-], starting and ending with a letter or digit"
        )
    elif ".." in name:
        problem = "two consecutive periods are not allowed"
    elif _IPV4.match(name):
        problem = "it must not look like an IPv4 address"
    if problem:
        raise ValueError(f"invalid Chroma collection name {name!r}: {problem}")
    return name


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AuctionRecordError(f"{what} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise AuctionRecordError(f"{what} must be finite, got {value!r}")
    return float(value)


def normalise_bid(bid: Mapping[str, Any], index: int = 0) -> dict[str, Any]:
    """Check one bid and return it with canonical types; unknown keys ride along if JSON-able."""
    where = f"bid {index}"
    if not isinstance(bid, Mapping):
        raise AuctionRecordError(f"{where} must be a mapping, got {type(bid).__name__}")
    missing = [k for k in _BID_KEYS if k not in bid]
    if missing:
        raise AuctionRecordError(f"{where} lacks {', '.join(missing)}")
    agent = bid["agent"]
    if not valid_agent_name(agent):
        shown = repr(agent) if len(repr(agent)) <= 80 else repr(agent)[:80] + "..."
        raise AuctionRecordError(
            f"{where}: agent must be an agent name (1-64 of [A-Za-z0-9._-]), got {shown}"
        )
    rnd = bid["round"]
    if isinstance(rnd, bool) or rnd not in ROUNDS:
        raise AuctionRecordError(f"{where} ({agent}): round must be 0 or 1 (refined), got {rnd!r}")
    strategy = bid["strategy"]
    if not isinstance(strategy, str):
        raise AuctionRecordError(f"{where} ({agent}): strategy must be a string")
    label = bid["label"]
    if label not in LABELS:
        raise AuctionRecordError(f"{where} ({agent}): label must be 'win' or 'lose', got {label!r}")
    score = bid["score"]
    price = _finite(bid["price"], f"{where} ({agent}) price")
    if price < 0:
        raise AuctionRecordError(f"{where} ({agent}): price must be >= 0, got {price}")
    out: dict[str, Any] = {
        "agent": agent,
        "round": int(rnd),
        "strategy": strategy,
        "score": None if score is None else _finite(score, f"{where} ({agent}) score"),
        "label": label,
        "price": price,
    }
    for key, value in bid.items():
        if key in out:
            continue
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise AuctionRecordError(
                f"{where} ({agent}): {key!r} is not JSON-serialisable"
            ) from exc
        out[str(key)] = value
    return out


def _check_bids(bids: Sequence[Mapping[str, Any]], winner: str) -> list[dict[str, Any]]:
    if isinstance(bids, (str, bytes)) or not isinstance(bids, Sequence):
        raise AuctionRecordError("bids must be a list of bid mappings")
    if not bids:
        raise AuctionRecordError("an auction needs at least one bid")
    clean = [normalise_bid(b, i) for i, b in enumerate(bids)]
    seen: set[tuple[str, int]] = set()
    for b in clean:
        key = (b["agent"], b["round"])
        if key in seen:
            raise AuctionRecordError(f"agent {b['agent']!r} has two bids in round {b['round']}")
        seen.add(key)
    wins = [b for b in clean if b["label"] == "win"]
    if len(wins) != 1:
        raise AuctionRecordError(f"exactly one bid must be labelled 'win', found {len(wins)}")
    if winner != wins[0]["agent"]:
        raise AuctionRecordError(
            f"winner {winner!r} does not match the agent of the winning bid {wins[0]['agent']!r}"
        )
    return clean


def _check_extra(extra: Mapping[str, Any] | None) -> dict[str, str | int | float | bool]:
    out: dict[str, str | int | float | bool] = {}
    for key, value in (extra or {}).items():
        if not isinstance(key, str) or not key:
            raise AuctionRecordError(f"extra keys must be non-empty strings, got {key!r}")
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise AuctionRecordError(f"extra {key!r} must be finite")
        if not isinstance(value, (str, int, float, bool)):
            raise AuctionRecordError(
                f"extra {key!r} must be a str, int, float or bool, got {type(value).__name__}"
            )
        out[_EXTRA_PREFIX + key] = value
    return out


def _bounded_timeouts(client: Any) -> None:
    """Give the Chroma HTTP client's session finite timeouts (it defaults to none)."""
    try:
        import httpx
    except ImportError:  # pragma: no cover - chromadb depends on httpx
        return
    session = getattr(getattr(client, "_server", None), "_session", None)
    if isinstance(session, httpx.Client):
        session.timeout = httpx.Timeout(REQUEST_TIMEOUT, connect=CONNECT_TIMEOUT)


class AuctionMemory:
    """Chroma-backed store of past auctions; opening is cheap, the embedder loads on first use.

    Methods are synchronous and thread-safe; async callers wrap them in
    ``asyncio.to_thread``.
    """

    def __init__(
        self,
        client: ClientAPI | Callable[[], ClientAPI],
        collection: str = DEFAULT_COLLECTION,
        embedder: TextEmbedder | None = None,
        *,
        location: str | None = None,
        hint: str | None = None,
        preflight: Callable[[], None] | None = None,
    ) -> None:
        self.collection_name = validate_collection_name(collection)
        self._factory: Callable[[], ClientAPI] | None = client if callable(client) else None
        self._client: ClientAPI | None = None if callable(client) else client
        if self._client is not None:
            _bounded_timeouts(self._client)
        self._embedder = embedder
        self._collection: Collection | None = None
        self._has_records = False  # set once seen non-empty; clear() resets it
        self._lock = threading.Lock()
        # a write and an outcome for the same id read-modify-write one record: serialise them
        self._record_lock = threading.Lock()
        # one auction embeds its task up to 2 + refiners times (retrieve, own-plan
        # lookups, write); the last few vectors are kept so that costs one embedding
        self._recent: OrderedDict[str, list[float]] = OrderedDict()
        self.location = location or "a Chroma client"
        self._hint = hint or "check that the Chroma store is reachable"
        self._preflight = preflight
        self._locked_dir: Path | None = None  # embedded stores: the directory this one locks

    # ------------------------------------------------------------------ opening

    @classmethod
    def persistent(
        cls,
        path: str | os.PathLike[str],
        collection: str = DEFAULT_COLLECTION,
        embedder: TextEmbedder | None = None,
    ) -> AuctionMemory:
        """Open an embedded store in a directory (created if missing), for one process."""
        directory = Path(path).expanduser()

        def check() -> None:
            if directory.exists() and not directory.is_dir():
                raise MemoryUnavailableError(
                    f"auction memory path {str(directory)!r} exists but is not a directory"
                )
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise MemoryUnavailableError(
                    f"cannot create the auction memory directory {str(directory)!r}: {exc}"
                ) from exc
            if not os.access(directory, os.W_OK | os.X_OK):
                raise MemoryUnavailableError(
                    f"auction memory directory {str(directory)!r} is not writable"
                )
            _lock_directory(directory)

        def factory() -> ClientAPI:
            check()
            import chromadb

            # Default settings on purpose: Chroma refuses a second client on the same
            # path with different settings, and its product telemetry is a no-op in 1.x.
            return chromadb.PersistentClient(path=str(directory))

        memory = cls(
            factory,
            collection,
            embedder,
            location=f"Chroma store at {str(directory)!r}",
            hint=(
                "check that the directory is writable and not held by another process; "
                "to share one memory between processes, serve it with "
                f"`chroma run --path {directory} --port {DEFAULT_PORT}` and use --memory-url"
            ),
            preflight=check,
        )
        memory._locked_dir = directory
        return memory

    @classmethod
    def server(
        cls,
        host: str,
        port: int = DEFAULT_PORT,
        collection: str = DEFAULT_COLLECTION,
        embedder: TextEmbedder | None = None,
        ssl: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> AuctionMemory:
        """Open a store served by ``chroma run``; many processes can share it."""
        if not isinstance(host, str) or not host:
            raise ValueError("Chroma server host must be a non-empty string")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"Chroma server port must be 1-65535, got {port!r}")
        url = f"{'https' if ssl else 'http'}://{host}:{port}"
        bind = "" if host in ("localhost", "127.0.0.1") else f" --host {host}"

        hint = f"is it running? start one with `chroma run --path DIR{bind} --port {port}`"

        def check() -> None:
            _heartbeat(url, CONNECT_TIMEOUT, dict(headers or {}), hint)

        def factory() -> ClientAPI:
            check()
            import chromadb

            client = chromadb.HttpClient(host=host, port=port, ssl=ssl, headers=dict(headers or {}))
            _bounded_timeouts(client)
            return client

        return cls(
            factory,
            collection,
            embedder,
            location=f"Chroma server at {url}",
            hint=hint,
            preflight=check,
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        collection: str = DEFAULT_COLLECTION,
        embedder: TextEmbedder | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AuctionMemory:
        """Parse ``http(s)://host[:port]`` and open :meth:`server`."""
        host, port, ssl = parse_url(url)
        return cls.server(host, port, collection, embedder, ssl=ssl, headers=headers)

    # ------------------------------------------------------------------ plumbing

    @property
    def embedder(self) -> TextEmbedder:
        """The embedder; the shared MiniLM is loaded here, on first need, not at opening."""
        if self._embedder is None:
            from sale_graph.embeddings import get_embedder

            self._embedder = get_embedder()
        return self._embedder

    def _unavailable(self, exc: BaseException | str) -> MemoryUnavailableError:
        detail = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}".rstrip(": ")
        return MemoryUnavailableError(
            f"auction memory unavailable ({self.location}, collection "
            f"{self.collection_name!r}): {detail}; {self._hint}"
        )

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn any Chroma or network failure into one error type the graph understands."""
        try:
            yield
        except (MemoryUnavailableError, AuctionRecordError, UnknownAuctionError):
            raise
        except Exception as exc:
            raise self._unavailable(exc) from exc

    def _col(self) -> Collection:
        if self._collection is not None:
            return self._collection
        with self._lock:
            if self._collection is None:
                col = self._client_ready().get_or_create_collection(
                    self.collection_name,
                    configuration={"hnsw": {"space": "cosine"}},
                    metadata={"sale_schema": SCHEMA_VERSION},
                    embedding_function=None,
                )
                space = _space_of(col)
                if space not in (None, "cosine"):
                    raise MemoryUnavailableError(
                        f"collection {self.collection_name!r} in {self.location} uses {space!r} "
                        "distance but the auction memory needs cosine: pick another collection"
                    )
                self._collection = col
        return self._collection

    def _embed(self, text: str) -> list[Sequence[float]]:
        """Embed one text, shaped as Chroma's one-row batch (recent texts are reused)."""
        with self._lock:
            vector = self._recent.get(text)
            if vector is not None:
                self._recent.move_to_end(text)
                return [vector]
        vectors = self.embedder.embed([text])
        if len(vectors) != 1:
            raise RuntimeError(f"embedder returned {len(vectors)} vectors for 1 text")
        vector = [float(x) for x in vectors[0]]
        with self._lock:
            self._recent[text] = vector
            while len(self._recent) > RECENT_EMBEDDINGS:
                self._recent.popitem(last=False)
        return [vector]

    # ------------------------------------------------------------------ API

    def ping(self) -> None:
        """Fail fast, with what to do, if the store cannot be reached or opened."""
        if self._preflight is not None:
            self._preflight()
        with self._guard():
            if self._preflight is None and self._client is not None:
                self._client.heartbeat()
            self._col().count()

    def collections(self) -> list[str]:
        """The names of the store's collections, opening (and so creating) none of them."""
        if self._preflight is not None:
            self._preflight()
        with self._guard():
            with self._lock:
                client = self._client_ready()
            return sorted(str(getattr(c, "name", c)) for c in client.list_collections())

    def _client_ready(self) -> Any:
        """The Chroma client, made on first need (call with ``self._lock`` held)."""
        if self._client is None and self._factory is not None:
            self._client = self._factory()
        if self._client is None:
            raise self._unavailable("no Chroma client")
        return self._client

    def write(
        self,
        auction_id: str,
        task: str,
        bids: Sequence[Mapping[str, Any]],
        winner: str,
        created_at: float | None = None,
        extra: Mapping[str, Any] | None = None,
        outcome: Mapping[str, Any] | None = None,
    ) -> None:
        """Store one auction atomically; the same id again replaces it (idempotent).

        ``outcome`` (from :func:`outcome_fields`) is stored on the same record. A
        rewrite without one keeps the outcome already recorded for that id if the
        same agent won, so feedback that arrived in between is not erased; an
        outcome of another winner's answer is dropped with the rest of the old record.
        """
        if not isinstance(auction_id, str) or not auction_id.strip():
            raise AuctionRecordError("auction_id must be a non-empty string")
        if not isinstance(task, str) or not task.strip():
            raise InvalidTaskError("cannot store an auction with an empty task")
        _check_text(task)
        if not isinstance(winner, str) or not winner:
            raise AuctionRecordError("winner must be the name of the winning agent")
        clean = _check_bids(bids, winner)
        stamp = time.time() if created_at is None else _finite(created_at, "created_at")
        metadata: dict[str, str | int | float | bool] = {
            "schema": SCHEMA_VERSION,
            "winner": winner,
            "created_at": stamp,
            "n_bids": len(clean),
            "n_refined": sum(1 for b in clean if b["round"] == 1),
            "refined_win": any(b["round"] == 1 and b["label"] == "win" for b in clean),
            "bids_json": json.dumps(clean, ensure_ascii=False, allow_nan=False),
        }
        metadata.update(_check_extra(extra))
        for b in clean:
            metadata[_FLAG_PREFIX + b["agent"]] = True
        given = outcome_fields(**outcome) if outcome is not None else None
        with self._guard():  # an absent store fails before the embedder is loaded
            col = self._col()
        embedding = self._embed(task)
        with self._record_lock, self._guard():
            found = col.get(ids=[auction_id], include=["metadatas", "documents"])
            metas = found.get("metadatas") or []
            stored = metas[0] if found["ids"] and metas else None
            docs = found.get("documents") or []
            same_task = bool(found["ids"]) and bool(docs) and docs[0] == task
            # a rerun of the same auction keeps its verified outcome; another task under
            # the same id (a reused key) must not inherit a verdict on a different answer
            if given is None and stored is not None and same_task and (
                    stored.get("winner") == winner):
                given = _stored_outcome(stored)
            metadata.update(given or {})
            col.upsert(
                ids=[auction_id],
                documents=[task],
                embeddings=embedding,
                metadatas=[_replacing(stored, metadata)],
            )

    def record_outcome(
        self,
        auction_id: str,
        *,
        passed: bool,
        score: float | None = None,
        detail: str | None = None,
        source: str = "feedback",
    ) -> PastAuction:
        """Attach a verified outcome to a stored auction; the latest outcome wins.

        Idempotent (the same outcome twice leaves one record, unchanged); an id the
        memory does not hold raises :class:`UnknownAuctionError` and writes nothing.
        """
        fields = outcome_fields(passed=passed, score=score, detail=detail, source=source)
        with self._record_lock, self._guard():
            col = self._col()
            found = col.get(ids=[auction_id], include=["documents", "metadatas", "embeddings"])
            if not found["ids"]:
                raise UnknownAuctionError(
                    f"no auction {auction_id!r} in {self.location} (collection "
                    f"{self.collection_name!r}): nothing to attach the outcome to",
                    auction_id,
                )
            stored = dict((found.get("metadatas") or [{}])[0] or {})
            document = (found.get("documents") or [""])[0]
            if _to_past(auction_id, document, stored, None) is None:
                raise AuctionRecordError(
                    f"auction {auction_id!r} is stored but damaged: no outcome written"
                )
            metadata = {k: v for k, v in stored.items() if k not in (_HAS_OUTCOME, *_OUTCOME_KEYS)}
            metadata.update(fields)
            embeddings = found.get("embeddings")
            vectors: Any = [list(embeddings[0])] if embeddings is not None else None
            col.upsert(
                ids=[auction_id],
                documents=[document],
                embeddings=vectors,
                metadatas=[_replacing(stored, metadata)],
            )
        past = _to_past(auction_id, document, metadata, None)
        if past is None:  # checked above; only the outcome keys changed
            raise AuctionRecordError(f"auction {auction_id!r}: outcome stored, record unreadable")
        return past

    def similar(
        self,
        task: str,
        k: int = 8,
        *,
        agent: str | None = None,
        exclude: Iterable[str] = (),
        verified: bool = False,
        executed_by: str | None = None,
    ) -> list[PastAuction]:
        """Return the k past auctions whose tasks are most similar, best first.

        ``agent`` keeps only auctions that agent bid in; ``exclude`` drops ids (the
        running auction, say); ``verified`` keeps only auctions with a recorded
        outcome; ``executed_by`` only those the named agent won (and so executed).
        Fewer stored than k returns all of them.
        """
        if not isinstance(task, str) or not task.strip():
            raise InvalidTaskError("cannot search the memory with an empty task")
        _check_text(task)
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"k must be a non-negative integer, got {k!r}")
        if k == 0:
            return []
        skip = set(exclude)
        if not self._has_records:
            # An empty memory answers without loading the embedder. Once it holds
            # records the count is not asked again: Chroma returns at most what it
            # has, and count() grows with the collection (~9 ms at 100k records).
            with self._guard():
                self._has_records = self._col().count() > 0
            if not self._has_records:
                return []
        embedding = self._embed(task)
        clauses: list[dict[str, Any]] = []
        if agent:
            clauses.append({_FLAG_PREFIX + agent: True})
        if verified:
            clauses.append({_HAS_OUTCOME: True})
        if executed_by:
            clauses.append({"winner": executed_by})
        where: Any = clauses[0] if len(clauses) == 1 else ({"$and": clauses} if clauses else None)
        with self._guard():
            result = self._col().query(
                query_embeddings=embedding,
                n_results=k + len(skip),
                where=where,
                include=["documents", "metadatas", "distances"],
            )
        ids = (result.get("ids") or [[]])[0]
        docs = (result.get("documents") or [[]])[0]
        metas = (result.get("metadatas") or [[]])[0]
        dists = (result.get("distances") or [[]])[0]
        found = Retrieved()
        for rid, doc, meta, dist in zip(ids, docs, metas, dists, strict=True):
            if rid in skip:
                continue
            similarity = max(-1.0, min(1.0, 1.0 - float(dist)))
            past = _to_past(rid, doc, meta, similarity)
            if past is None:
                found.skipped.append(rid)
            else:
                found.append(past)
        del found[k:]
        return found

    def search(self, text: str, k: int = 8) -> list[PastAuction]:
        """Free-text lookup for people (the CLI): the same ranking as :meth:`similar`."""
        return self.similar(text, k)

    def get(self, auction_id: str) -> PastAuction | None:
        """One auction by id, or None; needs no embedder."""
        with self._guard():
            result = self._col().get(ids=[auction_id], include=["documents", "metadatas"])
        if not result["ids"]:
            return None
        docs = result.get("documents") or [""]
        metas = result.get("metadatas") or [{}]
        return _to_past(result["ids"][0], docs[0], metas[0], None)

    def count(self) -> int:
        """Return the number of auctions stored."""
        with self._guard():
            return int(self._col().count())

    def stats(self) -> dict[str, Any]:
        """Totals for people and benchmarks: who wins, how often refined bids win."""
        wins: Counter[str] = Counter()
        bids_per_agent: Counter[str] = Counter()
        refined_bids = refined_wins = auctions = seeds = 0
        first = last = None
        for meta in self._metadatas():
            try:
                bids = _check_bids(json.loads(str(meta["bids_json"])), meta["winner"])
            except (KeyError, TypeError, ValueError):  # damaged: skipped, as in retrieval
                continue
            if meta.get("outcome_source") == SEED_SOURCE:  # a seed, not an auction anyone won
                seeds += 1
                continue
            auctions += 1
            wins[str(meta.get("winner"))] += 1
            for b in bids:
                bids_per_agent[b["agent"]] += 1
                if b["round"] == 1:
                    refined_bids += 1
                    refined_wins += b["label"] == "win"
            stamp = meta.get("created_at")
            if isinstance(stamp, (int, float)):
                first = stamp if first is None else min(first, stamp)
                last = stamp if last is None else max(last, stamp)
        return {
            "location": self.location,
            "collection": self.collection_name,
            "auctions": auctions,
            "seeds": seeds,
            "wins": dict(sorted(wins.items())),
            "bids": dict(sorted(bids_per_agent.items())),
            "refined_bids": refined_bids,
            "refined_wins": refined_wins,
            "first_created_at": first,
            "last_created_at": last,
        }

    def clear(self) -> None:
        """Delete every stored auction (tests and fresh benchmark runs)."""
        with self._guard():
            col = self._col()
            self._has_records = False
            while True:
                ids = col.get(include=[], limit=_PAGE)["ids"]
                if not ids:
                    return
                col.delete(ids=ids)

    def _metadatas(self) -> Iterator[Mapping[str, Any]]:
        offset = 0
        while True:
            with self._guard():
                page = self._col().get(include=["metadatas"], limit=_PAGE, offset=offset)
            metas = page.get("metadatas") or []
            yield from (m for m in metas if m)
            if len(page["ids"]) < _PAGE:
                return
            offset += _PAGE

    def close(self) -> None:
        """Let go of the store; an embedded one releases its directory to other processes."""
        with self._lock:
            if self._factory is not None:
                self._client = None
                self._collection = None
        if self._locked_dir is not None:
            _unlock_directory(self._locked_dir)

    def __repr__(self) -> str:
        return f"AuctionMemory({self.location}, collection={self.collection_name!r})"


def _space_of(col: Any) -> str | None:
    # The raw JSON, not ``.configuration``: parsing that warns about the (deliberately)
    # absent embedding function on every open.
    config = getattr(col, "configuration_json", None) or {}
    hnsw = config.get("hnsw") if isinstance(config, Mapping) else None
    if isinstance(hnsw, Mapping):
        return hnsw.get("space")
    return None


def _to_past(
    auction_id: str, document: str | None, meta: Mapping[str, Any] | None, similarity: float | None
) -> PastAuction | None:
    """Rebuild a record; a foreign or damaged one is skipped with a warning, not fatal."""
    if meta is None:
        log.warning("skipping auction memory record %r: no metadata", auction_id)
        return None
    try:
        bids = _check_bids(json.loads(str(meta["bids_json"])), meta["winner"])
        return PastAuction(
            auction_id=auction_id,
            task=document or "",
            similarity=similarity,
            winner=str(meta["winner"]),
            bids=tuple(bids),
            created_at=float(meta.get("created_at", 0.0)),
            extra={
                k[len(_EXTRA_PREFIX) :]: v for k, v in meta.items() if k.startswith(_EXTRA_PREFIX)
            },
            outcome=_outcome_of(meta),
        )
    except (KeyError, TypeError, ValueError) as exc:  # AuctionRecordError is a ValueError
        log.warning("skipping damaged auction memory record %r: %s", auction_id, exc)
        return None


LOCK_FILE = ".sale_graph.lock"
_HELD: dict[str, int] = {}  # resolved directory -> fd of the lock file this process holds
_HELD_LOCK = threading.Lock()


def _lock_directory(directory: Path) -> None:
    """Hold the embedded store's lock file for this process, or say who holds it.

    Chroma's embedded store is one process's: two writers on one directory each
    lost sight of records the other wrote (their indexes diverge), so a second
    process is refused up front and pointed at ``chroma run``.
    """
    import fcntl

    key = str(directory.resolve())
    with _HELD_LOCK:
        if key in _HELD:
            return
        path = directory / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise MemoryUnavailableError(
                f"cannot create the lock file {str(path)!r}: {exc}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise MemoryUnavailableError(
                f"auction memory directory {key!r} is in use by process {holder} (lock file "
                f"{str(path)!r}); an embedded memory belongs to one process. To share it "
                f"between processes, serve it with `chroma run --path {key} --port "
                f"{DEFAULT_PORT}` and use memory_url='http://127.0.0.1:{DEFAULT_PORT}' "
                "(sale --memory-url)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[key] = fd


def _unlock_directory(directory: Path) -> None:
    import fcntl

    with _HELD_LOCK:
        fd = _HELD.pop(str(directory.resolve()), None)
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _heartbeat(url: str, timeout: float, headers: dict[str, str], hint: str) -> None:
    """One bounded GET of the server's heartbeat, so that an absent server fails in seconds."""
    import httpx

    target = f"{url}/api/v2/heartbeat"
    try:
        response = httpx.get(target, timeout=timeout, headers=headers)
    except httpx.HTTPError as exc:
        raise MemoryUnavailableError(
            f"auction memory unavailable: no Chroma server answers at {url} "
            f"({type(exc).__name__}: {exc or 'no reply'}); {hint}"
        ) from exc
    if response.status_code != 200 or "heartbeat" not in response.text:
        raise MemoryUnavailableError(
            f"auction memory unavailable: {target} answered HTTP {response.status_code}, "
            "which is not a Chroma 1.x server heartbeat; check the URL and the server version"
        )


__all__ = [
    "AuctionMemory",
    "AuctionRecordError",
    "PastAuction",
    "TextEmbedder",
    "normalise_bid",
    "validate_collection_name",
]


def parse_url(url: Any) -> tuple[str, int, bool]:
    """``http(s)://host[:port]`` -> (host, port, ssl); ValueError saying what is wrong."""
    parts = urllib.parse.urlsplit(url.strip() if isinstance(url, str) else "")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"Chroma URL must look like http://host:port, got {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"Chroma URL must not carry a path or query, got {url!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"Chroma URL has an invalid port: {url!r}") from exc
    ssl = parts.scheme == "https"
    return parts.hostname, port if port is not None else (443 if ssl else DEFAULT_PORT), ssl


def outcome_fields(
    *, passed: Any, score: Any = None, detail: Any = None, source: Any = "feedback",
    at: float | None = None,
) -> dict[str, str | int | float | bool]:
    """Validated metadata of one verified outcome (scalars only, detail capped)."""
    if not isinstance(passed, bool):
        raise AuctionRecordError(f"an outcome's 'passed' must be true or false, got {passed!r}")
    fields: dict[str, str | int | float | bool] = {
        _HAS_OUTCOME: True,
        "outcome_passed": passed,
        "outcome_source": str(source or "feedback")[:64],
        "outcome_at": time.time() if at is None else _finite(at, "outcome_at"),
        "outcome_detail": "" if detail is None else str(detail)[:MAX_OUTCOME_DETAIL],
    }
    if score is not None:
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise AuctionRecordError(f"an outcome's 'score' must be a number, got {score!r}")
        fields["outcome_score"] = _finite(score, "score")
    return fields


def _outcome_of(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    if not meta.get(_HAS_OUTCOME) or not isinstance(meta.get("outcome_passed"), bool):
        return None
    return {
        "passed": meta["outcome_passed"],
        "score": meta.get("outcome_score"),
        "detail": meta.get("outcome_detail", ""),
        "source": meta.get("outcome_source", ""),
        "at": meta.get("outcome_at"),
    }


def _stored_outcome(meta: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The outcome fields already on a record (kept when the auction is rewritten)."""
    if not meta or not meta.get(_HAS_OUTCOME):
        return None
    return {k: meta[k] for k in (_HAS_OUTCOME, *_OUTCOME_KEYS) if k in meta}


def _replacing(stored: Mapping[str, Any] | None, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """``metadata`` as a record's whole metadata, for an upsert over ``stored``.

    Chroma's upsert merges metadata into the record it replaces, so a key only the
    old record had (a bidder of an earlier attempt, an outcome's score) would
    survive into the new one. Setting it to None deletes it in the same upsert.
    """
    out = dict(metadata)
    for key in stored or {}:
        out.setdefault(key, None)
    return out
