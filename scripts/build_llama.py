"""Install a llama-cpp-python build that runs on any CPU of this machine's class.

Why a script of our own: pip builds llama-cpp-python from source with
``GGML_NATIVE=ON`` (``-march=native``). Such a build targets the CPU it was
built on, and on CPUs with Intel AMX it takes llama.cpp's AMX path, which
segfaults on the first decode of our Q4_K/Q6_K models. pip's wheel cache is keyed
by package and version, not by ``CMAKE_ARGS``, so once a machine has built the
native wheel, every later ``pip install`` silently reuses it.

So this script builds the wheel itself, with explicit portable flags, into a
directory keyed by version and flags (``~/.cache/sale_graph/wheels/<key>/``), and
force-reinstalls it whenever the installed native libraries are not byte-identical
to that wheel's. Standard library only: it runs before the package is installed.

Flags (x86-64): AVX2 + FMA + F16C + BMI2, no AVX-512, no AMX, no native tuning.
AVX2 is present on every x86-64 server CPU since 2013 (Haswell, Zen); AVX-512 is
left out because no machine we could measure on has it and a build with it dies
with SIGILL on CPUs without it (README, "Portable llama.cpp build"). A CPU without
AVX2 gets a plain SSE build instead; other architectures get the generic build.
Set ``SALE_LLAMA_REBUILD=1`` to rebuild even if a matching wheel exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

VERSION = "0.3.36"
PACKAGE = f"llama-cpp-python=={VERSION}"

# Flags common to every variant: never -march=native, never AMX, no extras we do not use.
_COMMON = [
    "-DGGML_NATIVE=OFF",
    "-DGGML_AMX_TILE=OFF",
    "-DGGML_AMX_INT8=OFF",
    "-DGGML_AMX_BF16=OFF",
    "-DGGML_AVX512=OFF",
    "-DGGML_AVX512_VBMI=OFF",
    "-DGGML_AVX512_VNNI=OFF",
    "-DGGML_AVX512_BF16=OFF",
    "-DGGML_AVX_VNNI=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
]
_X86_AVX2 = ["-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_BMI2=ON"]
_X86_SSE = ["-DGGML_AVX=OFF", "-DGGML_AVX2=OFF", "-DGGML_FMA=OFF", "-DGGML_F16C=OFF",
            "-DGGML_BMI2=OFF"]


def cpu_flags() -> set[str]:
    """The CPU's feature flags as the kernel reports them (empty where unknown)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def choose_flags() -> tuple[str, list[str]]:
    """Return (variant name, CMake flags) for this machine's CPU class."""
    machine = platform.machine().lower()
    if machine in {"x86_64", "amd64"}:
        flags = cpu_flags()
        if {"avx2", "fma", "f16c", "bmi2"} <= flags:
            return "x86-64-avx2", _COMMON + _X86_AVX2
        return "x86-64-sse", _COMMON + _X86_SSE
    return f"{machine}-generic", list(_COMMON)


def cache_root() -> Path:
    """Where built wheels are kept (``SALE_WHEEL_DIR`` overrides)."""
    override = os.environ.get("SALE_WHEEL_DIR")
    if override:
        return Path(override)
    return Path.home() / ".cache" / "sale_graph" / "wheels"


def wheel_dir(variant: str, flags: list[str]) -> Path:
    """A directory per (version, python, flags): a change of any of them builds anew."""
    key = hashlib.sha256(
        json.dumps([VERSION, sys.version_info[:2], flags]).encode()
    ).hexdigest()[:12]
    return cache_root() / f"llama-cpp-python-{VERSION}-{variant}-{key}"


def _run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)


def build_wheel(target: Path, flags: list[str]) -> Path:
    """Build the wheel from source with ``flags``, bypassing pip's wheel cache."""
    target.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CMAKE_ARGS=" ".join(flags), FORCE_CMAKE="1")
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir",
              "--no-binary", "llama-cpp-python", "-w", scratch, PACKAGE], env=env)
        built = sorted(Path(scratch).glob("llama_cpp_python-*.whl"))
        if len(built) != 1:
            raise SystemExit(f"build_llama: expected one wheel, found {built}")
        final = target / built[0].name
        os.replace(built[0], final)
    (target / "flags.json").write_text(json.dumps({"version": VERSION, "flags": flags}, indent=1))
    return final


def _is_native_lib(name: str) -> bool:
    base = Path(name).name
    return base.startswith(("libllama", "libggml")) and (".so" in base or base.endswith(".dylib"))


def wheel_libs(wheel: Path) -> dict[str, str]:
    """sha256 of each native library the wheel puts inside the ``llama_cpp`` package."""
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        libs = {n[len("llama_cpp/"):]: hashlib.sha256(zf.read(n)).hexdigest()
                for n in zf.namelist() if n.startswith("llama_cpp/") and _is_native_lib(n)}
    if not any(Path(n).name.startswith("libggml-cpu") for n in libs):
        raise SystemExit(f"build_llama: no CPU backend (libggml-cpu) in {wheel}")
    return libs


def installed_libs() -> dict[str, str]:
    """sha256 of each native library of the installed ``llama_cpp`` (not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return {}
    root = Path(next(iter(spec.submodule_search_locations)))
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file() and _is_native_lib(p.name)}


def is_installed(wheel: Path) -> bool:
    """Every installed native library (the CPU kernels included) is the wheel's, byte for byte."""
    installed = installed_libs()
    expected = wheel_libs(wheel)
    if not any(Path(n).name.startswith("libggml-cpu") for n in installed):
        return False
    return all(expected.get(name) == digest for name, digest in installed.items())


def main() -> int:
    """Build (or reuse) the portable wheel and make sure it is the one installed."""
    variant, flags = choose_flags()
    target = wheel_dir(variant, flags)
    wheels = sorted(target.glob("llama_cpp_python-*.whl"))
    if os.environ.get("SALE_LLAMA_REBUILD") == "1" or not wheels:
        print(f"build_llama: building {PACKAGE} for {variant} (a few minutes)", flush=True)
        wheel = build_wheel(target, flags)
    else:
        wheel = wheels[0]
        print(f"build_llama: reusing {wheel}", flush=True)
    if is_installed(wheel):
        print(f"build_llama: installed llama.cpp is the {variant} build", flush=True)
        return 0
    # Replace whatever is installed (a native build included), then add its dependencies.
    _run([sys.executable, "-m", "pip", "install", "--force-reinstall", "--no-deps", str(wheel)])
    _run([sys.executable, "-m", "pip", "install", str(wheel)])
    if not is_installed(wheel):
        raise SystemExit("build_llama: the installed llama.cpp differs from the portable wheel")
    print(f"build_llama: installed the {variant} build", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
