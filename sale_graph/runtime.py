"""What every node needs from a run: its Context, its pool by name, its weights.

Nodes are module-level functions ``async def node(state, runtime, bound)``;
``bound`` is the Context given to ``build_graph`` (the default for runs that pass
none), so nodes need no closure over the factory.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import os
import threading
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from sale_graph.agents import Agent

if TYPE_CHECKING:  # imported lazily below: context and scoring import node modules' helpers
    from langgraph.runtime import Runtime

    from sale_graph.context import Context
    from sale_graph.scoring import Weights


def run_context(runtime: Runtime[Context] | None, bound: Context | None) -> Context:
    """The run's Context: given at invoke time, else the one bound at build time."""
    from sale_graph.context import Context
    from sale_graph.errors import ContextError

    ctx = getattr(runtime, "context", None)
    if isinstance(ctx, Context):
        return ctx
    # JSON from the LangGraph server: only Context's own fields. A mapping with other
    # keys is a parent app's own context schema, not overrides meant for the auction.
    if isinstance(ctx, Mapping) and set(ctx) <= set(Context.__dataclass_fields__):
        try:
            return Context.from_untrusted(dict(ctx), bound or Context())
        except ContextError as exc:
            raise ContextError(
                f"{exc} (a plain dict context is read as a client's request, as the "
                "LangGraph server passes it; in your own code pass a Context, or bind "
                "one with build_graph(context))"
            ) from exc
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


# ------------------------------------------------------------ synchronous entry points

# set in every task run on the shared loop (and what it calls, threads included): a
# synchronous run nested inside one (an executor calling graph.invoke) would wait for a
# loop its own caller is blocking, so it gets a private loop instead
_ON_SHARED_LOOP: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "sale_on_shared_loop", default=False)
SYNC_LOOP_THREADS = 32  # the shared loop's pool for blocking work (memory, embeddings, files)
_sync_loop: asyncio.AbstractEventLoop | None = None
_sync_thread: threading.Thread | None = None
_sync_pid = 0
_sync_guard = threading.Lock()


def _shared_loop() -> asyncio.AbstractEventLoop:
    """The one event loop every synchronous run of this process shares (made on first use)."""
    global _sync_loop, _sync_thread, _sync_pid
    with _sync_guard:
        alive = _sync_thread is not None and _sync_thread.is_alive()
        if _sync_loop is None or _sync_pid != os.getpid() or not alive:
            loop = asyncio.new_event_loop()
            loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(
                SYNC_LOOP_THREADS, thread_name_prefix="sale-sync"))
            thread = threading.Thread(target=_keep_running, args=(loop,),
                                      name="sale-sync-loop", daemon=True)
            thread.start()
            _sync_loop, _sync_thread, _sync_pid = loop, thread, os.getpid()
        return _sync_loop


def _keep_running(loop: asyncio.AbstractEventLoop) -> None:
    """Run the shared loop; a task that raised SystemExit or KeyboardInterrupt stops it.

    asyncio re-raises those out of the loop after handing them to the task's awaiter
    (``run_sync`` passes them on to its caller); the loop itself must go on serving
    every other run of the process.
    """
    while True:
        try:
            loop.run_forever()
            return  # stopped on purpose
        except BaseException:  # noqa: BLE001 - already delivered to the run that raised it
            continue


def run_sync(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a node's coroutine to completion from synchronous code; return its result.

    Why one long-lived loop rather than ``asyncio.run`` per call: async clients cache
    connections on the loop that opened them (langchain-openai keeps one HTTP client
    per process), so a node on a fresh loop reused a closed loop's connections and every
    endpoint bid after the first failed with "Event loop is closed". The loop runs on a
    daemon thread, so this works where the caller's thread already runs a loop
    (Jupyter). The caller's context variables (the run's config: ``interrupt``,
    callbacks, stream writers) are copied to the task; if the caller is interrupted the
    task is cancelled.
    """
    loop = _shared_loop()
    if _ON_SHARED_LOOP.get() or threading.current_thread() is _sync_thread:
        context = contextvars.copy_context()  # nested in a shared-loop run: a private loop
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sale-nested") as pool:
            return pool.submit(context.run, asyncio.run, coroutine).result()
    context = contextvars.copy_context()
    context.run(_ON_SHARED_LOOP.set, True)
    done: concurrent.futures.Future[Any] = concurrent.futures.Future()
    started: list[asyncio.Task[Any]] = []

    async def guarded() -> tuple[bool, Any]:
        try:
            return True, await coroutine
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - SystemExit would stop the shared loop
            return False, exc

    def settle(task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            done.cancel()
            return
        ok, value = task.result()
        if ok:
            done.set_result(value)
        else:
            done.set_exception(value)

    def start() -> None:
        task = loop.create_task(guarded(), context=context)
        started.append(task)
        task.add_done_callback(settle)

    loop.call_soon_threadsafe(start)
    try:
        return done.result()
    except BaseException:
        if not done.done():  # the caller gave up (KeyboardInterrupt): stop the auction's work
            loop.call_soon_threadsafe(lambda: [task.cancel() for task in started])
        raise
