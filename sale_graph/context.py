"""Runtime context of an auction: the pool, the weights, the memory, the limits.

Passed as ``context=Context(...)`` to ``invoke``/``stream`` (LangGraph's runtime
context API), so one compiled graph serves many configurations. Every field has
a JSON-able default so LangGraph Studio can render and edit it; the ``agents``,
``memory`` and ``executor`` fields take live objects for programmatic use and
win over their string counterparts.
"""

from __future__ import annotations

import functools
import json
import math
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from sale_graph.agents import Agent, validate_pool
from sale_graph.errors import ContextError, PoolConfigError, SaleError
from sale_graph.local import PRESETS as _LOCAL_PRESETS
from sale_graph.memory import parse_url
from sale_graph.scoring import Weights
from sale_graph.seeds import PRESET_DATA

JuryMode = Literal["all", "self", "peers", "none"]
VoteReading = Literal["expected", "digit"]
AuctionMode = Literal["full", "staged"]
JuryFormat = Literal["per_bid", "listwise"]
RefineSource = Literal["votes", "outcomes"]


# Fields only the deployer of a server sets: they name files, URLs or code to run, or
# where memory grows (a client naming collections would create them at will).
SERVER_ONLY = frozenset(
    {"memory_path", "memory_url", "memory", "collection", "agents", "executor", "verifier"}
)
MAX_TIMEOUT = 86_400.0
# Limits a client may lower but not raise above the deployer's: each bounds how much
# model time (tokens, prompt length, waiting) one run can take from a shared server.
CLIENT_CEILINGS = ("max_bid_tokens", "max_answer_tokens", "max_task_chars", "max_pairs",
                   "call_timeout", "execute_timeout")
_INT_RANGES = {
    "k": (1, 100),
    "max_pairs": (1, 20),
    "max_bid_tokens": (8, 8192),
    "max_answer_tokens": (1, 65_536),
    "max_task_chars": (1, 1_000_000),
}


def _same(value: Any, deployed: Any) -> bool:
    try:
        return bool(value == deployed) and type(value) is type(deployed)
    except Exception:  # noqa: BLE001 - an odd object is simply not the deployer's value
        return False


def _check_url(url: Any) -> None:
    try:  # the rule the memory opens the URL by
        parse_url(url)
    except ValueError as exc:
        raise ContextError(f"memory_url: {exc}") from exc


def _check_execute_plan(value: Any, error: type[Exception]) -> bool | Mapping[str, bool]:
    if not isinstance(value, (bool, Mapping)) or (
        isinstance(value, Mapping) and not all(isinstance(v, bool) for v in value.values())
    ):
        raise error("execute_plan must be true, false or a dict {agent: bool}")
    return value


def client_pools(base: Context) -> frozenset[str]:
    """The preset pools a remote client may switch a run to, on this deployment.

    ``SALE_CLIENT_POOLS`` (comma-separated presets, or ``none``) decides when set.
    Unset, a deployment that runs a preset itself lets clients pick any preset (they
    all run on the same machine's CPU), and one that runs its own pool (endpoints, a
    pool file, agents) lets them pick none: a client choosing ``local`` there would
    load the embedded models on a server that was never meant to run them.
    """
    listed = os.environ.get("SALE_CLIENT_POOLS")
    if listed is not None:
        names = {name.strip() for name in listed.split(",") if name.strip()} - {"none"}
        unknown = sorted(names - set(PRESETS))
        if unknown:
            raise ContextError(
                f"SALE_CLIENT_POOLS names unknown preset(s) {', '.join(map(repr, unknown))}; "
                f"presets: {', '.join(PRESETS)} (or 'none')"
            )
        return frozenset(names)
    if base.agents is None and base.pool in PRESETS:
        return frozenset(PRESETS)
    return frozenset()


def _check_client_pool(value: Any, base: Context) -> None:
    if not isinstance(value, str):
        raise ContextError(f"pool must be a preset name, got {type(value).__name__}")
    allowed = client_pools(base)
    if value in allowed:
        return
    if value not in PRESETS:
        raise ContextError(
            f"pool {str(value)[:80]!r}: a run may choose a preset, not a pool file; pool "
            "files are set by whoever deploys the server"
        )
    offered = ", ".join(p for p in PRESETS if p in allowed) or "none"
    raise ContextError(
        f"pool {value!r} is not offered on this server (presets a run may choose: {offered}); "
        "whoever deploys the server decides which (SALE_CLIENT_POOLS)"
    )


def _check_ceiling(name: str, value: float, deployed: float) -> None:
    if value > deployed:
        raise ContextError(
            f"{name} may be at most {deployed:g} here: a run may lower the server's limits, "
            "not raise them"
        )


def _read_weights_file(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise PoolConfigError(f"cannot read weights file {path}: {exc}") from exc


def default_memory_path() -> str:
    """Where the embedded auction memory lives unless told otherwise."""
    return os.environ.get("SALE_MEMORY_PATH", str(Path.home() / ".sale_graph" / "memory"))


@dataclass(kw_only=True)
class Context:
    """Everything an auction needs besides the task."""

    pool: str = field(
        default_factory=lambda: os.environ.get("SALE_POOL") or "local",
        metadata={"description": "Agent pool: 'local' (2 embedded GGUF coder models; "
                  "'local-coder' is the same pair), 'local-three' (SmolLM2-135M beside "
                  "them), 'local-small' (the two smallest), or a path to a JSON/TOML pool "
                  "file (default: $SALE_POOL, else 'local')."},
    )
    agents: Any = field(
        default=None,
        metadata={"description": "A sequence of Agent objects; overrides `pool`."},
    )
    weights: Any = field(
        default_factory=lambda: os.environ.get("SALE_WEIGHTS") or None,
        metadata={"description": "Score weights: a Weights, a dict {cost, entropy, jury, "
                  "jury_default} or a path to a JSON file written by `sale fit` (default: "
                  "$SALE_WEIGHTS). Unset: the "
                  "weights fitted for a fitted preset ('local', 'local-coder', "
                  "'local-three'), or the package defaults for any other pool."},
    )
    memory_path: str = field(
        default_factory=default_memory_path,
        metadata={"description": "Directory of the embedded Chroma auction memory."},
    )
    memory_url: str | None = field(
        default_factory=lambda: os.environ.get("SALE_MEMORY_URL") or None,
        metadata={"description": "URL of a Chroma server (http://host:port); overrides "
                  "memory_path (default: $SALE_MEMORY_URL)."},
    )
    collection: str = field(
        default="sale_auctions", metadata={"description": "Chroma collection of the memory."}
    )
    memory: Any = field(
        default=None, metadata={"description": "An AuctionMemory object; overrides the above."}
    )
    k: int = field(default=8, metadata={"description": "Past auctions retrieved per refinement."})
    max_pairs: int = field(
        default=3,
        metadata={"description": "(losing, winning) pairs shown in one refinement prompt; small "
                  "models have short contexts."},
    )
    refine: bool = field(default=True, metadata={"description": "Run memory refinement."})
    remember: bool = field(default=True, metadata={"description": "Write the auction to memory."})
    jury: JuryMode = field(
        default="all",
        metadata={"description": "Who votes on a bid: all agents, the bidder only ('self'), "
                  "everyone but the bidder ('peers'), or nobody."},
    )
    jury_vote: VoteReading = field(
        default="expected",
        metadata={"description": "What a vote counts as: 'expected' (its mean under the "
                  "juror's digit probabilities, when the backend reports them; else the "
                  "digit) or 'digit' (the voted digit, as in the paper)."},
    )
    max_bid_tokens: int = field(default=160, metadata={"description": "Length cap of a bid."})
    max_answer_tokens: int = field(
        default=512, metadata={"description": "Length cap of the default executor's answer."}
    )
    call_timeout: float = field(
        default=300.0, metadata={"description": "Seconds one bid/vote/refine call may take."}
    )
    execute_timeout: float = field(
        default=900.0, metadata={"description": "Seconds the execution phase may take."}
    )
    max_task_chars: int = field(
        default=20_000, metadata={"description": "Longer tasks are rejected."}
    )
    approval: bool = field(
        default=False,
        metadata={"description": "Pause before execution for a human decision (approve, "
                  "override the winner, or reject); needs a checkpointer."},
    )
    executor: Any = field(
        default=None,
        metadata={"description": "A Runnable/compiled subgraph (or a plain function) that executes "
                  "the winning plan for every agent without an executor of its own."},
    )
    jury_format: JuryFormat = field(
        default="per_bid",
        metadata={"description": "'per_bid': one call per (juror, bid), as in the paper; "
                  "'listwise': one call per juror rating every bid of the round (one digit "
                  "per bid), which reads the task once instead of once per bid."},
    )
    auction: AuctionMode | None = field(
        default=None,
        metadata={"description": "'full': the paper's auction (every agent bids, the jury "
                  "judges every bid, cheaper agents refine). 'staged': agents are offered "
                  "the task cheapest first and the first bid whose assessment clears its "
                  "reserve wins; the dearest agent, if reached, answers directly. Unset: "
                  "the mode measured best for the pool (the weights file's or preset's "
                  "'defaults'), else 'full'."},
    )
    reserve: float | None = field(
        default=None,
        metadata={"description": "Staged auction's quality/cost knob: the assessment a bid "
                  "must reach (0..1): its chance of passing, or, against the dearest agent, "
                  "of losing nothing to it. Higher = more tasks go to the dearest agent "
                  "(closer to its quality, at its cost). Unset: each agent's fitted "
                  "reserve."},
    )
    staged: Any = field(
        default=None,
        metadata={"description": "Staged auction policy: a StagedPolicy, its dict, or a "
                  "weights file with a 'staged' section (`sale fit`). Unset: the weights "
                  "file's policy, if any, else memory-only assessment."},
    )
    verifier: Any = field(
        default=None,
        metadata={"description": "A Runnable/callable run after execution on {task, answer, "
                  "audit}; returns a bool, a 0-1 score or {passed, score, detail}. The "
                  "outcome is stored with the auction and teaches later auctions."},
    )
    refine_from: RefineSource = field(
        default="votes",
        metadata={"description": "What refinement learns from: 'votes' (the paper: past "
                  "losing and winning bids) or 'outcomes' (plans that failed and passed; "
                  "nobody refines without a nearby verified success)."},
    )
    execute_plan: Any = field(
        default=None,
        metadata={"description": "Whether the winner executes its plan (True, the paper) or "
                  "answers directly (False); a dict {agent: bool} decides per agent. Unset: "
                  "what `sale fit` measured for the pool (the weights file's or the "
                  "preset's 'execute_plan'), else True."},
    )

    def __post_init__(self) -> None:
        """One validation for every entry point: Python, the CLI and the server's JSON."""
        for name in ("refine", "remember", "approval"):
            if not isinstance(getattr(self, name), bool):
                raise ContextError(
                    f"{name} must be true or false, got {getattr(self, name)!r}"
                )
        for name, (low, high) in _INT_RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ContextError(f"{name} must be an integer, got {value!r}")
            if not low <= value <= high:
                raise ContextError(f"{name} must be between {low} and {high}, got {value}")
        for name in ("call_timeout", "execute_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ContextError(f"{name} must be a number of seconds, got {value!r}")
            if not math.isfinite(value) or not 0 < value <= MAX_TIMEOUT:
                raise ContextError(
                    f"{name} must be a finite number of seconds in (0, {MAX_TIMEOUT:g}], "
                    f"got {value!r}"
                )
        if not isinstance(self.jury, str) or self.jury not in ("all", "self", "peers", "none"):
            raise ContextError(f"jury must be all, self, peers or none, got {self.jury!r}")
        if not isinstance(self.jury_vote, str) or self.jury_vote not in ("expected", "digit"):
            raise ContextError(f"jury_vote must be expected or digit, got {self.jury_vote!r}")
        if not isinstance(self.pool, str) or not self.pool.strip():
            raise ContextError(f"pool must be a preset name or a pool file, got {self.pool!r}")
        if not isinstance(self.memory_path, (str, os.PathLike)):
            raise ContextError(f"memory_path must be a directory path, got {self.memory_path!r}")
        if self.memory_url is not None:
            _check_url(self.memory_url)
        from sale_graph.memory import validate_collection_name

        try:
            validate_collection_name(self.collection)
        except ValueError as exc:
            raise ContextError(str(exc)) from exc
        if self.jury_format not in ("per_bid", "listwise"):
            raise ContextError(
                f"jury_format must be per_bid or listwise, got {self.jury_format!r}")
        if self.auction not in (None, "full", "staged"):
            raise ContextError(f"auction must be full or staged, got {self.auction!r}")
        if self.refine_from not in ("votes", "outcomes"):
            raise ContextError(f"refine_from must be votes or outcomes, got {self.refine_from!r}")
        if self.reserve is not None and (
            isinstance(self.reserve, bool) or not isinstance(self.reserve, (int, float))
            or not 0.0 <= self.reserve <= 1.0
        ):
            raise ContextError(f"reserve must be a number in [0, 1], got {self.reserve!r}")
        if self.execute_plan is not None:
            _check_execute_plan(self.execute_plan, ContextError)
        if self.agents is not None:
            validate_pool(self.agents)

    @classmethod
    def from_untrusted(cls, data: Any, base: Context | None = None) -> Context:
        """Build a Context from a remote client's mapping, on top of the deployer's ``base``.

        A client may tune the auction (jury, k, flags, inline weights, a preset pool
        the deployment offers, :func:`client_pools`) and lower its limits, but not raise
        those limits (:data:`CLIENT_CEILINGS`), choose where files go, which URLs the
        server calls or which code it runs: ``memory_path``, ``memory_url``, ``memory``,
        ``agents``, ``executor``, a pool file and a weights file are refused unless
        equal to the deployer's.
        Types are checked, never coerced (``"false"`` is not a bool).
        """
        base = base if base is not None else Context()
        if not isinstance(data, Mapping):
            raise ContextError(f"context must be an object, got {type(data).__name__}")
        names = {f.name for f in fields(Context)}
        unknown = sorted(str(k) for k in data if k not in names)
        if unknown:
            raise ContextError(
                f"unknown context field(s): {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(sorted(names))}"
            )
        values = {name: getattr(base, name) for name in names}
        for key, value in data.items():
            same = _same(value, getattr(base, key))
            if key in SERVER_ONLY and not same:
                raise ContextError(
                    f"context field {key!r} is set by whoever deploys the server, not per run"
                )
            if key == "pool" and not same:
                _check_client_pool(value, base)
            if key == "weights" and not same and not (value is None or isinstance(value, Mapping)):
                raise ContextError(
                    "weights: a run may give inline weights {cost, entropy, jury, "
                    "jury_default}; weights files are set by whoever deploys the server"
                )
            if key == "weights" and not same and isinstance(value, Mapping):
                # a weights file's other sections name files (staged) and modes; a run
                # gives those as its own fields, which are checked as such
                extra = sorted(set(value) & {"staged", "execute_plan", "defaults"})
                if extra:
                    raise ContextError(
                        f"weights: {', '.join(map(repr, extra))} belong to a weights file; "
                        "a run sets them as its own context fields (staged, execute_plan, "
                        "auction)"
                    )
            if key == "staged" and not same and not (value is None or isinstance(value, Mapping)):
                raise ContextError(
                    "staged: a run may give an inline policy; policy files are set by "
                    "whoever deploys the server"
                )
            values[key] = value
        context = Context(**values)  # types and ranges first, then the deployer's ceilings
        for name in CLIENT_CEILINGS:
            _check_ceiling(name, getattr(context, name), getattr(base, name))
        if isinstance(context.weights, Mapping):
            try:
                Weights.coerce(context.weights)
            except SaleError as exc:
                raise ContextError(f"weights: {exc}") from exc
        if isinstance(context.staged, Mapping):
            from sale_graph.staged import StagedPolicy

            try:
                StagedPolicy.coerce(context.staged)
            except SaleError as exc:
                raise ContextError(f"staged: {exc}") from exc
        return context

    def resolved_weights(self) -> Weights:
        """The weight vector: as given, else the preset's fitted weights, else defaults.

        The fitted presets ship the weights ``sale bench`` fitted on their training
        split (``local``: ``benchmarks/results/v2-coder/weights.json``; ``local-three``:
        ``benchmarks/results/v2/weights.json``): on the first run's pool the
        package defaults handed 75% of the test tasks to the 135M model, for 16.7%
        pass@1 against 33.3% with fitted ones. Weights fitted on one pool mean nothing
        on another, so every other pool starts from ``Weights()``.
        """
        if self.weights is None and self.agents is None and self.pool in PRESET_WEIGHTS:
            return _preset_weights(self.pool)
        return Weights.coerce(self.weights)

    def _fitted_file(self) -> Mapping[str, Any] | None:
        """The weights file's content (``self.weights``, else the preset's), if a file or dict."""
        source: Any = self.weights
        if source is None and self.agents is None and self.pool in PRESET_WEIGHTS:
            return _preset_data(self.pool)
        if isinstance(source, (str, Path)):
            source = _read_weights_file(source)
        return source if isinstance(source, Mapping) else None

    def _fitted_section(self, name: str) -> Any:
        """One section of the weights file (mode, policy, plan or direct), else the preset's.

        Score weights given on their own (a ``Weights``, a dict of them, a file with
        only them) tune the score; they do not unsay the mode, policy and plan choice
        the preset's benchmark measured, which a pool's own file would name.
        """
        own = (self._fitted_file() or {}).get(name)
        if own is not None or self.agents is not None or self.pool not in PRESET_WEIGHTS:
            return own
        if self.weights is None:
            return None  # _fitted_file already read the preset's file
        return _preset_data(self.pool).get(name)

    def check(self) -> None:
        """Resolve everything a run reads from its weights (and file), or fail saying where.

        Called where an app is built (``build_graph``, ``sale serve``, the CLI), so a
        bad section of a deployer's weights file fails at start, naming the file,
        rather than as a client's error on every request.
        """
        weights = self.weights
        if weights is None and self.agents is None and self.pool in PRESET_WEIGHTS:
            weights = _preset_path(self.pool)
        # a staged policy of its own (a file or a dict) is at fault for its own errors
        staged = self.staged if self.staged is not None else weights
        for source, resolve in ((weights, self.resolved_weights), (weights, self.resolved_auction),
                                (weights, self.resolved_execute_plan),
                                (staged, self.resolved_staged)):
            try:
                resolve()
            except SaleError as exc:
                if not isinstance(source, (str, Path)):
                    raise
                named = str(exc) if str(source) in str(exc) else f"file {source}: {exc}"
                raise PoolConfigError(named) from exc

    def resolved_auction(self) -> str:
        """The auction mode: as given, else the pool's measured default, else the paper's.

        A weights file (and so a preset) may name the mode its benchmark measured best
        (``"defaults": {"auction": ...}``, written by ``sale fit --auction``); a pool
        without one runs the paper's full auction.
        """
        if self.auction is not None:
            return self.auction
        defaults = self._fitted_section("defaults") or {}
        mode = defaults.get("auction", "full") if isinstance(defaults, Mapping) else None
        if mode not in ("full", "staged"):
            raise PoolConfigError(f"weights file: defaults.auction must be full or staged, "
                                  f"got {mode!r}")
        return str(mode)

    def resolved_execute_plan(self) -> bool | Mapping[str, bool]:
        """Plan or direct answer per winner: as given, else as fitted for the pool, else plan.

        ``sale fit`` measures per agent whether executing its plan passes more training
        tasks than answering directly and writes the choice beside the weights, for the
        staged auction it was measured with. The full auction is the paper's: its
        winner executes its plan unless ``execute_plan`` says otherwise.
        """
        if self.execute_plan is not None:
            return self.execute_plan
        fitted = self._fitted_section("execute_plan")
        if fitted is None:
            return True
        checked = _check_execute_plan(fitted, PoolConfigError)  # a bad file fails either way
        return True if self.resolved_auction() == "full" else checked

    def resolved_staged(self) -> Any:
        """The staged auction's policy: as given, else from the weights, else the preset's.

        A weights file written by ``sale fit`` may carry a ``staged`` section (a
        preset's shipped weights file too, once a benchmark has fitted one). Without
        any, every agent is assessed on memory's verified outcomes alone
        (``StagedPolicy()``).
        """
        from sale_graph.staged import StagedPolicy

        if self.staged is not None:
            return StagedPolicy.coerce(self.staged)
        section = self._fitted_section("staged")
        if section is not None:
            return StagedPolicy.coerce(section)
        return StagedPolicy()

    def resolved_agents(self) -> tuple[Agent, ...]:
        """The validated pool, loading models only the first time a preset/file is used."""
        if self.agents is not None:
            return validate_pool(self.agents)
        return _pool_from_spec(self.pool)

    def resolved_memory(self) -> Any:
        """The AuctionMemory to use (opened lazily; opening touches no model)."""
        if self.memory is not None:
            return self.memory
        from sale_graph.memory import AuctionMemory

        key = (self.memory_url or "", self.memory_path, self.collection)
        with _LOCK:
            if key not in _MEMORIES:
                if self.memory_url:
                    _MEMORIES[key] = AuctionMemory.from_url(
                        self.memory_url, collection=self.collection
                    )
                else:
                    _MEMORIES[key] = AuctionMemory.persistent(
                        self.memory_path, collection=self.collection
                    )
            return _MEMORIES[key]


# Process-wide caches, deliberately: a GGUF model is hundreds of MB and a Chroma
# client holds file handles, so every auction in a process shares one of each per
# configuration instead of reloading them.
_LOCK = threading.Lock()
_POOLS: dict[tuple[str, float], tuple[Agent, ...]] = {}
_MEMORIES: dict[tuple[str, str, str], Any] = {}

PRESETS = tuple(_LOCAL_PRESETS)  # the preset names, from the one table that defines them
# Presets with weights fitted on them (files under sale_graph/data/, seeds.PRESET_DATA).
PRESET_WEIGHTS = {p: f"{stem}_weights.json" for p, stem in PRESET_DATA.items()}


def _preset_path(preset: str) -> Path:
    return Path(__file__).with_name("data") / PRESET_WEIGHTS[preset]


@functools.cache
def _preset_text(preset: str) -> str:
    """A preset's shipped weights file, read once per process (package data)."""
    try:
        return _preset_path(preset).read_text()
    except OSError as exc:
        raise PoolConfigError(f"cannot read weights file {_preset_path(preset)}: {exc}") from exc


def _preset_data(preset: str) -> dict[str, Any]:
    # parsed on each call: a shared dict (or Weights) would let one auction's change
    # reach every other auction of the process; the file itself is read once
    return dict(json.loads(_preset_text(preset)))


def _preset_weights(preset: str) -> Weights:
    return Weights.coerce(_preset_data(preset))


def _pool_from_spec(spec: str) -> tuple[Agent, ...]:
    if spec in PRESETS:
        key = (spec, 0.0)
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise PoolConfigError(
                f"pool {spec!r} is neither a preset ({', '.join(PRESETS)}) nor an existing "
                "JSON/TOML pool file"
            )
        key = (str(path.resolve()), path.stat().st_mtime)
    with _LOCK:
        if key not in _POOLS:
            if spec in PRESETS:
                from sale_graph.local import default_pool

                agents: Sequence[Agent] = default_pool(spec)
            else:
                from sale_graph.endpoint import load_pool_file

                agents = load_pool_file(key[0])
            _POOLS[key] = validate_pool(agents)
        return _POOLS[key]


def deployed_context(settings: str | None = None) -> Context:
    """The server deployer's Context: the defaults, which read the server's environment.

    ``SALE_POOL`` (a preset or pool file), ``SALE_WEIGHTS`` (a weights file),
    ``SALE_MEMORY_PATH`` and ``SALE_MEMORY_URL`` are read in the server's own process
    (a run that sends no context gets the same); a client's run can never set them.
    ``settings`` (else ``SALE_CONTEXT``) is a JSON object of the other fields: the
    deployment's defaults and the limits no client may raise, e.g.
    ``{"max_answer_tokens": 2048, "call_timeout": 600, "auction": "staged"}``.
    """
    source = "--context" if settings is not None else "SALE_CONTEXT"
    raw = settings if settings is not None else os.environ.get("SALE_CONTEXT")
    if not raw or not raw.strip():
        return Context()
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ContextError(f"{source} must be a JSON object: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ContextError(f"{source} must be a JSON object, got {type(data).__name__}")
    names = {f.name for f in fields(Context)}
    unknown = sorted(str(k) for k in data if k not in names)
    own = sorted(str(k) for k in data if k in SERVER_ONLY | {"pool", "weights"})
    if unknown or own:
        raise ContextError(
            f"{source}: " + "; ".join(
                ([f"unknown field(s) {', '.join(map(repr, unknown))}"] if unknown else [])
                + ([f"{', '.join(map(repr, own))} have their own settings (SALE_POOL, "
                    "SALE_WEIGHTS, SALE_MEMORY_PATH, SALE_MEMORY_URL, or code)"] if own else []))
        )
    return Context(**data)


def _inline_schemas(properties: Mapping[str, Any]) -> dict[str, Any]:
    """Typed schemas of the fields a client gives as JSON objects (files are the deployer's).

    In Python they are ``Any`` (an object, a dict or a path), which left Studio and API
    clients with an untyped box; these say what the server accepts.
    """
    number = {"type": "number"}
    agent_model = {"type": "object", "additionalProperties": False, "properties": {
        **{k: number for k in ("bias", "entropy", "length", "memory", "jury")},
        "reserve": {"type": "number", "minimum": 0, "maximum": 1},
        "offered": {"type": "boolean"}}}
    weights = {"type": "object", "additionalProperties": False, "properties": {
        **{k: number for k in ("cost", "entropy", "memory", "jury_default")},
        "jury": {"type": "object", "additionalProperties": number}}}
    staged = {"type": "object", "additionalProperties": False, "properties": {
        "agents": {"anyOf": [{"type": "object", "additionalProperties": agent_model},
                             {"type": "null"}]},
        "fallback": {"anyOf": [agent_model, {"type": "null"}]},
        "dearest": {"anyOf": [agent_model, {"type": "null"}]},
        "juror": {"type": ["string", "null"]},
        "dearest_agent": {"type": ["string", "null"]},
        "explore": {"type": "number", "minimum": 0, "maximum": 1},
        "fitted": {"type": "boolean"}}}
    return {
        "weights": {**properties["weights"], "anyOf": [weights, {"type": "null"}],
                    "description": "Inline score weights {cost, entropy, memory, jury: "
                                   "{juror: weight}, jury_default} (default: the server's)."},
        "staged": {**properties["staged"], "anyOf": [staged, {"type": "null"}],
                   "description": "Inline staged auction policy (default: the server's)."},
        "execute_plan": {**properties["execute_plan"], "anyOf": [
            {"type": "boolean"}, {"type": "object", "additionalProperties": {"type": "boolean"}},
            {"type": "null"}]},
    }


class RemoteContext(Context):
    """The Context a LangGraph server builds from a client's JSON.

    LangGraph turns a run's ``context`` object into ``context_schema(**object)``;
    with this class as the schema that call goes through :meth:`Context.from_untrusted`
    on top of :func:`deployed_context`, so every field a client sends is checked and
    the deployer's paths, URLs and executors cannot be replaced.
    """

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        """What a client may send, as the server's schema endpoint shows it.

        The deployer's fields (paths, URLs, objects, code) are left out, since a run
        that sets them is refused; the pool lists the presets this deployment offers
        (none: left out); every bounded number says its range.
        """
        schema = dict(handler.resolve_ref_schema(handler(core_schema)))
        properties = {name: dict(spec) for name, spec in schema.get("properties", {}).items()
                      if name not in SERVER_ONLY}
        deployed = deployed_context()
        for name, spec in properties.items():  # the defaults a run gets here (SALE_CONTEXT)
            if "default" in spec and isinstance(getattr(deployed, name), (str, int, float, bool)):
                spec["default"] = getattr(deployed, name)
        for name, (low, high) in _INT_RANGES.items():
            properties[name].update(minimum=low, maximum=high)
        for name in ("call_timeout", "execute_timeout"):
            properties[name].update(exclusiveMinimum=0, maximum=MAX_TIMEOUT)
        for name in CLIENT_CEILINGS:  # a run may lower the deployer's limits, not raise them
            properties[name].update(maximum=min(properties[name]["maximum"],
                                                getattr(deployed, name)))
        offered = client_pools(deployed) | ({deployed.pool} & set(PRESETS))
        if offered:
            properties["pool"] = {
                **properties["pool"], "enum": [p for p in PRESETS if p in offered],
                "description": "Agent pool: one of the presets this server offers "
                               "(default: the server's own pool)."}
        else:  # a pool file or endpoints: the field is the deployer's alone
            del properties["pool"]
        properties.update(_inline_schemas(properties))
        properties["reserve"] = {**properties["reserve"], "anyOf": [
            {"type": "number", "minimum": 0, "maximum": 1}, {"type": "null"}]}
        schema["properties"] = properties
        schema["required"] = [r for r in schema.get("required", []) if r in properties]
        return schema

    def __init__(self, **data: Any) -> None:
        checked = Context.from_untrusted(data, deployed_context())
        for f in fields(Context):
            setattr(self, f.name, getattr(checked, f.name))
