"""Refuse a llama.cpp build that would crash this process, before it loads a model.

A llama.cpp build compiled for another CPU does not fail politely: an AMX build
segfaults on its first decode (the AMX path mishandles our Q4_K/Q6_K tensors), and
a build using instructions the CPU lacks (AVX-512 on an AVX2 machine) dies with
SIGILL. Either takes down the whole process: a LangGraph server, a benchmark, a
notebook kernel. ``llama_print_system_info()`` reports which instruction sets the
build was compiled with, so we read it once and compare it with the CPU's flags.

``SALE_LLAMA_TRUSTED=1`` skips the check, for builds known to be good (say, an AMX
build of a later llama.cpp that has fixed the crash).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from pathlib import Path

from sale_graph.errors import UnsafeBuildError

TRUST_ENV = "SALE_LLAMA_TRUSTED"
REBUILD_HINT = "rebuild it portably: SALE_LLAMA_REBUILD=1 bash scripts/install.sh"

# Build feature (as system info names it) -> the /proc/cpuinfo flag the CPU must have.
_NEEDS_CPU_FLAG: Mapping[str, str] = {
    "AVX": "avx",
    "AVX2": "avx2",
    "FMA": "fma",
    "F16C": "f16c",
    "BMI2": "bmi2",
    "AVX_VNNI": "avx_vnni",
    "AVX512": "avx512f",
    "AVX512_VBMI": "avx512_vbmi",
    "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16",
}
_AMX = ("AMX_INT8", "AMX_TILE", "AMX_BF16")
_FEATURE = re.compile(r"\b([A-Z][A-Z0-9_]*)\s*=\s*([01])\b")


def parse_system_info(info: str) -> dict[str, bool]:
    """``"AVX2 = 1 | AMX_INT8 = 0 | ..."`` -> ``{"AVX2": True, "AMX_INT8": False, ...}``."""
    return {name: value == "1" for name, value in _FEATURE.findall(info)}


def cpu_flags(cpuinfo: str | None = None) -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo; None where they cannot be read."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


def problems(info: str, flags: set[str] | None) -> list[str]:
    """What makes a build with this system info unsafe on a CPU with these flags."""
    built = parse_system_info(info)
    found = [f"the build has the AMX path ({name} = 1), which segfaults on our models"
             for name in _AMX if built.get(name)]
    if flags is not None:
        found += [f"the build uses {name} but this CPU lacks '{flag}' (SIGILL)"
                  for name, flag in _NEEDS_CPU_FLAG.items()
                  if built.get(name) and flag not in flags]
    return found


def check(info: str, flags: set[str] | None, env: Mapping[str, str] | None = None) -> None:
    """Raise :class:`UnsafeBuildError` naming the fix if the build is unsafe here."""
    env = os.environ if env is None else env
    if env.get(TRUST_ENV) == "1":
        return
    found = problems(info, flags)
    if found:
        raise UnsafeBuildError(
            "refusing to load models with this llama.cpp build: " + "; ".join(found)
            + f". Fix: {REBUILD_HINT}. If you know this build is good, set {TRUST_ENV}=1."
        )


def system_info() -> str:
    """The installed llama.cpp's own report of the instruction sets it was built with."""
    import llama_cpp

    raw = llama_cpp.llama_print_system_info()
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


@functools.cache
def _checked_once() -> None:
    check(system_info(), cpu_flags())


def ensure_safe_build() -> None:
    """Check the installed build once per process (cached), before the first model loads."""
    if os.environ.get(TRUST_ENV) == "1":
        return
    _checked_once()
