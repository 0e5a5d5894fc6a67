"""sale_graph: Strategy Auctions for Workload Efficiency (SALE) as a LangGraph graph.

Agents bid short plans, a jury of all agents scores them (cost minus value),
cheaper losers refine from a Chroma memory of past auctions, the winner executes.
A staged auction (cheapest first, stop at the first bid worth taking) and verified
outcomes (what actually passed) make the market pay for itself on short work.
"""

import os

# Before anything loads an OpenMP runtime (torch for the embedder, llama.cpp): threads
# that spin long while they wait starve another process's on a shared machine; a short
# spin keeps a lone process's speed (local.py has the figures). A user's choice wins.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "10000"

from sale_graph.agents import Agent  # noqa: E402
from sale_graph.context import Context  # noqa: E402
from sale_graph.errors import (  # noqa: E402
    ApprovalError,
    ContextError,
    InvalidTaskError,
    MemoryUnavailableError,
    ModelFileError,
    NoBidsError,
    PoolConfigError,
    SaleError,
)
from sale_graph.execution import ANSWER_TAG  # noqa: E402
from sale_graph.graph import build_graph, graph, run_auction  # noqa: E402
from sale_graph.memory import AuctionMemory, PastAuction, UnknownAuctionError  # noqa: E402
from sale_graph.outcomes import record_outcome  # noqa: E402
from sale_graph.progress import describe_update  # noqa: E402
from sale_graph.scoring import Weights  # noqa: E402
from sale_graph.seeds import load_seeds, seed_memory  # noqa: E402
from sale_graph.staged import AgentPolicy, StagedPolicy  # noqa: E402
from sale_graph.state import AuctionInput, AuctionOutput  # noqa: E402

__all__ = [
    "ANSWER_TAG",
    "Agent",
    "AgentPolicy",
    "ApprovalError",
    "AuctionInput",
    "AuctionMemory",
    "AuctionOutput",
    "Context",
    "ContextError",
    "InvalidTaskError",
    "MemoryUnavailableError",
    "ModelFileError",
    "NoBidsError",
    "PastAuction",
    "PoolConfigError",
    "SaleError",
    "StagedPolicy",
    "UnknownAuctionError",
    "Weights",
    "build_graph",
    "describe_update",
    "graph",
    "load_seeds",
    "record_outcome",
    "run_auction",
    "seed_memory",
]
