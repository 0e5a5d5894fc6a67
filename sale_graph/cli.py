"""The ``sale`` command: run an auction, inspect the auction memory, serve the market.

``sale run "TASK"`` streams progress to stderr while the models work, then prints
the auction table and the answer (or, with ``--json``, the audit record) to stdout.
``sale serve`` puts the auction behind an OpenAI-compatible API (``sale_graph.serve``).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from langgraph.types import StreamMode

from sale_graph.context import Context, default_memory_path
from sale_graph.errors import SaleError
from sale_graph.progress import assessed as _assessed
from sale_graph.progress import describe_update as _progress


def _port(text: str) -> int:
    """A TCP port number, or argparse's usage error (exit 2)."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 1-65535, got {text!r}")
    return port


def _context(args: argparse.Namespace) -> Context:
    """The run's Context, validated before any model is loaded (a bad weights file too)."""
    context = Context(
        pool=args.pool,
        weights=args.weights,
        memory_path=args.memory,
        memory_url=args.memory_url,
        collection=args.collection,
        refine=not args.no_refine,
        remember=not args.no_remember,
        k=args.k,
        jury=args.jury,
        auction=getattr(args, "auction", None),
        reserve=getattr(args, "reserve", None),
    )
    context.check()
    return context


def format_table(audit: dict[str, Any]) -> str:
    """The auction table: one row per bid."""
    if audit.get("mode") == "staged":
        return _staged_table(audit)
    head = ("agent", "round", "$/Mtok", "tokens", "entropy", "jury", "score", "refined", "winner")
    rows = [head]
    for b in audit["bids"]:
        rows.append((
            b["agent"], str(b["round"]), f"{b['price']:.4f}", str(b["tokens"]),
            "-" if b["entropy"] is None else f"{b['entropy']:.3f}",
            "-" if b["jury_mean"] is None else f"{b['jury_mean']:.2f}",
            "-" if b["score"] is None else f"{b['score']:.3f}",
            "yes" if b["refined"] else "",
            "<==" if b["id"] == audit["winning_bid"] else "",
        ))
    return _columns(head, rows)


def _staged_table(audit: dict[str, Any]) -> str:
    """The staged auction, in the order agents were offered the task."""
    head = ("agent", "$/Mtok", "tokens", "entropy", "memory p (n)", "p(pass)", "reserve",
            "decision")
    rows = [head]
    assessed = {a["agent"]: a for a in audit.get("assessments") or []}
    estimates = audit.get("estimates") or {}
    for a in audit.get("assessments") or []:
        if a.get("skipped"):  # ruled out by memory alone: no bid was asked for
            est = estimates.get(a["agent"]) or {}
            rows.append((a["agent"], "-", "-", "-",
                         f"{est.get('p', 0):.2f} ({est.get('n', 0):.1f})",
                         _assessed(a, short=True), f"{a['reserve']:.2f}", "not asked"))
    for b in audit["bids"]:
        a = assessed.get(b["agent"])
        est = estimates.get(b["agent"])
        decision = ("accepted on memory alone, answers directly"
                    if b.get("direct") and a and a.get("without_bid") else
                    "answers directly" if b.get("direct") else
                    "accepted (explored)" if a and a["explored"] else
                    "accepted" if a and a["accepted"] else "declined" if a else "-")
        rows.append((
            b["agent"], f"{b['price']:.4f}", str(b["tokens"]),
            "-" if b["entropy"] is None else f"{b['entropy']:.3f}",
            "-" if not est else f"{est['p']:.2f} ({est['n']:.1f})",
            "-" if not a else _assessed(a, short=True),
            "-" if not a else f"{a['reserve']:.2f}",
            decision + (" <==" if b["id"] == audit["winning_bid"] else ""),
        ))
    return _columns(head, rows)


def _columns(head: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _progress_stream():
    """A private handle on the terminal's stderr.

    Local model loading briefly points file descriptor 2 at /dev/null; progress
    written through a duplicate of the original descriptor is never swallowed.
    """
    try:
        return os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
    except (OSError, ValueError, AttributeError):
        return sys.stderr


EXECUTION_FAILED = 3  # `sale run`: the winner's execution failed (the audit says why)


async def _run(args: argparse.Namespace) -> int:
    from sale_graph.graph import graph

    progress = _progress_stream()

    context = _context(args)
    t0 = time.time()
    final: dict[str, Any] = {}
    modes: list[StreamMode] = ["updates", "values"]
    async for mode, chunk in graph.astream({"task": args.task}, context=context, stream_mode=modes):
        if mode == "updates" and isinstance(chunk, dict):
            line = _progress(chunk, t0) if len(chunk) == 1 else None
            if line and not args.quiet:
                print(line, file=progress, flush=True)
            if "remember" in chunk:
                final = chunk["remember"]
    audit = final["auction"]
    # the auction ran, but the user got no answer: a script must be able to tell
    status = EXECUTION_FAILED if (audit.get("execution") or {}).get("error") else 0
    if args.json:
        print(json.dumps({"winner": final["winner"], "answer": final["answer"],
                          "auction": audit}, indent=2, default=str))
        return status
    totals, phases = audit["totals"], audit["phases"]
    print(format_table(audit))
    print()
    # who actually wrote a refined bid (eligible refiners may have had no memory to learn from)
    refined = [b["agent"] for b in audit["bids"] if b["refined"]]
    if audit.get("mode") == "staged":
        print(f"winner: {audit['winner']} ({audit.get('stop')})")
    else:
        print(f"winner: {audit['winner']} (provisional: {audit['provisional_winner']}; "
              f"refined: {', '.join(refined) or 'nobody'})")
    print("time:   " + ", ".join(f"{p} {phases[p]['seconds']:.1f}s" for p in phases))
    print(f"tokens: auction {totals['auction_tokens']}, execution {totals['execution_tokens']} "
          f"(auction share {totals['overhead_token_share']:.1%}); "
          f"cost ${totals['total_cost_usd']:.8f}")
    for event in audit["events"]:
        who = f"{event['agent']}: " if event.get("agent") else ""
        print(f"note:   {event['kind']}: {who}{event['detail']}".rstrip())
    print()
    print("answer:")
    print(final["answer"] if final["answer"] is not None else "(execution failed)")
    return status


def _memory(args: argparse.Namespace) -> int:
    context = _context(args)
    if args.memory_command == "seed":
        return _seed(args, context)
    if context.memory_url is None and not os.path.isdir(context.memory_path):
        # opening an embedded store creates its directory: a mistyped --memory would
        # leave an empty store behind and blame the collection
        raise SaleError(f"no auction memory at {context.memory_path}: no such directory; "
                        "check --memory")
    memory = context.resolved_memory()
    # reading a collection must not create it: a mistyped --collection is an error
    names = memory.collections()
    if memory.collection_name not in names:
        raise SaleError(f"no collection {memory.collection_name!r} in {memory.location} "
                        f"(it holds {', '.join(map(repr, names)) or 'none'}): no auction "
                        "has been stored there; check --collection")
    memory.ping()
    if args.memory_command == "stats":
        print(json.dumps(memory.stats(), indent=2))
        return 0
    if args.memory_command == "feedback":
        past = memory.record_outcome(args.auction_id, passed=args.passed, detail=args.detail,
                                     source="feedback")
        verdict = "passed" if args.passed else "failed"
        print(f"recorded: auction {past.auction_id} ({past.winner}) {verdict}")
        return 0
    for past in memory.search(args.text, args.k):
        print(f"{past.similarity:.3f}  {past.auction_id}  winner={past.winner}  "
              f"{past.task[:100]!r}")
    return 0


def _seed(args: argparse.Namespace, context: Context) -> int:
    """``sale memory seed``: start a memory from a pool's evaluation (creates the store)."""
    from sale_graph.seeds import load_seeds, preset_seeds, seed_memory

    path = args.file or (preset_seeds(context.pool) if context.weights is None else None)
    if path is None:
        why = ("with --weights, the preset's evaluation may not match those weights"
               if context.weights is not None else f"pool {context.pool!r} ships no seed file")
        raise SaleError(f"{why}: give a seed file (`sale fit --seeds-out` writes one from "
                        "a benchmark run)")
    seeds = load_seeds(path)  # all checked before the store is opened
    memory = context.resolved_memory()
    n = seed_memory(memory, seeds)
    print(f"seeded {memory.location} ({memory.collection_name}) with {n} verified outcomes "
          f"from {path} ({sum(s['passed'] for s in seeds)} passed); it holds "
          f"{memory.count()} auctions")
    return 0


def _add_serve_command(sub: Any) -> None:
    """``sale serve``: flags override the deployer's environment (``deployed_context``)."""
    p = sub.add_parser("serve", help="serve the auction as an OpenAI-compatible model")
    p.add_argument("--pool", default=None,
                   help="'local', 'local-three', 'local-small', 'local-coder' or a pool "
                        "file (default: $SALE_POOL, else local)")
    p.add_argument("--memory", default=None,
                   help="directory of the embedded auction memory (default: $SALE_MEMORY_PATH)")
    p.add_argument("--memory-url", default=None, help="Chroma server URL (http://host:port)")
    p.add_argument("--collection", default=None)
    p.add_argument("--weights", default=None, help="weights JSON file (from `sale fit`)")
    p.add_argument("--context", default=None, metavar="JSON",
                   help="the deployment's defaults and limits as a JSON object, e.g. "
                        "'{\"max_answer_tokens\": 2048}' (default: $SALE_CONTEXT)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    p.add_argument("--port", type=_port, default=8000, help="1-65535 (default: 8000)")
    p.add_argument("--api-key", default=None,
                   help="bearer token every request must send (default: $SALE_API_KEY); "
                        "required to bind a non-loopback address")
    p.add_argument("--timeout", type=float, default=900.0,
                   help="seconds a request may take, auction and answer (default: 900)")
    p.add_argument("--max-inflight", type=int, default=64,
                   help="auctions running at once; more get 429 (default: 64)")
    p.add_argument("--drain", type=float, default=30.0,
                   help="seconds a stopping server (SIGTERM, Ctrl-C) lets running requests "
                        "finish before it cancels their auctions (default: 30)")
    p.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    import dataclasses

    from sale_graph.context import deployed_context
    from sale_graph.errors import ContextError
    from sale_graph.serve import create_app, is_loopback, model_names

    if not (math.isfinite(args.drain) and args.drain >= 0):
        raise ContextError(f"--drain must be a number of seconds >= 0, got {args.drain}")
    api_key = args.api_key or os.environ.get("SALE_API_KEY") or None
    if api_key is None and not is_loopback(args.host):
        raise ContextError(
            f"refusing to bind {args.host} without an API key: anyone who reaches it could "
            "spend the pool; set --api-key or SALE_API_KEY, or bind 127.0.0.1"
        )
    flags = {"pool": args.pool, "weights": args.weights, "memory_path": args.memory,
             "memory_url": args.memory_url, "collection": args.collection}
    context = dataclasses.replace(
        deployed_context(args.context), **{k: v for k, v in flags.items() if v is not None}
    )
    try:
        import uvicorn
    except ImportError as exc:
        raise ContextError('sale serve needs uvicorn: pip install "sale-graph[serve]"') from exc
    listening = _listen(args.host, args.port)  # before any model is loaded
    app = create_app(context, api_key=api_key, timeout=args.timeout,
                     max_inflight=args.max_inflight)
    print(f"sale serve: http://{args.host}:{args.port}/v1, models {', '.join(model_names())} "
          f"(pool {context.pool if context.agents is None else 'custom'}; "
          f"{'bearer token required' if api_key else 'no API key: loopback only'})",
          file=sys.stderr, flush=True)
    # without a bound, a stopping server waited for every open request (up to --timeout)
    config = uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=math.ceil(args.drain))
    uvicorn.Server(config).run(sockets=[listening])
    return 0


def _listen(host: str, port: int) -> Any:
    """The server's socket, bound here so that a taken port is one clear error.

    Left to uvicorn, a busy port printed its own error after the banner and ended the
    process with status 3, which ``sale`` uses for a failed execution.
    """
    import socket

    from sale_graph.errors import ContextError

    # as uvicorn binds: IPv6 only for an IPv6 literal, so "localhost" stays 127.0.0.1
    # and "" is every interface
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = "the port is in use" if exc.errno == errno.EADDRINUSE else str(exc)
        raise ContextError(f"cannot listen on {host}:{port}: {reason}") from exc
    return sock


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pool", default="local",
                   help="'local', 'local-three', 'local-small', 'local-coder' or a "
                        "JSON/TOML pool file (default: local)")
    p.add_argument("--memory", default=default_memory_path(),
                   help="directory of the embedded auction memory")
    p.add_argument("--memory-url", default=os.environ.get("SALE_MEMORY_URL") or None,
                   help="Chroma server URL (http://host:port; default: $SALE_MEMORY_URL)")
    p.add_argument("--collection", default="sale_auctions")
    p.add_argument("--weights", default=None, help="weights JSON file (from `sale fit`)")
    p.add_argument("-k", type=int, default=8,
                   help="past auctions retrieved per refinement (staged: per agent's evidence)")
    p.add_argument("--jury", default="all", choices=["all", "self", "peers", "none"],
                   help="who votes in a full auction (default: all)")
    p.add_argument("--no-refine", action="store_true",
                   help="skip memory refinement (a full auction's step)")
    p.add_argument("--no-remember", action="store_true", help="do not store this auction")
    p.add_argument("--auction", default=None, choices=["full", "staged"],
                   help="full: the paper's auction; staged: cheapest first (default: what "
                        "the pool's weights name, else full)")
    p.add_argument("--reserve", type=float, default=None,
                   help="staged: assessed pass chance a bid needs (0..1; higher = dearer)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="sale", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one strategy auction and execute the winner")
    run.add_argument("task")
    run.add_argument("--json", action="store_true", help="print the audit record as JSON")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    _common(run)
    mem = sub.add_parser("memory", help="inspect the auction memory")
    msub = mem.add_subparsers(dest="memory_command", required=True)
    stats = msub.add_parser("stats", help="auctions stored, wins per agent")
    _common(stats)
    search = msub.add_parser("search", help="past auctions most similar to TEXT")
    search.add_argument("text")
    _common(search)
    feedback = msub.add_parser(
        "feedback", help="record whether an auction's answer passed (a verified outcome)")
    feedback.add_argument("auction_id")
    verdict = feedback.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--passed", dest="passed", action="store_true")
    verdict.add_argument("--failed", dest="passed", action="store_false")
    feedback.add_argument("--detail", default=None, help="why (kept, capped at 500 chars)")
    _common(feedback)
    seed = msub.add_parser(
        "seed", help="add a pool's evaluation (verified outcomes per agent) to the memory")
    seed.add_argument("file", nargs="?", default=None,
                      help="a seed file (`sale fit --seeds-out`; default: the preset's own)")
    _common(seed)
    _add_serve_command(sub)
    try:
        from sale_graph.bench.cli import add_bench_commands
    except ImportError:
        pass
    else:
        add_bench_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sale`` console script.

    Every failure ends in one ``sale: error: ...`` line, never a traceback: 2 for
    what the user can fix (arguments, configuration, task), 1 for anything else.
    A closed stdout (``sale run ... | head``) ends the command quietly.
    """
    args = build_parser().parse_args(argv)  # usage errors: argparse's own line, exit 2
    try:
        if args.command == "run":
            return asyncio.run(_run(args))
        if args.command == "memory":
            return _memory(args)
        return int(args.handler(args) or 0)
    except SaleError as exc:
        _error(str(exc))
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _discard_stdout()
        return 1
    except Exception as exc:  # noqa: BLE001 - a command line shows one line, not a traceback
        _error(f"{type(exc).__name__}: {exc}")
        return 1


def _error(message: str) -> None:
    text = message.encode("utf-8", "backslashreplace").decode("utf-8")
    try:
        print(f"sale: error: {text}", file=sys.stderr)
    except (OSError, ValueError):
        pass


def _discard_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's exit flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())
