"""An agent of the market: a chat model with a price.

SALE prices every agent in dollars per million tokens (the paper's pi(a_i)); the
price drives the cost term of a bid's score and decides who may refine (only
agents cheaper than the provisional winner). An agent can bring its own executor
(any Runnable or compiled LangGraph subgraph) for the execution phase.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel

from sale_graph.errors import PoolConfigError

# Agent names reach prompts, memory records and Chroma metadata keys: one strict rule.
AGENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def valid_agent_name(name: object) -> bool:
    """Tell whether ``name`` is an agent name: 1-64 of [A-Za-z0-9._-], no leading symbol."""
    return isinstance(name, str) and AGENT_NAME.fullmatch(name) is not None


@dataclass(frozen=True, kw_only=True)
class Agent:
    """One bidder, juror and potential executor.

    Attributes:
        name: unique within the pool; used in the audit and in memory records.
        model: any LangChain chat model (local llama.cpp, ChatOpenAI, ...).
        price: dollars per million tokens, > 0.
        executor: optional Runnable (or plain function) that carries out the winning
            plan; it receives ``{"task", "strategy", "model", "agent", "max_tokens"}``.
            Without one, the pool's or the package's default executor is used.
        max_concurrency: how many calls to this agent may run at once.

    """

    name: str
    model: BaseChatModel
    price: float
    executor: Any = None
    max_concurrency: int = 4

    def __post_init__(self) -> None:
        if not valid_agent_name(self.name):
            raise PoolConfigError(
                f"agent name {self.name!r} is invalid: use 1-64 characters of "
                "letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        if not isinstance(self.model, BaseChatModel):
            raise PoolConfigError(
                f"agent {self.name!r}: model must be a LangChain BaseChatModel, "
                f"got {type(self.model).__name__}"
            )
        price = self.price
        if isinstance(price, bool) or not isinstance(price, (int, float)):
            raise PoolConfigError(f"agent {self.name!r}: price must be a number, got {price!r}")
        if not math.isfinite(price) or price <= 0:
            raise PoolConfigError(
                f"agent {self.name!r}: price must be a positive number of dollars "
                f"per million tokens, got {price!r}"
            )
        if self.max_concurrency < 1:
            raise PoolConfigError(f"agent {self.name!r}: max_concurrency must be >= 1")


def validate_pool(agents: Sequence[Agent]) -> tuple[Agent, ...]:
    """Check a pool once, at build time, so a bad pool never reaches a model call."""
    pool = tuple(agents)
    if not pool:
        raise PoolConfigError("the agent pool is empty: give at least one Agent")
    for agent in pool:
        if not isinstance(agent, Agent):
            raise PoolConfigError(f"pool entries must be Agent, got {type(agent).__name__}")
    names = [a.name for a in pool]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise PoolConfigError(f"duplicate agent names in the pool: {', '.join(duplicates)}")
    return pool
