"""The outcome bank: every model call and every graded outcome of a benchmark, on disk.

A benchmark run makes thousands of small-model calls; recomputing them after an
interruption, or to add one baseline, wastes hours on two cores. The bank is a
LangChain ``BaseCache`` (give it to chat models as ``cache=bank``), so each call is
stored under LangChain's own key: the serialised prompt messages plus the model's
``llm_string`` (model identity and decoding parameters). A second call with the
same key never reaches the model. The full ``AIMessage`` is kept, including
``usage_metadata`` (token counts) and ``response_metadata`` (entropy, timings),
because the auction's scores and the cost metrics are computed from them.
LangChain itself adds ``usage_metadata["total_cost"] = 0`` to a cache hit; the
token counts stay as recorded.

Besides model calls the bank holds small JSON records in namespaces (e.g. the
graded outcome of agent X on task T), so the routers' outcome table can be rebuilt
without re-running the sandbox.

Storage: SQLite in WAL mode, one connection per thread, ``busy_timeout`` for
contention: many readers, one writer at a time (several processes may share a file,
but writes serialise). ``export``/``import_`` move the content through a sorted,
gzip-compressed JSON-lines file with a fixed timestamp, so the same bank always
exports to the same bytes and can be committed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from langchain_core.messages import message_to_dict, messages_from_dict
from langchain_core.outputs import ChatGeneration, Generation

from sale_graph.calls import describe_error
from sale_graph.errors import SaleError

__all__ = ["BankFormatError", "OutcomeBank"]

_SCHEMA = 1
_DDL = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY,
    llm_string TEXT NOT NULL,
    prompt TEXT NOT NULL,
    value TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (namespace, key)
);
"""


def _key(prompt: str, llm_string: str) -> str:
    return hashlib.sha256(f"{llm_string}\x00{prompt}".encode()).hexdigest()


def _jsonable(obj: Any) -> Any:
    """Fallback for values JSON does not know (numpy scalars/arrays, sets, bytes)."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    return str(obj)


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_jsonable, sort_keys=True, ensure_ascii=False)


def _encode_generations(generations: Sequence[Generation]) -> list[dict[str, Any]]:
    out = []
    for g in generations:
        if isinstance(g, ChatGeneration):
            out.append(
                {
                    "kind": "chat",
                    "message": message_to_dict(g.message),
                    "generation_info": g.generation_info,
                }
            )
        else:
            out.append({"kind": "text", "text": g.text, "generation_info": g.generation_info})
    return out


def _decode_generations(data: Sequence[dict[str, Any]]) -> list[Generation]:
    out: list[Generation] = []
    for d in data:
        if d["kind"] == "chat":
            (message,) = messages_from_dict([d["message"]])
            out.append(ChatGeneration(message=message, generation_info=d.get("generation_info")))
        else:
            out.append(Generation(text=d["text"], generation_info=d.get("generation_info")))
    return out


class BankFormatError(SaleError, ValueError):
    """A bank export that cannot be read (corrupt gzip, a malformed line)."""


class OutcomeBank(BaseCache):
    """A persistent LangChain cache plus a JSON record store in one SQLite file."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 60.0) -> None:
        """Open or create the bank file; ``busy_timeout`` waits out other writers."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        conn = self._conn()
        with conn:
            conn.executescript(_DDL)
            row = conn.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('schema', ?)", (str(_SCHEMA),))
            elif int(row[0]) != _SCHEMA:
                raise ValueError(f"{self.path}: bank schema {row[0]}, expected {_SCHEMA}")

    # ------------------------------------------------------------------ connections

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        """Close every thread's connection (checkpoints the WAL into the main file)."""
        with self._lock:
            for conn in self._all:
                try:
                    conn.close()
                except sqlite3.ProgrammingError:
                    pass
            self._all.clear()
        self._local = threading.local()

    def __enter__(self) -> OutcomeBank:
        """Use as a context manager that closes the connections on exit."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close every connection."""
        self.close()

    # ------------------------------------------------------------------ BaseCache

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """Return the stored generations for (prompt, model identity + parameters), if any."""
        row = (
            self._conn()
            .execute("SELECT value FROM calls WHERE key=?", (_key(prompt, llm_string),))
            .fetchone()
        )
        return _decode_generations(json.loads(row[0])) if row else None

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Store (or replace) the generations of one model call."""
        value = _dumps(_encode_generations(return_val))
        conn = self._conn()
        with conn:
            conn.execute(
                "INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?, ?)",
                (_key(prompt, llm_string), llm_string, prompt, value, time.time()),
            )

    def clear(self, **kwargs: Any) -> None:
        """Forget all model calls (records stay; use ``clear_records`` for those)."""
        conn = self._conn()
        with conn:
            conn.execute("DELETE FROM calls")

    # ------------------------------------------------------------------ records

    def put(self, namespace: str, key: str, value: dict[str, Any]) -> None:
        """Store one JSON record, e.g. ``put("outcome", f"{task}|{agent}", {...})``."""
        conn = self._conn()
        with conn:
            conn.execute(
                "INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?)",
                (namespace, key, _dumps(value), time.time()),
            )

    def get(self, namespace: str, key: str) -> dict[str, Any] | None:
        """Return the record stored under (namespace, key), or None."""
        row = (
            self._conn()
            .execute("SELECT value FROM records WHERE namespace=? AND key=?", (namespace, key))
            .fetchone()
        )
        return json.loads(row[0]) if row else None

    def records(self, namespace: str) -> dict[str, dict[str, Any]]:
        """All records of a namespace, by key."""
        rows = self._conn().execute(
            "SELECT key, value FROM records WHERE namespace=? ORDER BY key", (namespace,)
        )
        return {k: json.loads(v) for k, v in rows}

    def clear_records(self, namespace: str | None = None) -> None:
        """Delete the records of one namespace, or all of them."""
        conn = self._conn()
        with conn:
            if namespace is None:
                conn.execute("DELETE FROM records")
            else:
                conn.execute("DELETE FROM records WHERE namespace=?", (namespace,))

    # ------------------------------------------------------------------ inspection

    def __len__(self) -> int:
        """Count the stored model calls."""
        return int(self._conn().execute("SELECT COUNT(*) FROM calls").fetchone()[0])

    def calls(self) -> Iterator[tuple[str, str, list[Generation]]]:
        """Every stored call as (llm_string, prompt, generations), in key order."""
        rows = self._conn().execute("SELECT llm_string, prompt, value FROM calls ORDER BY key")
        for llm_string, prompt, value in rows:
            yield llm_string, prompt, _decode_generations(json.loads(value))

    # ------------------------------------------------------------------ export / import

    def export(self, path: str | Path) -> int:
        """Write the whole bank to a gzip JSON-lines file; returns the number of lines.

        Deterministic: entries sorted by key, gzip timestamp fixed at 0.
        """
        conn = self._conn()
        lines = []
        for key, llm_string, prompt, value in conn.execute(
            "SELECT key, llm_string, prompt, value FROM calls ORDER BY key"
        ):
            lines.append(
                _dumps(
                    {
                        "type": "call",
                        "key": key,
                        "llm_string": llm_string,
                        "prompt": prompt,
                        "generations": json.loads(value),
                    }
                )
            )
        for namespace, key, value in conn.execute(
            "SELECT namespace, key, value FROM records ORDER BY namespace, key"
        ):
            lines.append(
                _dumps(
                    {
                        "type": "record",
                        "namespace": namespace,
                        "key": key,
                        "value": json.loads(value),
                    }
                )
            )
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        with (
            open(tmp, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        ):
            for line in lines:
                gz.write(line.encode("utf-8") + b"\n")
        tmp.replace(out)
        return len(lines)

    def import_(
        self, path: str | Path, *, overwrite: bool = False, calls_only: bool = False
    ) -> int:
        """Merge an exported file into this bank; returns how many entries were new.

        Existing entries win unless ``overwrite``: a resumed run keeps what it saw.
        ``calls_only`` takes the model calls and leaves the records (another run's
        configuration and results) behind: a new run then replays every call the
        old one made with the same prompt and model, and grades them itself.
        """
        verb = "INSERT OR REPLACE" if overwrite else "INSERT OR IGNORE"
        conn = self._conn()
        before = self._count(conn)
        now = time.time()
        if not Path(path).is_file():
            raise BankFormatError(f"{path}: no such bank export file")
        n = 0
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f, conn:  # all lines or none
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        self._import_line(conn, verb, json.loads(line), calls_only, now)
                    except (ValueError, KeyError, TypeError) as exc:
                        raise BankFormatError(
                            f"{path}, line {n}: not a bank entry ({describe_error(exc)}); "
                            "nothing imported") from exc
        except (OSError, EOFError, UnicodeDecodeError) as exc:  # the stream, not one line
            raise BankFormatError(f"{path}: unreadable after {n} lines ({describe_error(exc)}); "
                                  "nothing imported") from exc
        return self._count(conn) - before

    @staticmethod
    def _import_line(
        conn: sqlite3.Connection, verb: str, d: Any, calls_only: bool, now: float
    ) -> None:
        if d["type"] == "call":
            conn.execute(
                f"{verb} INTO calls VALUES (?, ?, ?, ?, ?)",
                (_key(d["prompt"], d["llm_string"]), d["llm_string"], d["prompt"],
                 _dumps(d["generations"]), now),
            )
        elif d["type"] == "record":
            if not calls_only:
                conn.execute(
                    f"{verb} INTO records VALUES (?, ?, ?, ?)",
                    (d["namespace"], d["key"], _dumps(d["value"]), now),
                )
        else:
            raise ValueError(f"unknown entry type {d['type']!r}")

    @staticmethod
    def _count(conn: sqlite3.Connection) -> int:
        calls = conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
        records = conn.execute("SELECT COUNT(*) FROM records").fetchone()[0]
        return int(calls) + int(records)

    @classmethod
    def from_export(cls, export_path: str | Path, db_path: str | Path) -> OutcomeBank:
        """Open (or create) ``db_path`` and load a committed export into it."""
        bank = cls(db_path)
        bank.import_(export_path)
        return bank
