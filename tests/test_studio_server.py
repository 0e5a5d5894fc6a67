"""`langgraph dev` serves the graph from langgraph.json; langgraph_sdk drives it on loopback."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory):
    port = free_port()
    home = tmp_path_factory.mktemp("studio")
    env = {**os.environ, "LANGSMITH_TRACING": "false", "LANGCHAIN_TRACING_V2": "false",
           "SALE_MEMORY_PATH": str(home / "memory"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False",
           "LANGGRAPH_CLI_NO_ANALYTICS": "1"}
    log = open(home / "server.log", "w")
    cli = Path(sys.executable).with_name("langgraph")
    proc = subprocess.Popen(
        [str(cli), "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1",
         "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"{url}/ok", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail(f"langgraph dev did not start: {(home / 'server.log').read_text()[-2000:]}")
    if proc.poll() is not None:
        pytest.fail(f"langgraph dev exited: {(home / 'server.log').read_text()[-2000:]}")
    yield url
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_dev_server_runs_an_auction(dev_server):
    from langgraph_sdk import get_client

    async def go():
        client = get_client(url=dev_server)
        assistants = await client.assistants.search(graph_id="sale_auction")
        assert assistants, "langgraph.json should expose the sale_auction graph"
        out = await client.runs.wait(
            None, "sale_auction",
            input={"task": "Write a Python function that returns the square of x."},
            context={"pool": "local-small", "max_bid_tokens": 48, "max_answer_tokens": 48,
                     "refine": False},
        )
        return out

    out = asyncio.run(go())
    assert out["winner"] in {"smollm2-135m", "qwen2.5-coder-0.5b"}
    assert out["answer"]
    assert len(out["auction"]["bids"]) == 2


def test_dev_server_streams_the_answer_token_by_token(dev_server):
    """Studio's messages mode: the winner's tokens arrive tagged, adding up to its answer."""
    from langgraph_sdk import get_client

    async def go():
        client = get_client(url=dev_server)
        pieces, final = [], None
        async for part in client.runs.stream(
                None, "sale_auction", stream_mode=["messages-tuple", "values"],
                input={"task": "Write a Python function that returns the cube of x."},
                context={"pool": "local-small", "max_bid_tokens": 48,
                         "max_answer_tokens": 48, "refine": False}):
            if part.event == "values":
                final = part.data
            elif part.event == "messages":
                message, meta = part.data
                if "sale:answer" in (meta.get("tags") or []):
                    assert meta["langgraph_node"] == "execute"
                    pieces.append(message["content"])
        return pieces, final

    pieces, final = asyncio.run(go())
    execution = final["auction"]["execution"]
    assert len(pieces) > 3
    assert "".join(pieces) == execution.get("raw_answer", final["answer"])


def test_dev_server_rejects_an_empty_task(dev_server):
    from langgraph_sdk import get_client

    async def go():
        client = get_client(url=dev_server)
        thread = await client.threads.create()
        run = await client.runs.create(thread["thread_id"], "sale_auction",
                                       input={"task": "   "},
                                       context={"pool": "local-small"})
        await client.runs.join(thread["thread_id"], run["run_id"])
        return await client.runs.get(thread["thread_id"], run["run_id"])

    run = asyncio.run(go())
    assert run["status"] == "error"


def test_dev_server_human_approval_interrupts_and_resumes(dev_server):
    from langgraph_sdk import get_client

    context = {"pool": "local-small", "max_bid_tokens": 32, "max_answer_tokens": 32,
               "refine": False, "remember": False, "approval": True}

    async def go():
        client = get_client(url=dev_server)
        thread = await client.threads.create()
        tid = thread["thread_id"]
        paused = await client.runs.wait(tid, "sale_auction",
                                        input={"task": "Return the sum of a and b in Python."},
                                        context=context)
        state = await client.threads.get_state(tid)
        request = state["interrupts"][0]["value"] if state.get("interrupts") else None
        if request is None:  # older servers report interrupts per task
            request = state["tasks"][0]["interrupts"][0]["value"]
        other = request["alternatives"][0]
        done = await client.runs.wait(tid, "sale_auction", context=context,
                                      command={"resume": {"action": "override",
                                                          "winner": other}})
        return paused, request, other, done

    paused, request, other, done = asyncio.run(go())
    assert "winner" not in paused or paused.get("winner") is None
    assert request["winner"] in {"smollm2-135m", "qwen2.5-coder-0.5b"}
    assert done["winner"] == other and done["auction"]["approval"]["action"] == "override"
