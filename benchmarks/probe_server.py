"""Probe a running LangGraph server with hostile runs and print what it refused.

    LANGSMITH_TRACING=false langgraph dev --no-browser --port 2124   # in another shell
    python benchmarks/probe_server.py --url http://127.0.0.1:2124

Starts nothing itself except, for the memory-URL case, a listener on loopback that
records whether the server tried to reach it. Every case is one run on a fresh thread
whose context or input a client should not be able to get past the server; each is
bounded (``--timeout``) and cancelled if it is still running, so an accepted case
costs at most that much model time.

A case is *refused* (the server or the graph said no), *ignored* (the field is not in
the server's context schema, so langgraph-api dropped it before the graph saw it, and
the run went on harmlessly with the deployer's settings: the canary untouched, nothing
planted), or *accepted* (anything else). Exit status 0 when no case was accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import threading
from typing import Any
from urllib.parse import urlparse

GRAPH = "sale_auction"
TASK = "Write a Python function that adds two numbers."
PLANTED = "/tmp/sale-probe-planted"  # checked locally: the probe targets a loopback server


class Listener:
    """A loopback TCP listener that only counts connections (the SSRF canary)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.hits += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1)
        self.sock.close()


def cases(canary_port: int) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(name, input, context) of every hostile run."""
    task = {"task": TASK}
    return [
        ("memory_path outside", task, {"memory_path": PLANTED}),
        ("memory_url to loopback", task, {"memory_url": f"http://127.0.0.1:{canary_port}"}),
        ("executor by name", task, {"executor": "os.system"}),
        ("pool file path", task, {"pool": "/etc/passwd"}),
        ("weights file path", task, {"weights": "/etc/passwd"}),
        ("remember as text", task, {"remember": "false"}),
        ("refine as text", task, {"refine": "no"}),
        ("approval as text", task, {"approval": "false"}),
        ("k as text", task, {"k": "8"}),
        ("k huge", task, {"k": 10**9}),
        ("call_timeout null (NaN)", task, {"call_timeout": None}),
        ("jury weights not a map", task, {"weights": {"jury": [1, 2]}}),
        ("policy file inside weights", task, {"weights": {"staged": "/etc/passwd"}}),
        ("policy file as staged", task, {"staged": "/etc/passwd"}),
        ("answer cap raised", task, {"max_answer_tokens": 65_536}),
        ("call_timeout raised", task, {"call_timeout": 86_400}),
        ("empty task", {"task": "   "}, {}),
        ("oversized task", {"task": "x" * 2_000_000}, {}),
        ("auction_id with newline", {"task": TASK, "auction_id": "job-1\n"}, {}),
    ]


async def probe(url: str, timeout: float) -> int:
    from langgraph_sdk import get_client

    client = get_client(url=url)
    found = await client.assistants.search(graph_id=GRAPH, limit=1)
    if not found:
        print(f"probe_server: {url} serves no graph {GRAPH!r}", file=sys.stderr)
        return 2
    schema = await client.assistants.get_schemas(found[0]["assistant_id"])
    context_schema = (schema.get("context_schema") or {}).get("properties", {})
    listed = set(context_schema)
    if os.path.exists(PLANTED):
        print(f"probe_server: remove {PLANTED} first (left by an earlier run?)", file=sys.stderr)
        return 2
    if urlparse(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        print("note: not a loopback server; the planted-path check only sees this machine")
    canary = Listener()
    tally = {"refused": 0, "ignored": 0, "accepted": 0}
    all_cases = cases(canary.port)
    offered = (context_schema.get("pool") or {}).get("enum")
    withheld = [p for p in ("local", "local-three", "local-small", "local-coder")
                if p not in (offered or [])]
    if withheld:  # a preset this deployment does not offer (none listed: the field is dropped)
        all_cases.append((f"pool {withheld[0]} not offered", {"task": TASK},
                          {"pool": withheld[0]}))
    try:
        for name, run_input, context in all_cases:
            thread = await client.threads.create()
            before = canary.hits
            verdict, detail = await _one(client, thread["thread_id"], run_input, context,
                                         timeout)
            harm = []
            if canary.hits > before:
                harm.append("the server connected to the loopback canary")
            if os.path.exists(PLANTED):
                harm.append(f"{PLANTED} exists")
            if harm:
                verdict, detail = "accepted", "; ".join([*harm, detail])
            elif verdict == "accepted" and context and not set(context) & listed:
                verdict, detail = "ignored", f"not in the context schema, dropped; {detail}"
            tally[verdict] += 1
            print(f"{verdict:8}  {name:26}  {detail}", flush=True)
    finally:
        canary.close()
    print(f"\n{len(all_cases)} hostile runs: " + ", ".join(f"{n} {k}" for k, n in tally.items()))
    return 0 if tally["accepted"] == 0 else 1


async def _one(client: Any, thread_id: str, run_input: dict, context: dict,
               timeout: float) -> tuple[str, str]:
    try:
        run = await client.runs.create(thread_id, GRAPH, input=run_input, context=context)
    except Exception as exc:  # noqa: BLE001 - refused at the door is a refusal
        return "refused", f"at submission: {_short(exc)}"
    try:
        joined = await asyncio.wait_for(client.runs.join(thread_id, run["run_id"]), timeout)
    except TimeoutError:
        await client.runs.cancel(thread_id, run["run_id"])
        return "accepted", f"still running after {timeout:g}s (cancelled)"
    except Exception as exc:  # noqa: BLE001
        return "refused", _short(exc)
    error = joined.get("__error__") if isinstance(joined, dict) else None
    if error:
        return "refused", _short(f"{error.get('error')}: {error.get('message')}")
    final = await client.runs.get(thread_id, run["run_id"])
    if final.get("status") == "error":
        state = await client.threads.get_state(thread_id)
        return "refused", _short(_error_of(state) or "run ended in error")
    return "accepted", f"run status {final.get('status')}"


def _error_of(state: Any) -> str | None:
    for task in (state or {}).get("tasks", []) or []:
        if task.get("error"):
            return str(task["error"])
    return None


def _short(text: Any, limit: int = 150) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit] + "..."


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run every case once."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:2124",
                        help="the LangGraph server (default: a `langgraph dev` on loopback)")
    parser.add_argument("--timeout", type=float, default=20.0,
                        help="seconds one case may run before it counts as accepted")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(probe(args.url, args.timeout))
    except OSError as exc:
        print(f"probe_server: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

