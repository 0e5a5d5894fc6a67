"""Install-time proof that the local pool really generates on this machine.

A llama.cpp build can install cleanly and still crash on the first decode (see
``native_build``), so the install ends by loading each model of every preset
in a child process and generating a few tokens. A child that crashes, hangs or
reports an error stops the install with a message naming the model, the likely
cause and the fix; the parent never loads a model itself, so it always survives
to say what went wrong.

    python -m sale_graph.selftest [NAME ...]
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sale_graph.native_build import REBUILD_HINT

DEFAULT_TIMEOUT = 300.0  # the 1.5B model loads and answers in ~10 s on 2 cores
TOKENS = 8
_PROMPT = "Reply with one word: the opposite of cold."


@dataclass(frozen=True)
class Outcome:
    """One model's self-test result."""

    model: str
    ok: bool
    detail: str
    seconds: float


def _child(name: str) -> int:
    """Runs in the child: verify, load and generate; print one JSON line."""
    from langchain_core.messages import HumanMessage

    from sale_graph.local import LlamaCppChatModel
    from sale_graph.model_files import model_path

    started = time.time()
    model = LlamaCppChatModel(model_path=str(model_path(name)), model_name=name,
                              max_tokens=TOKENS, temperature=0.0)
    reply = model.invoke([HumanMessage(_PROMPT)])
    usage: dict[str, Any] = dict(reply.usage_metadata or {})
    print(json.dumps({"tokens": usage.get("output_tokens", 0), "text": reply.content,
                      "seconds": round(time.time() - started, 2)}))
    return 0


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def run_one(name: str, timeout: float = DEFAULT_TIMEOUT) -> Outcome:
    """Self-test one model in a fresh interpreter; never raises for the model's failures."""
    started = time.time()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "sale_graph.selftest", "--child", name],
            capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return Outcome(name, False, f"no answer within {timeout:.0f} s (a hang in llama.cpp, or a "
                       f"machine far too slow); {REBUILD_HINT}", time.time() - started)
    seconds = time.time() - started
    if proc.returncode < 0:
        cause = {"SIGSEGV": "llama.cpp was built for another CPU (e.g. -march=native with AMX)",
                 "SIGILL": "llama.cpp uses instructions this CPU lacks"}.get(
            _signal_name(proc.returncode), "llama.cpp crashed")
        return Outcome(name, False, f"the child died with {_signal_name(proc.returncode)}: "
                       f"{cause}; {REBUILD_HINT}", seconds)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return Outcome(name, False, f"failed: {last}", seconds)
    try:
        report = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return Outcome(name, False, f"unreadable child output {proc.stdout[-200:]!r}", seconds)
    if not report.get("tokens") or not str(report.get("text", "")).strip():
        return Outcome(name, False, f"generated nothing ({report})", seconds)
    return Outcome(name, True, f"{report['tokens']} tokens: {report['text'].strip()[:40]!r}",
                   seconds)


def main(argv: Sequence[str] | None = None) -> int:
    """Self-test the named models (default: every preset's); exit 1 on any failure."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--child"]:
        return _child(args[1])
    from sale_graph.local import PRESETS

    failed = 0
    every = sorted({m for models in PRESETS.values() for m in models})
    for name in args or every:
        outcome = run_one(name)
        mark = "ok  " if outcome.ok else "FAIL"
        print(f"selftest {mark} {name:<20} {outcome.seconds:6.1f}s  {outcome.detail}", flush=True)
        failed += not outcome.ok
    if failed:
        print(f"selftest: {failed} local model(s) cannot generate on this machine", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
