"""Shared fixtures of the benchmark tests: a scripted chat model (no LLM runs here)."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult


class ScriptedChat(BaseChatModel):
    """Returns ``replies`` in order (the last one repeats) and records every prompt."""

    replies: list[str]
    model_name: str = "scripted"
    temperature: float = 0.0
    calls: int = 0
    prompts: list[list[BaseMessage]] = []
    outputs: list[AIMessage] = []
    call_kwargs: list[dict[str, Any]] = []

    @property
    def _llm_type(self) -> str:
        return "scripted-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "temperature": self.temperature}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text = self.replies[min(self.calls, len(self.replies) - 1)]
        self.calls += 1
        self.prompts.append(list(messages))
        self.call_kwargs.append(dict(kwargs))
        n_in = sum(len(str(m.content).split()) for m in messages)
        n_out = len(text.split())
        message = AIMessage(
            content=text,
            usage_metadata={
                "input_tokens": n_in,
                "output_tokens": n_out,
                "total_tokens": n_in + n_out,
            },
            response_metadata={
                "model_name": self.model_name,
                "mean_token_entropy": 0.25 * self.calls,
                "entropy_method": "full-vocabulary",
                "generation_seconds": 0.5,
            },
        )
        self.outputs.append(message)
        return ChatResult(generations=[ChatGeneration(message=message)])


@pytest.fixture
def scripted() -> type[ScriptedChat]:
    """The ScriptedChat class: ``scripted(replies=[...])`` builds a model."""
    return ScriptedChat
