"""The jury: every agent scores every bid 0-5 (gamma_j), the bidder included.

A vote must be one digit 0..5. Local llama.cpp models are held to that by a
grammar; other backends are parsed strictly (a bare digit, optionally "/5" or a
trailing period). Anything else — "7", "four", an essay, an error — is retried
once with a terser instruction, then the vote is dropped and the audit records
the raw replies. A dropped vote simply does not count (the jury term averages
the votes that were cast), so a broken juror cannot sink a good bid.

Besides the digit, a vote carries its *expected* value, sum_d d * p(d), under
the juror's own distribution over the six digits when the backend exposes it
(exactly for local models; from ``top_logprobs`` over an API, renormalised over
the digits listed). Small jurors decoded greedily tend to give every plan the
same digit, which makes the jury term a constant; their digit probabilities
still move with plan quality (measured on Qwen2.5-Coder-1.5B: expected votes
3.6 / 2.7 / 2.1 for a correct, a wrong and an off-topic plan, all with mode 4
or 0). ``Context.jury_vote`` picks which of the two the score uses.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langgraph.types import Command, Send

from sale_graph.agents import Agent
from sale_graph.calls import call, describe_error, is_local
from sale_graph.errors import NoBidsError
from sale_graph.prompts import JURY_LIST_RETRY, JURY_RETRY, jury_list_messages, jury_messages
from sale_graph.runtime import auction_weights, pool_of, run_context
from sale_graph.state import Bid, Event, Vote, VoteRequest

VOTE_GRAMMAR = "root ::= [0-5]"
_VOTE = re.compile(r"^\s*([0-5])\s*(?:/\s*5)?\s*\.?\s*$")
_LIST = re.compile(r"^\s*([0-5](?:[\s,]+[0-5])*)\s*\.?\s*$")


def list_grammar(n: int) -> str:
    """GBNF for exactly ``n`` digits 0-5 separated by single spaces."""
    return "root ::= [0-5]" + ' " " [0-5]' * (n - 1)


def parse_list_vote(text: str, n: int) -> list[int] | None:
    """The ``n`` votes in a listwise reply, or None unless it is exactly n digits 0-5."""
    match = _LIST.match(text or "")
    if not match:
        return None
    digits = [int(d) for d in re.findall(r"[0-5]", match.group(1))]
    return digits if len(digits) == n else None


def _expected_each(metadata: Mapping[str, Any] | None, n: int) -> list[float | None]:
    """Per-position expected votes of a listwise reply (local models), else Nones.

    The local backend reports the digit distribution of every step that wrote a
    digit token (``choice_steps``); when it wrote exactly ``n`` of them, each vote
    gets its own expected value, as a per-bid vote would.
    """
    steps = (metadata or {}).get("choice_steps")
    if not isinstance(steps, list) or len(steps) != n:
        return [None] * n
    out: list[float | None] = []
    for probs in steps:
        out.append(expected_vote({"choice_probs": probs}))
    return out
ATTEMPTS = 2
SCALE = "012345"


def parse_vote(text: str) -> int | None:
    """The vote in a reply, or None when the reply is not a clean 0-5 digit."""
    match = _VOTE.match(text or "")
    return int(match.group(1)) if match else None


def expected_vote(metadata: Mapping[str, Any] | None) -> float | None:
    """Mean of the 0-5 scale under the juror's digit probabilities, if known.

    Local models report ``choice_probs``; OpenAI-style ``logprobs`` are read at the
    first token that is a digit, from its ``top_logprobs`` entries that are digits.
    None when the backend gives neither (the digit itself is then used).
    """
    metadata = metadata or {}
    probs = metadata.get("choice_probs")
    if isinstance(probs, Mapping):
        weights = {int(d): float(p) for d, p in probs.items() if d in set(SCALE)}
    else:
        weights = _digit_probs_from_logprobs(metadata.get("logprobs"))
    total = math.fsum(weights.values())
    if not weights or not math.isfinite(total) or total <= 0:
        return None
    return math.fsum(d * p for d, p in weights.items()) / total


def _digit_probs_from_logprobs(logprobs: Any) -> dict[int, float]:
    if not isinstance(logprobs, Mapping):
        return {}
    digits = set(SCALE)
    for token in logprobs.get("content") or []:
        if not isinstance(token, Mapping) or str(token.get("token", "")).strip() not in digits:
            continue
        found: dict[int, float] = {}
        for alt in token.get("top_logprobs") or []:
            digit = str(alt.get("token", "")).strip() if isinstance(alt, Mapping) else ""
            lp = alt.get("logprob") if isinstance(alt, Mapping) else None
            if digit in digits and isinstance(lp, (int, float)) and math.isfinite(lp):
                found[int(digit)] = found.get(int(digit), 0.0) + math.exp(lp)
        return found
    return {}


def vote_value(vote: Vote, reading: str = "expected") -> float | None:
    """What a vote adds to the jury term: its expected value if asked and known, else its digit."""
    score = vote.get("score")
    if score is None:
        return None
    expected = vote.get("expected")
    if reading == "expected" and expected is not None:
        return float(expected)
    return float(score)


def jurors_for(bid_agent: str, agents: Sequence[str], mode: str) -> list[str]:
    """Who votes on a bid under the jury mode (paper: everyone; ablations: self/peers/none)."""
    if mode == "all":
        return list(agents)
    if mode == "self":
        return [bid_agent]
    if mode == "peers":
        return [a for a in agents if a != bid_agent]
    return []


@dataclass
class _Asked:
    """What asking a juror produced: the parsed reply (None if unreadable) and its costs."""

    parsed: Any = None
    metadata: Mapping[str, Any] | None = None
    raw: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    started: float = 0.0
    ended: float = 0.0

    @property
    def attempts(self) -> int:
        return len(self.raw) + len(self.errors)


async def _ask(
    juror: Agent, messages: list[BaseMessage], parse: Any, retry: str, timeout: float,
    **kwargs: object,
) -> _Asked:
    """Ask, parse, and once more with a terser instruction if the reply was unreadable.

    A juror that errs is asked once more too (a dropped connection), but not one
    that ran out of time: the deadline is the budget for this call, not half of it.
    """
    asked = _Asked()
    for _ in range(ATTEMPTS):
        try:
            reply = await call(juror, messages, timeout=timeout, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure of a juror is recorded, not raised
            asked.errors.append(describe_error(exc))
            if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
                break
            continue
        asked.started = asked.started or reply.started
        asked.ended = reply.ended
        asked.input_tokens += reply.input_tokens
        asked.output_tokens += reply.output_tokens
        asked.raw.append(reply.text)
        asked.parsed = parse(reply.text)
        if asked.parsed is not None:
            asked.metadata = reply.metadata
            return asked
        messages = [*messages, AIMessage(reply.text), HumanMessage(retry)]
    return asked


async def cast_vote(juror: Agent, task: str, bid: Bid, *, timeout: float) -> Vote:
    """One juror's vote on one bid, retried once, dropped (score None) if unreadable."""
    kwargs: dict[str, object] = {"max_tokens": 2 if is_local(juror) else 4}
    if is_local(juror):
        kwargs["grammar"] = VOTE_GRAMMAR
        kwargs["choices"] = SCALE
    asked = await _ask(juror, jury_messages(task, bid["strategy"]), parse_vote, JURY_RETRY,
                       timeout, **kwargs)
    expected = expected_vote(asked.metadata) if asked.parsed is not None else None
    reason = None if asked.parsed is not None else (
        "; ".join(asked.errors) if asked.errors else f"unreadable vote {asked.raw!r}")
    return Vote(
        bid_id=bid["id"], juror=juror.name, score=asked.parsed,
        expected=None if expected is None else round(expected, 4), attempts=asked.attempts,
        raw=asked.raw, error=reason, input_tokens=asked.input_tokens,
        output_tokens=asked.output_tokens, started=asked.started, ended=asked.ended,
    )


async def jury(
    state: Mapping[str, Any], runtime: Any, bound: Any
) -> Command[Literal["vote", "score"]]:
    """Graph node, step 2a: send every new bid to every juror (agents still in the auction).

    Jurors whose weight is zero (``sale fit`` zeroes those not worth their price)
    are not asked: their votes could not change any score.
    """
    ctx = run_context(runtime, bound)
    round_ = state.get("round", 0)
    bids = [b for b in state.get("bids", []) if b["round"] == round_]
    if round_ == 0 and not bids:
        failures = {str(e.get("agent")): str(e.get("detail"))
                    for e in state.get("events", []) if e.get("kind") == "bid_failed"}
        listed = "; ".join(f"{agent}: {why}" for agent, why in failures.items())
        raise NoBidsError(f"every agent failed to bid ({listed})", failures)
    bidders = [b["agent"] for b in state.get("bids", []) if b["round"] == 0]
    weights = await auction_weights(state, ctx)
    pairs = [
        (juror, b)
        for b in bids
        for juror in jurors_for(b["agent"], bidders, ctx.jury)
        if weights.heeds(juror)  # a zero-weight vote would be paid for and ignored
    ]
    if ctx.jury_format == "listwise":
        by_juror: dict[str, list[Bid]] = {}
        for juror, b in pairs:
            by_juror.setdefault(juror, []).append(b)
        sends = [Send("vote", VoteRequest(task=state["task"], juror=juror, bid=judged[0],
                                          bids=judged))
                 for juror, judged in by_juror.items()]
    else:
        sends = [Send("vote", VoteRequest(task=state["task"], juror=juror, bid=b))
                 for juror, b in pairs]
    return Command(goto=sends or "score")


async def vote(request: VoteRequest, runtime: Any, bound: Any) -> dict[str, Any]:
    """Graph node, step 2b: one juror's 0-5 vote on one bid (dropped votes are recorded)."""
    ctx = run_context(runtime, bound)
    juror = (await pool_of(ctx))[request["juror"]]
    if request.get("bids"):
        cast = await cast_list_vote(juror, request["task"], request["bids"],
                                    timeout=ctx.call_timeout)
    else:
        cast = [await cast_vote(juror, request["task"], request["bid"],
                                timeout=ctx.call_timeout)]
    update: dict[str, Any] = {"votes": cast}
    dropped = [Event(kind="vote_dropped", agent=juror.name,
                     detail=f"on {v['bid_id']}: {v['error']}")
               for v in cast if v["score"] is None]
    if dropped:
        update["events"] = dropped
    return update


async def cast_list_vote(
    juror: Agent, task: str, bids: Sequence[Bid], *, timeout: float
) -> list[Vote]:
    """One juror rates every bid of a round in one call (``Context.jury_format="listwise"``).

    The call's tokens are shared out evenly over the bids, so the audit prices a
    listwise vote like the per-bid votes it replaces. Unreadable replies are retried
    once; then every vote of the call is dropped and recorded.
    """
    n = len(bids)
    kwargs: dict[str, object] = {"max_tokens": 2 * n + 2}
    if is_local(juror):
        kwargs["grammar"] = list_grammar(n)
        kwargs["choices"] = SCALE
    asked = await _ask(juror, jury_list_messages(task, [b["strategy"] for b in bids]),
                       lambda text: parse_list_vote(text, n), JURY_LIST_RETRY.format(n=n),
                       timeout, **kwargs)
    digits = asked.parsed
    expected = _expected_each(asked.metadata, n) if digits is not None else [None] * n
    reason = None if digits is not None else (
        "; ".join(asked.errors) if asked.errors else f"unreadable listwise vote {asked.raw!r}")
    return [
        Vote(
            bid_id=b["id"], juror=juror.name,
            score=None if digits is None else digits[i],
            expected=None if expected[i] is None else round(float(expected[i] or 0.0), 4),
            attempts=asked.attempts, raw=asked.raw, error=reason,
            input_tokens=round(asked.input_tokens / n),
            output_tokens=round(asked.output_tokens / n),
            started=asked.started, ended=asked.ended,
        )
        for i, b in enumerate(bids)
    ]
