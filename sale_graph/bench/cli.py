"""``sale bench`` and ``sale fit``: the benchmark from the command line.

``sale bench`` runs (or, with ``--resume``, continues) a benchmark into a run
directory; ``sale bench --from-bank`` rebuilds the tables from the run's exported
bank without loading any model; ``sale fit`` fits SALE's weights on a run's
training split and writes the JSON file that ``Context(weights=path)`` reads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DEFAULT_RUN_DIR = Path("benchmarks") / "results" / "full"
SMOKE_RUN_DIR = Path("benchmarks") / "results" / "smoke"


def _domains(text: str) -> tuple[str, ...]:
    items = tuple(d.strip() for d in text.split(",") if d.strip())
    bad = [d for d in items if d not in ("coding", "reasoning")]
    if not items or bad:
        raise argparse.ArgumentTypeError("domains: a comma list of coding, reasoning")
    return items


def _unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a reserve lies in [0, 1], got {text!r}")
    return value


def _config(args: argparse.Namespace, stored: Any = None) -> Any:
    """The BenchConfig the flags describe: the stored one (resume) or a preset, then flags."""
    import dataclasses

    from sale_graph.bench.runner import SMOKE, BenchConfig

    base = stored or (SMOKE if args.smoke else BenchConfig())
    changes: dict[str, Any] = {}
    if args.pool is not None:
        changes["pool"] = args.pool
    if args.domains is not None:
        changes["domains"] = args.domains
    if args.limit is not None:
        changes["per_domain"] = {d: args.limit for d in ("coding", "reasoning")}
    if args.test_fraction is not None:
        changes["test_fraction"] = args.test_fraction
    if args.orders is not None:
        changes["orders"] = args.orders
    if args.no_ablations:
        changes["ablations"] = False
    if args.seed is not None:
        changes["seed"] = args.seed
    return dataclasses.replace(base, **changes)


def bench_command(args: argparse.Namespace) -> int:
    """Run, resume or rebuild a benchmark; print the results table."""
    from sale_graph.bench import runner

    run_dir = Path(args.run_dir or (SMOKE_RUN_DIR if args.smoke else DEFAULT_RUN_DIR))
    if args.from_bank:
        export = Path(args.bank) if args.bank else run_dir / runner.BANK_EXPORT
        if not export.is_file():
            print(f"sale bench: no exported bank at {export}", file=sys.stderr)
            return 2
        paths = runner.report_from_export(export, run_dir, plots=not args.no_plots)
    else:
        stored = runner.stored_config(run_dir) if args.resume else None
        if args.seed_calls:
            with runner.open_bank(run_dir) as bank:
                added = bank.import_(args.seed_calls, calls_only=True)
            print(f"sale bench: {added} model calls seeded from {args.seed_calls}",
                  file=sys.stderr)
        try:
            paths = runner.run_bench(_config(args, stored), run_dir, resume=args.resume)
        except (RuntimeError, ValueError) as exc:
            print(f"sale bench: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(
                "sale bench: interrupted; the bank is saved, continue with --resume",
                file=sys.stderr,
            )
            return 130
    print(paths["markdown"].read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0


def fit_command(args: argparse.Namespace) -> int:
    """Fit weights on a run's training split; write them where ``Context(weights=)`` reads."""
    import json
    import tempfile

    from sale_graph.bench import runner
    from sale_graph.bench.bank import OutcomeBank
    from sale_graph.bench.fit import save_weights

    run_dir = Path(args.run_dir)
    db = run_dir / runner.BANK_DB
    export = run_dir / runner.BANK_EXPORT
    with tempfile.TemporaryDirectory(prefix="sale-fit-") as tmp:
        if db.exists():
            bank = OutcomeBank(db)
        elif export.exists():
            bank = OutcomeBank.from_export(export, Path(tmp) / runner.BANK_DB)
        else:
            print(
                f"sale fit: {run_dir} has neither {runner.BANK_DB} nor {runner.BANK_EXPORT}",
                file=sys.stderr,
            )
            return 2
        try:
            result = runner.fit_from_bank(bank, args.objective, args.lam, memory=args.memory)
            staged, staged_report = _staged_fit(bank, args.lam, args.staged_fit or "staged",
                                                args.reserve)
            if staged is None and (args.staged_fit or args.reserve is not None):
                raise ValueError(f"no staged policy to write: {staged_report['skipped']}")
            seeds = runner.seeds_from_bank(bank, staged_report) if args.seeds_out else []
        except ValueError as exc:
            print(f"sale fit: {exc}", file=sys.stderr)
            return 2
        finally:
            bank.close()
    save_weights(result.weights, args.output, staged=staged,
                 execute_plan=staged_report.get("execute_plan"),
                 defaults={"auction": args.auction} if args.auction else None)
    summary = {k: v for k, v in result.to_dict().items() if k != "selected"}
    summary["staged"] = staged_report
    print(json.dumps(summary, indent=2, sort_keys=True))
    print(f"wrote {args.output}", file=sys.stderr)
    if args.seeds_out:
        from sale_graph.seeds import save_seeds

        n = save_seeds(seeds, args.seeds_out)
        print(f"wrote {args.seeds_out}: {n} verified outcomes of the training split "
              f"({sum(s['passed'] for s in seeds)} passed)", file=sys.stderr)
    return 0


def _staged_fit(
    bank: Any, lam: float, name: str = "staged", reserve: float | None = None
) -> tuple[Any, dict[str, Any]]:
    """The staged auction's policy, when the bank holds what it needs (else None, why).

    A run that stored this fit (the benchmark's rows ran with it) gives the stored one,
    so that what ships is what was measured, even if the fitting code changed since.
    """
    from sale_graph.bench.config import FIT_LAM, STAGED_FITS
    from sale_graph.bench.staged_fit import fit_staged_from_bank
    from sale_graph.staged import StagedPolicy

    stored = bank.get("fit", name) if lam == FIT_LAM else None
    if stored is not None:
        policy = StagedPolicy.coerce(stored["policy"])
        report = {**stored, "source": "the run's stored fit, which its rows ran with"}
    else:
        try:
            policy, report = fit_staged_from_bank(bank, lam=lam, **STAGED_FITS[name])
        except ValueError as exc:
            return None, {"skipped": str(exc)}
        report["source"] = "fitted now on the run's training split"
    if reserve is not None:
        policy = policy.with_reserve(reserve)
    return policy.to_dict(), {"fit": name, "source": report["source"], "reserve": reserve,
                              "chosen": report["chosen"], "execute_plan": report["execute_plan"]}


def compare_command(args: argparse.Namespace) -> int:
    """Compare runs of different pools on the same tasks; print and write the table."""
    from sale_graph.bench.compare import write_comparison

    try:
        path = write_comparison(args.run_dirs, args.output)
    except ValueError as exc:
        print(f"sale compare: {exc}", file=sys.stderr)
        return 2
    print(path.read_text(encoding="utf-8"))
    print(f"wrote {path} and {path.with_suffix('.json')}", file=sys.stderr)
    return 0


def add_bench_commands(subparsers: Any) -> None:
    """Register ``bench``, ``fit`` and ``compare`` on the ``sale`` command's subparsers."""
    from sale_graph.bench.config import STAGED_FITS
    from sale_graph.context import PRESETS

    bench = subparsers.add_parser(
        "bench", help="benchmark SALE against baselines (resumable; see benchmarks/README.md)"
    )
    bench.add_argument(
        "--pool",
        choices=list(PRESETS),
        default=None,
        help="agent pool (default: local; --smoke: local-small)",
    )
    bench.add_argument(
        "--domains",
        type=_domains,
        default=None,
        help="comma list of coding, reasoning (default: both)",
    )
    bench.add_argument(
        "--limit",
        type=int,
        default=None,
        help="tasks per domain, spread evenly over bins (default: 90)",
    )
    bench.add_argument(
        "--test-fraction",
        type=float,
        default=None,
        help="share of tasks in the test split (default: 2/3)",
    )
    bench.add_argument(
        "--orders", type=int, default=None, help="seeded task orders SALE runs over (default: 5)"
    )
    bench.add_argument("--seed", type=int, default=None, help="task sampling/split/order seed")
    bench.add_argument("--no-ablations", action="store_true", help="SALE and baselines only")
    bench.add_argument(
        "--run-dir",
        default=None,
        help=f"where results and the bank go (default: {DEFAULT_RUN_DIR}, "
        f"--smoke: {SMOKE_RUN_DIR})",
    )
    bench.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --run-dir (its stored configuration must match)",
    )
    bench.add_argument(
        "--from-bank",
        action="store_true",
        help="rebuild the tables from the run's bank.jsonl.gz, loading no model",
    )
    bench.add_argument("--bank", default=None, help="with --from-bank: another export to read")
    bench.add_argument(
        "--seed-calls",
        default=None,
        help="an exported bank whose model calls this run replays (its records are ignored)",
    )
    bench.add_argument(
        "--smoke",
        action="store_true",
        help="5 easy tasks, the two smallest models, 1 order, no ablations",
    )
    bench.add_argument("--no-plots", action="store_true", help="skip pareto.png/win_rate.png")
    bench.set_defaults(handler=bench_command)

    fit = subparsers.add_parser("fit", help="fit SALE's weights on a benchmark run's train split")
    fit.add_argument("--run-dir", required=True, help="a `sale bench` run directory")
    fit.add_argument("--objective", choices=["minmax", "mean"], default="minmax")
    fit.add_argument(
        "--memory",
        action="store_true",
        help="also fit w_m, the weight of memory's verified success estimate (for memories "
        "that hold outcomes: Context(refine_from='outcomes') or recorded feedback)",
    )
    fit.add_argument(
        "--auction",
        choices=["full", "staged"],
        default=None,
        help="the auction mode the pool defaults to (Context(auction=None)): the one the "
        "benchmark measured best on it",
    )
    fit.add_argument(
        "--lam",
        type=float,
        default=0.1,
        help="weight of normalised cost in the loss (failure costs 1)",
    )
    fit.add_argument(
        "--staged-fit",
        choices=sorted(STAGED_FITS),
        default=None,
        help="which staged policy, named like the benchmark's fits: 'staged' lets the fit "
        "choose, 'staged-dearest' assesses against the dearest agent, 'staged-nomem' "
        "reads no memory (default: staged)",
    )
    fit.add_argument(
        "--reserve",
        type=_unit_interval,
        default=None,
        help="one reserve for every cheaper agent instead of the fitted ones (a point of "
        "the benchmark's reserve sweep, shipped as the pool's default)",
    )
    fit.add_argument("-o", "--output", required=True, help="weights JSON to write")
    fit.add_argument(
        "--seeds-out",
        default=None,
        help="also write the training split's graded outcomes (one per task and agent) as "
        "the seed file `sale memory seed` loads: the memory the staged rows started from",
    )
    fit.set_defaults(handler=fit_command)

    compare = subparsers.add_parser(
        "compare", help="pools side by side: runs of different pools on the same test tasks"
    )
    compare.add_argument("run_dirs", nargs="+", help="`sale bench` run directories (one "
                         "gives its own verdict); the first one's largest agent is the reference")
    compare.add_argument("-o", "--output", required=True, help="Markdown file to write "
                         "(its .json twin is written beside it)")
    compare.set_defaults(handler=compare_command)
