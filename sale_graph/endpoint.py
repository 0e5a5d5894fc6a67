"""Agents served over an OpenAI-compatible chat API, and pools described in a file.

Any server that speaks the OpenAI chat-completions protocol can host a bidder:
OpenAI itself, vLLM, the llama.cpp server (``python -m llama_cpp.server``),
Ollama, LM Studio, ... Point ``base_url`` at it; for a local server the API key
is a placeholder because such servers ignore it.

Entropy over an API is an approximation. The protocol returns, for each
generated token, only the ``top_logprobs`` most likely alternatives (k <= 20),
not the full next-token distribution. ``sale_graph.entropy`` renormalises those
k probabilities to sum to one and averages their entropy over the reply. The
result under-estimates the true entropy (the tail is dropped), is bounded by
ln(k), and is comparable between agents only when they use the same k; keep one
``top_logprobs`` for a whole pool. ``top_logprobs=0`` switches log-probabilities
off for servers or models that reject them; the auction then counts that agent's
entropy term as zero and its audit says so.

Token limits: langchain-openai sends ``max_tokens`` as ``max_completion_tokens``,
which some servers (llama-cpp-python's) ignore; against any server other than
OpenAI the limit is therefore sent under both names (``OpenAICompatibleChat``).

A pool can be written as JSON (``{"agents": [spec, ...]}``) or TOML
(``[[agents]]`` tables) and mix backends::

    {"agents": [
      {"name": "small", "price": 0.05, "backend": "local", "model": "qwen2.5-coder-0.5b"},
      {"name": "big", "price": 0.36, "backend": "openai", "model": "Qwen/Qwen3-32B",
       "base_url": "http://127.0.0.1:8000/v1"}
    ]}

Secrets never go into pool files: a spec names the environment variable that
holds the key (``api_key_env``).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
import tomllib
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import openai
from langchain_core.language_models import LanguageModelInput
from langchain_openai import ChatOpenAI
from pydantic import SecretStr, ValidationError

from sale_graph.agents import Agent, validate_pool
from sale_graph.errors import ModelFileError, PoolConfigError

__all__ = ["OpenAICompatibleChat", "agent_from_spec", "load_pool_file", "openai_agent"]

# Local servers ignore the key, but the OpenAI client refuses to start without one.
_PLACEHOLDER_KEY = "not-needed"
_OPENAI_HOSTS = frozenset({"api.openai.com"})
_MAX_TOP_LOGPROBS = 20

_COMMON_FIELDS = frozenset({"name", "price", "backend", "model", "max_concurrency"})
_OPENAI_FIELDS = _COMMON_FIELDS | {
    "base_url",
    "api_key_env",
    "top_logprobs",
    "temperature",
    "timeout",
    "max_retries",
    "max_tokens",
}
_LOCAL_FIELDS = _COMMON_FIELDS | {
    "n_ctx",
    "n_threads",
    "max_tokens",
    "max_seconds",
    "temperature",
    "seed",
}
_BACKENDS = {"openai": _OPENAI_FIELDS, "local": _LOCAL_FIELDS}


class OpenAICompatibleChat(ChatOpenAI):
    """``ChatOpenAI`` that also sends the legacy ``max_tokens`` to non-OpenAI servers.

    langchain-openai renames ``max_tokens`` to ``max_completion_tokens``, which OpenAI
    expects but llama-cpp-python's server (0.3.x) silently ignores: a two-token jury
    vote would then run on to a stop token or the context limit. With
    ``mirror_max_tokens`` both names carry the same limit, which every server honours.
    """

    mirror_max_tokens: bool = False

    def _get_request_payload(
        self,
        input_: LanguageModelInput,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> dict:
        payload = super()._get_request_payload(input_, stop=stop, **kwargs)
        limit = payload.get("max_completion_tokens")
        if self.mirror_max_tokens and limit is not None and "messages" in payload:
            payload.setdefault("max_tokens", limit)
        return payload


class LoopLocalAsyncClient(openai.DefaultAsyncHttpxClient):
    """An async HTTP client that keeps one connection pool per event loop.

    httpx's pooled connections belong to the loop that opened them, and ChatOpenAI
    otherwise shares one async client per process: after one ``asyncio.run`` (a
    script's second run, a notebook mixing ``invoke`` and ``ainvoke``) every call
    reused a dead loop's connection and failed ("Event loop is closed", "bound to a
    different event loop"). Requests are built here and sent by the running loop's
    own client, made with the OpenAI SDK's defaults (and its HTTP library, whichever
    that is); a loop's pool goes with the loop.

    ``socket_options`` (ChatOpenAI's ``http_socket_options``: ``None`` for
    langchain-openai's TCP keepalive defaults, ``()`` for none) are applied as ChatOpenAI
    applies them to the client this one replaces, so a long generation behind a NAT
    or load balancer is not cut as an idle connection.
    """

    def __init__(self, *, socket_options: Any = None, **settings: Any) -> None:
        super().__init__(**settings)  # builds requests; its own pool is never used
        self._settings = settings
        # a caller's own transport (or mounts) decides its sockets itself
        self._socket_options = () if {"transport", "mounts"} & set(settings) else socket_options
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary())
        self._pools_guard = threading.Lock()

    def _pool(self) -> Any:
        loop = asyncio.get_running_loop()
        with self._pools_guard:
            # a pool's open connections keep its loop alive, so the weak key alone never
            # lets go: a closed loop's pool is dropped here (its sockets with it)
            for dead in [old for old in self._pools if old.is_closed()]:
                del self._pools[dead]
            pool = self._pools.get(loop)
            if pool is None:
                pool = self._pools[loop] = openai.DefaultAsyncHttpxClient(  # a transport each
                    **self._settings, **_keepalive_transport(self._socket_options))
            return pool

    async def send(self, request: Any, **kwargs: Any) -> Any:
        return await self._pool().send(request, **kwargs)

    async def aclose(self) -> None:
        """Close this loop's pool (another loop's connections can only close on it)."""
        with self._pools_guard:
            pool = self._pools.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            await pool.aclose()
        await super().aclose()


def _lc_client_utils() -> Any:
    """langchain-openai's socket-option rules, or None in a version without them."""
    try:
        from langchain_openai.chat_models import _client_utils as lc
    except ImportError:
        return None
    needed = ("_should_bypass_socket_options_for_proxy_env", "_resolve_socket_options",
              "_DEFAULT_CONNECTION_LIMITS", "httpx")
    return lc if all(hasattr(lc, name) for name in needed) else None


def _proxy_in_environment(socket_options: Any) -> bool:
    """Whether langchain-openai would leave sockets alone to keep httpx's proxy detection."""
    lc = _lc_client_utils()
    return lc is not None and bool(lc._should_bypass_socket_options_for_proxy_env(
        http_socket_options=socket_options, http_client=None, http_async_client=None,
        openai_proxy=None))


def _keepalive_transport(socket_options: Any) -> dict[str, Any]:
    """``{"transport": ...}`` with ChatOpenAI's socket options, or ``{}`` for the SDK's own.

    Resolved by langchain-openai's own rules (defaults, ``LANGCHAIN_OPENAI_TCP_KEEPALIVE``,
    a proxy in the environment keeping httpx's proxy detection); a langchain-openai
    without them leaves the SDK's defaults.
    """
    lc = _lc_client_utils()
    if lc is None or _proxy_in_environment(socket_options):
        return {}
    options = lc._resolve_socket_options(socket_options)
    if not options:
        return {}
    return {"transport": lc.httpx.AsyncHTTPTransport(
        socket_options=list(options), limits=lc._DEFAULT_CONNECTION_LIMITS)}


def _describe(exc: ValidationError) -> str:
    """Name each offending field, as the other spec errors do."""
    parts = []
    for error in exc.errors():
        field = ".".join(map(str, error["loc"]))
        parts.append(f"field {field!r}: {error['msg']}" if field else error["msg"])
    return "; ".join(parts)


def _is_openai(base_url: str | None) -> bool:
    """Tell OpenAI itself (which checks keys and wants new parameter names) from other servers."""
    if base_url is None:
        return True
    host = (urlparse(base_url).hostname or "").lower()
    return host in _OPENAI_HOSTS


def openai_agent(
    name: str,
    *,
    model: str,
    price: float,
    base_url: str | None = None,
    api_key: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    top_logprobs: int = 5,
    temperature: float = 0.0,
    timeout: float = 120.0,
    max_retries: int = 1,
    max_concurrency: int = 4,
    **model_kwargs: Any,
) -> Agent:
    """Build an Agent backed by ``ChatOpenAI`` that asks for top-k log-probabilities.

    No request is sent here, so a pool can be validated offline; an unreachable
    server surfaces as a failed bid during the auction, not at build time.

    Raises:
        PoolConfigError: no key for the real OpenAI API, or an out-of-range option.

    """
    if not isinstance(model, str) or not model.strip():
        raise PoolConfigError(f"agent {name!r}: model must be a non-empty model id string")
    if isinstance(top_logprobs, bool) or not isinstance(top_logprobs, int):
        raise PoolConfigError(f"agent {name!r}: top_logprobs must be an integer")
    if not 0 <= top_logprobs <= _MAX_TOP_LOGPROBS:
        raise PoolConfigError(
            f"agent {name!r}: top_logprobs must be between 0 and {_MAX_TOP_LOGPROBS}, "
            f"got {top_logprobs}"
        )
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise PoolConfigError(f"agent {name!r}: timeout must be a positive number of seconds")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise PoolConfigError(f"agent {name!r}: max_retries must be an integer >= 0")
    if base_url is not None:
        parsed = urlparse(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise PoolConfigError(
                f"agent {name!r}: base_url must be an http(s) URL such as "
                f"http://127.0.0.1:8000/v1, got {base_url!r}"
            )

    key = api_key or os.environ.get(api_key_env) or None
    if key is None:
        if _is_openai(base_url):
            raise PoolConfigError(
                f"agent {name!r}: no API key for the OpenAI API; set the environment "
                f"variable {api_key_env} or pass api_key (or point base_url at a local server)"
            )
        key = _PLACEHOLDER_KEY

    # A streamed call (any streaming listener makes ChatOpenAI stream: Studio's messages
    # mode) reports usage only when asked; unasked, every bid's cost would be a guess.
    # A server that ignores the request (llama-cpp-python's 0.3) leaves it a flagged guess.
    kwargs: dict[str, Any] = {"stream_usage": True, **model_kwargs}
    if "openai_proxy" not in kwargs and not os.environ.get("OPENAI_PROXY"):
        # with a proxy ChatOpenAI builds its own clients (and refuses one of ours)
        if _proxy_in_environment(kwargs.get("http_socket_options")):
            # ChatOpenAI skips its socket options for an environment proxy only when
            # given no client; beside ours its sync client would lose the proxy
            kwargs["http_socket_options"] = ()
        kwargs.setdefault("http_async_client", LoopLocalAsyncClient(
            timeout=timeout, socket_options=kwargs.get("http_socket_options")))
    if top_logprobs > 0:
        kwargs["logprobs"] = True
        kwargs["top_logprobs"] = top_logprobs
    if base_url is not None:
        kwargs["base_url"] = base_url
    try:
        chat = OpenAICompatibleChat(
            model=model,
            api_key=SecretStr(key),
            temperature=temperature,
            timeout=timeout,
            max_retries=max_retries,
            mirror_max_tokens=not _is_openai(base_url),
            **kwargs,
        )
    except ValidationError as exc:
        raise PoolConfigError(f"agent {name!r}: {_describe(exc)}") from exc
    return Agent(name=name, model=chat, price=price, max_concurrency=max_concurrency)


def _field(spec: Mapping[str, Any], key: str, kinds: tuple[type, ...], label: str) -> Any:
    """Fetch a required field with its type checked, so errors name the field."""
    if key not in spec:
        raise PoolConfigError(f"{label}: missing field {key!r}")
    return _typed(spec, key, kinds, label)


def _typed(spec: Mapping[str, Any], key: str, kinds: tuple[type, ...], label: str) -> Any:
    value = spec[key]
    # bool is an int subclass; true/false is never a valid number here.
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        wanted = " or ".join(k.__name__ for k in kinds)
        raise PoolConfigError(
            f"{label}: field {key!r} must be {wanted}, got {type(value).__name__} {value!r}"
        )
    return value


# Numeric fields of a pool spec and the smallest value each may take; every number
# must also be finite (a NaN temperature or a negative token limit loaded before).
_MINIMUM = {
    "price": 0.0, "temperature": 0.0, "timeout": 0.0, "max_seconds": 0.0,
    "max_tokens": 1, "max_concurrency": 1, "n_ctx": 1, "n_threads": 1,
    "max_retries": 0, "top_logprobs": 0,
}


def _in_range(key: str, value: Any, label: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise PoolConfigError(f"{label}: field {key!r} must be a finite number, got {value!r}")
    low = _MINIMUM.get(key)
    if low is not None and isinstance(value, (int, float)) and value < low:
        raise PoolConfigError(f"{label}: field {key!r} must be >= {low}, got {value!r}")


def _optional(
    spec: Mapping[str, Any], key: str, kinds: tuple[type, ...], label: str
) -> dict[str, Any]:
    if key not in spec or spec[key] is None:
        return {}
    value = _typed(spec, key, kinds, label)
    _in_range(key, value, label)
    return {key: value}


def _local_model_file(model: str, label: str, base_dir: Path | None) -> tuple[Path, str]:
    """Resolve a catalogue name or a .gguf path to (file, display name)."""
    if model.lower().endswith(".gguf"):
        path = Path(model).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise ModelFileError(f"{label}: model file {str(path)!r} does not exist")
        return path, path.stem
    from sale_graph.model_files import get_spec, model_path

    try:
        get_spec(model)
    except ModelFileError as exc:
        raise PoolConfigError(
            f"{label}: field 'model' must be a known local model name or a .gguf path: {exc}"
        ) from exc
    try:
        return Path(model_path(model)), model
    except ModelFileError as exc:
        raise ModelFileError(f"{label}: {exc}") from exc


def agent_from_spec(spec: Mapping[str, Any], *, base_dir: Path | None = None) -> Agent:
    """Build an Agent from a JSON-able mapping, so pools can live in config files.

    ``base_dir`` anchors relative ``.gguf`` paths (the pool file's folder).

    Raises:
        PoolConfigError: unknown backend, missing field, unknown field or bad type.
        ModelFileError: a local model file is missing.

    """
    if not isinstance(spec, Mapping):
        raise PoolConfigError(f"an agent spec must be an object, got {type(spec).__name__}")
    raw_name = spec.get("name")
    label = f"agent {raw_name!r}" if isinstance(raw_name, str) else "agent spec"
    name = _field(spec, "name", (str,), label)
    label = f"agent {name!r}"
    price = _field(spec, "price", (int, float), label)
    backend = _field(spec, "backend", (str,), label)
    if backend not in _BACKENDS:
        raise PoolConfigError(
            f"{label}: field 'backend' must be one of {sorted(_BACKENDS)}, got {backend!r}"
        )
    if "api_key" in spec:
        raise PoolConfigError(
            f"{label}: field 'api_key' is not allowed in a pool spec (keep secrets out of "
            "files); name the environment variable with 'api_key_env' instead"
        )
    unknown = sorted(set(spec) - _BACKENDS[backend])
    if unknown:
        raise PoolConfigError(
            f"{label}: unknown field(s) {', '.join(map(repr, unknown))} for backend "
            f"{backend!r}; allowed: {', '.join(sorted(_BACKENDS[backend]))}"
        )
    model = _field(spec, "model", (str,), label)
    common = _optional(spec, "max_concurrency", (int,), label)

    if backend == "openai":
        options: dict[str, Any] = {}
        options.update(_optional(spec, "base_url", (str,), label))
        options.update(_optional(spec, "api_key_env", (str,), label))
        options.update(_optional(spec, "top_logprobs", (int,), label))
        options.update(_optional(spec, "temperature", (int, float), label))
        options.update(_optional(spec, "timeout", (int, float), label))
        options.update(_optional(spec, "max_retries", (int,), label))
        options.update(_optional(spec, "max_tokens", (int,), label))
        return openai_agent(name, model=model, price=price, **options, **common)

    options = {}
    options.update(_optional(spec, "n_ctx", (int,), label))
    options.update(_optional(spec, "n_threads", (int,), label))
    options.update(_optional(spec, "max_tokens", (int,), label))
    options.update(_optional(spec, "max_seconds", (int, float), label))
    options.update(_optional(spec, "temperature", (int, float), label))
    options.update(_optional(spec, "seed", (int,), label))
    path, model_name = _local_model_file(model, label, base_dir)
    from sale_graph.local import LlamaCppChatModel

    try:
        chat = LlamaCppChatModel(model_path=str(path), model_name=model_name, **options)
    except ValidationError as exc:
        raise PoolConfigError(f"{label}: {_describe(exc)}") from exc
    return Agent(name=name, model=chat, price=price, **common)


def _read_pool_document(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".toml":
        return tomllib.loads(text)
    return json.loads(text)


def load_pool_file(path: str | os.PathLike[str]) -> list[Agent]:
    """Read ``{"agents": [spec, ...]}`` from JSON (or TOML for a ``.toml`` file).

    Every error names the file and the entry, because a pool file is edited by hand.
    """
    file = Path(path)
    try:
        document = _read_pool_document(file)
    except FileNotFoundError as exc:
        raise PoolConfigError(f"pool file {str(file)!r} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise PoolConfigError(f"pool file {str(file)!r} cannot be read: {exc}") from exc
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PoolConfigError(f"pool file {str(file)!r} is not valid: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("agents"), list):
        raise PoolConfigError(
            f"pool file {str(file)!r}: expected a top-level 'agents' list of agent specs"
        )
    agents: list[Agent] = []
    for index, spec in enumerate(document["agents"]):
        try:
            agents.append(agent_from_spec(spec, base_dir=file.parent))
        except (PoolConfigError, ModelFileError) as exc:
            raise type(exc)(f"pool file {str(file)!r}, agents[{index}]: {exc}") from exc
    try:
        validate_pool(agents)
    except PoolConfigError as exc:
        raise PoolConfigError(f"pool file {str(file)!r}: {exc}") from exc
    return agents
