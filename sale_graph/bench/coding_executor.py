"""An agentic coding executor: write, run the task's own examples, fix, repeat.

SALE's winner executes its plan with tools; for coding the tool is a Python
sandbox. The executor only uses what a human would see in the task (the docstring
examples), never the hidden tests, so its ``examples_passed`` flag is a fair
self-verification signal (the cascade baseline stops on it).

It is a compiled LangGraph subgraph, the shape users plug in as an agent's executor:
input ``{"task", "strategy", "model", "agent"}`` (+ optional ``entry_point``,
``examples``, ``context_code``, ``max_rounds``, ``max_tokens`` per call), output
``{"answer", "rounds", "examples_passed", "examples_checked", "usage", "report"}``.

    write_code -> run_examples -(failed and rounds left)-> write_code
                               -(passed or out of rounds)-> END
"""

from __future__ import annotations

import ast
import asyncio
import re
import textwrap
from dataclasses import dataclass
from typing import Any, TypedDict

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langgraph.graph import END, START, StateGraph

from sale_graph.bench import prompts
from sale_graph.bench.sandbox import SandboxResult, run_python

__all__ = [
    "Example",
    "ExecutorInput",
    "ExecutorOutput",
    "build_coding_executor",
    "coding_executor",
    "examples_program",
    "extract_code",
    "parse_examples",
]


# --------------------------------------------------------------------------- examples


@dataclass(frozen=True)
class Example:
    """One example from a task description: a call and the expected result's source."""

    call: str
    expected: str

    def to_assert(self) -> str:
        """Plain-assert form, for reading; the harness compares more leniently."""
        return f"assert ({self.call}) == ({self.expected})"


def _is_expr(src: str) -> bool:
    try:
        ast.parse(src, mode="eval")
    except SyntaxError:
        return False
    return True


def _normalise(src: str) -> str:
    """Canonical source of an expression (drops comments, so it can sit in a lambda)."""
    return ast.unparse(ast.parse(src, mode="eval"))


_LITERAL_NODES = (
    ast.Expression, ast.Constant, ast.UnaryOp, ast.BinOp, ast.Tuple, ast.List, ast.Dict,
    ast.Set, ast.Load, ast.operator, ast.unaryop,
)  # fmt: skip


def _literal(src: str) -> bool:
    """Accept constant expressions only: ``f(n) -> f(n-1) + ...`` is a definition."""
    try:
        tree = ast.parse(src, mode="eval")
    except SyntaxError:
        return False
    return all(isinstance(n, _LITERAL_NODES) for n in ast.walk(tree))


def _call_of(src: str, entry_point: str) -> bool:
    """``entry_point(<constant args>)``: an example, not a recurrence over a variable."""
    try:
        tree = ast.parse(src, mode="eval").body
    except SyntaxError:
        return False
    if not (isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name)):
        return False
    args = [*tree.args, *(k.value for k in tree.keywords)]
    return tree.func.id == entry_point and all(_literal(ast.unparse(a)) for a in args)


def _doctest_examples(text: str) -> list[Example]:
    lines = text.splitlines()
    out: list[Example] = []
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if not stripped.startswith(">>>"):
            i += 1
            continue
        source = [stripped[3:].strip()]
        i += 1
        while i < len(lines) and lines[i].strip().startswith("..."):
            source.append(lines[i].strip()[3:].strip())
            i += 1
        expected = []
        while i < len(lines):
            s = lines[i].strip()
            if not s or s.startswith(">>>") or s.startswith('"""') or s.startswith("'''"):
                break
            s = s.removesuffix('"""').removesuffix("'''").rstrip()
            expected.append(s)
            i += 1
        call = "\n".join(source)
        want = "\n".join(expected).strip()
        if want and _is_expr(call):
            out.append(Example(call=_normalise(call), expected=want))
    return out


_SEPARATOR = re.compile(r"^\s*(?:==>|=>|->|\u2192|==|=|should\s+return|returns?)\s*(.+)$", re.I)


_JS_BOOL = {"true": "True", "false": "False"}


def _balanced_call(line: str, start: int) -> int | None:
    """Index just past the parenthesis that closes the call starting at ``start``."""
    depth = 0
    quote: str | None = None
    for j in range(start, len(line)):
        c = line[j]
        if quote:
            if c == quote and line[j - 1] != "\\":
                quote = None
        elif c in "'\"":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return j + 1
    return None


def _arrow_examples(text: str, entry_point: str) -> list[Example]:
    """Lines like ``f(1, 2) => 3``, ``f(x) ➞ [1]``, ``f(a) -> 10 - 2 = 8``."""
    out = []
    pattern = re.compile(rf"(?<![\w.]){re.escape(entry_point)}\s*\(")
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(">>>"):
            continue
        m = pattern.search(line)
        if not m:
            continue
        end = _balanced_call(line, m.end() - 1)
        if end is None:
            continue
        call = line[m.start() : end]
        rest = line[end:].replace("\u279e", "->")
        sep = _SEPARATOR.match(rest)
        if not sep or not _call_of(call, entry_point):
            continue
        value = sep.group(1).strip()
        if " = " in value:  # "19 - 5 - 6 = 8": the worked arithmetic ends in the value
            value = value.rsplit(" = ", 1)[1].strip()
        value = _JS_BOOL.get(value.rstrip(".,;").lower(), value)
        for candidate in (value.rstrip(".,;"), value):  # "returns 4." ends a sentence
            if candidate and _literal(candidate):
                out.append(Example(call=_normalise(call), expected=_normalise(candidate)))
                break
    return out


def parse_examples(text: str, entry_point: str | None = None) -> list[Example]:
    """Examples stated in a task description, doctest style first, then arrow style.

    Only expressions that parse as Python are kept; prose examples ("Input: ...,
    Output: ...") are ignored rather than guessed.
    """
    found = _doctest_examples(text)
    if entry_point:
        found += _arrow_examples(text, entry_point)
    seen: set[tuple[str, str]] = set()
    unique = []
    for ex in found:
        key = (ex.call, ex.expected)
        if key not in seen:
            seen.add(key)
            unique.append(ex)
    return unique


_HARNESS = """

# ---- examples from the task description ----
import contextlib as _cl, io as _io, math as _m, sys as _sys
_failures = []
_NOTHING = object()


def _same(a, b):
    if isinstance(a, float) or isinstance(b, float):
        try:
            return _m.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
        except TypeError:
            return False
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


def _check(src, thunk, want):
    buf = _io.StringIO()
    try:
        with _cl.redirect_stdout(buf):
            value = thunk()
    except Exception as e:
        _failures.append("%s raised %s: %s" % (src, type(e).__name__, e))
        return
    printed = buf.getvalue().strip()
    if value is None and printed and printed == want:
        return
    try:
        expected = eval(want, {})
    except Exception:
        expected = _NOTHING
    if expected is not _NOTHING and _same(value, expected):
        return
    if repr(value) == want:
        return
    _failures.append("%s: expected %s, got %r" % (src, want, value))

"""

_HARNESS_END = """
if _failures:
    print("%d of %d examples failed:" % (len(_failures), _N), file=_sys.stderr)
    for _f in _failures:
        print("  " + _f, file=_sys.stderr)
    raise SystemExit(1)
print("all %d examples passed" % _N)
"""


def examples_program(code: str, examples: list[Example], context_code: str = "") -> str:
    """Build a script that runs ``code`` and reports every failing example (exit 1 if any)."""
    checks = "".join(
        f"_check({ex.call!r}, lambda: ({ex.call}), {ex.expected!r})\n" for ex in examples
    )
    head = (context_code.rstrip() + "\n\n\n") if context_code.strip() else ""
    return f"{head}{code}\n{_HARNESS}_N = {len(examples)}\n{checks}{_HARNESS_END}"


# --------------------------------------------------------------------------- code extraction

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.S)


def _strip_main_guard(code: str) -> str:
    """Drop top-level ``if __name__ == "__main__":`` blocks (they would read stdin)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code
    lines = code.splitlines()
    drop: set[int] = set()
    for node in tree.body:
        if (
            isinstance(node, ast.If)
            and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name)
            and node.test.left.id == "__name__"
        ):
            drop.update(range(node.lineno - 1, (node.end_lineno or node.lineno)))
    return "\n".join(ln for k, ln in enumerate(lines) if k not in drop).rstrip() + "\n"


def _defines(code: str, name: str) -> bool:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return f"def {name}(" in code
    return any(
        isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name for n in tree.body
    )


def extract_code(text: str, entry_point: str | None = None) -> str:
    """Return the code of a model reply: the last fenced block defining ``entry_point``.

    Falls back to the longest Python-looking block, then to the whole reply (small
    models often omit fences). An unterminated fence counts up to the end.
    """
    blocks = [
        body
        for lang, body in _FENCE.findall(text)
        if lang.lower() in ("", "python", "py", "python3")
    ]
    chosen: str | None = None
    if entry_point:
        defining = [b for b in blocks if _defines(b, entry_point)]
        if defining:
            chosen = defining[-1]
    if chosen is None and blocks:
        chosen = max(blocks, key=len)
    if chosen is None:
        chosen = text
    return _strip_main_guard(textwrap.dedent(chosen).strip("\n") + "\n")


_DEF = re.compile(r"^def\s+([A-Za-z_]\w*)\s*\(", re.M)
_IMPORT = re.compile(r"^(?:import|from)\s+[A-Za-z_][\w.]*.*$", re.M)


def _task_imports(task: str) -> str:
    """Top-level imports of the code shown in the task (``from typing import List``...).

    Prepended when running a candidate, as the verifier prepends the stub, so a
    solution that relies on the stub's imports is not sent back for a fix.
    """
    code = "\n".join(body for _, body in _FENCE.findall(task))
    lines = [ln for ln in _IMPORT.findall(code) if _is_statement(ln)]
    return "\n".join(dict.fromkeys(lines))


def _is_statement(src: str) -> bool:
    try:
        ast.parse(src)
    except SyntaxError:
        return False
    return True


def _guess_entry_point(task: str) -> str | None:
    names = _DEF.findall(task)
    return names[-1] if names else None


# --------------------------------------------------------------------------- the graph


class ExecutorInput(TypedDict, total=False):
    """What a SALE execution step passes to an agent's executor."""

    task: str
    strategy: str
    model: BaseChatModel
    agent: str
    entry_point: str
    examples: list[str]
    context_code: str
    max_rounds: int
    max_tokens: int


class ExecutorOutput(TypedDict, total=False):
    """The executor's result; ``answer`` is what the verifier grades."""

    answer: str
    rounds: int
    examples_passed: bool
    examples_checked: int
    usage: dict[str, int]
    report: str


class _State(ExecutorInput, ExecutorOutput, total=False):
    messages: list[BaseMessage]


def _to_examples(raw: list[Any] | None) -> list[Example] | None:
    if raw is None:
        return None
    out = []
    for item in raw:
        if isinstance(item, Example):
            out.append(item)
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            out.append(Example(call=str(item[0]), expected=str(item[1])))
        else:  # a plain assert line or a doctest snippet
            out.extend(parse_examples(str(item)))
            s = str(item).strip()
            if s.startswith("assert ") and " == " in s:
                call, want = s[len("assert ") :].split(" == ", 1)
                if _is_expr(call) and _is_expr(want):
                    out.append(Example(call=call.strip(), expected=want.strip()))
    return out


def _add_usage(total: dict[str, int], message: BaseMessage) -> dict[str, int]:
    usage = getattr(message, "usage_metadata", None) or {}
    out = dict(total)
    for key in ("input_tokens", "output_tokens", "total_tokens"):
        out[key] = out.get(key, 0) + int(usage.get(key, 0) or 0)
    return out


def build_coding_executor(
    *, max_rounds: int = 2, timeout: float = 10.0, memory_mb: int = 1024
) -> Any:
    """Compile the write/test/fix subgraph.

    ``max_rounds`` counts model calls: 1 means write once and report; 2 (default)
    allows one fix after failed examples. A state value ``max_rounds`` overrides it.
    """
    if max_rounds < 1:
        raise ValueError("max_rounds must be >= 1")

    def _prepare(state: _State) -> tuple[list[BaseMessage], str | None]:
        entry = state.get("entry_point") or _guess_entry_point(state["task"])
        messages = list(state.get("messages") or [])
        if not messages:
            agent = state.get("agent") or "an agent"
            strategy = (state.get("strategy") or "").strip()
            task_msg = (
                prompts.CODER_TASK.format(task=state["task"], strategy=strategy)
                if strategy
                else prompts.CODER_TASK_NO_PLAN.format(task=state["task"])
            )
            messages = [
                SystemMessage(
                    (prompts.CODER_SYSTEM if strategy else prompts.CODER_SYSTEM_DIRECT).format(
                        agent=agent
                    )
                ),
                HumanMessage(task_msg),
            ]
        else:
            messages.append(HumanMessage(prompts.CODER_FEEDBACK.format(report=state["report"])))
        return messages, entry

    def _after_write(
        state: _State, messages: list[BaseMessage], reply: BaseMessage, entry: str | None
    ) -> dict[str, Any]:
        text = reply.content if isinstance(reply.content, str) else str(reply.text)
        return {
            # Only the text goes back into the conversation: a cached reply carries
            # different metadata (LangChain adds usage "total_cost" on a cache hit), and
            # metadata in the next prompt would change its cache key, so a rerun could
            # never replay the fix round.
            "messages": [*messages, AIMessage(content=text)],
            "answer": extract_code(text, entry),
            "entry_point": entry or "",
            "rounds": int(state.get("rounds") or 0) + 1,
            "usage": _add_usage(state.get("usage") or {}, reply),
        }

    def _model_config(state: _State, config: RunnableConfig | None) -> RunnableConfig:
        cfg: RunnableConfig = dict(config or {})  # type: ignore[assignment]
        agent = state.get("agent")
        if agent:
            cfg["tags"] = [*(cfg.get("tags") or []), f"agent:{agent}"]
        return cfg

    def _limits(state: _State) -> dict[str, Any]:
        return {"max_tokens": state["max_tokens"]} if state.get("max_tokens") else {}

    def write_code(state: _State, config: RunnableConfig) -> dict[str, Any]:
        messages, entry = _prepare(state)
        cfg = _model_config(state, config)
        reply = state["model"].invoke(messages, cfg, **_limits(state))
        return _after_write(state, messages, reply, entry)

    async def awrite_code(state: _State, config: RunnableConfig) -> dict[str, Any]:
        messages, entry = _prepare(state)
        cfg = _model_config(state, config)
        reply = await state["model"].ainvoke(messages, cfg, **_limits(state))
        return _after_write(state, messages, reply, entry)

    def _program(state: _State) -> tuple[str, int]:
        entry = state.get("entry_point") or None
        examples = _to_examples(state.get("examples"))
        if examples is None:
            examples = parse_examples(state["task"], entry)
        code = state.get("answer") or ""
        if (
            entry
            and not _defines(code, entry)
            and not _defines(state.get("context_code") or "", entry)
        ):
            code += f"\n\nraise NameError('the solution does not define {entry}()')\n"
        context = state.get("context_code")
        if context is None:
            context = _task_imports(state["task"])
        return examples_program(code, examples, context), len(examples)

    def _report(result: SandboxResult, n: int) -> dict[str, Any]:
        if result.timed_out:
            report = f"Running the code timed out after {timeout:g} seconds."
        elif result.memory_exceeded:
            report = f"Running the code ran out of memory (limit {memory_mb} MB)."
        else:
            report = (result.stderr or result.stdout).strip()[-2000:]
        return {"examples_passed": result.passed, "examples_checked": n, "report": report}

    def run_examples(state: _State) -> dict[str, Any]:
        program, n = _program(state)
        return _report(run_python(program, timeout=timeout, memory_mb=memory_mb), n)

    async def arun_examples(state: _State) -> dict[str, Any]:
        program, n = _program(state)
        result = await asyncio.to_thread(run_python, program, timeout=timeout, memory_mb=memory_mb)
        return _report(result, n)

    def route(state: _State) -> str:
        limit = int(state.get("max_rounds") or max_rounds)
        if state.get("examples_passed") or int(state.get("rounds") or 0) >= limit:
            return END
        return "write_code"

    graph = StateGraph(_State, input_schema=ExecutorInput, output_schema=ExecutorOutput)
    graph.add_node("write_code", RunnableLambda(write_code, afunc=awrite_code))
    graph.add_node("run_examples", RunnableLambda(run_examples, afunc=arun_examples))
    graph.add_edge(START, "write_code")
    graph.add_edge("write_code", "run_examples")
    graph.add_conditional_edges("run_examples", route, ["write_code", END])
    return graph.compile(name="coding_executor")


coding_executor = build_coding_executor()
