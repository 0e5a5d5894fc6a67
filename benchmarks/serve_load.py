"""Load on ``sale serve``: concurrent clients on loopback, instant scripted models.

    python benchmarks/serve_load.py --clients 8 --requests 25

Runs the same auctions twice with the same concurrency and the same scripted market
as ``benchmarks/load.py`` (models that answer at once, a fresh embedded memory):

1. in-process: ``--clients`` tasks each awaiting ``graph.ainvoke`` ``--requests`` times;
2. through the server: ``sale serve``'s app under uvicorn in a child process on
   127.0.0.1, ``--clients`` concurrent HTTP clients each posting ``--requests`` chat
   completions (``Idempotency-Key`` = a known id per request).

It prints the latency percentiles of both, the server's added latency (p50 and p99 of
the server's minus the in-process ones), errors, and lost records: after the server
stops, every successful response's auction id must be in its memory and the memory
must hold nothing else. Bounded: at most clients x requests auctions per phase, and
``--time-limit`` seconds in all (whatever was measured by then is reported).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("LANGSMITH_TRACING", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.load import answers, free_port, instant_model, ms, pct  # noqa: E402
from tests.workers.common import PRICES, WEIGHTS, HashEmbedder  # noqa: E402

TASK = "Add the numbers {c} and {r} and return the sum."
WARMUP = 3


def market(memory_dir: str) -> Any:
    """The deployer's Context: the scripted pool and an embedded memory."""
    from sale_graph import Agent, Context
    from sale_graph.memory import AuctionMemory

    agents = [Agent(name=n, model=instant_model(n, 0.0), price=p) for n, p in PRICES.items()]
    memory = AuctionMemory.persistent(memory_dir, collection="serve_load",
                                      embedder=HashEmbedder())
    return Context(agents=agents, memory=memory, weights=WEIGHTS)


def serve(port: int, memory_dir: str) -> int:
    """Child process: the app on loopback until SIGTERM."""
    import uvicorn

    from sale_graph.serve import create_app

    uvicorn.run(create_app(market(memory_dir)), host="127.0.0.1", port=port,
                log_level="warning")
    return 0


async def clients(n: int, per_client: int, deadline: float, one: Any) -> tuple[list, int]:
    """``n`` concurrent clients, each making its requests one after another."""
    latencies: list[float] = []
    errors = 0

    async def client(c: int) -> None:
        nonlocal errors
        for r in range(per_client):
            if time.monotonic() > deadline:
                return
            started = time.perf_counter()
            try:
                await one(c, r)
            except Exception as exc:  # noqa: BLE001 - counted and shown once
                errors += 1
                if errors == 1:
                    print(f"first error: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(client(c) for c in range(n)))
    return latencies, errors


async def in_process(args: argparse.Namespace, deadline: float) -> tuple[list, int]:
    from sale_graph import graph

    with tempfile.TemporaryDirectory(prefix="sale-serve-load-") as tmp:
        context = market(tmp)

        async def one(c: int, r: int) -> None:
            out = await graph.ainvoke({"task": TASK.format(c=c, r=r)}, context=context)
            assert out["answer"]

        for w in range(WARMUP):
            await one(-1, w)
        result = await clients(args.clients, args.requests, deadline, one)
        context.memory.close()
        return result


async def through_server(args: argparse.Namespace, url: str, deadline: float,
                         stored: list[str]) -> tuple[list, int]:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=60) as http:

        async def one(c: int, r: int) -> None:
            key = f"load-{c}-{r}"
            reply = await http.post("/v1/chat/completions", headers={"Idempotency-Key": key},
                                    json={"model": args.model, "messages": [
                                        {"role": "user", "content": TASK.format(c=c, r=r)}]})
            reply.raise_for_status()
            assert reply.json()["choices"][0]["message"]["content"]
            stored.append(key)

        for w in range(WARMUP):
            await one(-1, w)
        return await clients(args.clients, args.requests, deadline, one)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=25, help="per client")
    parser.add_argument("--model", default="sale-full")
    parser.add_argument("--time-limit", type=float, default=300.0)
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "MEMORY_DIR"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(int(args.serve[0]), args.serve[1])
    if not (1 <= args.clients <= 64 and 1 <= args.requests <= 1000):
        parser.error("--clients must be 1-64 and --requests 1-1000")
    deadline = time.monotonic() + args.time_limit
    local, local_errors = asyncio.run(in_process(args, deadline - args.time_limit / 2))

    memory_dir = tempfile.mkdtemp(prefix="sale-serve-load-")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), memory_dir])
    stored: list[str] = []
    try:
        while not answers(url, "/v1/models"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.2)
        remote, remote_errors = asyncio.run(through_server(args, url, deadline, stored))
    finally:
        proc.terminate()  # graceful: uvicorn finishes the requests in flight
        proc.wait(timeout=60)

    from sale_graph.memory import AuctionMemory

    memory = AuctionMemory.persistent(memory_dir, collection="serve_load",
                                      embedder=HashEmbedder())
    lost = [key for key in stored if memory.get(key) is None]
    extra = memory.count() - (len(stored) - len(lost))
    memory.close()

    report = {
        "clients": args.clients, "requests_per_client": args.requests, "model": args.model,
        "in_process": {"auctions": len(local), "errors": local_errors,
                       "p50": ms(pct(local, 50)), "p99": ms(pct(local, 99))},
        "server": {"auctions": len(remote), "errors": remote_errors,
                   "p50": ms(pct(remote, 50)), "p99": ms(pct(remote, 99))},
        "added_latency": {"p50": ms(pct(remote, 50) - pct(local, 50)),
                          "p99": ms(pct(remote, 99) - pct(local, 99))},
        "records": {"responses_ok": len(stored), "lost": len(lost), "without_response": extra},
    }
    print(json.dumps(report, indent=2))
    return 1 if lost or extra or remote_errors else 0


if __name__ == "__main__":
    sys.exit(main())
