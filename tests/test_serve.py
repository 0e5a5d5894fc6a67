"""`sale serve`: the auction as an OpenAI-compatible model, over loopback HTTP.

Scripted models (mechanics only); the app runs under uvicorn on 127.0.0.1 in a thread,
and the official ``openai`` client and ``langchain_openai.ChatOpenAI`` talk to it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from sale_graph import Agent, AgentPolicy, Context, StagedPolicy, Weights
from sale_graph.cli import main as cli_main
from sale_graph.execution import clean_answer
from sale_graph.memory import AuctionMemory
from sale_graph.serve import create_app, is_loopback, sale_object
from tests.scripted import ScriptedChatModel
from tests.workers.common import HashEmbedder

PRICES = {"small": 0.05, "mid": 0.16, "large": 0.36}
ECHO = "<winning_plan>\nSMALL plan one two\n</winning_plan>\n"
TASK = "Add two numbers and return the sum."


def pool(delay: float = 0.0, **scripts) -> list[Agent]:
    out = []
    for name, price in PRICES.items():
        script = {"bid": f"{name.upper()} plan one two", "vote": "3",
                  "execute": f"{ECHO}answer from {name}", "direct": f"direct answer from {name}"}
        script.update(scripts.get(name, {}))
        out.append(Agent(name=name, model=ScriptedChatModel(script=script, entropy=0.5,
                                                            delay=delay), price=price))
    return out


def fitted(**reserves: float) -> StagedPolicy:
    """Bias-only assessments: every bid is assessed p = 0.5; the reserves decide."""
    return StagedPolicy(agents={n: AgentPolicy(bias=0.0, memory=0.0, reserve=r)
                                for n, r in reserves.items()}, fitted=True)


@pytest.fixture()
def loopback():
    """Unit tests block sockets; these talk to their own server on 127.0.0.1 only."""
    from pytest_socket import enable_socket, socket_allow_hosts

    enable_socket()
    socket_allow_hosts(["127.0.0.1"], allow_unix_socket=True)
    yield


@pytest.fixture()
def memory(tmp_path) -> Iterator[AuctionMemory]:
    mem = AuctionMemory.persistent(tmp_path / "memory", collection="serve",
                                   embedder=HashEmbedder())
    yield mem
    mem.close()


def context(agents, memory, **kw) -> Context:
    return Context(agents=agents, memory=memory, weights=Weights(cost=1.0, entropy=1.0),
                   staged=kw.pop("staged", fitted(small=0.4, mid=0.4)), **kw)


class Served:
    def __init__(self, app, url: str) -> None:
        self.app, self.url = app, url

    @property
    def running(self) -> set:
        return self.app.state.service.running

    def settle(self, seconds: float = 10.0) -> None:
        """Wait until no auction runs in the server (a cancelled one included)."""
        end = time.time() + seconds
        while self.running and time.time() < end:
            time.sleep(0.02)
        assert not self.running, "an auction is still running"

    def client(self, key: str = "unused") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0)

    def post(self, path: str, body=None, **kw) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=30, **kw)


@contextlib.contextmanager
def serving(app) -> Iterator[Served]:
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    end = time.time() + 10
    while not server.started and time.time() < end:
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield Served(app, f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@pytest.fixture()
def served(loopback, memory) -> Iterator[Served]:
    agents = pool()
    with serving(create_app(context(agents, memory))) as s:
        s.agents = agents
        yield s


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


# ---- 5. a clean answer -----------------------------------------------------------------


@pytest.mark.parametrize(("raw", "clean"), [
    ("<winning_plan>\n1. add\n</winning_plan>\ndef f(): pass", "def f(): pass"),
    ("  <plan>x</plan>\n<task>t</task>\nAnswer: 4", "Answer: 4"),
    ("<WINNING_PLAN>x</WINNING_PLAN> 4", "4"),
    ("Answer 4; the <plan> tag is mentioned later </plan>", None),
    ("<plan>unclosed echo\nAnswer 4", None),
    ("<plan>\nTo solve it:\ndef f(): pass", "To solve it:\ndef f(): pass"),  # a lone open tag
    ("<plan>only an echo</plan>", None),  # nothing else: kept as it is
    ("<div>html answer</div>", None),
])
def test_clean_answer_strips_only_leading_echoed_fences(raw, clean):
    assert clean_answer(raw) == (raw if clean is None else clean)


# ---- 1. the API with the official clients --------------------------------------------


def test_openai_client_gets_the_answer_usage_and_the_sale_object(served, memory):
    client = served.client()
    raw = client.chat.completions.with_raw_response.create(
        model="sale", messages=[{"role": "user", "content": TASK}], temperature=0.2)
    completion = raw.parse()
    auction_id = raw.headers["X-Sale-Auction-Id"]
    assert completion.choices[0].message.content == "answer from small"  # echo stripped
    assert completion.model == "sale" and completion.choices[0].finish_reason == "stop"
    sale = completion.model_extra["sale"]
    assert sale["auction_id"] == auction_id and sale["winner"] == "small"
    assert sale["mode"] == "staged" and sale["memory"] == "ok"
    assert "reserve 0.40" in sale["stop"]
    assert 0 < sale["auction_cost_usd"] < sale["cost_usd"] and 0 < sale["auction_share"] < 1
    # usage counts every call: the scripted models count one token per prompt word
    prompt_words = sum(len(p.split()) for a in served.agents for _, p in a.model.prompts)
    assert completion.usage.prompt_tokens == prompt_words
    assert completion.usage.completion_tokens == 4 + len((ECHO + "answer from small").split())
    stored = memory.get(auction_id)
    assert stored is not None and stored.winner == "small" and stored.task == TASK


def test_model_names_choose_the_auction_and_the_reserve(served):
    client = served.client()
    ids = [m.id for m in client.models.list().data]
    assert ids[:2] == ["sale", "sale-full"] and "sale-staged-0.7" in ids
    assert client.models.retrieve("sale-staged-0.25").id == "sale-staged-0.25"
    ask = [{"role": "user", "content": TASK}]
    strict = client.chat.completions.create(model="sale-staged-0.7", messages=ask)
    assert strict.model_extra["sale"]["winner"] == "large"  # p = 0.5 < 0.7 twice
    assert strict.choices[0].message.content == "direct answer from large"
    by_field = client.chat.completions.create(model="sale", messages=ask,
                                              extra_body={"sale": {"reserve": 0.7}})
    assert by_field.model_extra["sale"]["winner"] == "large"
    full = client.chat.completions.create(model="sale-full", messages=ask)
    assert full.model_extra["sale"]["mode"] == "full"
    assert full.model_extra["sale"]["stop"].startswith("full auction")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_conversation_becomes_the_task_with_earlier_turns_as_context(served, memory):
    raw = served.client().chat.completions.with_raw_response.create(model="sale", messages=[
        {"role": "system", "content": "You write Python."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": [{"type": "text", "text": "Hi, what task?"}]},
        {"role": "user", "content": [{"type": "text", "text": TASK}]},
    ])
    task = memory.get(raw.headers["X-Sale-Auction-Id"]).task
    assert task.startswith("Conversation so far:\n[system] You write Python.\n[user] Hello\n")
    assert "[assistant] Hi, what task?" in task and task.endswith("Request:\n" + TASK)


def test_streaming_sends_progress_comments_then_the_answer_then_usage(served):
    client = served.client()
    chunks = list(client.chat.completions.create(
        model="sale", messages=[{"role": "user", "content": TASK}], stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "answer from small"
    last = chunks[-1]
    assert last.choices == [] and last.usage.total_tokens > 0
    assert last.model_extra["sale"]["winner"] == "small"
    assert chunks[-2].choices[0].finish_reason == "stop"
    # on the wire: comment lines (ignored by clients) come before the first data line
    with httpx.stream("POST", served.url + "/v1/chat/completions", timeout=30, json={
            "model": "sale", "stream": True,
            "messages": [{"role": "user", "content": TASK}]}) as response:
        lines = [line for line in response.iter_lines() if line]
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data:"))
    assert first_data > 0 and all(line.startswith(": ") for line in lines[:first_data])
    assert any("bid from small" in line for line in lines[:first_data])
    assert lines[-1] == "data: [DONE]"


def test_streaming_sends_the_answer_as_the_winner_writes_it(loopback, memory):
    """The winner's tokens reach the client while its model is still answering,
    without the plan it echoed first (which the stored answer drops too)."""
    agents = pool(small={"execute": f"{ECHO}the answer is four, as asked"})
    winner = agents[0].model
    winner.stream_kinds, winner.gate = ("execute",), threading.Event()
    with serving(create_app(context(agents, memory))) as served:
        pieces = []
        for chunk in served.client().chat.completions.create(
                model="sale", messages=[{"role": "user", "content": TASK}], stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
                winner.gate.set()  # the model returns only once a piece got here
    assert winner.gate_opened is True
    assert "".join(pieces) == "the answer is four, as asked" and len(pieces) == 6
    assert winner.calls["bid"] == 1  # the bids were not streamed as the answer


def test_langchain_chat_openai_invokes_and_streams(served):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=served.url + "/v1", api_key="unused", model="sale",
                     max_retries=0, stream_usage=True)
    reply = llm.invoke(TASK)
    assert reply.content == "answer from small"
    assert reply.usage_metadata["total_tokens"] > 0
    streamed = None
    for chunk in llm.stream(TASK):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed.content == "answer from small"
    assert streamed.usage_metadata["total_tokens"] == reply.usage_metadata["total_tokens"]


def test_max_tokens_caps_the_answer_within_the_deployers_cap(loopback, memory):
    seen: list = []

    class Capture(ScriptedChatModel):
        async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs):
            if "You won the right" in str(messages):
                seen.append(kwargs.get("max_tokens"))
            return await super()._agenerate(messages, stop, run_manager, **kwargs)

    agents = [Agent(name="solo", model=Capture(script={"bid": "plan"}), price=0.1)]
    app = create_app(Context(agents=agents, memory=memory, max_answer_tokens=300))
    with serving(app) as served:
        client = served.client()
        for cap in (50, 5000, None):
            client.chat.completions.create(model="sale-full", max_tokens=cap,
                                           messages=[{"role": "user", "content": TASK}])
    assert seen == [50, 300, 300]


# ---- 2. errors in OpenAI's shape, nothing written -----------------------------------


def ask(content=TASK, **body):
    return {"model": "sale", "messages": [{"role": "user", "content": content}], **body}


@pytest.mark.parametrize(("body", "status", "needle"), [
    ({"model": "sale", "messages": []}, 400, "messages is empty"),
    (ask("   "), 400, "empty"),
    (ask("x" * 300), 400, "300 characters"),
    ({"model": "sale", "messages": [{"role": "assistant", "content": "hi"}]}, 400, "last"),
    ({"model": "sale", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}]}, 400, "type 'text'"),
    ({"model": "sale", "messages": [{"role": "tool", "content": "x"},
                                    {"role": "user", "content": "y"}]}, 400, "not supported"),
    (ask(model="gpt-4o"), 404, "does not exist"),
    (ask(model="sale-staged-1.5"), 404, "does not exist"),
    (ask(model="sale-full", sale={"reserve": 0.5}), 400, "staged"),
    (ask(model="sale-staged-0.5", sale={"reserve": 0.5}), 400, "not both"),
    (ask(sale={"reserve": 1.5}), 422, "sale.reserve"),
    (ask(sale={"reserve": "0.5"}), 422, "sale.reserve"),
    (ask(n=2), 400, "n must be 1"),
    (ask(max_tokens=0), 422, "max_tokens"),
    (ask(stream="yes"), 422, "stream"),
    ({"model": "sale", "messages": "hello"}, 422, "messages"),
    ([1, 2], 422, "body"),
])
def test_bad_requests_get_openai_errors_and_write_nothing(loopback, memory, body, status,
                                                          needle):
    agents = pool()
    with serving(create_app(context(agents, memory, max_task_chars=200))) as served:
        response = served.post("/v1/chat/completions", body)
    assert response.status_code == status, response.text
    error = error_of(response)
    assert needle in error["message"] or needle == error["param"], error
    assert memory.count() == 0 and sum(sum(a.model.calls.values()) for a in agents) == 0


def test_malformed_json_bad_idempotency_key_and_unknown_route(served, memory):
    bad = httpx.post(served.url + "/v1/chat/completions", content=b"{not json",
                     headers={"content-type": "application/json"})
    assert bad.status_code == 400 and error_of(bad)["code"] == "invalid_json"
    nan = httpx.post(served.url + "/v1/chat/completions", content=b'{"model": NaN}')
    assert nan.status_code == 400
    key = served.post("/v1/chat/completions", ask(), headers={"Idempotency-Key": "a b/c"})
    assert key.status_code == 400 and error_of(key)["param"] == "Idempotency-Key"
    nowhere = httpx.get(served.url + "/v1/embeddings")
    assert nowhere.status_code == 404 and error_of(nowhere)["code"] == "not_found"
    assert memory.count() == 0


def test_memory_unreachable_is_503_before_any_model_call(loopback, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    agents = pool()
    app = create_app(Context(agents=agents, memory=AuctionMemory.persistent(
        blocker, embedder=HashEmbedder())))
    with serving(app) as served:
        plain = served.post("/v1/chat/completions", ask())
        streamed = served.post("/v1/chat/completions", ask(stream=True))
    for response in (plain, streamed):
        assert response.status_code == 503 and error_of(response)["code"] == "memory_unavailable"
        assert str(tmp_path) not in response.text  # the deployer's path stays in its log
    assert sum(sum(a.model.calls.values()) for a in agents) == 0


def test_every_agent_failing_is_502_with_the_reasons(loopback, memory):
    down = {"bid": RuntimeError("model down")}
    agents = pool(small=down, mid=down, large=down)
    with serving(create_app(context(agents, memory))) as served:
        response = served.post("/v1/chat/completions", ask(model="sale-full"))
        streamed = served.post("/v1/chat/completions", ask(model="sale-full", stream=True))
    error = error_of(response)
    assert response.status_code == 502 and error["code"] == "no_bids"
    assert "small: RuntimeError" in error["message"]
    assert "model down" not in error["message"]  # the deployer's details stay in its log
    # a stream already started: the error arrives as an SSE event the openai client raises
    assert streamed.status_code == 200 and '"code": "no_bids"' in streamed.text
    assert "model down" not in streamed.text  # progress lines and the error alike
    assert memory.count() == 0


def test_deadline_is_504_and_the_cancelled_auction_writes_nothing(loopback, memory):
    agents = pool(delay=0.3)
    with serving(create_app(context(agents, memory), timeout=0.5)) as served:
        response = served.post("/v1/chat/completions", ask(model="sale-full"))
        assert response.status_code == 504 and error_of(response)["code"] == "deadline_exceeded"
        with pytest.raises(openai.APIError, match="deadline passed"):
            list(served.client().chat.completions.create(
                model="sale-full", messages=ask()["messages"], stream=True))
        served.settle()
    assert memory.count() == 0


def test_a_failed_execution_is_502_and_the_auction_is_stored(loopback, memory):
    agents = pool(small={"execute": RuntimeError("executor crashed")})
    with serving(create_app(context(agents, memory))) as served:
        response = served.post("/v1/chat/completions", ask())
    error = error_of(response)
    assert response.status_code == 502 and error["code"] == "execution_failed"
    assert "RuntimeError" in error["message"] and "executor crashed" not in error["message"]
    auction_id = response.headers["X-Sale-Auction-Id"]
    assert response.json()["sale"]["auction_id"] == auction_id
    assert memory.get(auction_id) is not None  # the auction happened; its record is whole


# ---- outcomes ---------------------------------------------------------------------------


def test_outcomes_are_recorded_for_known_auctions_only(served, memory):
    raw = served.client().chat.completions.with_raw_response.create(
        model="sale", messages=[{"role": "user", "content": TASK}])
    auction_id = raw.headers["X-Sale-Auction-Id"]
    ok = served.post("/v1/sale/outcomes", {"auction_id": auction_id, "passed": True,
                                           "score": 1.0, "detail": "tests passed"})
    assert ok.status_code == 200, ok.text
    assert ok.json()["outcome"]["passed"] is True and ok.json()["winner"] == "small"
    assert memory.get(auction_id).outcome["detail"] == "tests passed"
    unknown = served.post("/v1/sale/outcomes", {"auction_id": "nope", "passed": False})
    assert unknown.status_code == 404 and error_of(unknown)["code"] == "unknown_auction"
    assert "'nope'" in unknown.text and str(memory.location) not in unknown.text
    for bad in ({"auction_id": auction_id, "passed": "yes"},
                {"auction_id": auction_id, "passed": True, "extra": 1},
                {"auction_id": "bad id!", "passed": True},
                {"passed": True}):
        response = served.post("/v1/sale/outcomes", bad)
        assert response.status_code == 422, (bad, response.text)
        error_of(response)
    assert memory.get(auction_id).outcome["passed"] is True


def test_idempotency_key_names_the_auction(served, memory):
    for _ in range(2):
        response = served.post("/v1/chat/completions", ask(),
                               headers={"Idempotency-Key": "job-42"})
        assert response.headers["X-Sale-Auction-Id"] == "job-42"
    assert memory.count() == 1 and memory.get("job-42") is not None


def test_a_key_reused_for_another_task_is_refused(served, memory):
    """The key is the auction's id: another task under it would replace the auction
    (and, before, inherit the verdict recorded on the first task's answer)."""
    first = served.post("/v1/chat/completions", ask(), headers={"Idempotency-Key": "job-7"})
    assert first.status_code == 200
    assert served.post("/v1/sale/outcomes", {"auction_id": "job-7", "passed": True}
                       ).status_code == 200
    other = served.post("/v1/chat/completions", ask("Reverse a string."),
                        headers={"Idempotency-Key": "job-7"})
    assert other.status_code == 409 and error_of(other)["code"] == "idempotency_key_reused"
    kept = memory.get("job-7")
    assert kept.task == TASK and kept.outcome["passed"] is True and memory.count() == 1


def test_one_key_sent_at_once_with_two_tasks_runs_one_of_them(loopback, memory):
    """Before either is stored, the second of two simultaneous requests with one key and
    different tasks is refused too (the stored-record check cannot see it yet)."""
    agents = pool(delay=0.3)
    with serving(create_app(context(agents, memory))) as served:
        with concurrent.futures.ThreadPoolExecutor(2) as both:
            replies = list(both.map(
                lambda text: served.post("/v1/chat/completions", ask(text),
                                         headers={"Idempotency-Key": "job-9"}),
                (TASK, "Reverse a string.")))
        served.settle()
        again = served.post("/v1/chat/completions", ask(memory.get("job-9").task),
                            headers={"Idempotency-Key": "job-9"})
    assert sorted(r.status_code for r in replies) == [200, 409]
    assert again.status_code == 200 and not served.app.state.service.keyed
    assert memory.count() == 1


def test_a_failure_after_the_models_ran_is_not_retried_by_openai_clients(loopback, memory):
    """OpenAI's client retries a 5xx twice by default: one failed call ran three auctions."""
    crash = {"execute": RuntimeError("tool crashed"), "direct": RuntimeError("tool crashed")}
    agents = pool(small=crash, mid=crash, large=crash)
    with serving(create_app(context(agents, memory))) as served:
        client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused")  # retries on
        with pytest.raises(openai.APIStatusError) as failed:
            client.chat.completions.create(model="sale", messages=ask()["messages"])
    assert failed.value.status_code == 502
    assert failed.value.response.headers["x-should-retry"] == "false"
    executions = sum(a.model.calls["execute"] + a.model.calls["direct"] for a in agents)
    assert executions == 1 and memory.count() == 1


# ---- 3. access ----------------------------------------------------------------------------


def test_a_key_is_required_on_every_route(loopback, memory):
    with serving(create_app(context(pool(), memory), api_key="s3cret")) as served:
        assert httpx.get(served.url + "/v1/models").status_code == 401
        wrong = httpx.get(served.url + "/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and error_of(wrong)["code"] == "invalid_api_key"
        assert served.post("/v1/sale/outcomes", {}).status_code == 401
        with pytest.raises(openai.AuthenticationError):
            served.client("nope").chat.completions.create(model="sale", messages=ask()["messages"])
        reply = served.client("s3cret").chat.completions.create(
            model="sale", messages=ask()["messages"])
        assert reply.choices[0].message.content == "answer from small"
    assert memory.count() == 1


def test_probes_are_open_terse_and_tell_ready_from_unavailable(loopback, memory, tmp_path):
    """A load balancer's probe carries no key; it learns the kind of fault, no path."""
    with serving(create_app(context(pool(), memory), api_key="s3cret")) as served:
        health = httpx.get(served.url + "/health")
        ready = httpx.get(served.url + "/ready")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "memory": "ok", "auctions": "ok"}
        assert httpx.get(served.url + "/health/x").status_code == 401  # only the probes
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    down = AuctionMemory.persistent(blocker, embedder=HashEmbedder())
    with serving(create_app(Context(agents=pool(), memory=down), max_inflight=1)) as served:
        unready = httpx.get(served.url + "/ready")
        assert httpx.get(served.url + "/health").status_code == 200
    assert unready.status_code == 503 and unready.json()["status"] == "unavailable"
    assert unready.json()["memory"] == "MemoryUnavailableError"
    assert str(tmp_path) not in unready.text


def test_probes_against_a_hung_memory_share_one_check(loopback, memory, monkeypatch):
    """Strangers polling /ready must not pile up blocked threads behind a hung store."""
    from sale_graph import serve

    monkeypatch.setattr(serve, "READY_SECONDS", 0.3)
    release, calls = threading.Event(), []

    def hung(context) -> None:
        calls.append(1)
        release.wait(20)

    with serving(create_app(context(pool(), memory))) as served:
        monkeypatch.setattr(served.app.state.service, "_ping_memory", hung)
        try:
            answers = [httpx.get(served.url + "/ready") for _ in range(4)]
        finally:
            release.set()
    assert [a.status_code for a in answers] == [503] * 4 and len(calls) == 1
    assert answers[0].json()["memory"] == "timeout"


def test_ready_says_full_while_every_auction_slot_is_taken(loopback, memory):
    agents = pool(delay=1.0)
    with serving(create_app(context(agents, memory), max_inflight=1)) as served:
        pending = threading.Thread(target=served.post, args=("/v1/chat/completions", ask()))
        pending.start()
        end = time.time() + 10
        while not served.running and time.time() < end:
            time.sleep(0.02)
        busy = httpx.get(served.url + "/ready")
        pending.join(30)
        served.settle()
        free = httpx.get(served.url + "/ready")
    assert busy.status_code == 503 and busy.json()["auctions"] == "full"
    assert free.status_code == 200


def test_the_auction_limit_holds_for_requests_arriving_together(loopback, memory, monkeypatch):
    """Requests admitted while an earlier one checked memory all ran: five at once
    against --max-inflight 2 got five 200s."""
    agents = pool(delay=0.5)
    with serving(create_app(context(agents, memory), max_inflight=2)) as served:
        service = served.app.state.service
        checked = service._ping_memory

        def slow_check(context) -> None:
            time.sleep(0.5)  # every request is past the limit check by then
            checked(context)

        monkeypatch.setattr(service, "_ping_memory", slow_check)
        with concurrent.futures.ThreadPoolExecutor(5) as pool_:
            replies = list(pool_.map(lambda _: served.post("/v1/chat/completions", ask()),
                                     range(5)))
        served.settle()
    codes = sorted(r.status_code for r in replies)
    assert codes == [200, 200, 429, 429, 429], codes
    assert all(r.headers["Retry-After"] for r in replies if r.status_code == 429)
    assert memory.count() == 2


def test_no_key_means_loopback_only(capsys, monkeypatch):
    monkeypatch.delenv("SALE_API_KEY", raising=False)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5")
    assert cli_main(["serve", "--host", "0.0.0.0", "--pool", "local-small"]) == 2
    assert "refusing to bind 0.0.0.0 without an API key" in capsys.readouterr().err


def test_a_taken_port_is_one_clear_error(capsys, loopback):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        code = cli_main(["serve", "--port", str(taken.getsockname()[1]),
                         "--pool", "local-small"])
    finally:
        taken.close()
    err = capsys.readouterr().err
    assert code == 2 and "the port is in use" in err and "sale serve: http" not in err


def test_a_stopping_server_cancels_auctions_after_its_drain_time(loopback, tmp_path):
    """SIGTERM with a request stuck on a slow model: the server waits --drain seconds,
    then cancels the auction (no record) and exits, instead of waiting out --timeout."""
    import signal
    import subprocess
    import sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from pathlib import Path

    release = threading.Event()

    asked: list[int] = []

    class Slow(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            asked.append(1)
            release.wait(120)  # a model that takes its time

        def log_message(self, *args) -> None:
            pass

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{upstream.server_address[1]}/v1"
    pool_file = tmp_path / "pool.json"
    pool_file.write_text(json.dumps({"agents": [
        {"name": n, "backend": "openai", "model": n, "price": p, "base_url": base}
        for n, p in (("small", 0.1), ("large", 0.3))]}))
    port_probe = socket.socket()
    port_probe.bind(("127.0.0.1", 0))
    port = port_probe.getsockname()[1]
    port_probe.close()
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               ANONYMIZED_TELEMETRY="False", LANGSMITH_TRACING="false")
    server = subprocess.Popen(
        [sys.executable, "-m", "sale_graph.cli", "serve", "--pool", str(pool_file), "--port",
         str(port), "--memory", str(tmp_path / "memory"), "--drain", "1"],
        cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        end, up = time.time() + 60, False
        while not up and time.time() < end:
            try:
                up = httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
            except httpx.HTTPError:
                time.sleep(0.2)
        assert up, server.stderr.read().decode() if server.poll() is not None else "no start"
        asking = concurrent.futures.ThreadPoolExecutor(1).submit(
            httpx.post, f"http://127.0.0.1:{port}/v1/chat/completions", json=ask(), timeout=60)
        time.sleep(3)  # the auction is waiting on its bids
        stopped = time.time()
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        took = time.time() - stopped
    finally:
        release.set()
        if server.poll() is None:
            server.kill()
        upstream.shutdown()
    with contextlib.suppress(Exception):
        asking.result(10)
    assert asked and took < 15, (len(asked), took)
    memory = AuctionMemory.persistent(str(tmp_path / "memory"), embedder=HashEmbedder())
    assert memory.count() == 0
    memory.close()


def test_the_server_binds_as_uvicorn_did(loopback):
    from sale_graph.cli import _listen

    for host, family in (("localhost", socket.AF_INET), ("127.0.0.1", socket.AF_INET),
                         ("", socket.AF_INET)):
        sock = _listen(host, 0)
        try:
            assert sock.family == family
        finally:
            sock.close()


def test_an_executor_that_pauses_is_a_clear_server_error(loopback, memory):
    """sale serve has no checkpointer: a pause for a human cannot be resumed there."""
    from langgraph.types import interrupt

    def asks(inputs: dict) -> str:
        return str(interrupt({"ask": "run the tool?"}))

    with serving(create_app(context(pool(), memory, executor=asks))) as served:
        reply = served.post("/v1/chat/completions", ask())
    assert reply.status_code == 500 and error_of(reply)["code"] == "auction_paused"
    assert reply.headers["x-should-retry"] == "false"


def test_memory_commands_do_not_create_a_missing_directory(tmp_path, capsys):
    missing = tmp_path / "typo"
    assert cli_main(["memory", "stats", "--memory", str(missing)]) == 2
    assert "no such directory" in capsys.readouterr().err and not missing.exists()


# ---- 4. concurrency and disconnects ------------------------------------------------------


def test_concurrent_requests_each_get_their_own_auction(served, memory):
    client = served.client()

    def one(i: int) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model="sale", messages=[{"role": "user", "content": f"{TASK} Case {i}."}])
        assert raw.parse().choices[0].message.content == "answer from small"
        return raw.headers["X-Sale-Auction-Id"]

    with concurrent.futures.ThreadPoolExecutor(8) as workers:
        ids = list(workers.map(one, range(16)))
    assert len(set(ids)) == 16 and memory.count() == 16


def _calls(agents) -> int:
    return sum(sum(a.model.calls.values()) for a in agents)


def test_disconnect_mid_auction_stops_it_and_writes_nothing(loopback, memory):
    agents = pool(delay=0.2)
    with serving(create_app(context(agents, memory))) as served:
        body = ask(model="sale-full", stream=True)
        with httpx.stream("POST", served.url + "/v1/chat/completions", json=body, timeout=30,
                          headers={"Idempotency-Key": "gone-1"}) as response:
            for line in response.iter_lines():
                if line.startswith(": progress") and "bid from" in line:
                    break  # the auction is under way: walk out
        served.settle()
        calls = _calls(agents)
        time.sleep(0.6)
        assert _calls(agents) == calls  # the auction stopped, no more model calls
        assert memory.get("gone-1") is None
        # a plain request whose client gives up: the same
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(served.url + "/v1/chat/completions", json=ask(model="sale-full"),
                       headers={"Idempotency-Key": "gone-2"}, timeout=0.5)
        served.settle()
        assert memory.get("gone-2") is None and memory.count() == 0
        # and the server keeps serving
        reply = served.client().chat.completions.create(model="sale", messages=ask()["messages"])
        assert reply.choices[0].message.content == "answer from small"
    assert memory.count() == 1


def test_disconnect_during_the_memory_write_leaves_the_whole_record(loopback, memory):
    writing, original = threading.Event(), memory.write

    def slow_write(*args, **kwargs):
        writing.set()
        time.sleep(0.5)
        return original(*args, **kwargs)

    memory.write = slow_write
    with serving(create_app(context(pool(), memory))) as served:
        with httpx.stream("POST", served.url + "/v1/chat/completions", json=ask(stream=True),
                          timeout=30, headers={"Idempotency-Key": "late-1"}) as response:
            for line in response.iter_lines():
                if '"content": "answer from small"' in line:
                    # the answer arrived; walk out once the write has begun (leaving the
                    # loop closes the connection)
                    assert writing.wait(10)
                    (auction,) = served.running
                    break
        served.settle()  # the cancelled auction is gone at once...
        assert auction.cancelled()
        time.sleep(0.7)  # ...its write's thread finishes on its own
    stored = memory.get("late-1")
    assert stored is not None and stored.winner == "small"
    assert {b["agent"] for b in stored.bids} == {"small"} and stored.task == TASK


# ---- the real local pool --------------------------------------------------------------


@pytest.mark.integration
def test_real_local_pool_through_the_openai_client(tmp_path):
    app = create_app(Context(pool="local-small", memory_path=str(tmp_path / "memory")))
    with serving(app) as served:
        client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0,
                               timeout=900)
        chunks = list(client.chat.completions.create(
            model="sale-full", stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user",
                       "content": "Write a Python function double(x) that returns 2*x."}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    sale = chunks[-1].model_extra["sale"]
    assert text.strip() and not text.lstrip().startswith("<winning_plan>")
    assert sale["winner"] in ("smollm2-135m", "qwen2.5-coder-0.5b") and sale["memory"] == "ok"
    assert chunks[-1].usage.prompt_tokens > 0 and chunks[-1].usage.completion_tokens > 0
    print(json.dumps({"answer": text[:200], "sale": sale, "usage": chunks[-1].usage.to_dict()}))


def test_a_failed_memory_write_reaches_the_client_without_the_stores_location():
    audit = {"auction_id": "a", "winner": "small",
             "memory": {"write": "failed: MemoryUnavailableError: Chroma store at '/srv/secret'"}}
    assert sale_object(audit)["memory"] == "failed"
    assert sale_object({"memory": {"write": "ok"}})["memory"] == "ok"


@pytest.mark.parametrize(("given", "needle"), [
    ("[1]", "must be a JSON object"),
    ("{not json", "must be a JSON object"),
    ('{"max_answer_tokens": "2048"}', "integer"),
    ('{"memory_path": "/tmp/x"}', "own settings"),
    ('{"bogus": 1}', "unknown field"),
])
def test_a_bad_deployment_context_is_one_clear_error_before_binding(capsys, given, needle):
    code = cli_main(["serve", "--context", given, "--pool", "local-small", "--port", "1"])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "sale serve: http" not in err
