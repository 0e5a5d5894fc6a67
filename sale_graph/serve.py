"""``sale serve``: the whole market behind an OpenAI-compatible API.

A client that already talks to models through an OpenAI client points ``base_url``
here and chooses the market by model name:

* ``sale``: the staged auction, each agent with its fitted reserve;
* ``sale-full``: the paper's full auction;
* ``sale-staged-<r>`` (``r`` in [0, 1], e.g. ``sale-staged-0.7``): the staged auction
  where every bid's assessment (its pass chance, or its chance of no loss against the
  dearest agent) must reach ``r`` (the quality/cost knob, like a router's threshold);
  with model ``sale`` a body field ``"sale": {"reserve": r}`` does the same.

The stack is Starlette on uvicorn: Starlette is the small ASGI toolkit under FastAPI
and the LangGraph server (already installed with ``langgraph-api``), uvicorn the
server both use. Bodies are validated here, so every error has OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``; FastAPI would add only its own.

The deployer's :class:`~sale_graph.context.Context` (CLI flags, environment) decides
everything except three things a request may choose: the model name (full or
staged, and the reserve), ``max_tokens`` (the answer cap, at most the deployer's) and
the auction id (header ``Idempotency-Key``, the rule of ``auction_id``). Other OpenAI
fields (``temperature``, ``top_p``, ``tools``, ...) are accepted and ignored: the
agents run with their own settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Annotated, Any

from langchain_core.callbacks import AsyncCallbackHandler
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from pydantic import ValidationError as SchemaError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from sale_graph.calls import content_text, describe_error, failure_kind, in_own_thread
from sale_graph.context import Context
from sale_graph.errors import (
    ContextError,
    InvalidTaskError,
    MemoryUnavailableError,
    NoBidsError,
    PoolConfigError,
    SaleError,
)
from sale_graph.execution import ANSWER_TAG, AnswerStream
from sale_graph.memory import UnknownAuctionError
from sale_graph.opening import auction_id_for, validate_task
from sale_graph.progress import describe_update

log = logging.getLogger(__name__)

STAGED_PREFIX = "sale-staged-"
EXAMPLE_RESERVES = ("0.3", "0.5", "0.7", "0.9")
_RESERVE = re.compile(r"0(?:\.\d{1,4})?|1(?:\.0{1,4})?")
AUCTION_ID_HEADER = "X-Sale-Auction-Id"
HEARTBEAT_SECONDS = 15.0
ANSWER_CHUNK_CHARS = 256
# liveness and readiness probes: open without the API key, and as terse
PROBES = frozenset({"/health", "/ready"})
READY_SECONDS = 5.0


# ----------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An error answered in OpenAI's shape, with its HTTP status."""

    def __init__(
        self, status: int, message: str, *, type_: str = "invalid_request_error",
        param: str | None = None, code: str | None = None,
        headers: Mapping[str, str] | None = None, extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status, message, type_, param, code)
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self) -> dict[str, Any]:
        """``{"error": {...}}`` plus any extra top-level keys (the ``sale`` object)."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}, **self.extra}

    def response(self) -> JSONResponse:
        """The error as an HTTP response."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


# OpenAI's clients retry 5xx (twice by default) unless told not to: an auction that failed
# after its models ran would be run, and paid for, again and again (one failed call
# cost three auctions). A client that wants another try sends the request again.
NO_RETRY = {"x-should-retry": "false"}
RETRY_AFTER_SECONDS = 5  # a 429's hint: about one short auction


def api_error(exc: BaseException) -> ApiError:
    """Map what an auction raises to an HTTP status (the README's table)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, InvalidTaskError):
        return ApiError(400, str(exc), code="invalid_task")
    if isinstance(exc, PoolConfigError):  # ContextError included: a request field
        return ApiError(400, str(exc), code="invalid_context")
    # the memory's path or URL is the deployer's business: clients get the gist, the log the rest
    if isinstance(exc, UnknownAuctionError):
        return ApiError(404, f"no auction {exc.auction_id!r} in this server's memory: nothing "
                        "to attach the outcome to", code="unknown_auction")
    if isinstance(exc, MemoryUnavailableError):
        log.warning("auction memory unavailable: %s", exc)
        return ApiError(503, "auction memory unavailable (the server's log says why)",
                        type_="server_error", code="memory_unavailable")
    if isinstance(exc, NoBidsError):
        log.warning("no bids: %s", exc)
        kinds = "; ".join(f"{a}: {failure_kind(d)}" for a, d in exc.failures.items())
        return ApiError(502, f"every agent failed to bid ({kinds or 'none asked'}); the "
                        "server's log says why", type_="server_error", code="no_bids",
                        headers=NO_RETRY)
    if isinstance(exc, TimeoutError):
        return ApiError(504, f"deadline passed: {exc}" if str(exc) else "deadline passed",
                        type_="server_error", code="deadline_exceeded", headers=NO_RETRY)
    if isinstance(exc, SaleError):
        log.warning("auction error: %s", exc)
        return ApiError(500, f"auction error ({type(exc).__name__}); the server's log says why",
                        type_="server_error", code="auction_error", headers=NO_RETRY)
    return ApiError(500, f"internal error ({type(exc).__name__})", type_="server_error",
                    code="internal_error", headers=NO_RETRY)


def _schema_error(exc: SchemaError) -> ApiError:
    errors = exc.errors(include_url=False)
    shown = "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors[:5]
    )
    param = ".".join(map(str, errors[0]["loc"])) if errors else None
    return ApiError(422, f"invalid request body: {shown}", param=param or None,
                    code="invalid_body")


# ----------------------------------------------------------------------------- requests

Reserve = Annotated[float, Field(strict=True, ge=0.0, le=1.0, allow_inf_nan=False)]
Score = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class ChatMessage(BaseModel):
    """One message; content is text or a list of ``{"type": "text", "text": ...}`` parts."""

    model_config = ConfigDict(extra="ignore")
    role: StrictStr
    content: StrictStr | list[dict[str, Any]] | None = None


class SaleOptions(BaseModel):
    """The request's ``sale`` field: the staged auction's reserve."""

    model_config = ConfigDict(extra="forbid")
    reserve: Reserve | None = None


class StreamOptions(BaseModel):
    """OpenAI's ``stream_options``."""

    model_config = ConfigDict(extra="ignore")
    include_usage: StrictBool = False


class ChatRequest(BaseModel):
    """The fields of a chat completion request that an auction reads."""

    model_config = ConfigDict(extra="ignore")  # temperature, top_p, tools...: ignored
    model: StrictStr
    messages: list[ChatMessage]
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    n: StrictInt | None = None
    sale: SaleOptions | None = None


class OutcomeRequest(BaseModel):
    """``POST /v1/sale/outcomes``: what became of an auction's answer."""

    model_config = ConfigDict(extra="forbid")
    auction_id: StrictStr
    passed: StrictBool
    score: Score | None = None
    detail: StrictStr | None = None


def _text_of(message: ChatMessage, index: int) -> str:
    where = f"messages[{index}].content"
    if isinstance(message.content, str):
        return message.content
    if message.content is None:
        raise ApiError(400, f"{where} is empty: only text messages are supported", param=where)
    parts = []
    for part in message.content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ApiError(400, f"{where}: only content parts of type 'text' are supported, "
                           f"got {str(part.get('type'))[:40]!r}", param=where)
        parts.append(part["text"])
    return "\n".join(parts)


def conversation_task(messages: Sequence[ChatMessage]) -> str:
    """The auction's task from a conversation.

    The last message must be the user's: it is the request. A lone user message is the
    task as it is (so memory matches it against past tasks unchanged). Earlier turns
    and system/developer messages come first, one ``[role] text`` line each, under
    "Conversation so far", then "Request:" and the last message; the agents read them
    as context (fenced as data like any task), not as instructions that replace the
    auction's own prompts. Tool and function messages are refused.
    """
    if not messages:
        raise ApiError(400, "messages is empty: give the auction a user message",
                       param="messages", code="invalid_task")
    for i, m in enumerate(messages):
        if m.role not in ("system", "developer", "user", "assistant"):
            raise ApiError(400, f"messages[{i}].role {m.role[:40]!r} is not supported "
                           "(system, developer, user, assistant)", param=f"messages[{i}].role")
    *earlier, last = messages
    if last.role != "user":
        raise ApiError(400, "the last message must be the user's request",
                       param=f"messages[{len(messages) - 1}].role")
    request = _text_of(last, len(messages) - 1)
    if not request.strip():
        raise ApiError(400, "the last user message is empty", code="invalid_task",
                       param=f"messages[{len(messages) - 1}].content")
    if not earlier:
        return request
    lines = [f"[{m.role}] {_text_of(m, i)}" for i, m in enumerate(earlier)]
    return "Conversation so far:\n" + "\n".join(lines) + "\n\nRequest:\n" + request


def model_fields(model: str, reserve: float | None) -> dict[str, Any]:
    """The Context fields a model name (and the ``sale.reserve`` field) select."""
    if model == "sale":
        return {"auction": "staged", "reserve": reserve}
    both = "give the reserve in the model name or in 'sale.reserve' with model 'sale', not both"
    if model == "sale-full":
        if reserve is not None:
            raise ApiError(400, "sale.reserve applies to the staged auction, not 'sale-full'",
                           param="sale.reserve")
        return {"auction": "full"}
    if model.startswith(STAGED_PREFIX) and _RESERVE.fullmatch(model[len(STAGED_PREFIX):]):
        if reserve is not None:
            raise ApiError(400, both, param="sale.reserve")
        return {"auction": "staged", "reserve": float(model[len(STAGED_PREFIX):])}
    raise ApiError(404, f"model {model[:80]!r} does not exist: use 'sale', 'sale-full' or "
                   "'sale-staged-<r>' with r in [0, 1] (e.g. sale-staged-0.7)",
                   param="model", code="model_not_found")


def model_names() -> list[str]:
    """What ``GET /v1/models`` lists (any ``sale-staged-<r>`` works, these are examples)."""
    return ["sale", "sale-full", *(STAGED_PREFIX + r for r in EXAMPLE_RESERVES)]


# ----------------------------------------------------------------------------- responses


def usage_of(audit: Mapping[str, Any]) -> dict[str, int]:
    """Every token the auction and the execution spent: bids, votes, refinement, answer."""
    phases = audit.get("phases") or {}
    prompt = sum(int(p.get("input_tokens") or 0) for p in phases.values())
    completion = sum(int(p.get("output_tokens") or 0) for p in phases.values())
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def sale_object(audit: Mapping[str, Any]) -> dict[str, Any]:
    """The ``sale`` object of a response: who won, what it cost, what memory did."""
    totals = audit.get("totals") or {}
    stop = audit.get("stop") or ("full auction: the lowest score (cost - value) won"
                                 if audit.get("winner") else None)
    return {
        "auction_id": audit.get("auction_id"),
        "winner": audit.get("winner"),
        "mode": audit.get("mode"),
        "cost_usd": totals.get("total_cost_usd", 0.0),
        "auction_cost_usd": totals.get("auction_cost_usd", 0.0),
        "auction_share": totals.get("overhead_token_share", 0.0),
        "memory": _write_status(audit),
        "stop": stop,
    }


def _write_status(audit: Mapping[str, Any]) -> str | None:
    """The memory write's status for a client: "failed" without the store's path or URL."""
    status = (audit.get("memory") or {}).get("write")
    if not isinstance(status, str):
        return status
    if status.startswith("failed"):
        log.warning("auction %s: memory write %s", audit.get("auction_id"), status)
    return failure_kind(status)


def _failed_execution(audit: Mapping[str, Any]) -> ApiError:
    """The winner's execution failed: the auction is stored, the client gets the reason."""
    error = str((audit.get("execution") or {}).get("error") or "no answer")
    timed_out = error.startswith("timeout")
    log.warning("auction %s: the winner's execution failed: %s", audit.get("auction_id"), error)
    return ApiError(
        504 if timed_out else 502,
        f"the winner ({audit.get('winner')}) failed to execute: {failure_kind(error)}",
        type_="server_error", code="deadline_exceeded" if timed_out else "execution_failed",
        headers={AUCTION_ID_HEADER: str(audit.get("auction_id")), **NO_RETRY},
        extra={"sale": sale_object(audit)},
    )


def _key_reused() -> ApiError:
    return ApiError(409, "Idempotency-Key was first used for a different task; a retry must "
                    "repeat its request (use a new key for a new task)",
                    param="Idempotency-Key", code="idempotency_key_reused")


def _chunk(base: Mapping[str, Any], delta: Mapping[str, Any], finish: str | None = None,
           **extra: Any) -> str:
    body = {**base, "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": dict(delta), "logprobs": None,
                         "finish_reason": finish}], **extra}
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def _sse_error(error: ApiError) -> str:
    return f"data: {json.dumps(error.body(), ensure_ascii=False)}\n\n"


def _comment(text: str) -> str:
    return ": " + " ".join(text.split()) + "\n\n"  # one line, whatever the text held


# ----------------------------------------------------------------------------- auctions


class _AnswerTokens(AsyncCallbackHandler):
    """The default executor's answer, piece by piece, as its model writes it.

    Only the call tagged :data:`~sale_graph.execution.ANSWER_TAG` is followed (bids
    and votes are not the answer), through :class:`~sale_graph.execution.AnswerStream`
    so that echoed plan blocks the stored answer drops are not sent either. The local
    models hand over every token to a listener; the default executor asks an endpoint
    model to stream its answer when one listens (with its usage, where the server
    reports usage on a stream).
    """

    def __init__(self, put: Any) -> None:
        self.put = put
        self.runs: set[Any] = set()
        self.stream = AnswerStream()

    async def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: Any,
                                  tags: list[str] | None = None, **kwargs: Any) -> None:
        if tags and ANSWER_TAG in tags:
            self.runs.add(run_id)

    async def on_llm_new_token(self, token: Any, *, run_id: Any, **kwargs: Any) -> None:
        if run_id in self.runs and (piece := self.stream.feed(content_text(token))):
            self.put(piece)


class _Auction:
    """One auction in a task of its own, reporting progress to a queue.

    The request handler only waits on it: a client that goes away cancels the task,
    and the graph writes memory once, at its end, in one upsert that a cancellation
    cannot split (it runs in a thread, which finishes the write), so a cancelled
    auction leaves its whole record or none.
    """

    def __init__(self, graph: Any, task: str, auction_id: str, context: Context,
                 running: set[asyncio.Task[Any]], *, stream: bool = False) -> None:
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.final: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.answer = _AnswerTokens(self._delta)
        config = {"callbacks": [self.answer]} if stream else {}
        self.task = asyncio.create_task(self._run(graph, task, auction_id, context, config))
        running.add(self.task)
        self.task.add_done_callback(running.discard)

    async def _run(self, graph: Any, task: str, auction_id: str, context: Context,
                   config: dict[str, Any]) -> None:
        t0 = time.time()
        try:
            async for chunk in graph.astream({"task": task, "auction_id": auction_id},
                                             config, context=context, stream_mode="updates"):
                if not isinstance(chunk, dict) or len(chunk) != 1:
                    continue
                ((node, data),) = chunk.items()
                if node == "__interrupt__":  # no checkpointer here: a pause cannot resume
                    raise ApiError(500, "the executor or verifier paused for a human "
                                   "(interrupt); sale serve cannot resume a paused auction: "
                                   "use one that does not pause, or serve the graph with a "
                                   "checkpointer (the LangGraph server)", type_="server_error",
                                   code="auction_paused", headers=NO_RETRY)
                line = describe_update(chunk, t0, details=False)  # clients get no hosts or paths
                if line:
                    self.events.put_nowait(("progress", line))
                if node == "execute":
                    self.events.put_nowait(("executed", (data or {}).get("answer")))
                if node == "remember":
                    self.final = data
            if self.final is None:
                raise RuntimeError("the auction ended without its record")
            self.events.put_nowait(("done", self.final))
        except Exception as exc:  # noqa: BLE001 - handed to the request, mapped to a status
            self.error = exc
            self.events.put_nowait(("error", exc))

    def _delta(self, piece: str) -> None:
        """Queue a piece of the answer; a blocking model's listener calls from its thread."""
        loop = self.task.get_loop()
        try:
            here = asyncio.get_running_loop() is loop
        except RuntimeError:
            here = False
        if here:
            self.events.put_nowait(("delta", piece))
        else:
            loop.call_soon_threadsafe(self.events.put_nowait, ("delta", piece))

    def cancel(self) -> None:
        """Stop the auction (a model call in flight ends on its own; nothing is written)."""
        if not self.task.done():
            self.task.cancel()


async def _disconnected(receive: Receive) -> None:
    """Return when the client closes the connection (the body was read before)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _read_json(request: Request, limit: int) -> Any:
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise ApiError(400, f"request body exceeds {limit} bytes", code="request_too_large")

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    try:
        return json.loads(bytes(body), parse_constant=no_constants)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from exc


class _Service:
    """The endpoints, over one deployer's Context."""

    def __init__(self, context: Context, graph: Any, *, timeout: float, max_inflight: int,
                 max_body_bytes: int) -> None:
        self.context, self.graph, self.timeout = context, graph, timeout
        self.max_inflight, self.max_body_bytes = max_inflight, max_body_bytes
        self.running: set[asyncio.Task[Any]] = set()
        self.admitting = 0  # requests past the 429 check, still checking memory
        self.keyed: dict[str, list[Any]] = {}  # Idempotency-Key in use -> [task, requests]
        self._ping: asyncio.Future[Any] | None = None  # the readiness check in flight
        self.created = int(time.time())

    # -- models

    def _model(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self.created, "owned_by": "sale_graph"}

    async def health(self, request: Request) -> Response:
        """``GET /health``: the process answers (liveness); nothing else is checked."""
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        """``GET /ready``: whether a request would be taken now (memory up, room to run).

        Open like ``/health`` (a load balancer's probe may carry no key), so it says
        only the kind of what is wrong, never a host, path or count.
        """
        if self._ping is None or self._ping.done():  # one check at a time, however many probes
            self._ping = asyncio.ensure_future(in_own_thread(self._ping_memory, self.context))
        try:
            await asyncio.wait_for(asyncio.shield(self._ping), READY_SECONDS)
            memory = "ok"
        except Exception as exc:  # noqa: BLE001 - reported by kind, logged whole
            log.warning("readiness: memory: %s", describe_error(exc))
            memory = failure_kind(describe_error(exc))
        room = "ok" if self._taken() < self.max_inflight else "full"
        ready = memory == "ok" and room == "ok"
        return JSONResponse({"status": "ready" if ready else "unavailable",
                             "memory": memory, "auctions": room},
                            status_code=200 if ready else 503)

    def _taken(self) -> int:
        """Auction slots in use: running, or admitted and about to run."""
        return len(self.running) + self.admitting

    def _ping_memory(self, context: Context) -> None:
        """Open and ping a context's memory (blocking: callers give it a thread)."""
        context.resolved_memory().ping()

    async def models(self, request: Request) -> Response:
        """``GET /v1/models``: one model per auction configuration."""
        return JSONResponse({"object": "list", "data": [self._model(m) for m in model_names()]})

    async def model(self, request: Request) -> Response:
        """``GET /v1/models/{model}``: any name ``model_fields`` accepts."""
        name = request.path_params["model"]
        model_fields(name, None)
        return JSONResponse(self._model(name))

    # -- chat completions

    def _prepare(self, payload: Any, request: Request) -> tuple[ChatRequest, str, str, Context]:
        """Everything checked before the auction opens: body, model, task, id, memory."""
        try:
            body = ChatRequest.model_validate(payload)
        except SchemaError as exc:
            raise _schema_error(exc) from exc
        if body.n not in (None, 1):
            raise ApiError(400, "n must be 1: an auction gives one answer", param="n")
        fields = model_fields(body.model, body.sale.reserve if body.sale else None)
        cap = body.max_completion_tokens or body.max_tokens
        if cap is not None:
            fields["max_answer_tokens"] = min(cap, self.context.max_answer_tokens)
        context = Context.from_untrusted(fields, self.context)
        task = validate_task(conversation_task(body.messages), context.max_task_chars)
        key = request.headers.get("idempotency-key")
        try:
            auction_id = auction_id_for({"auction_id": key})
        except InvalidTaskError as exc:
            raise ApiError(400, f"Idempotency-Key: {exc}", param="Idempotency-Key") from exc
        return body, task, auction_id, context

    def _claim(self, auction_id: str, task: str) -> None:
        """Hold a key for this request; a key running another task is a 409 (this worker)."""
        held = self.keyed.get(auction_id)
        if held is not None and held[0] != task:
            raise _key_reused()
        if held is None:
            self.keyed[auction_id] = [task, 1]
        else:
            held[1] += 1

    def _release(self, auction_id: str) -> None:
        held = self.keyed.get(auction_id)
        if held is not None:
            held[1] -= 1
            if held[1] <= 0:
                del self.keyed[auction_id]

    async def _same_request(self, context: Context, auction_id: str, task: str) -> None:
        """A reused Idempotency-Key must repeat its request (409 otherwise).

        The key is the auction's id: a different task under it would replace the
        stored auction, and the convention is to refuse a key reused for another body.
        """
        past = await asyncio.to_thread(lambda: context.resolved_memory().get(auction_id))
        if past is not None and past.task != task:
            raise _key_reused()

    async def _memory_ready(self, context: Context) -> None:
        """Memory unreachable is a 503 before the response starts (streams included)."""
        await asyncio.to_thread(self._ping_memory, context)

    async def chat(self, request: Request) -> Response:
        """``POST /v1/chat/completions``: the conversation is auctioned, the winner answers."""
        payload = await _read_json(request, self.max_body_bytes)
        body, task, auction_id, context = self._prepare(payload, request)
        if self._taken() >= self.max_inflight:
            raise ApiError(429, f"{self.max_inflight} auctions are already running; retry later",
                           type_="rate_limit_error", code="too_many_auctions",
                           headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        keyed = request.headers.get("idempotency-key") is not None
        if keyed:
            self._claim(auction_id, task)  # before any await: two at once see each other
        self.admitting += 1  # the slot is held across the awaits below
        try:
            await self._memory_ready(context)
            if keyed:
                await self._same_request(context, auction_id, task)
            auction = _Auction(self.graph, task, auction_id, context, self.running,
                               stream=bool(body.stream))
        except BaseException:
            if keyed:
                self._release(auction_id)
            raise
        finally:
            self.admitting -= 1
        if keyed:
            auction.task.add_done_callback(lambda _: self._release(auction_id))
        base = {"id": f"chatcmpl-{auction_id}", "created": int(time.time()), "model": body.model}
        headers = {AUCTION_ID_HEADER: auction_id}
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(self._stream(auction, base, usage),
                                     media_type="text/event-stream",
                                     headers={**headers, "Cache-Control": "no-cache"})
        watcher = asyncio.create_task(_disconnected(request.receive))
        try:
            done, _ = await asyncio.wait({auction.task, watcher}, timeout=self.timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
        if auction.task not in done:
            auction.cancel()
            if watcher in done:  # nobody is listening any more
                return Response(status_code=499)
            raise ApiError(504, f"deadline passed: the auction took over {self.timeout:g} s",
                           type_="server_error", code="deadline_exceeded",
                           headers={**headers, **NO_RETRY})
        if auction.error is not None:
            raise api_error(auction.error)
        assert auction.final is not None
        audit = auction.final["auction"]
        if auction.final.get("answer") is None:
            raise _failed_execution(audit)
        return JSONResponse({
            **base, "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant",
                                                 "content": auction.final["answer"]},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": usage_of(audit), "sale": sale_object(audit),
        }, headers=headers)

    async def _stream(self, auction: _Auction, base: Mapping[str, Any],
                      include_usage: bool) -> AsyncIterator[str]:
        """Progress as SSE comments, then the answer, a last chunk with ``sale``, [DONE]."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        sent = False
        try:
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    auction.cancel()
                    yield _sse_error(ApiError(
                        504, f"deadline passed: the auction took over {self.timeout:g} s",
                        type_="server_error", code="deadline_exceeded"))
                    return
                try:
                    kind, value = await asyncio.wait_for(auction.events.get(),
                                                         min(left, HEARTBEAT_SECONDS))
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if kind == "progress":
                    yield _comment(f"progress {value}")
                elif kind == "delta":  # the answer as it is written
                    if not sent:
                        sent = True
                        yield _chunk(base, {"role": "assistant", "content": ""})
                    yield _chunk(base, {"content": value})
                elif kind == "executed" and value is not None:
                    rest = auction.answer.stream.rest(value) if sent else value
                    if rest is None:  # cannot happen: the pieces are the answer's start
                        log.warning("streamed pieces disagree with the stored answer")
                        rest = ""
                    if not sent:
                        sent = True
                        yield _chunk(base, {"role": "assistant", "content": ""})
                    for i in range(0, len(rest), ANSWER_CHUNK_CHARS):
                        yield _chunk(base, {"content": rest[i:i + ANSWER_CHUNK_CHARS]})
                elif kind == "error":
                    yield _sse_error(api_error(value))
                    return
                elif kind == "done":
                    audit = value["auction"]
                    if value.get("answer") is None:
                        yield _sse_error(_failed_execution(audit))
                        return
                    if not sent:  # cannot happen: the answer came with the execute step
                        yield _chunk(base, {"role": "assistant", "content": value["answer"]})
                    yield _chunk(base, {}, "stop", sale=sale_object(audit))
                    if include_usage:  # OpenAI's usage chunk: no choices
                        last = {**base, "object": "chat.completion.chunk", "choices": [],
                                "usage": usage_of(audit), "sale": sale_object(audit)}
                        yield f"data: {json.dumps(last, ensure_ascii=False)}\n\n"
                    yield "data: [DONE]\n\n"
                    return
        finally:
            auction.cancel()  # a client gone mid-stream: the auction stops

    # -- outcomes

    async def outcomes(self, request: Request) -> Response:
        """``POST /v1/sale/outcomes``: a verified outcome for a stored auction."""
        payload = await _read_json(request, self.max_body_bytes)
        try:
            body = OutcomeRequest.model_validate(payload)
            auction_id_for({"auction_id": body.auction_id})
        except SchemaError as exc:
            raise _schema_error(exc) from exc
        except InvalidTaskError as exc:
            raise ApiError(422, str(exc), param="auction_id", code="invalid_body") from exc
        from sale_graph.outcomes import record_outcome

        past = await asyncio.to_thread(
            record_outcome, body.auction_id, passed=body.passed, score=body.score,
            detail=body.detail, context=self.context, source="api",
        )
        return JSONResponse({"object": "sale.outcome", "auction_id": past.auction_id,
                             "winner": past.winner, "outcome": dict(past.outcome or {})})

    async def shutdown(self) -> None:
        """Stop running auctions; writes already in their thread finish (whole records)."""
        for task in list(self.running):
            task.cancel()
        if self.running:
            await asyncio.wait(set(self.running), timeout=30)


def _handled(endpoint: Any) -> Any:
    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Exception as exc:  # noqa: BLE001 - every error leaves in OpenAI's shape
            return api_error(exc).response()

    return run


class BearerAuth:
    """Every request needs ``Authorization: Bearer <key>`` (compared in constant time).

    The probes (``/health``, ``/ready``) are open: they say nothing a stranger could use.
    """

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") not in PROBES:
            given = b""
            for name, value in scope.get("headers") or ():
                if name.lower() == b"authorization":
                    given = value
            scheme, _, token = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                error = ApiError(401, "missing or wrong API key: send 'Authorization: Bearer "
                                 "<key>'", code="invalid_api_key",
                                 headers={"WWW-Authenticate": "Bearer"})
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def create_app(
    context: Context | None = None,
    *,
    api_key: str | None = None,
    timeout: float = 900.0,
    max_inflight: int = 64,
    max_body_bytes: int | None = None,
    graph: Any = None,
) -> Starlette:
    """The ASGI app: OpenAI's chat completions and models, and ``/v1/sale/outcomes``.

    Args:
        context: the deployer's Context (default: :func:`deployed_context`); its
            pool, weights and staged policy are validated here, before any request.
        api_key: if set, every request needs it as a bearer token.
        timeout: seconds a request may take, auction and execution included (504).
        max_inflight: auctions running at once; more are refused with 429 (the pool's
            own ``max_concurrency`` limits still bound the model calls of all of them).
        max_body_bytes: largest request body (default: 8 x ``max_task_chars`` + 64 KiB).
        graph: the compiled auction graph (default: :data:`sale_graph.graph.graph`).

    """
    from sale_graph.context import deployed_context

    context = context if context is not None else deployed_context()
    if not (isinstance(timeout, (int, float)) and 0 < timeout <= 86_400):
        raise ContextError(f"timeout must be in (0, 86400] seconds, got {timeout!r}")
    if isinstance(max_inflight, bool) or not isinstance(max_inflight, int) or max_inflight < 1:
        raise ContextError(f"max_inflight must be a positive integer, got {max_inflight!r}")
    if context.approval:
        raise ContextError("approval=True needs a human at a checkpointer; sale serve "
                           "answers requests directly")
    context.resolved_agents()
    context.check()
    if graph is None:
        from sale_graph.graph import graph
    if api_key is not None and not api_key.strip():
        raise ContextError("the API key is empty")
    service = _Service(context, graph, timeout=timeout, max_inflight=max_inflight,
                       max_body_bytes=max_body_bytes or 8 * context.max_task_chars + 65_536)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await service.shutdown()

    async def http_error(request: Request, exc: Exception) -> Response:
        """Starlette's own errors (no such route, wrong method) in OpenAI's shape."""
        status = int(getattr(exc, "status_code", 500))
        message = (f"no route {request.method} {request.url.path}" if status in (404, 405)
                   else str(getattr(exc, "detail", exc)))
        return ApiError(status, message, code="not_found" if status == 404 else None).response()

    app = Starlette(
        routes=[
            Route("/health", _handled(service.health), methods=["GET"]),
            Route("/ready", _handled(service.ready), methods=["GET"]),
            Route("/v1/models", _handled(service.models), methods=["GET"]),
            Route("/v1/models/{model:path}", _handled(service.model), methods=["GET"]),
            Route("/v1/chat/completions", _handled(service.chat), methods=["POST"]),
            Route("/v1/sale/outcomes", _handled(service.outcomes), methods=["POST"]),
        ],
        middleware=[Middleware(BearerAuth, api_key=api_key)] if api_key else [],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.service = service
    return app


__all__ = ["ApiError", "api_error", "conversation_task", "create_app", "is_loopback",
           "model_fields", "model_names", "sale_object", "usage_of"]
