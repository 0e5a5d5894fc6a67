"""Verified outcomes a memory can start from: the evaluation a staged policy was fitted on.

The staged auction accepts a cheaper agent only where memory holds verified outcomes
of that agent on similar tasks. An empty memory holds none, so every task goes to the
dearest agent; and since only the winner's answer is ever verified, the cheaper agents
would never earn the evidence that could change that. The benchmark measured its
staged rows with memory holding the training split's graded outcomes: one record per
(training task, agent), won by that agent, passed or failed. ``sale fit --seeds-out``
writes those records; :func:`seed_memory` (``sale memory seed``) loads them, so a new
memory starts where the measured one did. Seeding is explicit: it adds records to a
memory, and tasks unlike the seeded ones get little from them (estimates are weighted
by similarity).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sale_graph.errors import SaleError

SEED_PREFIX = "seed-"
SEED_SOURCE = "evaluation"
_FIELDS = ("auction_id", "task", "winner", "passed", "bids")


class SeedError(SaleError):
    """A seed file that cannot be read, or a record in it that is not a seed."""


# The fitted presets' shipped files (sale_graph/data/<stem>_weights.json and
# <stem>_seeds.jsonl.gz): "local-coder" names the same two models as "local"
PRESET_DATA = {"local": "local", "local-coder": "local", "local-three": "local_three"}


def preset_file(pool: str, kind: str) -> Path | None:
    """A preset's shipped ``kind`` file ("weights.json", "seeds.jsonl.gz"), if it has one."""
    stem = PRESET_DATA.get(pool)
    path = Path(__file__).with_name("data") / f"{stem}_{kind}" if stem else None
    return path if path is not None and path.is_file() else None


def preset_seeds(pool: str) -> Path | None:
    """The seed file shipped with a preset pool, if it has one."""
    return preset_file(pool, "seeds.jsonl.gz")


def check_seed(record: Any, where: str = "seed") -> dict[str, Any]:
    """One seed record, checked: an id under ``seed-``, a task, its agent's bid, a verdict."""
    if not isinstance(record, Mapping):
        raise SeedError(f"{where}: a seed is a JSON object, got {type(record).__name__}")
    missing = [k for k in _FIELDS if k not in record]
    if missing:
        raise SeedError(f"{where}: missing {', '.join(missing)}")
    if not isinstance(record["auction_id"], str) or not record["auction_id"].startswith(
            SEED_PREFIX):
        raise SeedError(f"{where}: auction_id must start with {SEED_PREFIX!r} (seeds never "
                        "replace a real auction's record)")
    if not isinstance(record["task"], str) or not record["task"].strip():
        raise SeedError(f"{where}: task must be non-empty text")
    if not isinstance(record["passed"], bool):
        raise SeedError(f"{where}: passed must be true or false")
    bids = record["bids"]
    if not isinstance(bids, list) or not any(
            isinstance(b, Mapping) and b.get("agent") == record["winner"] for b in bids):
        raise SeedError(f"{where}: bids must hold the winner's own bid")
    try:  # what the memory's write checks, so that a bad record fails before any write
        from sale_graph.memory import _check_bids, _check_text

        _check_text(record["task"])
        _check_bids(bids, record["winner"])
    except SaleError as exc:
        raise SeedError(f"{where}: {exc}") from exc
    return {k: record[k] for k in _FIELDS}


def load_seeds(path: str | Path) -> list[dict[str, Any]]:
    """Read a seed file (JSON lines, gzipped or not); every record is checked."""
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            zipped = raw.read(2) == b"\x1f\x8b"  # gzip's magic, whatever the name
        opener: Any = gzip.open if zipped else open
        with opener(path, "rt", encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise SeedError(f"cannot read seeds from {path}: {exc}") from exc
    seeds = []
    for n, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise SeedError(f"{path}:{n}: not JSON: {exc}") from exc
        seeds.append(check_seed(record, f"{path}:{n}"))
    return seeds


def save_seeds(seeds: Iterable[Mapping[str, Any]], path: str | Path) -> int:
    """Write seed records (checked) as JSON lines, gzipped if the name ends in .gz."""
    checked = [check_seed(s) for s in seeds]
    opener: Any = gzip.open if str(path).endswith(".gz") else open
    with opener(Path(path), "wt", encoding="utf-8") as f:
        for seed in checked:
            f.write(json.dumps(seed, sort_keys=True, ensure_ascii=False) + "\n")
    return len(checked)


def seed_memory(memory: Any, seeds: Sequence[Mapping[str, Any]]) -> int:
    """Store each seed as a verified auction (source ``evaluation``); returns how many.

    Every record is checked before the first is written, and each write is one upsert
    under the seed's own id: a failure leaves whole records only, and seeding again
    replaces them rather than adding copies.
    """
    checked = [check_seed(s, f"seed {i}") for i, s in enumerate(seeds)]
    for seed in checked:
        memory.write(seed["auction_id"], seed["task"], seed["bids"], seed["winner"],
                     outcome={"passed": seed["passed"], "source": SEED_SOURCE})
    return len(checked)


__all__ = ["PRESET_DATA", "SEED_PREFIX", "SeedError", "check_seed", "load_seeds",
           "preset_file", "preset_seeds", "save_seeds", "seed_memory"]
