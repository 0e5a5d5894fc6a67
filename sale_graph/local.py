"""Embedded local backend: llama.cpp models as LangChain chat models.

Runs GGUF models in-process through llama-cpp-python, so a whole auction works
offline. Besides text, every reply carries the exact mean token entropy of the
generated tokens (SALE's H(s) term), measured over the full vocabulary.

CPU discipline matters more than anything else here. A llama.cpp context is not
safe to use from two threads at once, and two models generating at the same
time on a small machine oversubscribe its cores (llama.cpp threads spin-wait),
which makes both slower than running them one after the other. So every call
takes the model's own lock and then a process-wide CPU gate, whose size comes
from ``SALE_LOCAL_PARALLEL`` (default 1). Locks are always taken in that order,
so waiting threads can never deadlock.
"""

from __future__ import annotations

import asyncio
import codecs
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.chat_models import LC_ID_PREFIX
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import Field

from sale_graph import entropy
from sale_graph.agents import Agent
from sale_graph.calls import content_text, wants_tokens
from sale_graph.errors import ModelFileError, PoolConfigError
from sale_graph.model_files import MODELS, model_path
from sale_graph.native_build import ensure_safe_build

PARALLEL_ENV = "SALE_LOCAL_PARALLEL"

# llama.cpp's OpenMP threads spin while they wait (GNU OpenMP: 300,000 spins by
# default), holding their core. Two llama.cpp processes on one 2-core machine (a
# server beside a benchmark, a test run) spun on each other's cores: the 1.5B fell to
# 0.5 tok/s. Measured (64 tokens; two processes at once, each):
#   default spin           alone 14.4 tok/s   two at once  0.5 each
#   GOMP_SPINCOUNT=10000   alone 14.4          two at once  4.4 each
#   OMP_WAIT_POLICY=PASSIVE alone 10.5         two at once  7.7 each
# ``sale_graph/__init__.py`` sets the short spin before any OpenMP runtime loads
# (torch's, for the embedder, is the one llama.cpp shares): a lone process keeps its
# speed and a shared machine no longer stalls. A machine that runs several llama.cpp
# processes all the time gains from OMP_WAIT_POLICY=PASSIVE; a value the user set wins.
# An app that imports torch before sale_graph keeps torch's choice.

# The paper's ladder tops out at Qwen3 32B for $0.36 per Mtok; local agents are
# priced on the same per-parameter rate so that cost terms stay comparable.
PAPER_TOP_PRICE = 0.36
PAPER_TOP_PARAMS = 32e9

PRESETS: dict[str, tuple[str, ...]] = {
    # the default pool by measurement (benchmarks/README.md, step 5): on the same 120
    # test tasks its staged rows equal the three-agent pool's, task for task (neither
    # fit offers the 135M a task), and its paper auction is nearer the 1.5B
    "local": ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"),
    "local-three": ("smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"),
    "local-small": ("smollm2-135m", "qwen2.5-coder-0.5b"),
    # the same two models as "local", under the name the benchmark's run of them keeps
    "local-coder": ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"),
}

_CALL_OPTIONS = frozenset({"max_tokens", "grammar", "temperature", "seed", "choices"})
_POLL_SECONDS = 0.05


class _Cancelled(Exception):
    """The awaiting coroutine went away; its result will never be read."""


# --- process-wide state --------------------------------------------------------------------------

_gate_lock = threading.Lock()
_gate: threading.BoundedSemaphore | None = None


def local_parallelism() -> int:
    """How many local generations may run at once (``SALE_LOCAL_PARALLEL``, default 1)."""
    raw = os.environ.get(PARALLEL_ENV, "").strip()
    if not raw:
        return 1
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise PoolConfigError(f"{PARALLEL_ENV} must be a positive integer, got {raw!r}")
    return value


def _cpu_gate() -> threading.BoundedSemaphore:
    """Return the semaphore all local models share; made on first use so the env is read late."""
    global _gate
    with _gate_lock:
        if _gate is None:
            _gate = threading.BoundedSemaphore(local_parallelism())
        return _gate


def _default_threads() -> int:
    """Split the cores between the generations that may run at once."""
    cores = os.cpu_count() or 1
    return max(1, cores // local_parallelism())


@dataclass
class _Loaded:
    llama: Any
    formatter: Any
    lock: threading.Lock


_models: dict[tuple, _Loaded] = {}
_load_locks: dict[tuple, threading.Lock] = {}
_models_lock = threading.Lock()
_construct_lock = threading.Lock()

_grammars: dict[str, Any] = {}
_grammars_lock = threading.Lock()


def _grammar(text: str, llama: Any) -> Any:
    """Compiled GBNF grammar, checked once and cached per source string.

    llama.cpp crashes the process on a grammar it cannot parse, so each new
    grammar is first parsed on its own and rejected with a ValueError.
    """
    import llama_cpp
    from llama_cpp.llama_grammar import LLAMA_GRAMMAR_DEFAULT_ROOT, LlamaGrammar

    with _grammars_lock:
        compiled = _grammars.get(text)
        if compiled is None:
            compiled = LlamaGrammar.from_string(text, verbose=False)
            vocab = llama_cpp.llama_model_get_vocab(llama.model)
            probe = llama_cpp.llama_sampler_init_grammar(
                vocab, text.encode("utf-8"), LLAMA_GRAMMAR_DEFAULT_ROOT.encode("utf-8")
            )
            if not probe:
                raise ValueError(f"invalid GBNF grammar (needs a 'root' rule): {text!r}")
            llama_cpp.llama_sampler_free(probe)
            _grammars[text] = compiled
        return compiled


def _chat_formatter(llama: Any, path: str) -> Any:
    """Build the model's own chat template, as llama-cpp-python would.

    We format prompts ourselves rather than call ``create_chat_completion``
    because only ``create_completion`` accepts stopping criteria, which carry
    the compute deadline.
    """
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llama.metadata.get("tokenizer.chat_template")
    if not template:
        raise ModelFileError(f"{path} has no chat template: it is not an instruction-tuned model")

    def token_text(token: int) -> str:
        if token < 0:
            return ""
        return llama.detokenize([token], special=True).decode("utf-8", errors="replace")

    eos = llama.token_eos()
    return Jinja2ChatFormatter(
        template=template,
        eos_token=token_text(eos),
        bos_token=token_text(llama.token_bos()),
        stop_token_ids=[eos] if eos >= 0 else None,
    )


def _load(key: tuple, path: str, n_ctx: int, n_threads: int, verbose: bool) -> _Loaded:
    """Load a GGUF once per process and parameters; 1 GB of weights is not worth twice."""
    with _models_lock:
        loaded = _models.get(key)
        if loaded is not None:
            return loaded
        load_lock = _load_locks.setdefault(key, threading.Lock())
    with load_lock:
        with _models_lock:
            loaded = _models.get(key)
        if loaded is not None:
            return loaded
        if not Path(path).is_file():
            raise ModelFileError(f"model file {path} does not exist")
        ensure_safe_build()  # a segfault would take the whole process with it
        from llama_cpp import Llama

        try:
            # One construction at a time: llama-cpp-python silences loading by pointing
            # fds 1 and 2 at /dev/null and back; two loads interleaving in threads can
            # leave stderr pointing at /dev/null for good.
            with _construct_lock:
                llama = Llama(
                    model_path=path,
                    n_ctx=n_ctx,
                    n_threads=n_threads,
                    n_threads_batch=n_threads,
                    n_gpu_layers=0,
                    logits_all=False,
                    verbose=verbose,
                )
        except ValueError as exc:
            raise ModelFileError(f"llama.cpp could not load {path}: {exc}") from exc
        loaded = _Loaded(
            llama=llama,
            formatter=_chat_formatter(llama, path),
            lock=threading.Lock(),
        )
        with _models_lock:
            _models[key] = loaded
        return loaded


@contextmanager
def _holding(lock: threading.Lock | threading.BoundedSemaphore, cancel: threading.Event | None):
    """Acquire ``lock``, giving up if the caller was cancelled while queueing."""
    if cancel is None:
        lock.acquire()
    else:
        while not lock.acquire(timeout=_POLL_SECONDS):
            if cancel.is_set():
                raise _Cancelled
    try:
        yield
    finally:
        lock.release()


# --- entropy and deadlines -----------------------------------------------------------------------


def fast_logits_entropy(logits: np.ndarray) -> float:
    """Entropy (nats) of softmax(logits), fast enough to run on every generated token.

    Same value as ``entropy.logits_entropy`` to ~1e-5 nats, but about 15x faster
    on a 152k vocabulary (0.4 ms instead of 5.7 ms, against ~25 ms per token),
    because it stays in float32 and needs one ``exp`` and one dot product:
    H = log Z - sum(e_i * x_i) / Z with x = logits - max and e = exp(x).
    Masked (-inf) logits make that formula NaN; those rare calls take the exact path.
    """
    x = np.array(logits, dtype=np.float32)
    if x.size == 0:
        return 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        x -= x.max()
        e = np.exp(x)
        z = float(e.sum(dtype=np.float64))
        h = math.log(z) - float(e @ x) / z if z > 0 else math.nan
    if not math.isfinite(h):
        return entropy.logits_entropy(logits)
    return max(h, 0.0)


def choice_distribution(logits: np.ndarray, ids: Sequence[int]) -> list[float]:
    """Softmax of the first token's raw logits restricted to the ``ids`` (sums to 1).

    With a grammar that admits exactly these tokens, this is the distribution the
    constrained sampler draws from at temperature 1: the model's graded opinion,
    where greedy decoding keeps only its mode.
    """
    z = np.asarray(logits, dtype=np.float64)[list(ids)]
    finite = np.isfinite(z)
    if not finite.any():
        return [1.0 / len(ids)] * len(ids)
    e = np.where(finite, np.exp(z - z[finite].max()), 0.0)
    return [float(v) for v in e / e.sum()]


def _choice_ids(llama: Any, choices: str) -> list[int]:
    """Token ids of single-token choices, e.g. the digits of a vote scale."""
    if not isinstance(choices, str) or not choices or len(set(choices)) != len(choices):
        raise ValueError(f"choices must be a string of distinct characters, got {choices!r}")
    ids = []
    for c in choices:
        tokens = llama.tokenize(c.encode("utf-8"), add_bos=False, special=False)
        if len(tokens) != 1:
            raise ValueError(f"choice {c!r} is not a single token for this model")
        ids.append(tokens[0])
    return ids


class _EntropyMeter:
    """Logits processor that records each generated token's full-vocabulary entropy.

    llama-cpp-python runs it first in the sampler chain, so it sees the raw
    logits, before grammar masking or greedy selection: the entropy is the
    model's own uncertainty at temperature 1, whatever the decoding settings.
    Given ``choice_ids`` it also keeps the first token's distribution over them.
    """

    def __init__(self, choice_ids: Sequence[int] = ()) -> None:
        self.values: list[float] = []
        self.choice_ids = list(choice_ids)
        self.choice_probs: list[float] | None = None
        # every step's distribution over the choices, and the token each step produced
        # (seen as the last input id of the next step): a listwise vote reads one
        # distribution per digit it wrote
        self.step_probs: list[list[float]] = []
        self.step_tokens: list[int] = []

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if self.choice_ids:
            if self.values:
                self.step_tokens.append(int(input_ids[-1]))
            probs = choice_distribution(scores, self.choice_ids)
            if not self.values:
                self.choice_probs = probs
            self.step_probs.append(probs)
        self.values.append(fast_logits_entropy(scores))
        return scores

    def choice_steps(self, last_text: str, choices: str, written: int) -> list[list[float]]:
        """Distributions of the steps that wrote one choice token, in order.

        ``written`` is the number of tokens in the reply: a last step beyond them
        produced the end-of-text token, not a choice.
        """
        tokens = list(self.step_tokens)
        if len(tokens) < min(written, len(self.step_probs)):  # the last step wrote the text's end
            last = last_text[-1:] if last_text else ""
            tokens.append(self.choice_ids[choices.index(last)] if last and last in choices
                          else -1)
        return [p for p, t in zip(self.step_probs, tokens, strict=False) if t in self.choice_ids]

    def mean(self) -> float | None:
        return float(np.mean(self.values)) if self.values else None


class _Deadline:
    """Stopping criterion: stop on compute-time overrun or caller cancellation."""

    def __init__(self, seconds: float, cancel: threading.Event | None) -> None:
        self.seconds = seconds
        self.cancel = cancel
        self.started = time.monotonic()
        self.expired = False
        self.cancelled = False

    def __call__(self, input_ids: np.ndarray, logits: np.ndarray) -> bool:
        if self.cancel is not None and self.cancel.is_set():
            self.cancelled = True
        elif time.monotonic() - self.started > self.seconds:
            self.expired = True
        return self.expired or self.cancelled


class _TokenRelay:
    """Stopping criterion that never stops: hands each new piece of text to ``emit``.

    It is how a caller streaming the run (LangGraph's ``messages`` mode, ``sale
    serve``) sees an answer as it is written. llama.cpp shows the criteria the
    tokens evaluated so far, so the relay trails by one token; ``finish`` sends the
    rest from the final text. A tail that could begin a stop string is held back
    (the final text is cut there), so what was sent is always a prefix of it.
    """

    def __init__(self, llama: Any, prompt_tokens: int, stops: Sequence[str],
                 emit: Callable[[str], None]) -> None:
        self.llama = llama
        self.seen = prompt_tokens
        self.stops = [s for s in stops if s]
        self.emit = emit
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        self.text = ""
        self.sent = 0
        self.stopped = False

    def __call__(self, input_ids: np.ndarray, logits: np.ndarray) -> bool:
        new = [int(t) for t in input_ids[self.seen:]]
        self.seen = len(input_ids)
        if new and not self.stopped:
            self.text += self.decoder.decode(self.llama.detokenize(new))
            self._send(self._safe_end())
        return False

    def _safe_end(self) -> int:
        """How much of the text cannot change: up to a stop string or its possible start."""
        end = len(self.text)
        for stop in self.stops:
            found = self.text.find(stop, self.sent)
            if found >= 0:
                self.stopped = True
                end = min(end, found)
            for size in range(min(len(stop) - 1, len(self.text)), 0, -1):
                if self.text.endswith(stop[:size]):
                    end = min(end, len(self.text) - size)
                    break
        return end

    def _send(self, end: int) -> None:
        if end > self.sent:
            piece, self.sent = self.text[self.sent:end], end
            self.emit(piece)

    def finish(self, final_text: str) -> None:
        """Send what the final text holds beyond what was sent (nothing if it disagrees)."""
        sent = self.text[:self.sent]
        self.text, self.stopped = final_text, True
        if final_text.startswith(sent):
            self._send(len(final_text))


def _as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


# --- message conversion --------------------------------------------------------------------------


def to_llama_messages(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages -> the role/content dicts llama.cpp chat templates expect."""
    converted = []
    for message in messages:
        if isinstance(message, SystemMessage):
            role = "system"
        elif isinstance(message, HumanMessage):
            role = "user"
        elif isinstance(message, AIMessage):
            role = "assistant"
        elif isinstance(message, ToolMessage):
            role = "tool"
        elif isinstance(message, ChatMessage):
            role = message.role
        else:
            raise ValueError(f"unsupported message type {type(message).__name__}")
        try:
            text = content_text(message.content, strict=True)
        except ValueError as exc:
            raise ValueError(f"local models accept {exc}") from None
        converted.append({"role": role, "content": text})
    return converted


# --- the chat model ------------------------------------------------------------------------------


class LlamaCppChatModel(BaseChatModel):
    """A GGUF model run in-process by llama.cpp, reporting exact token entropy.

    ``temperature`` defaults to 0 (greedy decoding): the same task and pool then
    give the same bids, votes and winner, so auctions are reproducible and their
    audits can be compared run to run. Entropy is unaffected: it is measured on
    the raw logits, not on the sampling distribution.

    Per-call options (``invoke(..., max_tokens=, grammar=, temperature=, seed=, choices=)``):
    ``grammar`` is a GBNF string, e.g. ``'root ::= [0-5]'`` for a jury vote.
    ``choices`` (e.g. ``"012345"``, each a single token) adds
    ``response_metadata["choice_probs"]``: the first token's probability of each
    choice, renormalised over them (see ``choice_distribution``).

    A call that spends more than ``max_seconds`` generating (time spent queueing
    for the model or the CPU gate does not count) raises ``TimeoutError``. The
    check runs after every generated token, so a long prompt's prefill is not
    interrupted.

    ``n_threads`` defaults to the cores divided by ``SALE_LOCAL_PARALLEL``. On a
    machine shared with other busy processes, ``n_threads=1`` is slower at best
    but far steadier: llama.cpp's threads spin-wait for each other, so one of
    them being descheduled can stall a multi-threaded generation several-fold.
    """

    model_path: str
    model_name: str
    n_ctx: int = Field(default=4096, gt=0)
    n_threads: int | None = Field(default=None, gt=0)
    temperature: float = Field(default=0.0, ge=0.0)
    max_tokens: int = Field(default=256, gt=0)
    seed: int = 0
    max_seconds: float = Field(default=300.0, gt=0)
    verbose: bool = False

    @property
    def _llm_type(self) -> str:
        return "llama-cpp-local"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model_path": self.model_path,
            "n_ctx": self.n_ctx,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
        }

    def _threads(self) -> int:
        return self.n_threads or _default_threads()

    def _cache_key(self) -> tuple:
        return (os.path.realpath(self.model_path), self.n_ctx, self._threads(), self.verbose)

    def load(self) -> Any:
        """Load (or reuse) the underlying ``llama_cpp.Llama``; calls do this lazily."""
        return self._loaded().llama

    def _loaded(self) -> _Loaded:
        return _load(self._cache_key(), self.model_path, self.n_ctx, self._threads(), self.verbose)

    def _run(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        cancel: threading.Event | None,
        options: Mapping[str, Any],
        emit: Callable[[str], None] | None = None,
        message_id: str | None = None,
    ) -> ChatResult:
        from llama_cpp import LogitsProcessorList, StoppingCriteriaList

        unknown = set(options) - _CALL_OPTIONS
        if unknown:
            raise TypeError(
                f"{self.model_name}: unsupported call options {sorted(unknown)}; "
                f"supported: {sorted(_CALL_OPTIONS)}"
            )
        chat = to_llama_messages(messages)
        max_tokens = int(options.get("max_tokens") or self.max_tokens)
        temperature = float(options.get("temperature", self.temperature))
        seed = int(options.get("seed", self.seed))
        grammar_text = options.get("grammar")
        loaded = self._loaded()
        grammar = _grammar(grammar_text, loaded.llama) if grammar_text else None
        choices = options.get("choices")
        choice_ids = _choice_ids(loaded.llama, choices) if choices is not None else []

        queued = time.monotonic()
        with _holding(loaded.lock, cancel), _holding(_cpu_gate(), cancel):
            meter = _EntropyMeter(choice_ids)
            deadline = _Deadline(self.max_seconds, cancel)
            wait_seconds = deadline.started - queued
            prompt = loaded.formatter(messages=chat)
            tokens = loaded.llama.tokenize(
                prompt.prompt.encode("utf-8"), add_bos=not prompt.added_special, special=True
            )
            stops = list(stop or []) + _as_list(prompt.stop)
            relay = _TokenRelay(loaded.llama, len(tokens), stops, emit) if emit else None
            criteria = [deadline, *([relay] if relay else []), *(prompt.stopping_criteria or [])]
            response = loaded.llama.create_completion(
                prompt=tokens,
                temperature=temperature,
                seed=seed,
                max_tokens=max_tokens,
                stop=stops,
                repeat_penalty=1.0,
                grammar=grammar,
                logits_processor=LogitsProcessorList([meter]),
                stopping_criteria=StoppingCriteriaList(criteria),
            )
            seconds = time.monotonic() - deadline.started
        if deadline.cancelled:
            raise _Cancelled
        if deadline.expired:
            raise TimeoutError(f"{self.model_name} exceeded {self.max_seconds}s")

        choice = response["choices"][0]
        text = choice.get("text") or ""
        if relay is not None:
            relay.finish(text)
        usage = response.get("usage") or {}
        input_tokens = int(usage.get("prompt_tokens", 0))
        output_tokens = int(usage.get("completion_tokens", 0))
        metadata: dict[str, Any] = {
            "model_name": self.model_name,
            "finish_reason": choice.get("finish_reason"),
            "mean_token_entropy": meter.mean(),
            "entropy_method": entropy.EXACT,
            "generation_seconds": seconds,
            "queue_seconds": wait_seconds,
        }
        if choices is not None and meter.choice_probs is not None:
            metadata["choice_probs"] = dict(zip(choices, meter.choice_probs, strict=True))
            metadata["choice_steps"] = [dict(zip(choices, p, strict=True))
                                        for p in meter.choice_steps(text, choices,
                                                                    output_tokens)]
        message = AIMessage(
            content=text,
            id=message_id,
            usage_metadata={
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "total_tokens": input_tokens + output_tokens,
            },
            response_metadata=metadata,
        )
        return ChatResult(
            generations=[ChatGeneration(message=message)],
            llm_output={"model_name": self.model_name, "token_usage": dict(usage)},
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if not (run_manager and wants_tokens(run_manager.handlers)):
            return self._run(messages, stop, None, kwargs)
        message_id = _message_id(run_manager.run_id)

        def emit(piece: str) -> None:
            run_manager.on_llm_new_token(piece, chunk=_chunk(piece, message_id))

        return self._run(messages, stop, None, kwargs, emit, message_id)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # A worker thread keeps the event loop free; if the caller gives up, the
        # event stops the generation at the next token and releases the CPU gate.
        cancel = threading.Event()
        if not (run_manager and wants_tokens(run_manager.handlers)):
            try:
                return await asyncio.to_thread(self._run, messages, stop, cancel, kwargs)
            except asyncio.CancelledError:
                cancel.set()
                raise
        # The worker never waits for a listener: it queues each piece for one task on
        # the loop, which hands them over in order; the reply returns once all are out.
        loop, manager = asyncio.get_running_loop(), run_manager
        message_id = _message_id(manager.run_id)
        pieces: asyncio.Queue[str | None] = asyncio.Queue()

        async def hand_over() -> None:
            while (piece := await pieces.get()) is not None:
                await manager.on_llm_new_token(piece, chunk=_chunk(piece, message_id))

        def emit(piece: str) -> None:
            loop.call_soon_threadsafe(pieces.put_nowait, piece)

        relay = asyncio.create_task(hand_over())
        try:
            result = await asyncio.to_thread(self._run, messages, stop, cancel, kwargs,
                                             emit, message_id)
        except BaseException:
            cancel.set()
            relay.cancel()
            raise
        pieces.put_nowait(None)
        await relay
        return result


def _message_id(run_id: Any) -> str:
    """The id a streamed reply's pieces and its final message share.

    A listener that has the pieces (LangGraph's ``messages`` mode) then drops the repeat.
    """
    return f"{LC_ID_PREFIX}-{run_id}"


def _chunk(piece: str, message_id: str) -> ChatGenerationChunk:
    return ChatGenerationChunk(message=AIMessageChunk(content=piece, id=message_id))


# --- the default local pool ----------------------------------------------------------------------


def price_for_params(params: float) -> float:
    """Dollars per Mtok for a model of ``params`` parameters on the paper's price ladder."""
    return PAPER_TOP_PRICE * params / PAPER_TOP_PARAMS


def default_pool(preset: str = "local", **model_options: Any) -> list[Agent]:
    """Agents backed by the local GGUF models that ship in PyPI packages.

    Presets: ``"local"`` (Qwen2.5-Coder-0.5B and -1.5B; ``"local-coder"`` is the
    same pair), ``"local-three"`` (SmolLM2-135M beside them) and ``"local-small"``
    (SmolLM2-135M and Qwen2.5-Coder-0.5B; about half the memory and much faster).

    Price rule: proportional to parameter count on the paper's ladder, whose
    largest agent (Qwen3 32B) costs $0.36 per Mtok, i.e. $0.01125 per billion
    parameters per Mtok: ``price = 0.36 * params / 32e9``. So 135M -> $0.00152,
    0.5B -> $0.00556, 1.5B -> $0.0173. Only ratios matter to the auction (the
    cost weight absorbs the scale), and those follow model size as in the paper.

    ``model_options`` (e.g. ``max_tokens=128``) go to every ``LlamaCppChatModel``.
    Model files are located (and split models assembled) here, so a missing
    weight package fails now rather than in the middle of an auction.
    """
    names = PRESETS.get(preset)
    if names is None:
        raise PoolConfigError(
            f"unknown local pool preset {preset!r}; valid presets: {', '.join(PRESETS)}"
        )
    given = set(model_options)
    bad = (given - set(LlamaCppChatModel.model_fields)) | (given & {"model_path", "model_name"})
    if bad:
        raise PoolConfigError(f"unsupported model options for the local pool: {sorted(bad)}")
    agents = []
    for name in names:
        spec = MODELS[name]
        try:
            path = model_path(name)
        except ModelFileError as exc:
            raise PoolConfigError(str(exc)) from exc
        model = LlamaCppChatModel(model_path=str(path), model_name=name, **model_options)
        agents.append(Agent(name=name, model=model, price=price_for_params(spec.params)))
    return agents
