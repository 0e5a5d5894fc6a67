"""The reasoning executor: carry out the winning plan in one call, end with an answer tag.

The auction's default execution prompt fences the task as data, so the task's own
request for an ``<answer>`` tag reads as data too; small models then often end
without one and grading falls back to their last line. This executor keeps the
default prompt and adds the format demand outside the fence (as the coding
executor demands one fenced code block), so what is graded is what the model
meant as its answer.

Input ``{"task", "strategy", "model", "agent"}`` (+ ``max_tokens``), output the
reply text, which ``tasks.verify`` grades through ``extract_final_answer``.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import HumanMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda

from sale_graph.calls import message_text
from sale_graph.prompts import execute_messages

__all__ = ["ANSWER_FORMAT", "reasoning_executor", "reasoning_messages"]

# No example value on purpose: given "e.g. <answer>42</answer>", a 0.5B model
# answered 42 to every question.
ANSWER_FORMAT = (
    "Work through the plan, then end your reply with the final answer alone inside "
    "<answer></answer> tags."
)
ANSWER_FORMAT_DIRECT = (
    "Work through the task, then end your reply with the final answer alone inside "
    "<answer></answer> tags."
)


def reasoning_messages(agent: str, task: str, plan: str) -> list[Any]:
    """The default execution prompt with the answer format appended outside the fences.

    An empty plan means answering directly: the direct prompt, and no talk of a plan.
    """
    messages = execute_messages(agent, task, plan)
    last = messages[-1]
    demand = ANSWER_FORMAT if plan.strip() else ANSWER_FORMAT_DIRECT
    messages[-1] = HumanMessage(f"{message_text(last)}\n\n{demand}")
    return messages


async def _answer(inputs: dict[str, Any], config: RunnableConfig) -> str:
    messages = reasoning_messages(inputs["agent"], inputs["task"], inputs.get("strategy") or "")
    kwargs = {"max_tokens": inputs["max_tokens"]} if inputs.get("max_tokens") else {}
    reply = await inputs["model"].ainvoke(messages, config=config, **kwargs)
    return message_text(reply)


reasoning_executor: Runnable = RunnableLambda(_answer, name="reasoning_executor")
