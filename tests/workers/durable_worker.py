"""A worker process that runs one auction on a SQLite checkpointer, or resumes it.

Usage: python -m tests.workers.durable_worker --db FILE --thread ID --log FILE
       --url URL --collection C (--start TASK --auction-id ID | --resume)
       [--slow-votes AGENT=SECONDS ...] [--embedder hash|minilm]

``--start`` begins the auction under ``thread_id``; the parent may SIGKILL it at
any point. ``--resume`` invokes the same thread with ``None`` input, which makes
LangGraph continue from the last checkpoint and its saved pending writes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from sale_graph import build_graph
from tests.workers.common import make_context, make_pool


async def run(args: argparse.Namespace) -> int:
    slow = {}
    for item in args.slow_votes:
        agent, seconds = item.split("=", 1)
        slow[agent] = {"vote": float(seconds)}
    context = make_context(make_pool(args.log, slow), args.url, args.collection, args.embedder)
    config = {"configurable": {"thread_id": args.thread}}
    async with AsyncSqliteSaver.from_conn_string(args.db) as saver:
        app = build_graph().compile(checkpointer=saver)
        if args.resume:
            before = await app.aget_state(config)
            print("PENDING " + json.dumps(list(before.next)), flush=True)
            out = await app.ainvoke(None, config, context=context)
        else:
            job = {"task": args.start, "auction_id": args.auction_id}
            out = await app.ainvoke(job, config, context=context)
        after = await app.aget_state(config)
    audit = out["auction"]
    print("RESULT " + json.dumps({
        "winner": out["winner"], "answer": out["answer"], "auction_id": audit["auction_id"],
        "write": audit["memory"]["write"], "next": list(after.next),
        "votes": [[j, row["agent"], v] for row in audit["bids"]
                  for j, v in row["votes"].items()],
        "bids": [row["id"] for row in audit["bids"]],
    }), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--thread", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--collection", required=True)
    parser.add_argument("--start")
    parser.add_argument("--auction-id")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--slow-votes", nargs="*", default=[])
    parser.add_argument("--embedder", choices=("hash", "minilm"), default="minilm")
    args = parser.parse_args()
    if bool(args.start) == args.resume:
        parser.error("give exactly one of --start TASK or --resume")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
