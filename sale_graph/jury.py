"""The jury: every agent scores every bid 0-5 (gamma_j), the bidder included.

A vote must be one digit 0..5. Local llama.cpp models are held to that by a
grammar; other backends are parsed strictly (a bare digit, optionally "/5" or a
trailing period). Anything else — "7", "four", an essay, an error — is retried
once with a terser instruction, then the vote is dropped and the audit records
the raw replies. A dropped vote simply does not count (the jury term averages
the votes that were cast), so a broken juror cannot sink a good bid.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from sale_graph.agents import Agent
from sale_graph.calls import call, describe_error, is_local
from sale_graph.prompts import JURY_RETRY, jury_messages
from sale_graph.state import Bid, Vote

VOTE_GRAMMAR = "root ::= [0-5]"
_VOTE = re.compile(r"^\s*([0-5])\s*(?:/\s*5)?\s*\.?\s*$")
ATTEMPTS = 2


def parse_vote(text: str) -> int | None:
    """The vote in a reply, or None when the reply is not a clean 0-5 digit."""
    match = _VOTE.match(text or "")
    return int(match.group(1)) if match else None


def jurors_for(bid_agent: str, agents: Sequence[str], mode: str) -> list[str]:
    """Who votes on a bid under the jury mode (paper: everyone; ablations: self/peers/none)."""
    if mode == "all":
        return list(agents)
    if mode == "self":
        return [bid_agent]
    if mode == "peers":
        return [a for a in agents if a != bid_agent]
    return []


async def cast_vote(juror: Agent, task: str, bid: Bid, *, timeout: float) -> Vote:
    """One juror's vote on one bid, retried once, dropped (score None) if unreadable."""
    messages: list[BaseMessage] = jury_messages(task, bid["strategy"])
    kwargs: dict[str, object] = {"max_tokens": 2 if is_local(juror) else 4}
    if is_local(juror):
        kwargs["grammar"] = VOTE_GRAMMAR
    raw: list[str] = []
    errors: list[str] = []
    input_tokens = output_tokens = 0
    started = ended = None
    for _ in range(ATTEMPTS):
        try:
            reply = await call(juror, messages, timeout=timeout, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure of a juror is recorded, not raised
            errors.append(describe_error(exc))
            continue
        started = started or reply.started
        ended = reply.ended
        input_tokens += reply.input_tokens
        output_tokens += reply.output_tokens
        raw.append(reply.text)
        score = parse_vote(reply.text)
        if score is not None:
            return Vote(
                bid_id=bid["id"], juror=juror.name, score=score, attempts=len(raw) + len(errors),
                raw=raw, error=None, input_tokens=input_tokens, output_tokens=output_tokens,
                started=started, ended=ended,
            )
        messages = [*messages, AIMessage(reply.text), HumanMessage(JURY_RETRY)]
    reason = "; ".join(errors) if errors else f"unreadable vote {raw!r}"
    return Vote(
        bid_id=bid["id"], juror=juror.name, score=None, attempts=ATTEMPTS, raw=raw,
        error=reason, input_tokens=input_tokens, output_tokens=output_tokens,
        started=started or 0.0, ended=ended or 0.0,
    )
