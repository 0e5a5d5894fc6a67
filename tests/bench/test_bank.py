"""The outcome bank caches model calls on disk and moves them through exports."""

from __future__ import annotations

import gzip
import json
import threading

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, Generation

from sale_graph.bench.bank import BankFormatError, OutcomeBank


def test_second_call_is_served_from_the_bank(tmp_path, scripted) -> None:
    bank = OutcomeBank(tmp_path / "bank.sqlite")
    model = scripted(replies=["first", "second"], cache=bank)
    a = model.invoke([HumanMessage("plan the task")])
    b = model.invoke([HumanMessage("plan the task")])
    assert model.calls == 1
    assert b.content == a.content == "first"
    assert b.response_metadata == a.response_metadata
    assert b.response_metadata["mean_token_entropy"] == 0.25
    assert b.response_metadata["generation_seconds"] == 0.5
    for key in ("input_tokens", "output_tokens", "total_tokens"):
        assert b.usage_metadata[key] == a.usage_metadata[key]
    assert len(bank) == 1


def test_decoding_parameters_and_prompt_are_part_of_the_key(tmp_path, scripted) -> None:
    bank = OutcomeBank(tmp_path / "bank.sqlite")
    scripted(replies=["cold"], cache=bank).invoke("q")
    warm = scripted(replies=["warm"], temperature=0.7, cache=bank)
    assert warm.invoke("q").content == "warm"
    assert warm.invoke("another q").content == "warm"
    assert warm.calls == 2
    assert len(bank) == 3


def test_bank_survives_reopening(tmp_path, scripted) -> None:
    path = tmp_path / "bank.sqlite"
    with OutcomeBank(path) as bank:
        scripted(replies=["kept"], cache=bank).invoke("resume me")
    reopened = OutcomeBank(path)
    model = scripted(replies=["recomputed"], cache=reopened)
    assert model.invoke("resume me").content == "kept"
    assert model.calls == 0


def test_async_calls_use_the_bank(tmp_path, scripted) -> None:
    import asyncio

    bank = OutcomeBank(tmp_path / "bank.sqlite")
    model = scripted(replies=["one"], cache=bank)

    async def twice() -> tuple[str, str]:
        a = await model.ainvoke("x")
        b = await model.ainvoke("x")
        return a.content, b.content

    assert asyncio.run(twice()) == ("one", "one")
    assert model.calls == 1


def test_export_import_round_trip_is_deterministic(tmp_path, scripted) -> None:
    bank = OutcomeBank(tmp_path / "a.sqlite")
    model = scripted(replies=["r1", "r2", "r3"], cache=bank)
    for prompt in ("p1", "p2", "p3"):
        model.invoke(prompt)
    bank.put("outcome", "HumanEval/0|tiny", {"passed": True, "tokens": 12})
    assert bank.export(tmp_path / "bank.jsonl.gz") == 4
    bank.export(tmp_path / "again.jsonl.gz")
    assert (tmp_path / "bank.jsonl.gz").read_bytes() == (tmp_path / "again.jsonl.gz").read_bytes()
    lines = gzip.open(tmp_path / "bank.jsonl.gz", "rt").read().splitlines()
    assert sorted(json.loads(ln)["type"] for ln in lines) == ["call", "call", "call", "record"]

    fresh = OutcomeBank.from_export(tmp_path / "bank.jsonl.gz", tmp_path / "b.sqlite")
    other = scripted(replies=["never"], cache=fresh)
    assert [other.invoke(p).content for p in ("p1", "p2", "p3")] == ["r1", "r2", "r3"]
    assert other.calls == 0
    assert fresh.get("outcome", "HumanEval/0|tiny") == {"passed": True, "tokens": 12}
    assert fresh.import_(tmp_path / "bank.jsonl.gz") == 0  # nothing new the second time


def test_import_keeps_existing_entries_unless_overwrite(tmp_path) -> None:
    src = OutcomeBank(tmp_path / "src.sqlite")
    src.put("outcome", "k", {"v": "exported"})
    src.export(tmp_path / "x.jsonl.gz")
    dst = OutcomeBank(tmp_path / "dst.sqlite")
    dst.put("outcome", "k", {"v": "local"})
    dst.import_(tmp_path / "x.jsonl.gz")
    assert dst.get("outcome", "k") == {"v": "local"}
    dst.import_(tmp_path / "x.jsonl.gz", overwrite=True)
    assert dst.get("outcome", "k") == {"v": "exported"}


def test_a_broken_export_is_refused_whole_naming_file_and_line(tmp_path) -> None:
    good = json.dumps({"type": "record", "namespace": "outcome", "key": "k", "value": {}})
    bad = tmp_path / "bad.jsonl.gz"
    with gzip.open(bad, "wt", encoding="utf-8") as f:
        f.write(good + "\n" + json.dumps({"namespace": "outcome"}) + "\n")
    dst = OutcomeBank(tmp_path / "dst.sqlite")
    with pytest.raises(BankFormatError, match=r"bad.jsonl.gz, line 2: .*nothing imported"):
        dst.import_(bad)
    assert dst.records("outcome") == {}  # the good first line is not half-imported
    corrupt = tmp_path / "corrupt.jsonl.gz"
    corrupt.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(BankFormatError, match="corrupt.jsonl.gz"):
        dst.import_(corrupt)


def test_text_and_chat_generations_round_trip(tmp_path) -> None:
    bank = OutcomeBank(tmp_path / "bank.sqlite")
    msg = AIMessage(
        "plan",
        usage_metadata={"input_tokens": 3, "output_tokens": 1, "total_tokens": 4},
        response_metadata={"logprobs": {"content": [{"token": "p", "logprob": -0.1}]}},
    )
    bank.update("prompt", "llm", [ChatGeneration(message=msg), Generation(text="plain")])
    chat, text = bank.lookup("prompt", "llm")
    assert isinstance(chat, ChatGeneration) and chat.message == msg
    assert type(text) is Generation and text.text == "plain"
    assert bank.lookup("prompt", "other llm") is None
    bank.clear()
    assert bank.lookup("prompt", "llm") is None


def test_records_by_namespace(tmp_path) -> None:
    bank = OutcomeBank(tmp_path / "bank.sqlite")
    bank.put("outcome", "t1|a", {"passed": False})
    bank.put("outcome", "t2|a", {"passed": True})
    bank.put("verify", "t1|a", {"score": 0.0})
    assert list(bank.records("outcome")) == ["t1|a", "t2|a"]
    bank.clear_records("outcome")
    assert bank.records("outcome") == {} and bank.get("verify", "t1|a") == {"score": 0.0}


def test_concurrent_writers_from_threads(tmp_path) -> None:
    bank = OutcomeBank(tmp_path / "bank.sqlite")

    def write(k: int) -> None:
        for i in range(25):
            bank.put("outcome", f"{k}-{i}", {"i": i})

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(bank.records("outcome")) == 100


def test_wrong_schema_is_refused(tmp_path) -> None:
    import sqlite3

    path = tmp_path / "bank.sqlite"
    OutcomeBank(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value='99' WHERE name='schema'")
    with pytest.raises(ValueError, match="schema"):
        OutcomeBank(path)
