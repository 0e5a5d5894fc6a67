"""Errors a user can act on.

Every failure that stops an auction before it starts raises one of these with a
message that says what to fix; failures during an auction (an agent that times
out, a garbage vote) do not raise: they are recorded in the audit instead.
"""

from __future__ import annotations


class SaleError(Exception):
    """Base class of every error sale_graph raises on purpose."""


class InvalidTaskError(SaleError, ValueError):
    """The task is empty, whitespace only, or longer than the configured cap."""


class PoolConfigError(SaleError, ValueError):
    """The agent pool is unusable: duplicate names, bad prices, missing model files."""


class MemoryUnavailableError(SaleError, ConnectionError):
    """The auction memory (a Chroma store) cannot be reached or opened."""


class NoBidsError(SaleError, RuntimeError):
    """Every agent failed to bid, so there is nothing to auction."""

    def __init__(self, message: str, failures: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.failures = dict(failures or {})  # agent -> what went wrong (the audit's detail)


class ModelFileError(SaleError, FileNotFoundError):
    """A local model's weights are missing or fail their checksum."""


class UnsafeBuildError(ModelFileError):
    """The installed llama.cpp build would crash on this CPU (AMX, or instructions it lacks)."""


class ContextError(PoolConfigError):
    """A runtime context field has the wrong type or range, or a caller may not set it.

    A remote client (the LangGraph server's JSON) may tune an auction but never
    choose paths, URLs, pool files or executors: those belong to the deployer.
    """


class ApprovalError(SaleError, RuntimeError):
    """Human approval cannot work as asked: no checkpointer, or the thread already decided."""
