"""The auction as the LangGraph server serves it (``langgraph.json``).

The same graph as :data:`sale_graph.graph.graph`, with one difference: its context
schema is :class:`~sale_graph.context.RemoteContext`, so the context a client sends
with a run is validated as untrusted input on top of the deployer's
(:func:`~sale_graph.context.deployed_context`). A client can tune an auction; it
cannot point the server at a directory, a URL, a pool file or an executor.
"""

from __future__ import annotations

from typing import Any

from langgraph.graph.state import CompiledStateGraph

from sale_graph.context import RemoteContext, client_pools, deployed_context
from sale_graph.graph import build_graph


def build_server_graph() -> CompiledStateGraph[Any, Any, Any, Any]:
    """Compile the auction for a server: no checkpointer or store (the server brings them)."""
    client_pools(deployed_context())  # a mistyped SALE_CLIENT_POOLS fails at load
    builder = build_graph()
    builder.context_schema = RemoteContext  # type: ignore[assignment]
    compiled = builder.compile()
    compiled.name = "sale_auction"
    return compiled


graph = build_server_graph()

__all__ = ["build_server_graph", "graph"]
