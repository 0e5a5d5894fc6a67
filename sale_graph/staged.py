"""The staged auction: offer the task cheapest first, stop at the first bid worth taking.

Why not always the paper's full auction: there every agent bids and jurors judge
every bid before anyone works. When executions are short, that auction costs more
than the executions it routes (on the local pool a full auction cost 1.6x the
largest agent's whole answer before any execution). The staged auction spends only
on the bids it needs: the cheapest agent bids first; its bid is *assessed* from
cheap signals; if the assessment clears the agent's *reserve* the bid wins and the
dearer agents are never called. Otherwise the next agent bids. The dearest agent,
if reached, is the last resort: it answers directly, without a bid and without a jury.
An agent whose fitted assessment reads nothing from a bid (memory's estimate alone)
is judged before bidding: ruled out, it is not asked; accepted while it answers
without a plan, it answers at once. A bid is paid for only where it can matter.

The assessment is a predicted probability that the bidder passes the task: per
agent, a logistic model over

* the bid's mean token entropy and its length (free: they come with the bid),
* memory's success estimate for that agent on similar tasks (``outcomes``), as
  ``p - prior``, so that no evidence contributes nothing,
* optionally one juror's expected 0-5 vote, as ``vote / 5 - 0.5`` (one call).

Against the dearest agent (``StagedPolicy.dearest``, a memory-only model of the
dearest agent's success): the assessment becomes the chance that taking the bid
*loses nothing* against the dearest agent's direct answer, ``1 - p_d (1 - p_a)``
(the two outcomes taken as independent given the signals). Escalating pays only
where the dearest agent is likely to pass and the bidder to fail; a task that memory
says the dearest agent fails too goes to the cheapest agent, which fails as well
but for less. The reserve keeps its meaning: higher = closer to the dearest agent.

``sale fit`` fits the coefficients and each agent's reserve on a training split
(``sale_graph.bench.staged_fit``). The reserve is the user's quality/cost knob, like
a router's threshold: ``Context(reserve=0.8)`` makes every agent's bid need an
assessed 80% chance of passing, so more tasks go up to the dearest agent (closer to
its quality, at its cost); ``reserve=0`` takes the cheapest bid every time.

A pool without fitted coefficients is assessed on memory alone, pessimistically:
the prior (0.4) sits below the default reserve (0.5), so an agent without evidence
is not trusted, except on an exploration share of tasks (``explore``, chosen by a
hash of the auction id, so a retried auction decides the same) where its bid is
accepted to learn what it can do. Verified outcomes (``Context.verifier``,
``record_outcome``) then move its estimate.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from langgraph.types import Command

from sale_graph.agents import Agent
from sale_graph.bidding import write_bid
from sale_graph.calls import describe_error
from sale_graph.errors import NoBidsError, SaleError
from sale_graph.execution import follows_plan
from sale_graph.jury import cast_vote, vote_value
from sale_graph.opening import bid_sends
from sale_graph.outcomes import DEFAULT_PRIOR, success_estimates
from sale_graph.prompts import bid_messages
from sale_graph.runtime import auction_execute_plan, auction_policy, pool_of, run_context
from sale_graph.seeds import preset_seeds
from sale_graph.state import Bid, Event

DEFAULT_RESERVE = 0.5
DEFAULT_EXPLORE = 0.1


@dataclass(frozen=True, kw_only=True)
class AgentPolicy:
    """One agent's assessment model (logistic coefficients) and its reserve."""

    bias: float = 0.0
    entropy: float = 0.0  # per nat of mean token entropy
    length: float = 0.0  # per 100 bid tokens
    memory: float = 6.0  # per unit of (memory estimate - prior)
    jury: float = 0.0  # per unit of (vote / 5 - 0.5)
    reserve: float = DEFAULT_RESERVE
    # False: never worth its bid at the fitted reserve; skipped, not paid (an explicit
    # Context.reserve offers it again: the user chose another quality/cost point)
    offered: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.offered, bool):
            raise SaleError("staged policy field 'offered' must be true or false")
        for name, value in asdict(self).items():
            if name == "offered":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
                value
            ):
                raise SaleError(f"staged policy field {name!r} must be a finite number")
        if not 0.0 <= self.reserve <= 1.0:
            raise SaleError(f"reserve must lie in [0, 1], got {self.reserve}")


@dataclass(frozen=True)
class Signals:
    """What is known about one bid when it is assessed."""

    entropy: float | None
    tokens: int
    memory_p: float
    memory_n: float  # similarity-weighted evidence behind memory_p
    prior: float
    vote: float | None = None  # expected 0-5 vote of the policy's juror, if asked
    dearest_memory_p: float | None = None  # memory's estimate for the dearest agent


@dataclass(frozen=True, kw_only=True)
class StagedPolicy:
    """Assessment models per agent, the optional juror, and exploration."""

    agents: Mapping[str, AgentPolicy] = field(default_factory=dict)
    fallback: AgentPolicy = field(
        default_factory=lambda: AgentPolicy(bias=math.log(0.4 / 0.6))
    )
    juror: str | None = None
    explore: float = DEFAULT_EXPLORE
    fitted: bool = False
    # memory-only model of the dearest agent's success; set, bids are assessed against it
    dearest: AgentPolicy | None = None
    dearest_agent: str | None = None  # whom it was fitted for; another dearest agent: unused

    def judges_against(self, dearest: str) -> bool:
        """Whether bids are assessed against this pool's dearest agent.

        Only with a model of that agent: a policy fitted on another pool (a weights
        file reused with another preset) falls back to the plain assessment.
        """
        return self.dearest is not None and self.dearest_agent in (None, dearest)

    def for_agent(self, name: str) -> AgentPolicy:
        """The agent's fitted model, else the memory-only fallback."""
        return self.agents.get(name, self.fallback)

    def pass_probability(self, agent: str, signals: Signals) -> float:
        """Predicted probability that this bid's agent passes the task."""
        p = self.for_agent(agent)
        z = p.bias + p.entropy * (signals.entropy or 0.0) + p.length * signals.tokens / 100.0
        z += p.memory * (signals.memory_p - signals.prior)
        if signals.vote is not None:
            z += p.jury * (signals.vote / 5.0 - 0.5)
        return _sigmoid(z)

    def dearest_pass(self, signals: Signals) -> float | None:
        """The dearest agent's predicted success, when bids are assessed against it."""
        if self.dearest is None or signals.dearest_memory_p is None:
            return None
        d = self.dearest
        return _sigmoid(d.bias + d.memory * (signals.dearest_memory_p - signals.prior))

    def assess(self, agent: str, signals: Signals) -> float:
        """The value compared with the reserve: p(pass), or p(no loss against the dearest)."""
        p = self.pass_probability(agent, signals)
        p_dearest = self.dearest_pass(signals)
        return p if p_dearest is None else no_loss(p, p_dearest)

    def reserve(self, agent: str, override: float | None = None) -> float:
        """The assessment a bid of this agent must reach (``override`` = the user's knob)."""
        return float(override) if override is not None else self.for_agent(agent).reserve

    def with_reserve(self, reserve: float) -> StagedPolicy:
        """The policy with every agent at one reserve, as ``Context(reserve=...)`` runs it.

        Agents the fit skipped are offered again, as the knob does: this is how a
        point of the benchmark's reserve sweep becomes a pool's shipped default.
        """
        agents = {k: replace(v, reserve=float(reserve), offered=True)
                  for k, v in self.agents.items()}
        return replace(self, agents=agents)

    def explores(self, auction_id: str, agent: str, evidence: float) -> bool:
        """Try an agent without evidence on a fixed share of auctions (seeded by id)."""
        if self.fitted or evidence >= 1.0 or self.explore <= 0.0:
            return False
        digest = hashlib.sha256(f"{auction_id}|{agent}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.explore

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the ``staged`` section of a weights file)."""
        out: dict[str, Any] = {
            "agents": {k: asdict(v) for k, v in self.agents.items()},
            "fallback": asdict(self.fallback),
            "juror": self.juror,
            "explore": self.explore,
            "fitted": self.fitted,
        }
        if self.dearest is not None:
            out["dearest"] = asdict(self.dearest)
            out["dearest_agent"] = self.dearest_agent
        return out

    @classmethod
    def coerce(cls, value: StagedPolicy | Mapping[str, Any] | str | Path | None) -> StagedPolicy:
        """Accept a policy, its dict, a weights file with a ``staged`` section, or None."""
        if value is None:
            return cls()
        if isinstance(value, StagedPolicy):
            return value
        if isinstance(value, (str, Path)):
            try:
                data = json.loads(Path(value).read_text())
            except (OSError, ValueError) as exc:
                raise SaleError(f"cannot read staged policy from {value}: {exc}") from exc
            if isinstance(data, Mapping) and "staged" in data:  # a weights file
                data = data["staged"]
            elif not (isinstance(data, Mapping) and data and set(data) <= _POLICY_FIELDS):
                raise SaleError(f"{value} holds no staged policy: neither a 'staged' section "
                                "nor a policy's own fields")
            return cls.coerce(data)
        if not isinstance(value, Mapping):
            raise SaleError(f"staged policy must be a dict or a path, got {type(value).__name__}")
        unknown = set(value) - _POLICY_FIELDS
        if unknown:
            raise SaleError(f"unknown staged policy fields {sorted(unknown)}")
        agents = value.get("agents") or {}
        if not isinstance(agents, Mapping):
            raise SaleError("staged policy 'agents' must map agent names to models")
        try:
            parsed = {str(k): _agent_policy(v) for k, v in agents.items()}
            fallback = _agent_policy(value["fallback"]) if value.get("fallback") else None
            dearest = _agent_policy(value["dearest"]) if value.get("dearest") else None
        except (TypeError, ValueError) as exc:
            raise SaleError(f"bad staged policy entry: {exc}") from exc
        if dearest is not None and (dearest.entropy or dearest.length or dearest.jury):
            raise SaleError("staged policy 'dearest' reads memory only (bias and memory)")
        dearest_agent = value.get("dearest_agent")
        if dearest_agent is not None and not isinstance(dearest_agent, str):
            raise SaleError("staged policy 'dearest_agent' must be an agent name or null")
        juror = value.get("juror")
        if juror is not None and not isinstance(juror, str):
            raise SaleError("staged policy 'juror' must be an agent name or null")
        explore = value.get("explore", DEFAULT_EXPLORE)
        if isinstance(explore, bool) or not isinstance(explore, (int, float)) or not (
            0.0 <= explore <= 1.0
        ):
            raise SaleError("staged policy 'explore' must lie in [0, 1]")
        fitted = value.get("fitted", bool(parsed))
        if not isinstance(fitted, bool):  # "false" must not read as fitted
            raise SaleError("staged policy 'fitted' must be true or false")
        policy = cls(agents=parsed, juror=juror, explore=float(explore),
                     fitted=fitted, dearest=dearest,
                     dearest_agent=dearest_agent)
        return replace(policy, fallback=fallback) if fallback else policy


_POLICY_FIELDS = frozenset({"agents", "fallback", "juror", "explore", "fitted", "dearest",
                            "dearest_agent"})


def _agent_policy(value: Any) -> AgentPolicy:
    if not isinstance(value, Mapping):
        raise SaleError(f"a staged agent model must be a mapping, got {type(value).__name__}")
    return AgentPolicy(**dict(value))


def _sigmoid(z: float) -> float:
    if math.isnan(z):  # clamping would turn NaN into a sure pass; it is no evidence at all
        return 0.0
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))


def no_loss(p_agent: float, p_dearest: float) -> float:
    """Chance that taking the agent loses nothing against the dearest agent.

    A loss is the dearest agent passing where this one fails; with the two outcomes
    independent given the signals, that is ``p_dearest * (1 - p_agent)``.
    """
    return 1.0 - p_dearest * (1.0 - p_agent)


def offer_order(agents: Sequence[Agent]) -> list[str]:
    """Cheapest first (ties by name): the order in which agents are offered the task."""
    return [a.name for a in sorted(agents, key=lambda a: (a.price, a.name))]


# --- graph nodes ---------------------------------------------------------------------------------


async def estimate(
    state: Mapping[str, Any], runtime: Any, bound: Any
) -> Command[Literal["bid", "offer"]]:
    """Graph node: memory's success estimate per agent, from verified similar tasks.

    Used by the staged auction's assessment and, when ``Weights.memory`` is not 0, by
    the full auction's score. Memory trouble leaves every agent at the prior.
    """
    ctx = run_context(runtime, bound)
    agents = await pool_of(ctx)
    started = time.time()
    info: dict[str, Any] = {"started": started}
    events: list[Event] = []
    memory = ctx.resolved_memory()

    def evidence() -> list[Any]:
        # the k most similar verified auctions *each agent executed*: one agent's
        # evidence must not be crowded out by another's
        found: list[Any] = []
        for name in agents:
            found += memory.similar(state["task"], ctx.k, verified=True, executed_by=name)
        return found

    try:
        past = await asyncio.to_thread(evidence)
    except Exception as exc:  # noqa: BLE001 - no estimates is not no auction
        past = []
        events.append(Event(kind="memory_estimate_failed", agent=None,
                            detail=f"estimates fall back to the prior: {describe_error(exc)}"))
    if (not past and not events and state.get("mode") == "staged" and ctx.reserve is None
            and ctx.agents is None and preset_seeds(ctx.pool)
            and (await auction_policy(state, ctx)).fitted):
        # no verified outcome at all: the preset's fitted policy trusts no cheaper agent
        events.append(Event(kind="memory_unseeded", agent=None, detail=(
            "memory holds no verified outcomes, so every task goes to the dearest agent "
            "until it does; `sale memory seed` (pointed at this memory) adds the preset's "
            "evaluation")))
    estimates = success_estimates(past, agents, prior=DEFAULT_PRIOR)
    info.update(count=len(past), ids=[p.auction_id for p in past], ended=time.time(),
                prior=DEFAULT_PRIOR)
    update: dict[str, Any] = {"estimates": estimates, "estimated": info, "events": events}
    if state.get("mode") == "staged":
        return Command(update=update, goto="offer")
    return Command(update=update, goto=bid_sends(state["task"], agents.values()))


def _direct_bid(agent: Agent) -> Bid:
    """The entry of an agent that answers without a bid (the last resort, or accepted on memory)."""
    now = time.time()
    return Bid(id=f"{agent.name}#direct", agent=agent.name, round=0, strategy="",
               price=agent.price, tokens=0, input_tokens=0, entropy=None,
               entropy_method=None, started=now, ended=now, direct=True)  # type: ignore[typeddict-unknown-key]


async def offer(
    state: Mapping[str, Any], runtime: Any, bound: Any
) -> Command[Literal["assess", "offer", "award"]]:
    """Graph node: the next agent, cheapest first, writes its bid; the dearest answers."""
    ctx = run_context(runtime, bound)
    agents = await pool_of(ctx)
    policy = await auction_policy(state, ctx)
    execute_plan = await auction_execute_plan(state, ctx)
    asked = list(state.get("offered") or [])
    order = offer_order(list(agents.values()))
    # an agent the policy never accepts at its fitted reserve is not asked to bid (its
    # bid would be paid for nothing), unless the user sets the reserve; the dearest
    # agent is always there as the last resort
    remaining = [name for name in order if name not in asked and (
        name == order[-1] or policy.for_agent(name).offered or ctx.reserve is not None)]
    if not remaining:  # cannot happen: the last agent is never asked to bid
        raise NoBidsError("the staged auction ran out of agents")
    # an agent whose assessment does not depend on its bid is judged on memory alone:
    # ruled out, it is passed over without paying for a bid it could not win with;
    # accepted while it answers without a plan, it answers without bidding
    skipped: list[dict[str, Any]] = []
    while len(remaining) > 1:
        direct = not follows_plan(execute_plan, remaining[0])
        verdict = _without_bid(policy, remaining[0], state, ctx.reserve, direct, order[-1])
        if verdict is None:
            break
        if verdict["accepted"]:
            entry = _direct_bid(agents[remaining[0]])
            how = "exploring it" if verdict["explored"] else _why(verdict, order[-1])
            return Command(update={
                "offered": [*(v["agent"] for v in skipped), remaining[0]],
                "assessments": [*skipped, verdict], "bids": [entry], "winning_bid": entry["id"],
                "stop": f"memory alone accepts {remaining[0]} ({how}); it answers directly "
                        "(no bid: its assessment does not read one)",
            }, goto="award")
        skipped.append(verdict)
        remaining.pop(0)
    passed_over = {"offered": [s["agent"] for s in skipped], "assessments": skipped}
    agent = agents[remaining[0]]
    if len(remaining) == 1:
        entry = _direct_bid(agent)
        return Command(update={
            "offered": [*passed_over["offered"], agent.name], "assessments": skipped,
            "bids": [entry], "winning_bid": entry["id"],
            "stop": f"last resort: {agent.name}, the dearest agent, answers directly "
                    "(no bid, no jury)",
        }, goto="award")
    try:
        new = await write_bid(agent, bid_messages(agent.name, state["task"]), round_=0,
                              max_tokens=ctx.max_bid_tokens, timeout=ctx.call_timeout)
    except Exception as exc:  # noqa: BLE001 - a failing agent passes the task on
        event = Event(kind="bid_failed", agent=agent.name, detail=describe_error(exc))
        return Command(update={"offered": [*passed_over["offered"], agent.name],
                               "assessments": skipped, "events": [event]}, goto="offer")
    return Command(update={"offered": [*passed_over["offered"], agent.name],
                           "assessments": skipped, "bids": [new]}, goto="assess")


# the signals that come with (or from) a bid; memory's estimate and the bias do not
BID_SIGNALS = frozenset({"entropy", "length", "jury"})


def reads_bid(features: Iterable[str]) -> bool:
    """Whether an assessment over these signals needs the bid written first."""
    return bool(BID_SIGNALS & set(features))


def bid_free(policy: StagedPolicy, name: str) -> bool:
    """Whether the agent's assessment reads nothing from its bid (memory and bias only).

    A bid can change the verdict only through its entropy, its length or a juror's
    vote; without any of them the verdict is known before the bid is written.
    """
    model = policy.for_agent(name)
    used = [s for s in BID_SIGNALS if getattr(model, s) and (s != "jury" or policy.juror)]
    return not reads_bid(used)


def _without_bid(
    policy: StagedPolicy, name: str, state: Mapping[str, Any], override: float | None,
    answers_directly: bool, dearest: str,
) -> dict[str, Any] | None:
    """The verdict on an agent reached without its bid, or None if the bid is needed.

    With a bid-free assessment, memory's estimate decides: a rejected agent is not
    asked to bid (``skipped``); an accepted one that answers directly (its winning
    plan would not be executed) is not asked either. An accepted agent that executes
    its plan still bids: the plan is what it will carry out.
    """
    if not bid_free(policy, name):
        return None
    signals = _memory_signals(state, name, policy, dearest)
    verdict = _verdict(policy, name, signals, state["auction_id"], override)
    if verdict["accepted"] and not answers_directly:
        return None
    return {"agent": name, "bid_id": None, **verdict, "skipped": not verdict["accepted"],
            "without_bid": True, "signals": _signal_record(signals)}


def _memory_signals(
    state: Mapping[str, Any], name: str, policy: StagedPolicy, dearest: str, **bid: Any
) -> Signals:
    """The agent's signals: its bid's, memory's estimate, and the dearest's if assessed against."""
    estimates = state.get("estimates") or {}
    own = estimates.get(name) or {}
    top = (estimates.get(dearest) or {}) if policy.judges_against(dearest) else None
    return Signals(entropy=bid.get("entropy"), tokens=int(bid.get("tokens") or 0),
                   memory_p=float(own.get("p", DEFAULT_PRIOR)),
                   memory_n=float(own.get("n", 0.0)), prior=DEFAULT_PRIOR,
                   vote=bid.get("vote"),
                   dearest_memory_p=None if top is None else float(top.get("p", DEFAULT_PRIOR)))


def _verdict(
    policy: StagedPolicy, name: str, signals: Signals, auction_id: str, override: float | None
) -> dict[str, Any]:
    """Assessment against the reserve, with what it was made of (for the audit)."""
    p = policy.pass_probability(name, signals)
    p_dearest = policy.dearest_pass(signals)
    assessed = policy.assess(name, signals)
    reserve = policy.reserve(name, override)
    explored = assessed < reserve and policy.explores(auction_id, name, signals.memory_n)
    out = {"p_pass": round(p, 4), "assessed": round(assessed, 4), "reserve": reserve,
           "accepted": assessed >= reserve or explored, "explored": explored}
    if p_dearest is not None:
        out["p_dearest"] = round(p_dearest, 4)
    return out


def _signal_record(signals: Signals) -> dict[str, Any]:
    out: dict[str, Any] = {"memory_p": round(signals.memory_p, 4), "memory_n": signals.memory_n}
    if signals.dearest_memory_p is not None:
        out["dearest_memory_p"] = round(signals.dearest_memory_p, 4)
    return out


def _why(verdict: Mapping[str, Any], dearest: str) -> str:
    """How the assessment cleared the reserve, in words."""
    if "p_dearest" in verdict:
        return (f"p(no loss against {dearest})={verdict['assessed']:.2f} >= reserve "
                f"{verdict['reserve']:.2f}")
    return f"p={verdict['assessed']:.2f} >= reserve {verdict['reserve']:.2f}"


async def assess(
    state: Mapping[str, Any], runtime: Any, bound: Any
) -> Command[Literal["offer", "award"]]:
    """Graph node: accept the newest bid if its assessment clears the reserve, else go on."""
    ctx = run_context(runtime, bound)
    policy = await auction_policy(state, ctx)
    agents = await pool_of(ctx)
    dearest = offer_order(list(agents.values()))[-1]
    name = state["offered"][-1]  # the agent whose bid just arrived
    bid = next(b for b in state["bids"] if b["agent"] == name and b["round"] == 0)
    model = policy.for_agent(name)
    update: dict[str, Any] = {}
    vote = None
    if policy.juror and model.jury:
        if policy.juror in agents:
            cast = await cast_vote(agents[policy.juror], state["task"], bid,
                                   timeout=ctx.call_timeout)
            update["votes"] = [cast]
            vote = vote_value(cast, ctx.jury_vote)
            if cast["score"] is None:
                update["events"] = [Event(kind="vote_dropped", agent=policy.juror,
                                          detail=f"on {bid['id']}: {cast['error']}")]
    signals = _memory_signals(state, name, policy, dearest, entropy=bid.get("entropy"),
                              tokens=bid.get("tokens"), vote=vote)
    verdict = _verdict(policy, name, signals, state["auction_id"], ctx.reserve)
    update["assessments"] = [{
        "agent": name, "bid_id": bid["id"], **verdict,
        "signals": {"entropy": signals.entropy, "tokens": signals.tokens,
                    **_signal_record(signals),
                    "vote": vote, "juror": policy.juror if vote is not None else None},
    }]
    if not verdict["accepted"]:
        return Command(update=update, goto="offer")
    why = (f"exploring {name} (no evidence yet)" if verdict["explored"]
           else f"{name}'s bid assessed {_why(verdict, dearest)}")
    if policy.juror in agents and model.jury and vote is None:
        why += f" (without {policy.juror}'s vote: it was dropped, see events)"
    return Command(update={**update, "winning_bid": bid["id"], "stop": why}, goto="award")
