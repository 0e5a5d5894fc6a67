"""Reading a juror's reply: the digit, and its expected value when probabilities are known."""

from __future__ import annotations

import math

import pytest

from sale_graph.jury import expected_vote, parse_vote, vote_value


@pytest.mark.parametrize(("text", "digit"), [("4", 4), (" 0 ", 0), ("5/5", 5), ("3.", 3),
                                             ("7", None), ("four", None), ("4 or 5", None),
                                             ("", None)])
def test_parse_vote_is_strict(text, digit):
    assert parse_vote(text) == digit


def test_expected_vote_from_local_choice_probs():
    probs = {"0": 0.1, "1": 0.0, "2": 0.0, "3": 0.0, "4": 0.6, "5": 0.3}
    assert expected_vote({"choice_probs": probs}) == pytest.approx(0.6 * 4 + 0.3 * 5)
    # unnormalised mass is renormalised over the scale
    assert expected_vote({"choice_probs": {"1": 2.0, "3": 2.0}}) == pytest.approx(2.0)


def _token(token, alternatives):
    return {"token": token, "logprob": 0.0,
            "top_logprobs": [{"token": t, "logprob": math.log(p)} for t, p in alternatives]}


def test_expected_vote_from_openai_top_logprobs():
    # the first token is whitespace; the digit token's alternatives include a non-digit
    content = [
        _token(" ", [(" ", 0.9), ("\n", 0.1)]),
        _token("4", [("4", 0.5), ("5", 0.2), ("The", 0.2), ("2", 0.1)]),
        _token(".", [(".", 1.0)]),
    ]
    got = expected_vote({"logprobs": {"content": content}})
    assert got == pytest.approx((4 * 0.5 + 5 * 0.2 + 2 * 0.1) / 0.8)


@pytest.mark.parametrize("metadata", [None, {}, {"logprobs": None},
                                      {"logprobs": {"content": [_token("x", [("x", 1.0)])]}},
                                      {"choice_probs": {"0": 0.0, "5": 0.0}},
                                      {"choice_probs": {"7": 1.0}}])
def test_expected_vote_unknown_without_digit_probabilities(metadata):
    assert expected_vote(metadata) is None


def test_vote_value_reading():
    vote = {"score": 4, "expected": 3.25}
    assert vote_value(vote, "expected") == 3.25
    assert vote_value(vote, "digit") == 4.0
    assert vote_value({"score": 2, "expected": None}, "expected") == 2.0
    assert vote_value({"score": None, "expected": None}, "expected") is None
