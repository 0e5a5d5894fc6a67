"""The SALE auction as a LangGraph state graph: the wiring, on one screen.

Full auction (the paper, SALE.md steps 1-7):

    open_auction ─Send per agent─▶ bid ─▶ jury ─Send per (juror, bid)─▶ vote ─▶ score
    score ─(cheaper agents may refine)─▶ memory_retrieve ─Send per refiner─▶ refine ─▶ jury
    score ─(final)─▶ award ──▶ approve ─▶ execute ─▶ verify ─▶ remember ─▶ END

Staged auction (``Context(auction="staged")``, beyond the paper): memory's success
estimates, then agents are offered the task cheapest first in a loop:

    open_auction ─▶ estimate ─▶ offer ─▶ assess ─(declined)─▶ offer ... ─(accepted)─▶ award
    offer ─(dearest agent: answers directly, no bid, no jury)─▶ award

Every route to a winner goes to ``award``; from there the edges are static, so a state
edit at the approval pause or at an executor's pause goes on (``approval``). A
rejected auction passes ``execute`` and ``verify`` with nothing run.

Each node's body lives in the module of its step (``bidding``, ``jury``,
``scoring``, ``refinement``, ``staged``, ``approval``, ``execution``, ``outcomes``,
``audit``); this file only wires them. ``build_graph()`` returns the uncompiled
graph for embedding (the parent compiles it with its own checkpointer and store);
``graph`` is compiled without either, for ``langgraph dev``/Studio.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, cast, get_args, get_origin, get_type_hints

from langchain_core.runnables import RunnableLambda
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import get_runtime
from langgraph.types import Command

from sale_graph import (
    approval,
    audit,
    bidding,
    execution,
    jury,
    opening,
    outcomes,
    refinement,
    scoring,
    staged,
)
from sale_graph.bidding import bid_id
from sale_graph.context import Context
from sale_graph.opening import auction_id_for, validate_task
from sale_graph.progress import describe_update
from sale_graph.runtime import run_sync
from sale_graph.state import AuctionInput, AuctionOutput, AuctionState, BidRequest, VoteRequest

Node = Callable[[Any, Any, Context | None], Coroutine[Any, Any, Any]]


def build_graph(
    context: Context | None = None,
) -> StateGraph[AuctionState, Context, AuctionInput, AuctionOutput]:
    """Return the uncompiled auction graph.

    Args:
        context: defaults for runs that pass no ``Context`` of their own (useful
            when the graph is a subgraph of an app with a different context schema).
            Its pool and weights (every section) are validated here, so a bad
            configuration fails when the app is built, not on its first request.

    """
    if context is not None:
        context.resolved_agents()
        context.check()
    builder = StateGraph(
        AuctionState, context_schema=Context, input_schema=AuctionInput,
        output_schema=AuctionOutput,
    )

    def add(name: str, node: Node, **kwargs: Any) -> None:
        builder.add_node(name, _sync_and_async(name, node, context),
                         destinations=_destinations(node), **kwargs)

    add("open_auction", opening.open_auction)  # reads all state: clears what a last run left
    add("estimate", staged.estimate)
    add("bid", bidding.bid, input_schema=BidRequest)
    add("jury", jury.jury)
    add("vote", jury.vote, input_schema=VoteRequest)
    add("score", scoring.score)
    add("memory_retrieve", refinement.memory_retrieve)
    add("refine", refinement.refine, input_schema=BidRequest)
    add("offer", staged.offer)
    add("assess", staged.assess)
    add("award", approval.award)
    add("approve", approval.approve)
    add("execute", execution.execute_winner)
    add("verify", outcomes.verify_node)
    add("remember", audit.remember)
    builder.add_edge(START, "open_auction")
    builder.add_edge("bid", "jury")
    builder.add_edge("vote", "score")
    builder.add_edge("refine", "jury")
    builder.add_edge("award", "approve")  # the edge an edit at the approval pause follows
    builder.add_edge("approve", "execute")  # ... and the one an edit at an executor's pause
    builder.add_edge("execute", "verify")
    builder.add_edge("verify", "remember")
    builder.add_edge("remember", END)
    return builder


def _destinations(node: Node) -> tuple[str, ...] | None:
    """The nodes a ``Command[Literal[...]]``-returning node may go to (drawn by Studio)."""
    returns = get_type_hints(node).get("return")
    if get_origin(returns) is not Command:
        return None
    (literal,) = get_args(returns)
    return get_args(literal)


def _sync_and_async(name: str, node: Node, bound: Context | None) -> RunnableLambda:
    """A node that serves ``invoke`` as well as ``ainvoke``.

    The nodes are coroutines. Under ``invoke`` (a synchronous parent graph, a script,
    Jupyter) each runs on the one event loop synchronous runs share
    (``runtime.run_sync``), with the caller's context, so ``interrupt`` (human
    approval), callbacks and async clients behave as under ``ainvoke``.
    """

    def run(state: Any) -> Any:
        return _told(name, run_sync(node(state, get_runtime(Context), bound)))

    async def arun(state: Any) -> Any:
        return _told(name, await node(state, get_runtime(Context), bound))

    return RunnableLambda(run, afunc=arun, name=name)


def _told(name: str, result: Any) -> Any:
    """Write the step's progress line to LangGraph's ``custom`` stream (a no-op unless asked)."""
    line = describe_update({name: result})
    if line:
        get_stream_writer()({"sale": line})
    return result


def run_auction(task: str, context: Context | None = None) -> AuctionOutput:
    """Run one auction from synchronous code (``graph.invoke`` with a default Context)."""
    result = graph.invoke({"task": task}, context=context or Context())
    return cast(AuctionOutput, result)


graph = build_graph().compile()
graph.name = "sale_auction"

__all__ = ["build_graph", "graph", "run_auction", "validate_task", "auction_id_for", "bid_id"]
