"""Run untrusted, model-written Python in a child process with limits.

Benchmarks execute code that small models wrote; a bug (or a confused model) must
not hang the run, eat the machine's memory, touch the network, read the caller's
secrets or scribble over the repository.

Isolation (``SandboxResult.isolation == "namespaces"``; needs root, as in CI)
    A trusted launcher puts the child in new mount, PID, network, IPC and UTS
    namespaces and drops it to the unprivileged uid/gid ``nobody`` with
    ``no_new_privs`` set, before the untrusted code is loaded. Tested, with the
    audit hook below switched off so that only the kernel stands in the way:

    * no write outside the temp dir: the whole file system is remounted
      read-only in the child's mount namespace except its temp dir, so creating,
      truncating, deleting, chmod-ing or mkfifo-ing anything else fails, also
      through ``dir_fd=``, ``os.fchmod`` on an open file, or ``os.chdir`` plus a
      relative symlink; a world-writable directory outside is no exception;
    * no secrets from the caller: the environment is empty, the child's ``/proc``
      shows only its own PID namespace (``/proc/<parent>/environ`` does not
      exist there) and the caller's home directory is hidden behind an empty
      tmpfs (only the interpreter's own directories are mounted back, read-only);
    * no network: the child's network namespace holds only a loopback that is
      down, so even a listener on the caller's 127.0.0.1 cannot be reached.

Without root the launcher tries the same in an unprivileged user namespace
(``isolation == "user-namespace"``: the uid is not changed); where the kernel
refuses that too, ``isolation == "none"`` and only the limits and the tripwire
below remain. Callers that need the guarantees check ``isolation``.

Always
    * wall-clock limit: the child runs in its own session; on timeout the whole
      process group gets SIGKILL (and the child's PID namespace dies with it);
    * ``RLIMIT_AS`` (allocations beyond it raise ``MemoryError``), ``RLIMIT_CPU``,
      ``RLIMIT_FSIZE`` (caps any file the child writes, its output included),
      ``RLIMIT_CORE`` = 0;
    * ``python -I`` with an empty environment, in a throwaway temp directory;
      output is captured in unnamed files the child cannot swap for links.

Tripwire, not a boundary
    An audit hook installed before the code runs refuses sockets, process
    creation, signals, ``ctypes`` calls into native code and path-based writes
    outside the temp dir, so a confused model gets a clear ``PermissionError``.
    Native code could bypass it; the guarantees above do not rely on it.

Not provided: CPU-time fairness between concurrent children, read protection of
the file system beyond the hidden home directory, and protection against kernel
exploits. Run hostile code at scale inside a VM.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = ["SandboxResult", "run_python", "network_namespace_available", "isolation_available"]

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUTS = 0x04000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_TAIL = 4000
_NOBODY = 65534

try:  # loaded once in the parent; the forked child only calls into it
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - exotic platforms
    _LIBC = None

# Runs in the child before the untrusted code; argv: [code file, sandbox dir, hook on/off].
_BOOTSTRAP = r"""
import os, sys
_code_file, _root, _hook = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
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

if _hook:
    sys.addaudithook(_guard)
del _f, _source
sys.argv = ["solution.py"]
_globals = {"__name__": "__main__", "__builtins__": __builtins__}
exec(_code, _globals)
"""

# The trusted launcher. It starts in the namespaces the parent's preexec_fn
# created (mount, net, ipc, uts; PID for its children), forks the child that
# becomes PID 1 of the new PID namespace, builds that child's view of the file
# system, drops privileges and only then executes the bootstrap above.
# argv: [code file, sandbox dir, report fd, mode fd, hook on/off, keep...]. The
# mode fd carries what the preexec_fn managed: "root" (drop to nobody), "user"
# (unprivileged user namespace: keep the uid) or "none" (no namespaces: run as is).
_LAUNCHER = r"""
import ctypes, json, os, signal, stat, sys
BOOTSTRAP = @BOOTSTRAP@
code_file, root, report_fd, mode_fd, hook = sys.argv[1:6]
keep = sys.argv[6:]
report_fd = int(report_fd)
mode = os.read(int(mode_fd), 16).decode() or "none"
os.close(int(mode_fd))
libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
ATTR_RDONLY, ATTR_NOSUID, AT_RECURSIVE, AT_FDCWD = 1, 2, 0x8000, -100
SYS_MOUNT_SETATTR = 442  # the same number on every architecture (Linux >= 5.12)
PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG = 38, 1
NOBODY = @NOBODY@


class Attr(ctypes.Structure):
    _fields_ = [("set", ctypes.c_uint64), ("clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))


def mount(src, target, fstype, flags, data=None):
    enc = lambda v: None if v is None else v.encode()
    check(libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
          "mount %s" % target)


def setattr_(path, set_=0, clr=0, flags=0):
    attr = Attr(set_, clr, 0, 0)
    check(libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), flags,
                       ctypes.byref(attr), ctypes.sizeof(attr)), "mount_setattr %s" % path)


def blocked_ancestor(path):
    # the first directory on the way to path that 'nobody' could not pass
    parts = path.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        d = "/" + "/".join(parts[:i])
        if not os.stat(d).st_mode & stat.S_IXOTH:
            return d
    return None


def build_view():
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    # directories the child needs that sit behind a closed one (e.g. the interpreter
    # under /root): hide the closed one behind an empty tmpfs, mount the needed ones back
    fds = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in [root] + keep}
    covered = set()
    for path in [root] + keep:
        top = blocked_ancestor(path)
        if top is None or top == path:
            continue
        if top not in covered:
            mount("tmpfs", top, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")
            covered.add(top)
        os.makedirs(path, exist_ok=True)
        mount("/proc/self/fd/%d" % fds[path], path, None, MS_BIND | MS_REC)
    if not os.path.ismount(root):
        mount(root, root, None, MS_BIND)
    for fd in fds.values():
        os.close(fd)
    setattr_("/", set_=ATTR_RDONLY | ATTR_NOSUID, flags=AT_RECURSIVE)
    setattr_(root, clr=ATTR_RDONLY)
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def child():
    report = {"mode": mode}
    build_view()
    os.chdir(root)
    if mode == "root":
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
    report.update(pid=os.getpid(), uid=os.getuid(), net=os.readlink("/proc/self/ns/net"))
    return report


pid = os.fork()
if pid == 0:
    try:
        if mode in ("root", "user"):
            report = child()
        else:
            report = {"mode": "none", "net": os.readlink("/proc/self/ns/net")}
    except BaseException as exc:
        os.write(report_fd, json.dumps({"mode": mode, "error": repr(exc)}).encode())
        os._exit(125)
    os.write(report_fd, json.dumps(report).encode())
    os.closerange(3, 65536)
    os.execve(sys.executable, [sys.executable, "-I", "-c", BOOTSTRAP, code_file, root, hook], {})
os.close(report_fd)
_, status = os.waitpid(pid, 0)
os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
""".replace("@NOBODY@", str(_NOBODY)).replace("@BOOTSTRAP@", repr(_BOOTSTRAP))


@dataclass(frozen=True)
class SandboxResult:
    """What happened to one child run; ``passed`` means exit code 0 within the limits.

    ``isolation`` says which guarantees held: ``"namespaces"`` (root: own mount,
    PID and network namespaces, uid ``nobody``), ``"user-namespace"`` (the same
    namespaces without a uid change) or ``"none"`` (limits and tripwire only).
    """

    passed: bool
    timed_out: bool
    exit_code: int | None
    stdout: str
    stderr: str
    seconds: float
    memory_exceeded: bool
    network_namespace: bool
    isolation: str = "none"
    isolation_error: str | None = None

    @property
    def output_tail(self) -> str:
        """Last part of stderr (or stdout when stderr is empty): what feedback shows."""
        return self.stderr or self.stdout


def _tail(stream: IO[bytes], limit: int) -> str:
    stream.seek(0, os.SEEK_END)
    size = stream.tell()
    stream.seek(max(0, size - limit))
    text = stream.read().decode("utf-8", "replace")
    return ("..." + text) if size > limit else text


def _write_uid_map() -> None:
    """Map the caller's ids to root inside a fresh user namespace (unprivileged path)."""
    uid, gid = os.getuid(), os.getgid()
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"0 {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"0 {gid} 1")


def _unshare(isolate_net: bool) -> str:
    """Enter new namespaces for the launcher; returns the mode it managed, if any."""
    if _LIBC is None:
        return "none"
    flags = _CLONE_NEWNS | _CLONE_NEWPID | _CLONE_NEWIPC | _CLONE_NEWUTS
    if isolate_net:
        flags |= _CLONE_NEWNET
    if os.geteuid() == 0 and _LIBC.unshare(flags) == 0:
        return "root"
    if _LIBC.unshare(_CLONE_NEWUSER | flags) == 0:
        try:
            _write_uid_map()
            return "user"
        except OSError:
            return "none"
    if isolate_net:  # no mount/PID namespaces here: at least keep the network away
        if _LIBC.unshare(_CLONE_NEWNET) != 0:
            _LIBC.unshare(_CLONE_NEWUSER | _CLONE_NEWNET)
    return "none"


def _limits(memory_bytes: int, cpu_seconds: int, file_bytes: int, isolate_net: bool,
            mode_w: int):
    """The preexec_fn: limits, then namespaces; the mode reached goes to the launcher."""
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.write(mode_w, _unshare(isolate_net).encode())
        os.close(mode_w)

    return apply


def _parent_netns() -> str | None:
    try:
        return os.readlink("/proc/self/ns/net")
    except OSError:
        return None


def _python_dirs() -> list[str]:
    """Directories the child's interpreter reads: its prefixes and package dirs."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable))}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        try:
            paths.add(sysconfig.get_paths()[key])
        except KeyError:  # pragma: no cover
            pass
    real = {os.path.realpath(p) for p in paths if p and os.path.isdir(p)}
    # keep the outermost: a bind mount of a prefix already covers its site-packages
    return sorted(p for p in real if not any(p != q and p.startswith(q + os.sep) for q in real))


def network_namespace_available() -> bool:
    """Tell whether a child can get its own (empty) network namespace here."""
    return run_python("pass", timeout=10).network_namespace


def isolation_available() -> str:
    """The isolation a child gets on this machine: "namespaces", "user-namespace" or "none"."""
    return run_python("pass", timeout=10).isolation


def run_python(
    code: str,
    *,
    timeout: float = 10.0,
    memory_mb: int = 512,
    max_output_bytes: int = 1_000_000,
    isolate_network: bool = True,
    tail_chars: int = _TAIL,
    audit_hook: bool = True,
) -> SandboxResult:
    """Execute ``code`` as ``__main__`` in a limited, isolated child interpreter.

    The code sees an empty environment and a fresh temp directory as cwd, which
    is deleted afterwards. ``audit_hook=False`` leaves out the tripwire (tests use
    it to show the kernel's isolation holds alone). Blocking; wrap in
    ``asyncio.to_thread`` from async code.
    """
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    memory_bytes = int(memory_mb) * 1024 * 1024
    work = Path(tempfile.mkdtemp(prefix="sale-sandbox-")).resolve()
    mode_r, mode_w = os.pipe()
    report_r, report_w = os.pipe()
    try:
        code_file = work / "solution.py"
        code_file.write_text(code, encoding="utf-8")
        code_file.chmod(0o644)
        if os.geteuid() == 0:
            os.chown(work, _NOBODY, _NOBODY)
        argv = [sys.executable, "-I", "-c", _LAUNCHER, str(code_file), str(work),
                str(report_w), str(mode_r), "1" if audit_hook else "0", *_python_dirs()]
        started = time.monotonic()
        timed_out = False
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                argv,
                cwd=work,
                env={},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                pass_fds=(report_w, mode_r),
                preexec_fn=_limits(
                    memory_bytes, int(timeout) + 1, max_output_bytes, isolate_network, mode_w
                ),
            )
            for fd in (mode_r, mode_w, report_w):
                os.close(fd)
            mode_r = mode_w = report_w = -1
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
            stdout = _tail(out, tail_chars)
            stderr = _tail(err, tail_chars)
        report = _read_report(report_r)
        mode = str(report.get("mode") or "")
        isolation = {"root": "namespaces", "user": "user-namespace"}.get(mode, "none")
        error = report.get("error")
        if error:
            isolation = "none"
        parent_ns = _parent_netns()
        child_ns = report.get("net")
        code_ = proc.returncode
        return SandboxResult(
            passed=(not timed_out) and code_ == 0 and not error,
            timed_out=timed_out,
            exit_code=None if timed_out else code_,
            stdout=stdout,
            stderr=stderr if not error else f"sandbox setup failed: {error}\n{stderr}",
            seconds=seconds,
            memory_exceeded="MemoryError" in stderr,
            network_namespace=bool(child_ns and parent_ns and child_ns != parent_ns),
            isolation=isolation,
            isolation_error=error,
        )
    finally:
        for fd in (mode_r, mode_w, report_r, report_w):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(work, ignore_errors=True)


def _read_report(fd: int) -> dict:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    try:
        report = json.loads(b"".join(chunks) or b"{}")
    except ValueError:
        return {"error": "unreadable launcher report"}
    return report if isinstance(report, dict) else {"error": "unreadable launcher report"}
