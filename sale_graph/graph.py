"""The SALE auction as a LangGraph state graph (SALE.md, steps 1-7).

    open_auction ─Send per agent─▶ bid ─▶ jury ─Send per (juror, bid)─▶ vote ─▶ score
    score ─(cheaper agents may refine)─▶ memory_retrieve ─Send per refiner─▶ refine ─▶ jury
    score ─(final)─▶ approve ─▶ execute ─▶ remember ─▶ END

``approve`` passes straight through unless ``Context.approval`` is set; then it
interrupts the run so a person can approve the winner, override it or reject.

``jury`` and ``score`` serve both rounds: original bids (round 0) and refined
bids (round 1) are voted on and scored the same way. ``build_graph()`` returns the
uncompiled graph for embedding (the parent compiles it with its own checkpointer
and store); ``graph`` is compiled without either, for ``langgraph dev``/Studio.
Nodes are async; use ``ainvoke``/``astream`` (or :func:`run_auction` from sync code).
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, cast, get_args, get_origin, get_type_hints

from langchain_core.runnables import RunnableLambda
from langgraph.config import get_config
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime, get_runtime
from langgraph.types import Command, Send

from sale_graph.approval import (
    approval_request,
    ask,
    audit_record,
    claim_decision,
    require_checkpointer,
)
from sale_graph.audit import build_audit, memory_bids
from sale_graph.bidding import bid_id, write_bid
from sale_graph.calls import describe_error
from sale_graph.context import Context
from sale_graph.errors import InvalidTaskError, MemoryUnavailableError, NoBidsError
from sale_graph.execution import execute as run_executor
from sale_graph.jury import cast_vote, jurors_for, vote_value
from sale_graph.prompts import bid_messages, refine_messages
from sale_graph.refinement import contrastive_pairs, eligible_refiners
from sale_graph.scoring import Weights, best, score_bid
from sale_graph.state import (
    AuctionInput,
    AuctionOutput,
    AuctionState,
    BidRequest,
    Event,
    VoteRequest,
)


def _context(runtime: Runtime[Context] | None, default: Context | None) -> Context:
    """The run's Context: given at invoke time, else the one bound at build time."""
    ctx = getattr(runtime, "context", None)
    if isinstance(ctx, Context):
        return ctx
    if isinstance(ctx, Mapping):  # a parent graph's dict: its fields of ours are untrusted
        known = {k: v for k, v in ctx.items() if k in Context.__dataclass_fields__}
        return Context.from_untrusted(known, default or Context())
    return default or Context()


async def _auction_weights(state: Mapping[str, Any], ctx: Context) -> Weights:
    """The weights this auction opened with.

    ``open_auction`` snapshots them into the state, so the jury, the score and the
    audit agree even if a weights file is rewritten mid-auction (``sale fit``), and
    a run resumed from a checkpoint keeps the weights it started with. State from
    before the snapshot existed falls back to the context.
    """
    snapshot = state.get("weights")
    if snapshot is None:
        return await asyncio.to_thread(ctx.resolved_weights)  # may read a file
    return Weights.coerce(snapshot)


def validate_task(task: Any, max_chars: int) -> str:
    """Reject empty, whitespace-only, non-string and oversized tasks before any model runs."""
    if not isinstance(task, str):
        raise InvalidTaskError(f"task must be a string, got {type(task).__name__}")
    try:
        task.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate would fail only at the memory write
        raise InvalidTaskError(
            f"task is not valid Unicode text (character {exc.start}: {task[exc.start]!r})"
        ) from exc
    text = task.strip()
    if not text:
        raise InvalidTaskError("task is empty: give the auction something to do")
    if len(text) > max_chars:
        raise InvalidTaskError(
            f"task is {len(text)} characters long; the limit is {max_chars} "
            "(Context.max_task_chars)"
        )
    return text


_AUCTION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def auction_id_for(state: Mapping[str, Any]) -> str:
    """The caller's idempotency key if it gave one (validated), else a fresh id."""
    given = state.get("auction_id")
    if given is None:
        return uuid.uuid4().hex
    if not isinstance(given, str) or not _AUCTION_ID.fullmatch(given):
        raise InvalidTaskError(
            f"auction_id {given!r} is invalid: 1-128 characters of letters, digits, "
            "'.', '_', ':' or '-'"
        )
    return given


def build_graph(
    context: Context | None = None,
) -> StateGraph[AuctionState, Context, AuctionInput, AuctionOutput]:
    """Return the uncompiled auction graph.

    Args:
        context: defaults for runs that pass no ``Context`` of their own (useful
            when the graph is a subgraph of an app with a different context schema).
            Its pool and weights are validated here, so a bad configuration fails
            when the app is built, not on its first request.

    """
    bound = context
    if bound is not None:
        bound.resolved_agents()
        bound.resolved_weights()

    async def open_auction(
        state: AuctionInput, runtime: Runtime[Context]
    ) -> Command[Literal["bid"]]:
        """Validate everything that can be validated before paying for a model call."""
        ctx = _context(runtime, bound)
        if ctx.approval:
            require_checkpointer(get_config())
        task = validate_task(state.get("task"), ctx.max_task_chars)
        agents = await asyncio.to_thread(ctx.resolved_agents)
        weights = await asyncio.to_thread(ctx.resolved_weights)
        if ctx.refine or ctx.remember:
            memory = await asyncio.to_thread(ctx.resolved_memory)
            await asyncio.to_thread(memory.ping)
        update = {
            "task": task,
            "auction_id": auction_id_for(state),
            "started": time.time(),
            "round": 0,
            "weights": weights.to_dict(),
        }
        sends = [Send("bid", BidRequest(task=task, agent=a.name, round=0)) for a in agents]
        return Command(update=update, goto=sends)

    async def bid(request: BidRequest, runtime: Runtime[Context]) -> dict[str, Any]:
        """Step 1: one agent writes its plan; failure drops it from the auction."""
        ctx = _context(runtime, bound)
        agent = (await _pool(ctx))[request["agent"]]
        try:
            new = await write_bid(
                agent, bid_messages(agent.name, request["task"]), round_=0,
                max_tokens=ctx.max_bid_tokens, timeout=ctx.call_timeout,
            )
        except Exception as exc:  # noqa: BLE001 - a failing agent drops out, the auction goes on
            return {"events": [Event(kind="bid_failed", agent=agent.name,
                                     detail=describe_error(exc))]}
        return {"bids": [new]}

    async def jury(
        state: AuctionState, runtime: Runtime[Context]
    ) -> Command[Literal["vote", "score"]]:
        """Step 2a: send every new bid to every juror (all agents still in the auction).

        Jurors whose weight is zero (``sale fit`` zeroes those not worth their price)
        are not asked: their votes could not change any score.
        """
        ctx = _context(runtime, bound)
        round_ = state.get("round", 0)
        bids = [b for b in state.get("bids", []) if b["round"] == round_]
        if round_ == 0 and not bids:
            failures = "; ".join(
                f"{e.get('agent')}: {e.get('detail')}"
                for e in state.get("events", []) if e.get("kind") == "bid_failed"
            )
            raise NoBidsError(f"every agent failed to bid ({failures})")
        bidders = [b["agent"] for b in state.get("bids", []) if b["round"] == 0]
        weights = await _auction_weights(state, ctx)
        sends = [
            Send("vote", VoteRequest(task=state["task"], juror=juror, bid=b))
            for b in bids
            for juror in jurors_for(b["agent"], bidders, ctx.jury)
            if weights.heeds(juror)  # a zero-weight vote would be paid for and ignored
        ]
        return Command(goto=sends or "score")

    async def vote(request: VoteRequest, runtime: Runtime[Context]) -> dict[str, Any]:
        """Step 2b: one juror's 0-5 vote on one bid (dropped votes are recorded)."""
        ctx = _context(runtime, bound)
        juror = (await _pool(ctx))[request["juror"]]
        cast = await cast_vote(juror, request["task"], request["bid"], timeout=ctx.call_timeout)
        update: dict[str, Any] = {"votes": [cast]}
        if cast["score"] is None:
            update["events"] = [Event(kind="vote_dropped", agent=juror.name,
                                      detail=f"on {request['bid']['id']}: {cast['error']}")]
        return update

    async def score(
        state: AuctionState, runtime: Runtime[Context]
    ) -> Command[Literal["memory_retrieve", "approve"]]:
        """Steps 2c/3/5: S = C - V for the round's bids; pick the (provisional) winner."""
        ctx = _context(runtime, bound)
        weights = await _auction_weights(state, ctx)
        round_ = state.get("round", 0)
        votes: dict[str, dict[str, float | None]] = {}
        for v in state.get("votes", []):
            votes.setdefault(v["bid_id"], {})[v["juror"]] = vote_value(v, ctx.jury_vote)
        scores: dict[str, dict[str, Any]] = {}
        scored: list[dict[str, Any]] = []
        for b in state.get("bids", []):
            if b["round"] != round_:
                continue
            parts = score_bid(price=b["price"], tokens=b["tokens"], entropy=b.get("entropy"),
                              votes=votes.get(b["id"], {}), weights=weights)
            scores[b["id"]] = {
                "cost": parts.cost, "entropy_term": parts.entropy_term,
                "jury_term": parts.jury_term, "jury_mean": parts.jury_mean,
                "value": parts.value, "score": parts.score,
            }
            scored.append({**b, "score": parts.score})

        if round_ == 0:
            winner = best(scored)
            agents = await _pool(ctx)
            refiners = eligible_refiners(winner["price"], [b["agent"] for b in scored], agents)
            update = {"scores": scores, "provisional_winner": winner["id"], "refiners": refiners}
            if ctx.refine and refiners:
                return Command(update=update, goto="memory_retrieve")
            return Command(update={**update, "winning_bid": winner["id"]}, goto="approve")

        provisional = str(state["provisional_winner"])
        all_scores = {**state.get("scores", {}), **scores}
        winning = provisional
        if scored:
            challenger = best(scored)
            if challenger["score"] < all_scores[provisional]["score"]:
                winning = challenger["id"]
        return Command(update={"scores": scores, "winning_bid": winning}, goto="approve")

    async def memory_retrieve(
        state: AuctionState, runtime: Runtime[Context]
    ) -> Command[Literal["refine", "approve"]]:
        """Step 4a: fetch the k most similar past auctions; pick pairs for each refiner."""
        ctx = _context(runtime, bound)
        started = time.time()
        try:
            past = await asyncio.to_thread(ctx.resolved_memory().similar, state["task"], ctx.k)
        except Exception as exc:  # noqa: BLE001 - no memory means no refinement, not no auction
            event = Event(kind="memory_retrieve_failed", agent=None,
                          detail=f"refinement skipped: {describe_error(exc)}")
            return Command(
                update={"events": [event], "winning_bid": state["provisional_winner"],
                        "retrieved": {"count": 0, "started": started, "ended": time.time()}},
                goto="approve",
            )
        retrieved: dict[str, Any] = {
            "count": len(past), "ids": [p.auction_id for p in past],
            "skipped": list(getattr(past, "skipped", [])),  # damaged records, left out
            "started": started, "ended": time.time(),
        }
        own = {b["agent"]: b["strategy"] for b in state["bids"] if b["round"] == 0}
        sends = []
        for name in state.get("refiners", []):
            candidates = list(past)
            if not any(_lost_in(p, name) for p in past):
                # the paper wants a refiner to see one of its own losing plans: look
                # past the top-k for the most similar auction this agent lost
                candidates += await _own_auctions(ctx, state["task"], name, retrieved["ids"])
            pairs = contrastive_pairs(candidates, name, ctx.max_pairs)
            if pairs:
                sends.append(Send("refine", BidRequest(task=state["task"], agent=name, round=1,
                                                       pairs=pairs, own_bid=own[name])))
        update: dict[str, Any] = {"retrieved": retrieved, "round": 1}
        if not sends:
            update["winning_bid"] = state["provisional_winner"]
            update["events"] = [Event(kind="refinement_skipped", agent=None,
                                      detail="no past auctions with (losing, winning) pairs")]
            return Command(update=update, goto="approve")
        return Command(update=update, goto=sends)

    async def refine(request: BidRequest, runtime: Runtime[Context]) -> dict[str, Any]:
        """Step 4b: a cheaper loser rewrites its bid after studying past pairs."""
        ctx = _context(runtime, bound)
        agent = (await _pool(ctx))[request["agent"]]
        messages = refine_messages(agent.name, request["task"], request["own_bid"],
                                   request["pairs"])
        try:
            new = await write_bid(agent, messages, round_=1, max_tokens=ctx.max_bid_tokens,
                                  timeout=ctx.call_timeout)
        except Exception as exc:  # noqa: BLE001
            return {"events": [Event(kind="refine_failed", agent=agent.name,
                                     detail=describe_error(exc))]}
        new["retrieved"] = len(request["pairs"])
        return {"bids": [new]}

    async def approve(
        state: AuctionState, runtime: Runtime[Context]
    ) -> Command[Literal["execute", "remember"]]:
        """Optional human gate: approve the winner, override it, or reject the auction."""
        ctx = _context(runtime, bound)
        if not ctx.approval:
            return Command(goto="execute")
        winning = next(b for b in state["bids"] if b["id"] == state["winning_bid"])
        agents = await _pool(ctx)
        scores = state.get("scores", {})
        request = approval_request(state, winning, agents[winning["agent"]].price,
                                   ctx.max_answer_tokens)
        decision = ask(request, sorted({b["agent"] for b in state["bids"]}))
        claim_decision(get_config(), state["auction_id"], decision)  # one decision per thread
        record = audit_record(decision)
        if decision["action"] == "approve":
            return Command(update={"approval": record}, goto="execute")
        if decision["action"] == "reject":
            event = Event(kind="rejected", agent=winning["agent"],
                          detail=str(decision.get("reason") or "rejected before execution"))
            return Command(update={"approval": record, "events": [event],
                                   "winner": None, "answer": None}, goto="remember")
        chosen = decision["winner"]
        own = [b for b in state["bids"] if b["agent"] == chosen]
        best_own = min(own, key=lambda b: scores.get(b["id"], {}).get("score", float("inf")))
        event = Event(kind="winner_overridden", agent=chosen,
                      detail=f"{winning['agent']} -> {chosen} by a human")
        return Command(update={"approval": record, "winning_bid": best_own["id"],
                               "events": [event]}, goto="execute")

    async def execute(state: AuctionState, runtime: Runtime[Context]) -> dict[str, Any]:
        """Step 6: the winner carries out its own plan with its own model."""
        ctx = _context(runtime, bound)
        winning = next(b for b in state["bids"] if b["id"] == state["winning_bid"])
        agent = (await _pool(ctx))[winning["agent"]]
        result = await run_executor(
            agent, ctx.executor, task=state["task"], strategy=winning["strategy"],
            timeout=ctx.execute_timeout, max_tokens=ctx.max_answer_tokens,
        )
        update: dict[str, Any] = {"execution": result, "winner": agent.name,
                                  "answer": result["answer"]}
        if result["error"]:
            update["events"] = [Event(kind="execution_failed", agent=agent.name,
                                      detail=result["error"])]
        return update

    async def remember(state: AuctionState, runtime: Runtime[Context]) -> AuctionOutput:
        """Step 7: write the whole auction to memory in one idempotent upsert."""
        ctx = _context(runtime, bound)
        agents = await asyncio.to_thread(ctx.resolved_agents)
        weights = (await _auction_weights(state, ctx)).to_dict()
        audit = build_audit(state, agents, weights=weights, jury_mode=ctx.jury,
                            jury_vote=ctx.jury_vote, memory_write="pending")
        status = "disabled"
        started = time.time()
        if (state.get("approval") or {}).get("action") == "reject":
            status = "skipped: rejected before execution"
        elif ctx.remember:
            status = await _write_memory(ctx, state, audit)
        audit["memory"]["write"] = status
        audit["memory"]["write_seconds"] = round(time.time() - started, 3)
        if status.startswith("failed"):
            audit["events"].append({"kind": "memory_write_failed", "agent": None,
                                    "detail": status})
        return {"winner": state.get("winner"), "answer": state.get("answer"), "auction": audit}

    builder = StateGraph(
        AuctionState, context_schema=Context, input_schema=AuctionInput,
        output_schema=AuctionOutput,
    )
    def add(afn: Callable[..., Awaitable[Any]], **kwargs: Any) -> None:
        builder.add_node(afn.__name__, _sync_and_async(afn),
                         destinations=_destinations(afn), **kwargs)

    add(open_auction, input_schema=AuctionInput)
    add(bid, input_schema=BidRequest)
    add(jury)
    add(vote, input_schema=VoteRequest)
    add(score)
    add(memory_retrieve)
    add(refine, input_schema=BidRequest)
    add(approve)
    add(execute)
    add(remember)
    builder.add_edge(START, "open_auction")
    builder.add_edge("bid", "jury")
    builder.add_edge("vote", "score")
    builder.add_edge("refine", "jury")
    builder.add_edge("execute", "remember")
    builder.add_edge("remember", END)
    return builder


def _destinations(afn: Callable[..., Awaitable[Any]]) -> tuple[str, ...] | None:
    """The nodes a ``Command[Literal[...]]``-returning node may go to (drawn by Studio)."""
    returns = get_type_hints(afn).get("return")
    if get_origin(returns) is not Command:
        return None
    (literal,) = get_args(returns)
    return get_args(literal)


def _sync_and_async(afn: Callable[..., Awaitable[Any]]) -> RunnableLambda:
    """A node that serves ``invoke`` as well as ``ainvoke``.

    The nodes are coroutines. Under ``invoke`` (a synchronous parent graph, a script)
    the coroutine runs to completion on a private event loop in a worker thread, so
    it works even where a loop is already running (Jupyter). The context is copied
    across, so ``interrupt`` (human approval) and callbacks behave as under ``ainvoke``.
    """

    def run(state: Any) -> Any:
        coroutine = afn(state, get_runtime(Context))
        context = contextvars.copy_context()
        with ThreadPoolExecutor(1, thread_name_prefix=f"sale-{afn.__name__}") as pool:
            return pool.submit(context.run, asyncio.run, coroutine).result()

    async def arun(state: Any) -> Any:
        return await afn(state, get_runtime(Context))

    return RunnableLambda(run, afunc=arun, name=afn.__name__)


async def _write_memory(ctx: Context, state: Mapping[str, Any], audit: dict[str, Any]) -> str:
    """One upsert keyed by the auction id, retried once; never a partial record."""
    memory = ctx.resolved_memory()
    last = ""
    for _ in range(2):
        try:
            await asyncio.to_thread(
                memory.write, state["auction_id"], state["task"], memory_bids(audit),
                audit["winner"], state.get("started"),
            )
            return "ok"
        except (MemoryUnavailableError, OSError, ValueError) as exc:
            last = describe_error(exc)
        except Exception as exc:  # noqa: BLE001 - reported in the audit, never raised
            last = describe_error(exc)
    return f"failed: {last}"


async def _pool(ctx: Context) -> dict[str, Any]:
    """The pool by name, resolved off the event loop (first use may load files)."""
    return {a.name: a for a in await asyncio.to_thread(ctx.resolved_agents)}


def _lost_in(past: Any, agent: str) -> bool:
    return any(b.get("agent") == agent and b.get("label") == "lose" for b in past.bids)


async def _own_auctions(ctx: Context, task: str, agent: str, seen: list[str]) -> list[Any]:
    """Most similar past auctions the agent bid in and lost, beyond the top-k."""
    try:
        found = await asyncio.to_thread(
            ctx.resolved_memory().similar, task, ctx.k, agent=agent, exclude=seen
        )
    except Exception:  # noqa: BLE001 - optional extra context; the top-k is enough to refine
        return []
    return [p for p in found if _lost_in(p, agent)][:1]


def run_auction(task: str, context: Context | None = None) -> AuctionOutput:
    """Run one auction from synchronous code (``graph.invoke`` with a default Context)."""
    result = graph.invoke({"task": task}, context=context or Context())
    return cast(AuctionOutput, result)


graph = build_graph().compile()
graph.name = "sale_auction"

__all__ = ["build_graph", "graph", "run_auction", "validate_task", "bid_id"]
