"""A worker process: runs a list of auction jobs concurrently against a shared Chroma server.

Usage: python -m tests.workers.auction_worker --url URL --collection C --jobs FILE
       [--concurrency N] [--embedder hash|minilm]

``FILE`` holds ``[{"auction_id": ..., "task": ...}, ...]``. One ``RESULT {json}`` line
per job goes to stdout, so the parent can compare what workers did with what memory holds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from sale_graph import graph
from tests.workers.common import make_context, make_pool


async def run_jobs(args: argparse.Namespace) -> int:
    with open(args.jobs, encoding="utf-8") as fh:
        jobs = json.load(fh)
    context = make_context(make_pool(), args.url, args.collection, args.embedder)
    gate = asyncio.Semaphore(args.concurrency)

    async def one(job: dict[str, str]) -> dict[str, object]:
        async with gate:
            try:
                out = await graph.ainvoke(job, context=context)
            except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails
                return {"auction_id": job["auction_id"], "error": f"{type(exc).__name__}: {exc}"}
        audit = out["auction"]
        return {"auction_id": audit["auction_id"], "winner": out["winner"],
                "write": audit["memory"]["write"], "refined_won": audit["refined_won"],
                "retrieved": audit["memory"]["retrieved_auctions"], "pid": os.getpid()}

    results = await asyncio.gather(*(one(j) for j in jobs))
    for row in results:
        print("RESULT " + json.dumps(row), flush=True)
    return 0 if all("error" not in r for r in results) else 1


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--collection", required=True)
    parser.add_argument("--jobs", required=True)
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--embedder", choices=("hash", "minilm"), default="hash")
    return asyncio.run(run_jobs(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
