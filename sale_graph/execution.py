"""Execution: the winner carries out its own plan with its own model.

The bid is the roadmap (SALE.md step 6): the executor receives the task, the
winning strategy and the winner's model, and must not re-plan from scratch.
Any Runnable works as an executor — a prompt chain, a tool-using agent, a
compiled LangGraph subgraph — given as ``Agent.executor`` (per agent) or
``Context.executor`` (for the whole pool); otherwise :data:`default_executor`
answers in one call. Token usage is counted by a callback on every chat model
the executor runs, however deep inside a subgraph.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from langchain_core.callbacks import UsageMetadataCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda

from sale_graph.agents import Agent
from sale_graph.calls import (
    ainvoke_model,
    describe_error,
    estimate_tokens,
    in_own_thread,
    message_text,
)
from sale_graph.prompts import execute_messages


async def _answer_in_one_call(inputs: dict[str, Any], config: RunnableConfig) -> str:
    """Default executor: one call that follows the plan to a final answer."""
    model = inputs["model"]
    messages = execute_messages(inputs["agent"], inputs["task"], inputs["strategy"])
    kwargs = {"max_tokens": inputs["max_tokens"]} if inputs.get("max_tokens") else {}
    reply = await ainvoke_model(model, messages, config=config, **kwargs)
    return message_text(reply)


default_executor: Runnable = RunnableLambda(_answer_in_one_call, name="execute_plan")


def answer_text(result: Any) -> str:
    """Normalise what an executor returned (str, message, dict, subgraph state) to text."""
    if isinstance(result, str):
        return result
    if isinstance(result, BaseMessage):
        return message_text(result)
    if isinstance(result, dict):
        if "answer" in result:
            return answer_text(result["answer"])
        if result.get("messages"):
            return answer_text(result["messages"][-1])
    return str(result)


async def execute(
    agent: Agent,
    executor: Runnable | None,
    *,
    task: str,
    strategy: str,
    timeout: float,
    max_tokens: int,
) -> dict[str, Any]:
    """Run the winning plan; failures are returned (and audited), never raised."""
    runnable = agent.executor or executor or default_executor
    usage = UsageMetadataCallbackHandler()
    inputs = {
        "task": task, "strategy": strategy, "model": agent.model, "agent": agent.name,
        "max_tokens": max_tokens,
    }
    started = time.time()
    result: dict[str, Any] = {"agent": agent.name, "answer": None, "error": None}
    try:
        config: RunnableConfig = {"callbacks": [usage], "run_name": "execute"}
        pending = (in_own_thread(runnable.invoke, inputs, config=config) if _blocking(runnable)
                   else runnable.ainvoke(inputs, config=config))
        raw = await asyncio.wait_for(pending, timeout)
        result["answer"] = answer_text(raw)
        if not result["answer"].strip():
            result["error"] = "empty answer: the executor returned no text"
        if isinstance(raw, dict):
            result["details"] = {k: v for k, v in raw.items() if k != "answer" and _jsonable(v)}
    except Exception as exc:  # noqa: BLE001 - the auction's audit must survive a bad executor
        result["error"] = describe_error(exc)
    ended = time.time()
    input_tokens = sum(u.get("input_tokens", 0) for u in usage.usage_metadata.values())
    output_tokens = sum(u.get("output_tokens", 0) for u in usage.usage_metadata.values())
    estimated = not usage.usage_metadata
    if estimated and result["answer"]:
        output_tokens = estimate_tokens(result["answer"])
    result.update(
        input_tokens=input_tokens, output_tokens=output_tokens, tokens_estimated=estimated,
        started=started, ended=ended, seconds=ended - started,
    )
    return result


def _blocking(runnable: Runnable) -> bool:
    """A Runnable whose ``ainvoke`` would borrow a pool thread (no async path of its own)."""
    if isinstance(runnable, RunnableLambda):
        return getattr(runnable, "afunc", None) is None
    return type(runnable).ainvoke is Runnable.ainvoke


def _jsonable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, type(None), list, dict))
