"""Run untrusted, model-written Python in a child process with limits.

Benchmarks execute code that small models wrote; a bug (or a confused model) must
not hang the run, eat the machine's memory, touch the network or scribble over
the repository. What each layer gives, from strongest to weakest:

Guaranteed by the kernel
    * wall-clock limit: the child runs in its own session; on timeout the whole
      process group gets SIGKILL.
    * memory limit: ``RLIMIT_AS`` (address space); allocations beyond it fail
      (Python raises ``MemoryError``). ``RLIMIT_CPU`` backs the wall clock up,
      ``RLIMIT_FSIZE`` caps any file the child writes (its stdout/stderr included),
      ``RLIMIT_CORE`` = 0.
    * no network *when the kernel lets us create a network namespace*
      (``unshare(CLONE_NEWNET)``, or with an unprivileged user namespace): the
      child then sees only a loopback interface that is down. ``SandboxResult.
      network_namespace`` says whether this happened for a given run.

Best effort (a tripwire, not a security boundary)
    * the child runs ``python -I`` (no user site, no ``PYTHON*`` env vars, no cwd
      on ``sys.path``) with an empty environment, in a throwaway temp directory;
    * an audit hook installed before the code runs refuses: socket creation,
      process creation (fork, exec, spawn, ``subprocess``, ``os.system``),
      signalling other processes, importing ``_posixsubprocess``, loading native
      libraries or calling foreign functions through ``ctypes`` (importing ctypes
      itself stays allowed: numpy needs it), and writes/deletes/renames outside
      the temp directory. Audit hooks cannot be
      removed from Python code, but native code could bypass them; symlinks
      inside the temp directory are not resolved.

Not provided: CPU-time fairness between concurrent children, read protection of
the file system, and protection against kernel exploits. Run real untrusted code
inside a container or VM.
"""

from __future__ import annotations

import ctypes
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SandboxResult", "run_python", "network_namespace_available"]

_CLONE_NEWNET = 0x40000000
_CLONE_NEWUSER = 0x10000000
_TAIL = 4000
_NETNS_MARKER = "_sandbox_netns"

try:  # loaded once in the parent; the forked child only calls into it
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - exotic platforms
    _LIBC = None

# Runs in the child before the untrusted code; argv: [code file, sandbox dir].
_BOOTSTRAP = r"""
import os, sys
_code_file, _root = sys.argv[1], sys.argv[2]
try:
    with open(os.path.join(_root, "@MARKER@"), "w") as _f:
        _f.write(os.readlink("/proc/self/ns/net"))
except OSError:
    pass
with open(_code_file, encoding="utf-8") as _f:
    _source = _f.read()
_code = compile(_source, "solution.py", "exec")
_root = os.path.abspath(_root)
_fspath, _abspath, _join, _getcwd = os.fspath, os.path.abspath, os.path.join, os.getcwd
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_DENY = frozenset({
    "socket.__new__", "socket.connect", "socket.bind", "socket.sendto",
    "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
    "os.fork", "os.forkpty", "os.exec", "os.spawn", "os.posix_spawn", "os.system",
    "os.startfile", "subprocess.Popen", "pty.spawn", "os.kill", "os.killpg",
    "signal.pthread_kill", "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.call_function",
    "sys.addaudithook", "os.chroot",
})
_DENY_IMPORT = frozenset({"_posixsubprocess", "_xxsubinterpreters"})
_PATH_EVENTS = {
    "os.remove": (0,), "os.rename": (0, 1), "os.rmdir": (0,), "os.mkdir": (0,),
    "os.chmod": (0,), "os.chown": (0,), "os.truncate": (0,), "os.symlink": (0, 1),
    "os.link": (0, 1), "shutil.rmtree": (0,), "shutil.copyfile": (1,),
    "shutil.move": (1,), "os.utime": (0,),
}

def _inside(path):
    if isinstance(path, int):
        return True
    try:
        p = _fspath(path)
    except TypeError:
        return False
    if isinstance(p, bytes):
        p = p.decode("utf-8", "surrogateescape")
    if p in ("/dev/null",):
        return True
    full = _abspath(_join(_getcwd(), p))
    return full == _root or full.startswith(_root + os.sep)

def _guard(event, args):
    if event in _DENY:
        raise PermissionError("sandbox: %s is not allowed" % event)
    if event == "ctypes.dlopen" and args[0] is not None:
        raise PermissionError("sandbox: loading native libraries is not allowed")
    if event == "import":
        if args[0] in _DENY_IMPORT:
            raise PermissionError("sandbox: importing %s is not allowed" % args[0])
        return
    if event == "open":
        path, mode, flags = args
        writing = (mode is not None and any(c in mode for c in "wax+")) or (
            mode is None and isinstance(flags, int) and flags & _WRITE_FLAGS
        )
        if writing and not _inside(path):
            raise PermissionError("sandbox: writing outside the sandbox is not allowed")
        return
    where = _PATH_EVENTS.get(event)
    if where is not None:
        for i in where:
            if i < len(args) and not _inside(args[i]):
                raise PermissionError("sandbox: %s outside the sandbox is not allowed" % event)

sys.addaudithook(_guard)
del _f, _source
sys.argv = ["solution.py"]
_globals = {"__name__": "__main__", "__builtins__": __builtins__}
exec(_code, _globals)
""".replace("@MARKER@", _NETNS_MARKER)


@dataclass(frozen=True)
class SandboxResult:
    """What happened to one child run; ``passed`` means exit code 0 within the limits."""

    passed: bool
    timed_out: bool
    exit_code: int | None
    stdout: str
    stderr: str
    seconds: float
    memory_exceeded: bool
    network_namespace: bool

    @property
    def output_tail(self) -> str:
        """Last part of stderr (or stdout when stderr is empty): what feedback shows."""
        return self.stderr or self.stdout


def _tail(path: Path, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    return ("..." + text) if size > limit else text


def _unshare_network() -> None:
    """Move the child into a fresh network namespace if the kernel allows it."""
    if _LIBC is None:
        return
    if _LIBC.unshare(_CLONE_NEWNET) == 0:
        return
    _LIBC.unshare(_CLONE_NEWUSER | _CLONE_NEWNET)  # unprivileged fallback; may fail too


def _limits(memory_bytes: int, cpu_seconds: int, file_bytes: int, isolate_net: bool):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if isolate_net:
            _unshare_network()

    return apply


def _parent_netns() -> str | None:
    try:
        return os.readlink("/proc/self/ns/net")
    except OSError:
        return None


def network_namespace_available() -> bool:
    """Tell whether a child can get its own (empty) network namespace here."""
    result = run_python("pass", timeout=10)
    return result.network_namespace


def run_python(
    code: str,
    *,
    timeout: float = 10.0,
    memory_mb: int = 512,
    max_output_bytes: int = 1_000_000,
    isolate_network: bool = True,
    tail_chars: int = _TAIL,
) -> SandboxResult:
    """Execute ``code`` as ``__main__`` in a limited child interpreter.

    The code sees an empty environment and a fresh temp directory as cwd, which
    is deleted afterwards. Blocking; wrap in ``asyncio.to_thread`` from async code.
    """
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    memory_bytes = int(memory_mb) * 1024 * 1024
    work = Path(tempfile.mkdtemp(prefix="sale-sandbox-"))
    try:
        code_file = work / "solution.py"
        code_file.write_text(code, encoding="utf-8")
        out_path, err_path = work / "_stdout", work / "_stderr"
        started = time.monotonic()
        timed_out = False
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _BOOTSTRAP, str(code_file), str(work)],
                cwd=work,
                env={},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                preexec_fn=_limits(
                    memory_bytes, int(timeout) + 1, max_output_bytes, isolate_network
                ),
            )
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                # Kill the whole group: the child may have left grandchildren behind.
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        seconds = time.monotonic() - started
        stdout = _tail(out_path, tail_chars)
        stderr = _tail(err_path, tail_chars)
        try:
            child_ns = (work / _NETNS_MARKER).read_text()
        except OSError:
            child_ns = None
        parent_ns = _parent_netns()
        isolated = bool(child_ns and parent_ns and child_ns != parent_ns)
        code_ = proc.returncode
        return SandboxResult(
            passed=(not timed_out) and code_ == 0,
            timed_out=timed_out,
            exit_code=None if timed_out else code_,
            stdout=stdout,
            stderr=stderr,
            seconds=seconds,
            memory_exceeded="MemoryError" in stderr,
            network_namespace=isolated,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
