"""A real ``chroma run`` server on loopback, for tests of the shared auction memory.

Every wait is bounded: a server that does not answer its heartbeat within the
start timeout fails the test with the tail of its log instead of hanging.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

HOST = "127.0.0.1"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


def chroma_command() -> list[str]:
    """The ``chroma`` CLI of the running interpreter's environment (it ships with chromadb)."""
    beside = Path(sys.executable).parent / "chroma"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("chroma")
    if found:
        return [found]
    # The console script is a thin wrapper around this function; call it directly.
    code = "import sys; from chromadb.cli.cli import app; sys.argv[0] = 'chroma'; app()"
    return [sys.executable, "-c", code]


def free_port(host: str = HOST) -> int:
    """A port nobody listens on right now (a small race remains; start() retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _answers(url: str, timeout: float = 1.0) -> bool:
    # No proxy handler: a loopback heartbeat must never be routed through an HTTP proxy.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url}/api/v2/heartbeat", timeout=timeout) as response:
            return response.status == 200 and b"heartbeat" in response.read()
    except (OSError, urllib.error.URLError):
        return False


class ChromaServer:
    """One ``chroma run --path DIR --host 127.0.0.1 --port P`` process; restartable on DIR."""

    def __init__(self, path: str | os.PathLike[str], host: str = HOST) -> None:
        self.path = Path(path)
        self.host = host
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.path.parent / f"{self.path.name}.chroma.log"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = START_TIMEOUT, port: int | None = None) -> None:
        """Start and wait for a heartbeat; a lost port race gets two more tries."""
        if self.process is not None:
            raise RuntimeError("chroma server already running")
        self.path.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, ANONYMIZED_TELEMETRY="False", NO_COLOR="1")
        last_error = ""
        for _ in range(1 if port else 3):
            self.port = port or free_port(self.host)
            args = ["--path", str(self.path), "--host", self.host, "--port", str(self.port)]
            cmd = [*chroma_command(), "run", *args]
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                if _answers(self.url):
                    return
                time.sleep(0.2)
            code = self.process.poll()
            self.stop()
            last_error = (
                f"exited with code {code}" if code is not None else f"no heartbeat in {timeout}s"
            )
        raise RuntimeError(
            f"`chroma run` on {self.host}:{self.port} failed ({last_error}); log tail:\n"
            + self.log_tail()
        )

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Terminate (then kill, if it lingers) the server process this object started."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Stop and start again on the same data directory and port."""
        port = self.port
        self.stop()
        self.start(timeout=timeout, port=port)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> ChromaServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A session-wide real Chroma server: yields (host, port); tests isolate by collection."""
    with ChromaServer(tmp_path_factory.mktemp("chroma") / "data") as server:
        yield server.host, server.port
