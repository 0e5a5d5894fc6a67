"""What every node needs from a run: its Context, its pool by name, its weights.

Nodes are module-level functions ``async def node(state, runtime, bound)``;
``bound`` is the Context given to ``build_graph`` (the default for runs that pass
none), so nodes need no closure over the factory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sale_graph.agents import Agent

if TYPE_CHECKING:  # imported lazily below: context and scoring import node modules' helpers
    from langgraph.runtime import Runtime

    from sale_graph.context import Context
    from sale_graph.scoring import Weights


def run_context(runtime: Runtime[Context] | None, bound: Context | None) -> Context:
    """The run's Context: given at invoke time, else the one bound at build time."""
    from sale_graph.context import Context

    ctx = getattr(runtime, "context", None)
    if isinstance(ctx, Context):
        return ctx
    # JSON from the LangGraph server: only Context's own fields. A mapping with other
    # keys is a parent app's own context schema, not overrides meant for the auction.
    if isinstance(ctx, Mapping) and set(ctx) <= set(Context.__dataclass_fields__):
        return Context.from_untrusted(dict(ctx), bound or Context())
    return bound or Context()


async def pool_of(ctx: Context) -> dict[str, Agent]:
    """The pool by name, resolved off the event loop (first use may load files)."""
    return {a.name: a for a in await asyncio.to_thread(ctx.resolved_agents)}


async def auction_weights(state: Mapping[str, Any], ctx: Context) -> Weights:
    """The weights this auction opened with.

    ``open_auction`` snapshots them into the state, so the jury, the score and the
    audit agree even if a weights file is rewritten mid-auction (``sale fit``), and
    a run resumed from a checkpoint keeps the weights it started with. State from
    before the snapshot existed falls back to the context.
    """
    from sale_graph.scoring import Weights

    snapshot = state.get("weights")
    if snapshot is None:
        return await asyncio.to_thread(ctx.resolved_weights)  # may read a file
    return Weights.coerce(snapshot)


async def auction_execute_plan(state: Mapping[str, Any], ctx: Context) -> Any:
    """Plan or direct answer, as resolved when the auction opened (as ``auction_weights``)."""
    snapshot = state.get("execute_plan")
    if snapshot is None:
        return await asyncio.to_thread(ctx.resolved_execute_plan)
    return snapshot


async def auction_policy(state: Mapping[str, Any], ctx: Context) -> Any:
    """The staged policy the auction opened with (as ``auction_weights``)."""
    from sale_graph.staged import StagedPolicy

    snapshot = state.get("staged_policy")
    if snapshot is None:
        return await asyncio.to_thread(ctx.resolved_staged)
    return StagedPolicy.coerce(snapshot)
