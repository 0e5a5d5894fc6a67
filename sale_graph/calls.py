"""One model call, the way every auction step makes it.

A deadline on every call (a model that hangs must not hang the auction), the
reply's text, and its token usage: from ``usage_metadata`` when the backend
reports it (as counts), otherwise estimated from the text and flagged as an estimate.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackHandler,
    BaseCallbackHandler,
    BaseCallbackManager,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import (
    Runnable,
    RunnableLambda,
    RunnableParallel,
    RunnablePassthrough,
    RunnableSequence,
)
from langchain_core.runnables.base import RunnableBindingBase, RunnableEachBase
from langchain_core.runnables.config import RunnableConfig, ensure_config
from langchain_core.runnables.fallbacks import RunnableWithFallbacks
from langchain_core.runnables.passthrough import RunnableAssign
from langgraph.errors import GraphBubbleUp

from sale_graph.agents import Agent

LOCAL_LLM_TYPE = "llama-cpp-local"

# LangGraph's own signals (a pause for a human inside an executor or verifier that is a
# graph, a command to a parent graph): code that records a runnable's failure in the
# audit lets these through, or a pause would be stored as a failed execution.
GRAPH_SIGNALS: tuple[type[BaseException], ...] = (GraphBubbleUp,)


@dataclass(frozen=True)
class Reply:
    """A model's answer with what the audit needs to know about it."""

    text: str
    input_tokens: int
    output_tokens: int
    tokens_estimated: bool
    metadata: dict[str, Any]
    started: float
    ended: float


def content_text(content: str | list, *, strict: bool = False) -> str:
    """Plain text of message content given as a string or a list of blocks.

    Non-text blocks (images, tool calls) are skipped, or with ``strict`` rejected
    with a ValueError (for backends that would otherwise silently lose them).
    """
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, Mapping) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif strict:
            kind = block.get("type") if isinstance(block, Mapping) else type(block).__name__
            raise ValueError(f"text only, got a {kind!r} content block")
    return "".join(parts)


def message_text(message: BaseMessage) -> str:
    """Plain text of a reply whose content may be a string or a list of blocks."""
    return content_text(message.content)


def token_count(value: Any) -> int | None:
    """A token count a backend reported, or None when it is missing or not a count.

    A negative or non-finite count would make a bid cheap (or the cost negative) and
    win on it; it is treated like no report at all: estimated and flagged.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return int(value)


def estimate_tokens(text: str) -> int:
    """Rough token count (~0.75 words per token) when a backend reports none."""
    return max(1, round(len(text.split()) * 4 / 3)) if text.strip() else 0


def is_local(agent: Agent) -> bool:
    """True for in-process llama.cpp models (they accept a GBNF ``grammar``)."""
    return getattr(agent.model, "_llm_type", "") == LOCAL_LLM_TYPE


# One semaphore per model, process-wide: Agent.max_concurrency bounds the calls in
# flight to one model across all auctions and event loops of a process (a synchronous
# ``invoke`` runs each parallel branch on a loop of its own). Waiting polls instead of
# blocking a thread, so waiters never starve the executor the calls themselves need.
# Keyed by (model id, limit): chat models are unhashable pydantic objects; a reused id
# can only inherit an idle semaphore of the same size.
_LIMITS: dict[tuple[int, int], threading.BoundedSemaphore] = {}
_LIMITS_LOCK = threading.Lock()
_POLL_SECONDS = 0.01


def _semaphore(agent: Agent) -> threading.BoundedSemaphore:
    key = (id(agent.model), agent.max_concurrency)
    with _LIMITS_LOCK:
        sem = _LIMITS.get(key)
        if sem is None:
            sem = _LIMITS[key] = threading.BoundedSemaphore(agent.max_concurrency)
        return sem


@asynccontextmanager
async def _limit(agent: Agent) -> AsyncIterator[None]:
    sem = _semaphore(agent)
    while not sem.acquire(blocking=False):
        await asyncio.sleep(_POLL_SECONDS)
    try:
        yield
    finally:
        sem.release()


async def call(
    agent: Agent, messages: Sequence[BaseMessage], *, timeout: float, **kwargs: Any
) -> Reply:
    """Invoke the agent's model with a deadline; raises TimeoutError past it.

    The deadline counts from when the call gets one of the agent's concurrency slots,
    so a queue of auctions waiting for a busy model does not time out by itself.
    """
    async with _limit(agent):
        started = time.time()
        message = await asyncio.wait_for(ainvoke_model(agent.model, list(messages), **kwargs),
                                         timeout)
        ended = time.time()
    if not isinstance(message, AIMessage):
        raise TypeError(f"{agent.name} returned {type(message).__name__}, not an AIMessage")
    text = message_text(message)
    usage: Mapping[str, Any] = message.usage_metadata or {}
    input_tokens = token_count(usage.get("input_tokens"))
    output_tokens = token_count(usage.get("output_tokens"))
    return Reply(
        text=text,
        input_tokens=input_tokens if input_tokens is not None
        else estimate_tokens(" ".join(message_text(m) for m in messages)),
        output_tokens=output_tokens if output_tokens is not None else estimate_tokens(text),
        tokens_estimated=input_tokens is None or output_tokens is None,
        metadata=dict(message.response_metadata or {}),
        started=started,
        ended=ended,
    )


def has_native_async(model: Any) -> bool:
    """Whether a chat model answers ``ainvoke`` itself rather than in a pool thread."""
    if not isinstance(model, BaseChatModel):
        return True
    kind = type(model)
    return (kind._agenerate is not BaseChatModel._agenerate
            or kind._astream is not BaseChatModel._astream)


async def ainvoke_model(model: Any, messages: Any, **kwargs: Any) -> Any:
    """``model.ainvoke`` whose deadline holds even for a model with only a blocking path.

    LangChain runs such a model's ``invoke`` on the event loop's default thread pool:
    a cancelled call keeps its pool thread (eight hung calls starved the pool) and
    ``asyncio.run`` waits for it at exit (a blocking model kept ``graph.invoke`` 8 s
    past a 0.5 s deadline). Here it runs on a daemon thread of its own, so a
    cancellation returns at once; the abandoned thread ends when the model returns.
    """
    if has_native_async(model):
        return await model.ainvoke(messages, **kwargs)
    return await in_own_thread(model.invoke, messages, **kwargs)


async def in_own_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Await ``fn(*args, **kwargs)`` run on a fresh daemon thread (context vars copied)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def run() -> None:
        try:
            outcome = (True, context.run(fn, *args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            outcome = (False, exc)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the loop is gone: nobody waits for this call any more
            pass

    threading.Thread(target=run, daemon=True, name="sale-blocking-call").start()
    return await future


def as_runnable(value: Any, name: str) -> Runnable:
    """Any Runnable, or a plain (async) function wrapped as one (executors, verifiers)."""
    if isinstance(value, Runnable):
        return value
    if callable(value):
        return RunnableLambda(value, name=name)
    raise TypeError(f"{name} must be a Runnable or a callable, got {type(value).__name__}")


def _blocking_parts(runnable: Any) -> tuple[bool, bool]:
    """(has a blocking-only part, has a part that must be awaited) in a Runnable's tree.

    Wrappers (``with_config``, ``with_retry``, ``bind``), sequences, parallels and
    fallbacks hand their parts to the loop's pool one by one, so a blocking function
    inside any of them borrows it as a bare one would. A part must be awaited when it
    has no blocking form (an async function) or when only ``ainvoke`` can stop it (a
    natively async chat model: a local model stops at its next token when cancelled,
    whereas its blocking form runs on to its own deadline, holding the CPU).
    """
    if isinstance(runnable, RunnableLambda):
        has_sync = getattr(runnable, "func", None) is not None
        has_async = getattr(runnable, "afunc", None) is not None
        return not has_async, not has_sync
    if isinstance(runnable, BaseChatModel):
        native = has_native_async(runnable)
        return not native, native
    if isinstance(runnable, RunnablePassthrough):
        return runnable.func is not None and runnable.afunc is None, False
    parts = _parts(runnable)
    if parts is None:
        return type(runnable).ainvoke is Runnable.ainvoke, False
    found = [_blocking_parts(part) for part in parts]
    return any(s for s, _ in found), any(a for _, a in found)


def _parts(runnable: Any) -> list[Any] | None:
    """The Runnables a composite Runnable delegates to (None for a leaf)."""
    if isinstance(runnable, (RunnableBindingBase, RunnableEachBase)):
        return [runnable.bound]
    if isinstance(runnable, RunnableSequence):
        return list(runnable.steps)
    if isinstance(runnable, RunnableParallel):
        return list(runnable.steps__.values())
    if isinstance(runnable, RunnableWithFallbacks):
        return [runnable.runnable, *runnable.fallbacks]
    if isinstance(runnable, RunnableAssign):
        return [runnable.mapper]
    return None


def ainvoke_bounded(runnable: Any, inputs: Any, config: Any) -> Any:
    """``runnable.ainvoke``, except that a Runnable with blocking parts runs on its own thread.

    Runnable's default ``ainvoke`` borrows the event loop's thread pool for blocking
    code: a call that hangs there outlives ``wait_for``'s deadline and blocks the
    run's shutdown. A thread of its own is abandoned at the deadline instead. A tree
    that also holds a part that must be awaited keeps ``ainvoke``.
    """
    blocking, awaited = _blocking_parts(runnable)
    if blocking and not awaited:
        return in_own_thread(runnable.invoke, inputs, config=config)
    return runnable.ainvoke(inputs, config=config)


def wants_tokens(handlers: Sequence[Any]) -> bool:
    """Whether any handler listens to tokens (a stream, a tracer); a usage counter does not."""
    quiet = (BaseCallbackHandler.on_llm_new_token, AsyncCallbackHandler.on_llm_new_token)
    return any(type(h).on_llm_new_token not in quiet for h in handlers)


def can_stream(model: Any) -> bool:
    """Whether a chat model has a streaming form that ``stream=True`` selects per call.

    A model built with ``disable_streaming=True`` or ``streaming=False`` answers whole
    even when asked, and the ``stream`` flag would then reach its request: one that
    streams back is a reply its own parser refuses.
    """
    kind = type(model)
    if not isinstance(model, BaseChatModel) or (
            kind._astream is BaseChatModel._astream and kind._stream is BaseChatModel._stream):
        return False
    if model.disable_streaming is True:
        return False
    told = "streaming" in model.model_fields_set
    return not (told and getattr(model, "streaming", None) is False)


def config_with(
    handler: BaseCallbackHandler, run_name: str, configurable: Mapping[str, Any] | None = None
) -> RunnableConfig:
    """The running step's config with one more handler (and configurable keys) for a call.

    A config with its own ``callbacks`` list replaces the inherited ones: the call
    would drop out of the run's trace and its stream (a token listener, LangGraph's
    ``messages`` mode). The handler is added to a copy of the inherited manager.
    ``configurable`` is merged into the inherited one for the same reason (it carries
    the run's thread and checkpoint namespace, which a graph called here needs).
    """
    inherited = ensure_config()
    callbacks = inherited.get("callbacks")
    if isinstance(callbacks, BaseCallbackManager):
        callbacks = callbacks.copy()
        callbacks.add_handler(handler, inherit=True)
    else:
        callbacks = [*(callbacks or []), handler]
    config: RunnableConfig = {"callbacks": callbacks, "run_name": run_name}
    if configurable:
        config["configurable"] = {**(inherited.get("configurable") or {}), **configurable}
    return config


def describe_error(exc: BaseException) -> str:
    """One line for the audit: the exception type and message."""
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return f"timeout: {exc}" if str(exc) else "timeout"
    return f"{type(exc).__name__}: {exc}"


def failure_kind(detail: Any) -> str:
    """The kind part of a ``describe_error`` line (``RuntimeError``, ``timeout``).

    The message may carry the deployer's hosts, paths or URLs; `sale serve` tells
    its clients the kind and logs the rest.
    """
    return str(detail).split(":", 1)[0].strip() or "failed"
