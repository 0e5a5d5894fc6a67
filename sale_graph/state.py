"""The auction's state: what flows between the nodes of the graph.

Everything is plain JSON-able dicts so any LangGraph checkpointer can persist an
auction mid-way (bids already paid for are never paid for again on resume).
Bids, votes and events arrive from parallel ``Send`` branches and are merged by
``operator.add`` (bids by id: :func:`add_bids`); a parent graph sees only
:class:`AuctionInput` and :class:`AuctionOutput`.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, NotRequired, get_type_hints

# typing's TypedDict cannot be turned into a JSON schema by pydantic before Python
# 3.12, and LangGraph's server then gives Studio no input or output form
from typing_extensions import TypedDict


class Bid(TypedDict, total=False):
    """One strategy: an original bid (round 0) or a refined one (round 1)."""

    id: str  # "<agent>#<round>"
    agent: str
    round: int
    strategy: str
    price: float
    tokens: int  # |s|, output tokens of the bid
    input_tokens: int
    entropy: float | None
    entropy_method: str | None
    started: float
    ended: float
    retrieved: int  # refined bids: how many (loser, winner) pairs the prompt showed
    direct: bool  # staged last resort: no plan was asked for, the agent answers directly


class Vote(TypedDict, total=False):
    """One juror's Likert score (0..5) of one bid; ``score`` None = vote dropped.

    ``expected`` is the vote's mean under the juror's digit probabilities, when the
    backend reports them (see ``sale_graph.jury``).
    """

    bid_id: str
    juror: str
    score: int | None
    expected: float | None
    attempts: int
    raw: list[str]
    error: str | None
    input_tokens: int
    output_tokens: int
    started: float
    ended: float


class Event(TypedDict, total=False):
    """Something that did not go to plan but did not stop the auction."""

    kind: str  # bid_failed, refine_failed, vote_dropped, memory_retrieve_failed, ...
    agent: str | None
    detail: str


class AuctionInput(TypedDict):
    """What a caller gives: the task text, and optionally an idempotency key.

    ``auction_id`` names the memory record; a worker that retries a job with the
    same id overwrites the same record instead of storing the auction twice.
    """

    task: str
    auction_id: NotRequired[str]


class AuctionOutput(TypedDict, total=False):
    """What a caller gets: the winner, its answer and the full audit record."""

    winner: str | None
    answer: str | None
    auction: dict[str, Any]


def add_bids(left: list[Bid] | None, right: list[Bid] | None) -> list[Bid]:
    """Reducer of ``bids``: new bids are added; one written again under its id replaces it.

    Parallel branches write bids of distinct ids, so for them this is ``operator.add``.
    A state edit at the approval pause that sends the list back with one plan changed
    (Studio's "edit state") edits that bid instead of adding every bid twice.
    """
    if not isinstance(right, list | None):
        raise TypeError(f"bids must be a list of bids, got {type(right).__name__}")
    merged = list(left or [])
    where = {key: i for i, b in enumerate(merged) if (key := _bid_key(b))}
    for bid in right or []:
        key = _bid_key(bid)
        if key in where:
            merged[where[key]] = bid
            continue
        if key:
            where[key] = len(merged)
        merged.append(bid)
    return merged


def _bid_key(bid: Any) -> str | None:
    key = bid.get("id") if isinstance(bid, dict) else None
    return key if isinstance(key, str) else None


def merge_dicts(left: dict[str, Any] | None, right: dict[str, Any] | None) -> dict[str, Any]:
    """Reducer for keyed results written by parallel branches (later keys win)."""
    return {**(left or {}), **(right or {})}


class AuctionState(TypedDict, total=False):
    """Internal state of one auction (``open_auction`` resets it for each new run)."""

    task: str
    auction_id: str
    started: float
    mode: str  # "full" (the paper's) or "staged"
    bids: Annotated[list[Bid], add_bids]
    votes: Annotated[list[Vote], operator.add]
    events: Annotated[list[Event], operator.add]
    scores: Annotated[dict[str, dict[str, Any]], merge_dicts]
    round: int
    weights: dict[str, Any]  # snapshot taken when the auction opened
    execute_plan: Any  # snapshot: plan or direct answer (True, False or {agent: bool})
    staged_policy: dict[str, Any]  # snapshot of the staged auction's policy
    approval_required: bool  # snapshot: a person decides before execution
    provisional_winner: str | None  # bid id
    winning_bid: str | None  # bid id
    refiners: list[str]
    retrieved: dict[str, Any]
    retrieve_seconds: float
    estimates: dict[str, dict[str, float]]  # memory's success estimate per agent
    estimated: dict[str, Any]  # what the estimate was drawn from
    offered: Annotated[list[str], operator.add]  # staged: agents asked, in order
    assessments: Annotated[list[dict[str, Any]], operator.add]  # staged: one per bid
    stop: str  # why the auction chose its winner when it did
    awarded: dict[str, Any]  # the winning bid as the auction chose it (see approval.award)
    approval: dict[str, Any]
    execution: dict[str, Any]
    outcome: dict[str, Any]  # the verifier's verdict, stored with the auction
    winner: str | None
    answer: str | None
    auction: dict[str, Any]


class BidRequest(TypedDict, total=False):
    """Payload of one ``Send('bid', ...)`` / ``Send('refine', ...)`` branch."""

    task: str
    agent: str
    round: int
    pairs: list[dict[str, Any]]
    own_bid: str


class VoteRequest(TypedDict):
    """Payload of one ``Send('vote', ...)`` branch: one juror and one bid.

    Listwise (``Context.jury_format``), ``bids`` holds every bid the juror judges.
    """

    task: str
    juror: str
    bid: Bid
    bids: NotRequired[list[Bid]]


# channels whose writes are merged by a reducer (a new run must overwrite them, not add)
REDUCED = frozenset(k for k, t in get_type_hints(AuctionState, include_extras=True).items()
                    if getattr(t, "__metadata__", None))
