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
import re
import time
from collections.abc import Mapping
from typing import Any, get_type_hints

from langchain_core.callbacks import UsageMetadataCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from langgraph.pregel import Pregel

from sale_graph.agents import Agent
from sale_graph.approval import cleared_for_execution, rejected
from sale_graph.calls import (
    GRAPH_SIGNALS,
    ainvoke_bounded,
    ainvoke_model,
    as_runnable,
    can_stream,
    config_with,
    describe_error,
    estimate_tokens,
    message_text,
    token_count,
    wants_tokens,
)
from sale_graph.prompts import execute_messages
from sale_graph.runtime import auction_execute_plan, pool_of, run_context
from sale_graph.state import Event

# Tag of the default executor's model call: an app streaming the auction with
# ``stream_mode="messages"`` picks the answer's tokens out of every bid and vote by it
# (``sale serve`` streams them so).
ANSWER_TAG = "sale:answer"


async def _answer_in_one_call(inputs: dict[str, Any], config: RunnableConfig) -> str:
    """Default executor: one call that follows the plan to a final answer."""
    model = inputs["model"]
    messages = execute_messages(inputs["agent"], inputs["task"], inputs["strategy"])
    kwargs: dict[str, Any] = {}
    if inputs.get("max_tokens"):
        kwargs["max_tokens"] = inputs["max_tokens"]
    listeners = getattr(config.get("callbacks"), "handlers", None) or []
    if can_stream(model) and wants_tokens(listeners):
        kwargs["stream"] = True  # an endpoint model answers whole unless asked to stream
    tagged: RunnableConfig = {**config, "tags": [*(config.get("tags") or []), ANSWER_TAG]}
    reply = await ainvoke_model(model, messages, config=tagged, **kwargs)
    return message_text(reply)


default_executor: Runnable = RunnableLambda(_answer_in_one_call, name="execute_plan")


# Tags of our prompts that a small executor may echo before its answer (the 1.5B model
# sometimes opens with the <winning_plan> or <plan> it was given).
_ECHOED = ("winning_plan", "losing_plan", "plan", "task", "example")
_ECHO_BLOCK = re.compile(
    r"\s*<(" + "|".join(_ECHOED) + r")>.*?</\1>\s*", re.DOTALL | re.IGNORECASE
)
# a lone opening tag on the first line, as the 1.5B writes before a direct answer
_ECHO_OPEN_LINE = re.compile(r"\s*<(" + "|".join(_ECHOED) + r")>[ \t]*\n", re.IGNORECASE)


def clean_answer(text: str) -> str:
    """The answer without fence blocks the executor echoed at its very start.

    Only whole ``<tag>...</tag>`` blocks of our own prompt tags, only at the start, are
    removed: text after the answer began is the answer's own. An answer that is
    nothing but echoed blocks is kept as it is (an echo is better than nothing).
    """
    rest, end = text, 0
    while match := _ECHO_BLOCK.match(text, end) or _ECHO_OPEN_LINE.match(text, end):
        end = match.end()
        rest = text[end:]
    return rest if rest.strip() else text


class AnswerStream:
    """The answer as it is written, less the echoed blocks :func:`clean_answer` drops.

    Text is held back while its start could still be an echoed block (an open tag,
    a block not yet closed, the whitespace after one); once the answer proper has
    begun, every piece passes at once.
    """

    def __init__(self) -> None:
        self.text = ""
        self.sent = ""

    def feed(self, piece: str) -> str:
        """Take the next piece written; return what may be sent now."""
        self.text += piece
        start = _answer_start(self.text)
        if start is None:
            return ""
        out = self.text[start + len(self.sent):]
        self.sent += out
        return out

    def rest(self, answer: str) -> str | None:
        """What the finished answer holds beyond what was sent (None: they disagree)."""
        return answer[len(self.sent):] if answer.startswith(self.sent) else None


def _answer_start(text: str) -> int | None:
    """Where the answer proper begins in ``text`` so far; None while that is open."""
    end = 0
    while match := _ECHO_BLOCK.match(text, end) or _ECHO_OPEN_LINE.match(text, end):
        if match.re is _ECHO_OPEN_LINE:
            return None  # a lone opening tag may yet be closed, making it a block
        end = match.end()
    rest = text[end:].lstrip().lower()
    if not rest:
        return None  # whitespace may still lead into another echoed block
    if rest.startswith("<") and any(
        f"<{tag}>".startswith(rest) or rest.startswith(f"<{tag}>") for tag in _ECHOED
    ):
        return None  # an echoed tag being written, or its block not yet closed
    return end


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
        # the model also rides in the config: a graph executor keeps it out of its state,
        # which a checkpointer must serialise (an executor that pauses for a human)
        config = config_with(usage, "execute", {"sale_model": agent.model})
        runnable = as_runnable(runnable, "execute")
        pending = ainvoke_bounded(runnable, graph_inputs(runnable, inputs), config)
        raw = await asyncio.wait_for(pending, timeout)
        text = answer_text(raw)
        result["answer"] = clean_answer(text)
        if result["answer"] != text:
            result["raw_answer"] = text  # kept in the audit: what the model actually wrote
        if not result["answer"].strip():  # no answer: failed, as a client and a verifier see it
            result["answer"] = None
            result["error"] = "empty answer: the executor returned no text"
        if isinstance(raw, dict):
            result["details"] = {k: v for k, v in raw.items() if k != "answer" and _jsonable(v)}
    except GRAPH_SIGNALS:  # a pause for a human: the run stops here and resumes
        raise
    except Exception as exc:  # noqa: BLE001 - the auction's audit must survive a bad executor
        result["error"] = describe_error(exc)
    ended = time.time()
    counts = [(token_count(u.get("input_tokens")), token_count(u.get("output_tokens")))
              for u in usage.usage_metadata.values()]
    known_in = [n for n, _ in counts if n is not None]
    known_out = [n for _, n in counts if n is not None]
    # An executor that reports no usage (a plain function, a tool loop) still read its
    # prompt: estimated from what it was given, it is never free (bids are the same).
    input_tokens = sum(known_in) if known_in else estimate_tokens(
        " ".join(message_text(m) for m in execute_messages(agent.name, task, strategy)))
    answer = result.get("raw_answer") or result["answer"] or ""
    output_tokens = sum(known_out) if known_out else estimate_tokens(answer)
    estimated = not counts or len(known_in) < len(counts) or len(known_out) < len(counts)
    result.update(
        input_tokens=input_tokens, output_tokens=output_tokens, tokens_estimated=estimated,
        started=started, ended=ended, seconds=ended - started,
    )
    return result


def graph_inputs(runnable: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """The executor's inputs, cut to the keys a LangGraph state graph declares.

    A state graph keeps only its own keys in its state, but its raw input is
    checkpointed too, and a chat model is not serialisable: an executor graph that
    paused (``interrupt``) could not resume. A graph that declares ``model`` gets it.
    """
    builder = getattr(runnable, "builder", None)
    schema = getattr(builder, "input_schema", None)
    if not isinstance(runnable, Pregel) or schema is None:
        return inputs
    try:
        declared = set(get_type_hints(schema))
    except Exception:  # noqa: BLE001 - an unreadable schema: give it everything, as before
        return inputs
    return {k: v for k, v in inputs.items() if k in declared} if declared else inputs


def _jsonable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, type(None), list, dict))


def follows_plan(execute_plan: bool | Mapping[str, bool], agent: str) -> bool:
    """Whether the winner executes its plan or answers directly (``Context.execute_plan``).

    The paper's winner always executes its own plan. Measured on the local pool, the
    1.5B model executing its plan passed 0/8 middle-tier coding tasks that it passes
    5/8 answering directly; so a pool may say, per agent, that the plan decides the
    auction but does not steer the answer.
    """
    if isinstance(execute_plan, Mapping):
        return bool(execute_plan.get(agent, True))
    return bool(execute_plan)


async def execute_winner(state: Mapping[str, Any], runtime: Any, bound: Any) -> dict[str, Any]:
    """Graph node, step 6: the winner carries out its plan (or answers) with its own model.

    Nothing runs for an auction a person rejected (``approval.rejected``).
    """
    if rejected(state):
        return {}
    ctx = run_context(runtime, bound)
    pool = await pool_of(ctx)
    winning, edited = cleared_for_execution(state, sorted(pool))
    agent = pool[winning["agent"]]
    execute_plan = await auction_execute_plan(state, ctx)
    with_plan = not winning.get("direct") and follows_plan(execute_plan, agent.name)
    result = await execute(
        agent, ctx.executor, task=state["task"],
        strategy=winning["strategy"] if with_plan else "",
        timeout=ctx.execute_timeout, max_tokens=ctx.max_answer_tokens,
    )
    result["with_plan"] = with_plan
    update: dict[str, Any] = {"execution": result, "winner": agent.name,
                              "answer": result["answer"]}
    events = edited + ([Event(kind="execution_failed", agent=agent.name,
                              detail=result["error"])] if result["error"] else [])
    if events:
        update["events"] = events
    return update
