"""What a benchmark run is: its configuration, its SALE variants, its tasks and keys.

Everything here decides which model calls a run makes, so it is stored in the bank
and checked on resume. Nothing here touches a model.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sale_graph.bench.tasks import BINS, Task

__all__ = [
    "BANK_DB",
    "BANK_EXPORT",
    "BenchConfig",
    "FIT_LAM",
    "Method",
    "RESULTS_LOG",
    "SMOKE",
    "build_tasks",
    "methods_for",
]

BANK_DB = "bank.sqlite"
BANK_EXPORT = "bank.jsonl.gz"
RESULTS_LOG = "results.jsonl"
FIT_LAM = 0.1  # loss = failure + FIT_LAM x normalised cost: the fit's and the routers' tuning


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class BenchConfig:
    """Everything that decides which calls a run makes; stored in the bank, checked on resume."""

    pool: str = "local"
    domains: tuple[str, ...] = ("coding", "reasoning")
    # 180 tasks, 60 train / 120 test: with 36 test tasks one task moved pass@1 by 2.8
    # points and nothing was distinguishable from noise (benchmarks/README.md)
    per_domain: Mapping[str, int] = field(default_factory=lambda: {"coding": 90, "reasoning": 90})
    bins: tuple[str, ...] = BINS
    test_fraction: float = 2 / 3
    orders: int = 5
    seed: int = 0
    max_bid_tokens: int = 160
    max_answer_tokens: int = 512
    coding_rounds: int = 2
    ablations: bool = True
    direct: bool = True  # also every agent answering without a plan (the user's baseline)
    # Generous: a timeout drops an agent from an auction, and on a shared machine
    # that would make results depend on the load rather than on the models.
    call_timeout: float = 1800.0
    execute_timeout: float = 3600.0
    # which rows run: "staged" (the staged auction, verified outcomes and the paper's
    # SALE) or "paper" (SALE and its paper ablations; runs stored before "staged" existed)
    methods: str = "staged"

    def to_dict(self) -> dict[str, Any]:
        """JSON form (what the bank stores)."""
        d = dataclasses.asdict(self)
        d["domains"] = list(self.domains)
        d["bins"] = list(self.bins)
        d["per_domain"] = dict(self.per_domain)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BenchConfig:
        """Inverse of ``to_dict``."""
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        kw["domains"] = tuple(kw.get("domains", ()))
        kw["bins"] = tuple(kw.get("bins", BINS))
        kw["per_domain"] = dict(kw.get("per_domain") or {})
        kw.setdefault("methods", "paper")  # stored before the staged rows existed
        kw.setdefault("direct", False)  # stored before direct answers were run
        return cls(**kw)


# Small enough for CI on two cores: five easy tasks, the two smallest models, one
# order, short plans and answers, one write-and-check round, no ablations.
SMOKE = BenchConfig(
    pool="local-small",
    per_domain={"coding": 3, "reasoning": 2},
    bins=("easy",),
    orders=1,
    max_bid_tokens=48,
    max_answer_tokens=192,
    coding_rounds=1,
    ablations=False,
)


@dataclass(frozen=True)
class Method:
    """One SALE variant: its weights, memory, jury and how many task orders it runs."""

    name: str
    orders: int = 1
    weights: str = "fitted"  # "fitted" (min-max MILP on train) or "default"
    refine: bool = True
    jury: str = "all"
    zero: tuple[str, ...] = ()  # weight terms switched off: "cost", "entropy"
    auction: str = "full"  # "full" (the paper's) or "staged"
    jury_format: str = "per_bid"
    # memory of verified outcomes: seeded with the training split's graded outcomes,
    # and each test auction's own outcome (the task's verifier) added as it runs
    outcomes: bool = False
    staged_fit: str = "staged"  # which fitted policy: a key of STAGED_FITS
    reserve: float | None = None  # the staged auction's knob; None: fitted reserves
    refine_from: str = "votes"

    @property
    def uses_memory(self) -> bool:
        """Whether auctions of this method read and write a memory store."""
        return self.outcomes or (self.auction == "full" and self.refine)

    @property
    def slug(self) -> str:
        """Directory-safe name (memory stores live under it)."""
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")


def methods_for(config: BenchConfig) -> list[Method]:
    """The auction rows of a run, main rows first, then the ablations.

    The staged suite drops three paper ablations of the first run (w/o entropy, w/o
    price, default weights: measured there, in benchmarks/results/full) to spend the
    CPU hours on the rows that decide the defaults.
    """
    if config.methods == "staged":
        return _staged_suite(config)
    main = [Method("SALE", orders=config.orders)]
    if not config.ablations:
        return main
    return [
        *main,
        Method("SALE w/o memory", refine=False),
        Method("SALE w/o entropy", zero=("entropy",)),
        Method("SALE w/o price", zero=("cost",)),
        Method("SALE w/o jury", jury="none"),
        Method("SALE self-jury", jury="self"),
        Method("SALE default weights", weights="default"),
    ]


# the staged auction's knob, swept on the test split: a staged row replays nearly every
# call (bids and executions are the outcomes'), so each point costs minutes, not hours
RESERVE_SWEEP = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
# against the dearest agent the assessment is a chance of no loss, high wherever the
# dearest agent is likely to fail too: its knob's useful range lies higher
NO_LOSS_SWEEP = (0.6, 0.7, 0.8)

# the staged policies a run fits on its training split (staged_fit.fit_staged_from_bank)
STAGED_FITS: dict[str, dict[str, Any]] = {
    "staged": {},  # the fit's own choice among every candidate, as `sale fit` makes it
    "staged-nomem": {"use_memory": False},  # so plain assessments only
    "staged-dearest": {"against_dearest": (True,)},
}


def _staged_suite(config: BenchConfig) -> list[Method]:
    main = [
        Method("SALE", orders=config.orders),
        Method("staged", orders=config.orders, auction="staged", outcomes=True, refine=False),
    ]
    if not config.ablations:
        return main
    return [
        *main,
        Method("staged w/o outcome memory", auction="staged", refine=False,
               staged_fit="staged-nomem"),
        *[Method(f"staged reserve {r}", auction="staged", outcomes=True, refine=False,
                 reserve=r) for r in RESERVE_SWEEP],
        Method("staged against the dearest", auction="staged", outcomes=True, refine=False,
               staged_fit="staged-dearest"),
        *[Method(f"staged against the dearest, reserve {r}", auction="staged", outcomes=True,
                 refine=False, staged_fit="staged-dearest", reserve=r) for r in NO_LOSS_SWEEP],
        Method("SALE w/o memory", refine=False),
        Method("SALE listwise jury", jury_format="listwise"),
        Method("SALE outcome refinement", outcomes=True, refine_from="outcomes"),
        Method("SALE self-jury", jury="self"),
        Method("SALE w/o jury", jury="none"),
    ]


# --------------------------------------------------------------------------- tasks


def _sample(tasks: Sequence[Task], n: int, seed: int, key: Any) -> list[Task]:
    """``n`` tasks spread evenly over the groups of ``key`` (round robin, seeded)."""
    groups: dict[Any, list[Task]] = defaultdict(list)
    for t in tasks:
        groups[key(t)].append(t)
    rng = random.Random(seed)
    queues = []
    for k in sorted(groups):
        members = sorted(groups[k], key=lambda t: t.id)
        rng.shuffle(members)
        queues.append(members)
    chosen: set[str] = set()
    while len(chosen) < n and any(queues):
        for q in queues:
            if q and len(chosen) < n:
                chosen.add(q.pop(0).id)
    return [t for t in tasks if t.id in chosen]


def build_tasks(config: BenchConfig) -> list[Task]:
    """The run's tasks: per domain, ``per_domain[d]`` items even over bins (and generators)."""
    out: list[Task] = []
    for domain in config.domains:
        n = int(config.per_domain.get(domain, 0))
        if n <= 0:
            continue
        if domain == "coding":
            from sale_graph.bench.tasks import humaneval_tasks

            pool = [t for t in humaneval_tasks() if t.bin in config.bins]
            out += _sample(pool, n, config.seed, lambda t: t.bin)
        elif domain == "reasoning":
            from sale_graph.bench.tasks import DEFAULT_GENERATORS, reasoning_tasks

            groups = len(config.bins) * len(DEFAULT_GENERATORS)
            per_level = max(1, math.ceil(n / groups))
            pool = [
                t
                for t in reasoning_tasks(per_level=per_level, seed=config.seed)
                if t.bin in config.bins
            ]
            out += _sample(pool, n, config.seed, lambda t: (t.bin, t.payload["generator"]))
        else:
            raise ValueError(f"unknown domain {domain!r}; use coding and/or reasoning")
    return out


def _split(config: BenchConfig, tasks: list[Task]) -> tuple[list[Task], list[Task]]:
    from sale_graph.bench.tasks import split

    return split(tasks, config.test_fraction, config.seed)


# --------------------------------------------------------------------------- bank keys


def _direct_key(task_id: str, agent: str) -> str:
    return _outcome_key(task_id, agent) + "|direct"


def _outcome_key(task_id: str, agent: str) -> str:
    return f"{task_id}|{agent}"


def _result_key(method: str, order: int, task_id: str) -> str:
    return f"{method}|{order}|{task_id}"
