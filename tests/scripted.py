"""A scripted chat model for tests of the graph's mechanics (never the product).

It recognises which auction prompt it is answering (bid, refine, jury, execute)
from the prompt text and replies from its script, reporting token usage and a
fixed entropy like a real backend would. It also counts its calls per kind.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import Field

Reply = str | Exception | Callable[[str], str]


def prompt_kind(messages: list[BaseMessage]) -> str:
    text = "\n".join(str(m.content) for m in messages)
    if "strict judge" in text:
        return "vote"
    if "In past auctions" in text:
        return "refine"
    if "You won the right" in text:
        return "execute"
    if "Solve the task and give" in text:
        return "direct"
    if "bidding" in text:
        return "bid"
    return "other"


class ScriptedChatModel(BaseChatModel):
    """Replies by prompt kind; a reply may be text, an exception, or f(prompt)->text."""

    script: dict[str, Any] = Field(default_factory=dict)
    entropy: float | None = 1.0
    # for votes: {"0": p0, ..., "5": p5} or f(prompt) -> that, reported like a local model
    digit_probs: Any = None
    delay: float = 0.0
    calls: Counter = Field(default_factory=Counter)
    # prompt kinds whose replies are handed to callbacks word by word before returning
    stream_kinds: tuple[str, ...] = ()
    gate: Any = None
    gate_opened: bool | None = None
    prompts: list[tuple[str, str]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _reply(self, messages: list[BaseMessage]) -> tuple[str, str]:
        kind = prompt_kind(messages)
        self.calls[kind] += 1
        prompt = "\n".join(str(m.content) for m in messages)
        self.prompts.append((kind, prompt))
        reply = self.script.get(kind, "3" if kind == "vote" else f"{kind} reply")
        if isinstance(reply, list):  # successive replies
            reply = reply[min(self.calls[kind] - 1, len(reply) - 1)]
        if isinstance(reply, Exception):
            raise reply
        if callable(reply):
            reply = reply(prompt)
        return kind, reply

    def _result(self, text: str, messages: list[BaseMessage]) -> ChatResult:
        kind = prompt_kind(messages)
        n_in = sum(len(str(m.content).split()) for m in messages)
        n_out = len(text.split())
        meta: dict[str, Any] = {"model_name": "scripted"}
        if self.entropy is not None:
            meta.update(mean_token_entropy=self.entropy, entropy_method="scripted")
        if kind == "vote" and self.digit_probs is not None:
            probs = self.digit_probs
            meta["choice_probs"] = probs("\n".join(str(m.content) for m in messages)) if callable(
                probs) else dict(probs)
        message = AIMessage(
            content=text,
            usage_metadata={"input_tokens": n_in, "output_tokens": n_out,
                            "total_tokens": n_in + n_out},
            response_metadata=meta,
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        _, text = self._reply(messages)
        return self._result(text, messages)

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        if self.delay:
            await asyncio.sleep(self.delay)
        kind, text = self._reply(messages)
        if kind in self.stream_kinds and run_manager is not None:
            message_id = f"lc_run--{run_manager.run_id}"  # pieces and reply share it
            await self._stream_words(text, run_manager, message_id)
            result = self._result(text, messages)
            result.generations[0].message.id = message_id
            return result
        return self._result(text, messages)

    async def _stream_words(self, text: str, run_manager: Any, message_id: str) -> None:
        """Hand the reply over word by word, as a streaming backend does; then, given a
        gate, hold the reply back until a listener has opened it (or 10 s have passed)."""
        for piece in re.findall(r"\S+\s*|\s+", text):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece, id=message_id))
            await run_manager.on_llm_new_token(piece, chunk=chunk)
        if self.gate is not None:
            self.gate_opened = await asyncio.to_thread(self.gate.wait, 10)


def votes_by_plan(table: dict[str, str], default: str = "3") -> Callable[[str], str]:
    """A jury reply chosen by a marker word found in the plan being judged."""

    def reply(prompt: str) -> str:
        plan = prompt.split("<plan>", 1)[-1]
        for marker, vote in table.items():
            if marker in plan:
                return vote
        return default

    return reply
