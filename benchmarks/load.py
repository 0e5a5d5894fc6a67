"""Load benchmark: worker processes sharing one Chroma server, instant scripted models.

    python benchmarks/load.py --workers 3 --auctions 300 --sizes 10000,100000

Phase 1 runs ``--auctions`` auctions (plus a few delivered twice, as a job queue
may) in ``--workers`` processes against one ``chroma run`` server on loopback, with
models that answer instantly, and prints throughput, the orchestration overhead per
auction (graph wall time minus the time some model call of that auction was in
flight) and the count of lost and duplicated memory records. Phase 2 fills a second
collection to each of ``--sizes`` stored auctions and prints the latency of
``AuctionMemory.similar`` (query embedding included). The whole run stops by itself
at ``--time-limit`` seconds, reporting what it measured so far.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import math
import os
import queue
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("LANGSMITH_TRACING", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# ----------------------------------------------------------------------------- the market

# The same scripted market the orchestration tests use, so the figures printed here
# and the behaviour asserted there are about one and the same auction.
from tests.scripted import prompt_kind  # noqa: E402
from tests.workers.common import PLANS, PRICES, REFINED, VOTES, WEIGHTS  # noqa: E402

# Model-call intervals of the auction running in the current task (and its children:
# LangGraph runs nodes in tasks that inherit this context).
_CALLS: contextvars.ContextVar[list[tuple[float, float]] | None] = contextvars.ContextVar(
    "calls", default=None
)


def instant_model(agent: str, latency: float) -> Any:
    """A chat model that answers from the script at once and clocks its own calls."""
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, ChatResult

    class InstantModel(BaseChatModel):
        name_: str
        latency: float = 0.0

        @property
        def _llm_type(self) -> str:
            return "instant-scripted"

        def _answer(self, messages: list[Any]) -> ChatResult:
            text = "\n".join(str(m.content) for m in messages)
            kind = prompt_kind(messages)
            if kind == "vote":
                plan = text.split("<plan>", 1)[-1]
                reply = next((v for tag, v in VOTES.items() if tag in plan), "3")
            elif kind == "refine":
                reply = REFINED
            elif kind == "execute":
                reply = f"answer from {self.name_}"
            else:
                reply = PLANS[self.name_]
            n_in, n_out = len(text.split()), len(reply.split())
            message = AIMessage(
                content=reply,
                usage_metadata={"input_tokens": n_in, "output_tokens": n_out,
                                "total_tokens": n_in + n_out},
                response_metadata={"mean_token_entropy": 1.0, "entropy_method": "scripted"},
            )
            return ChatResult(generations=[ChatGeneration(message=message)])

        def _generate(self, messages, stop=None, run_manager=None, **kwargs):
            return self._answer(messages)

        async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs):
            started = time.perf_counter()
            if self.latency:
                await asyncio.sleep(self.latency)
            result = self._answer(messages)
            calls = _CALLS.get()
            if calls is not None:
                calls.append((started, time.perf_counter()))
            return result

    return InstantModel(name_=agent, latency=latency)


def union_seconds(spans: list[tuple[float, float]]) -> float:
    """Wall time covered by possibly overlapping intervals (parallel calls count once)."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(spans):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


# ----------------------------------------------------------------------------- worker side

async def _work(spec: dict[str, Any]) -> None:
    from sale_graph import Agent, Context, graph

    pool = [Agent(name=n, model=instant_model(n, spec["model_latency"]), price=p,
                  max_concurrency=spec["concurrency"]) for n, p in PRICES.items()]
    context = Context(agents=pool, memory_url=spec["url"], collection=spec["collection"],
                      weights=WEIGHTS)
    memory = context.resolved_memory()
    memory.ping()
    memory.embedder.embed(["warm-up"])  # load MiniLM before the clock starts
    set_torch_threads(spec["embed_threads"])
    print("READY", flush=True)
    sys.stdin.readline()  # the parent's GO: every worker starts at once
    gate = asyncio.Semaphore(spec["concurrency"])
    deadline = spec["deadline"]

    async def one(job: dict[str, str]) -> None:
        async with gate:
            if time.time() > deadline:
                row: dict[str, Any] = {"auction_id": job["auction_id"], "skipped": True}
            else:
                spans: list[tuple[float, float]] = []
                _CALLS.set(spans)
                wall0, t0 = time.time(), time.perf_counter()
                try:
                    out = await graph.ainvoke(job, context=context)
                    error = None
                except Exception as exc:  # noqa: BLE001 - counted by the parent
                    out, error = None, f"{type(exc).__name__}: {exc}"
                wall = time.perf_counter() - t0
                row = {"auction_id": job["auction_id"], "start": wall0, "end": time.time(),
                       "wall": wall, "model": union_seconds(spans), "calls": len(spans),
                       "error": error}
                if out is not None:
                    audit = out["auction"]
                    got = audit.get("memory", {})
                    row.update(write=got.get("write"), write_s=got.get("write_seconds"),
                               retrieved=got.get("retrieved_auctions"),
                               refined_won=audit.get("refined_won"))
        print("RESULT " + json.dumps(row), flush=True)

    await asyncio.gather(*(one(j) for j in spec["jobs"]))


def set_torch_threads(n: int) -> None:
    """Pin torch's intra-op threads: on a busy machine a 2-thread encode of one short
    text waits for a descheduled thread (p50 ~12 ms, worst case ~500 ms here), where one
    thread stays at ~15 ms; several workers per host should each use one."""
    if n > 0:
        import torch

        torch.set_num_threads(n)


def worker_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    asyncio.run(_work(spec))
    return 0


# ----------------------------------------------------------------------------- server

def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(url: str, path: str = "/api/v2/heartbeat") -> bool:
    """Whether a loopback server answers ``path`` with 200 (no proxy, 1 s)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url}{path}", timeout=1.0) as reply:
            return reply.status == 200
    except OSError:
        return False


class Server:
    """A ``chroma run`` process on loopback in a throwaway directory."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sale-load-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        chroma = Path(sys.executable).parent / "chroma"
        cmd = [str(chroma)] if chroma.exists() else [shutil.which("chroma") or "chroma"]
        with open(self.dir / "chroma.log", "wb") as log:
            self.proc = subprocess.Popen(
                [*cmd, "run", "--path", str(self.dir / "data"), "--host", "127.0.0.1",
                 "--port", str(self.port)], stdout=log, stderr=subprocess.STDOUT,
                env=dict(os.environ, ANONYMIZED_TELEMETRY="False"))
        deadline = time.monotonic() + 60
        while not answers(self.url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("chroma run did not start")
            time.sleep(0.2)

    def disk_mb(self) -> float:
        return sum(f.stat().st_size for f in (self.dir / "data").rglob("*") if f.is_file()) / 1e6

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        shutil.rmtree(self.dir, ignore_errors=True)


# ----------------------------------------------------------------------------- phase 1

def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def ms(x: float) -> str:
    return f"{x * 1000:.1f} ms"


def run_auctions(args: argparse.Namespace, url: str, deadline: float) -> None:
    collection = f"load-auctions-{uuid.uuid4().hex[:8]}"
    jobs = [{"auction_id": f"load-{i:05d}",
             "task": f"Task {i}: add the numbers {i} and {3 * i + 1}, then check the sum."}
            for i in range(args.auctions)]
    shards: list[list[dict[str, str]]] = [[] for _ in range(args.workers)]
    for i, job in enumerate(jobs):
        shards[i % args.workers].append(job)
    rng = random.Random(7)
    twice = rng.sample(jobs, max(1, round(args.redeliver * len(jobs)))) if args.workers > 1 else []
    for job in twice:  # a job queue delivering a job again, to another worker
        home = int(job["auction_id"].split("-")[1]) % args.workers
        other = (home + 1 + rng.randrange(args.workers - 1)) % args.workers
        shards[other].insert(rng.randrange(len(shards[other]) + 1), job)

    tmp = Path(tempfile.mkdtemp(prefix="sale-load-jobs-"))
    lines: queue.Queue[tuple[int, str]] = queue.Queue()
    procs = []
    for w, shard in enumerate(shards):
        spec = {"url": url, "collection": collection, "jobs": shard,
                "concurrency": args.concurrency, "model_latency": args.model_latency,
                "embed_threads": args.embed_threads,
                "deadline": time.time() + (deadline - time.monotonic()) - 15}
        path = tmp / f"worker-{w}.json"
        path.write_text(json.dumps(spec))
        with open(tmp / f"worker-{w}.err", "wb") as err:
            proc = subprocess.Popen([sys.executable, __file__, "--worker", str(path)],
                                    cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=err, text=True)
        procs.append(proc)

        def pump(index: int = w, stream: Any = proc.stdout) -> None:
            for line in stream:
                lines.put((index, line.rstrip("\n")))
            lines.put((index, "EOF"))

        threading.Thread(target=pump, daemon=True).start()

    rows: list[dict[str, Any]] = []
    ready, done = set(), set()
    go_sent = False
    t_ready = time.monotonic()
    try:
        while len(done) < len(procs):
            if time.monotonic() > deadline:
                print("time limit reached during the auction phase; stopping workers")
                break
            try:
                index, line = lines.get(timeout=1.0)
            except queue.Empty:
                continue
            if line == "READY":
                ready.add(index)
                if len(ready) == len(procs) and not go_sent:
                    print(f"workers ready in {time.monotonic() - t_ready:.1f} s "
                          "(imports, MiniLM load); clock starts now")
                    for proc in procs:
                        proc.stdin.write("GO\n")
                        proc.stdin.flush()
                    go_sent = True
            elif line.startswith("RESULT "):
                rows.append(json.loads(line[7:]))
            elif line == "EOF":
                done.add(index)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=15)
    for w, proc in enumerate(procs):
        if proc.returncode not in (0, None) and w not in ready:
            print(f"worker {w} failed:\n" + (tmp / f"worker-{w}.err").read_text()[-2000:])
    shutil.rmtree(tmp, ignore_errors=True)

    ran = [r for r in rows if not r.get("skipped")]
    ok = [r for r in ran if not r.get("error") and r.get("write") == "ok"]
    failed = [r for r in ran if r not in ok]
    plural = "es" if args.workers != 1 else ""
    print(f"\n== phase 1: auctions ({args.workers} worker process{plural} x concurrency "
          f"{args.concurrency}, one chroma server, instant models) ==")
    print(f"deliveries: {sum(len(s) for s in shards)} ({len(jobs)} distinct auctions, "
          f"{len(twice)} delivered twice); ran {len(ran)}, skipped at the time limit "
          f"{len(rows) - len(ran)}, failed {len(failed)}")
    for r in failed[:5]:
        print("  failure:", r.get("error") or r.get("write"))
    if not ran:
        return
    span = max(r["end"] for r in ran) - min(r["start"] for r in ran)
    overhead = [r["wall"] - r["model"] for r in ran]
    print(f"throughput: {len(ran) / span:.1f} auctions/s ({len(ran)} auctions in {span:.1f} s)")
    print(f"model calls per auction: {statistics.mean(r['calls'] for r in ran):.1f} "
          f"(3 bids + 9 votes, + 1 refined bid and 3 votes when refined, + 1 execution)")
    print(f"graph wall time per auction: p50 {ms(pct([r['wall'] for r in ran], 50))}, "
          f"p99 {ms(pct([r['wall'] for r in ran], 99))}")
    print(f"model time per auction (union of call intervals): "
          f"p50 {ms(pct([r['model'] for r in ran], 50))}")
    print(f"orchestration overhead (wall - model): p50 {ms(pct(overhead, 50))}, "
          f"p99 {ms(pct(overhead, 99))}")
    writes = [r["write_s"] for r in ok if r.get("write_s") is not None]
    print(f"  of which the memory write (embed + upsert): p50 {ms(pct(writes, 50))}, "
          f"p99 {ms(pct(writes, 99))}")
    refined = sum(1 for r in ok if r.get("refined_won"))
    print(f"auctions that retrieved past auctions: "
          f"{sum(1 for r in ok if r.get('retrieved'))}; won by a refined bid: {refined}")

    from sale_graph.memory import AuctionMemory

    memory = AuctionMemory.from_url(url, collection=collection)
    stored = memory.count()
    should_exist = {r["auction_id"] for r in ok}
    tasks = {j["auction_id"]: j["task"] for j in jobs}
    lost, malformed, mismatched = [], [], []
    for aid in sorted(should_exist):
        past = memory.get(aid)
        if past is None:
            lost.append(aid)
            continue
        if sum(b["label"] == "win" for b in past.bids) != 1:
            malformed.append(aid)
        if past.task != tasks[aid]:
            mismatched.append(aid)
    duplicated = stored - (len(should_exist) - len(lost))
    print(f"memory: {stored} records for {len(should_exist)} distinct auctions completed")
    print(f"lost records: {len(lost)}; duplicated records: {duplicated}; records without "
          f"exactly one winning bid: {len(malformed)}; with the wrong task: {len(mismatched)}")


# ----------------------------------------------------------------------------- phase 2

WORDS = {
    "verb": ["Write", "Implement", "Explain", "Compute", "Find", "Sort", "Parse", "Summarise",
             "Validate", "Optimise", "Debug", "Compare"],
    "thing": ["a linked list", "a binary tree", "a CSV file", "the census table", "a JSON log",
              "an SQL query", "a matrix", "a date range", "a graph of cities", "a word list",
              "a recursive function", "an HTTP response", "a priority queue", "a sparse vector"],
    "how": ["in Python", "without extra memory", "in linear time", "with unit tests",
            "for a beginner", "step by step", "using only the standard library",
            "and report the edge cases", "in under ten lines", "with a worked example"],
}


def task_texts(n: int, seed: int) -> list[str]:
    """Distinct, varied task texts (template x number), deterministic per seed."""
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < n:
        out.add(f"{rng.choice(WORDS['verb'])} {rng.choice(WORDS['thing'])} "
                f"{rng.choice(WORDS['how'])} (case {rng.randrange(100_000)}).")
    return sorted(out)


class Lookup:
    """An embedder that returns vectors computed beforehand (no model call)."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table

    def embed(self, texts: list[str]) -> list[list[float]]:
        return [self.table[t] for t in texts]


def measure_retrieval(memory: Any, embedder: Any, col: Any, queries: list[str]) -> dict:
    for q in queries[:5]:  # warm caches and the connection
        memory.similar(q, k=8)
    total, embed, chroma, count, sizes = [], [], [], [], []
    for q in queries:
        t0 = time.perf_counter()
        found = memory.similar(q, k=8)
        total.append(time.perf_counter() - t0)
        sizes.append(len(found))
        t0 = time.perf_counter()
        vec = embedder.embed([q])
        embed.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        col.query(query_embeddings=vec, n_results=8,
                  include=["documents", "metadatas", "distances"])
        chroma.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        col.count()  # similar() asks for the count before every query
        count.append(time.perf_counter() - t0)
    return {"total": total, "embed": embed, "chroma": chroma, "count": count, "sizes": sizes}


def run_retrieval(args: argparse.Namespace, url: str, server: Server | None,
                  deadline: float) -> None:
    import chromadb
    import numpy as np

    from sale_graph.embeddings import get_embedder
    from sale_graph.memory import AuctionMemory

    sizes = sorted(int(s) for s in args.sizes.split(",") if s.strip())
    if not sizes:
        return
    print(f"\n== phase 2: retrieval latency (AuctionMemory.similar, k=8, {args.queries} "
          "queries, MiniLM query embedding included) ==")
    embedder = get_embedder()
    set_torch_threads(args.embed_threads)
    n_texts = min(args.distinct_texts, sizes[-1])
    texts = task_texts(n_texts, seed=1)
    t0 = time.perf_counter()
    base = np.asarray(embedder.embed(texts), dtype=np.float32)
    took = time.perf_counter() - t0
    print(f"embedded {n_texts} distinct task texts in {took:.1f} s ({took / n_texts * 1000:.1f} "
          f"ms/text; {sizes[-1]} texts would take {took / n_texts * sizes[-1] / 60:.1f} min), so "
          f"record i reuses text i mod {n_texts} with its vector perturbed by Gaussian noise "
          f"(norm ~{args.noise}) and renormalised")

    collection = f"load-retrieval-{uuid.uuid4().hex[:8]}"
    host, port = url.removeprefix("http://").split(":")
    client = chromadb.HttpClient(host=host, port=int(port))
    # Three records written through AuctionMemory.write, one per winner: their stored
    # metadata is copied onto the bulk records, so every record is what write() stores.
    templates = {}
    seeder = AuctionMemory.from_url(url, collection=collection,
                                    embedder=Lookup(dict(zip(texts[:3], base[:3].tolist(),
                                                             strict=True))))
    for k, winner in enumerate(PRICES):
        bids = [{"agent": a, "round": 0, "strategy": PLANS[a], "score": -1.0 if a == winner
                 else 1.0, "label": "win" if a == winner else "lose", "price": p}
                for a, p in PRICES.items()]
        seeder.write(f"bulk-{k:07d}", texts[k], bids, winner)
        templates[k] = f"bulk-{k:07d}"
    col = client.get_collection(collection)
    metas = col.get(ids=list(templates.values()), include=["metadatas"])
    meta_of = dict(zip(metas["ids"], metas["metadatas"], strict=True))
    template_meta = [meta_of[templates[k]] for k in range(3)]

    memory = AuctionMemory.from_url(url, collection=collection)  # the product path
    known = set(texts)
    queries = [q for q in task_texts(args.queries + n_texts, seed=2) if q not in known]
    queries = queries[:args.queries]
    rng = np.random.default_rng(3)
    stored = 3
    batch = 2000
    for size in sizes:
        t0 = time.perf_counter()
        while stored < size:
            if time.monotonic() > deadline - 60:
                print(f"time limit: stopping the load at {stored} records; size {size} skipped")
                return
            n = min(batch, size - stored)
            idx = np.arange(stored, stored + n)
            noise = rng.standard_normal((n, base.shape[1])).astype(np.float32)
            noise *= args.noise / np.sqrt(base.shape[1])
            vecs = base[idx % n_texts] + noise
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            now = time.time()
            col.upsert(
                ids=[f"bulk-{i:07d}" for i in idx],
                documents=[f"{texts[i % n_texts]} [#{i}]" for i in idx],
                embeddings=vecs,
                metadatas=[{**template_meta[i % 3], "created_at": now} for i in idx],
            )
            stored += n
        load_s = time.perf_counter() - t0
        count = memory.count()
        sample = [memory.get(f"bulk-{i:07d}") for i in random.Random(size).sample(
            range(count), 20)]
        valid = sum(1 for p in sample
                    if p is not None and sum(b["label"] == "win" for b in p.bids) == 1)
        r = measure_retrieval(memory, embedder, col, queries)
        disk = f", {server.disk_mb():.0f} MB on disk" if server else ""
        print(f"{count} stored (loaded in {load_s:.1f} s{disk}; {valid}/20 sampled records "
              f"read back whole; every query returned {min(r['sizes'])}-{max(r['sizes'])} "
              f"auctions)")
        print(f"  similar(): p50 {ms(pct(r['total'], 50))}, p99 {ms(pct(r['total'], 99))}")
        for label, key in (("query embedding (MiniLM)", "embed"),
                           ("Chroma query, k=8 with documents and metadata", "chroma"),
                           ("Chroma count()", "count")):
            print(f"    {label} alone: p50 {ms(pct(r[key], 50))}, p99 {ms(pct(r[key], 99))}")


# ----------------------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--auctions", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=4,
                        help="auctions in flight per worker process")
    parser.add_argument("--redeliver", type=float, default=0.05,
                        help="share of jobs delivered a second time, to another worker")
    parser.add_argument("--model-latency", type=float, default=0.0,
                        help="seconds each scripted model call sleeps (0: instant)")
    parser.add_argument("--sizes", default="10000,100000",
                        help="stored auctions at which to measure retrieval ('' to skip)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--distinct-texts", type=int, default=2000)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--embed-threads", type=int, default=1,
                        help="torch threads per process for MiniLM (0: torch's default)")
    parser.add_argument("--memory-url", help="an existing Chroma server (else one is started)")
    parser.add_argument("--time-limit", type=float, default=900.0, help="seconds, in total")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker_main(args.worker)

    deadline = time.monotonic() + args.time_limit
    started = time.monotonic()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"SALE load benchmark: {os.cpu_count()} CPUs, load average {load} (other jobs "
          f"share the machine), python {sys.version.split()[0]}, torch threads per process "
          f"{args.embed_threads or 'default'}")
    server = None if args.memory_url else Server()
    url = args.memory_url or server.url
    print(f"chroma server: {url}" + ("" if args.memory_url else " (started here, on loopback)"))
    try:
        if args.auctions > 0:
            run_auctions(args, url, deadline)
        run_retrieval(args, url, server, deadline)
    finally:
        if server is not None:
            server.stop()
    print(f"\ntotal run time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
