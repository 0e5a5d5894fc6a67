"""The sandbox runs model code with limits; each test is a tiny snippet."""

from __future__ import annotations

import os
import textwrap

import pytest

from sale_graph.bench.sandbox import run_python


def test_passing_snippet_captures_stdout() -> None:
    r = run_python("print(6 * 7)")
    assert r.passed and not r.timed_out
    assert r.exit_code == 0
    assert r.stdout.strip() == "42"


def test_failing_assert_reports_traceback() -> None:
    r = run_python("assert 1 + 1 == 3, 'arithmetic'")
    assert not r.passed
    assert r.exit_code == 1
    assert "AssertionError: arithmetic" in r.stderr
    assert "AssertionError" in r.output_tail


def test_infinite_loop_times_out() -> None:
    r = run_python("while True:\n    pass", timeout=1.0)
    assert r.timed_out and not r.passed
    assert r.exit_code is None
    assert 0.9 <= r.seconds < 5


def test_memory_hog_is_stopped() -> None:
    r = run_python("x = bytearray(2 * 1024**3)\nprint('allocated')", memory_mb=256)
    assert not r.passed
    assert r.memory_exceeded
    assert "allocated" not in r.stdout


def test_socket_creation_fails() -> None:
    code = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\nprint('open')"
    r = run_python(code)
    assert not r.passed
    assert "open" not in r.stdout
    assert "socket.__new__ is not allowed" in r.stderr


def test_network_blocked_even_without_namespace() -> None:
    code = "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:9/')"
    r = run_python(code, isolate_network=False)
    assert not r.passed
    assert "not allowed" in r.stderr
    assert not r.network_namespace


def test_network_namespace_when_kernel_allows() -> None:
    r = run_python("pass")
    if not r.network_namespace:
        pytest.skip("this kernel refuses unshare(CLONE_NEWNET)")
    # In a fresh namespace the only interface is the (down, unused) loopback.
    code = "print([ln.split(':')[0].strip() for ln in open('/proc/self/net/dev')][2:])"
    inside = run_python(code)
    outside = run_python(code, isolate_network=False)
    assert inside.passed and outside.passed, inside.stderr + outside.stderr
    assert inside.stdout.strip() == "['lo']"
    assert not outside.network_namespace


@pytest.mark.parametrize(
    ("code", "needle"),
    [
        ("import subprocess\nsubprocess.run(['true'])", "not allowed"),
        ("import os\nos.system('true')", "os.system is not allowed"),
        ("import os\nos.fork()", "os.fork is not allowed"),
        ("import os\nos.kill(os.getppid(), 0)", "os.kill is not allowed"),
        ("import ctypes\nctypes.CDLL('libc.so.6')", "native libraries"),
    ],
)
def test_process_and_native_escapes_are_refused(code: str, needle: str) -> None:
    r = run_python(code)
    assert not r.passed
    assert needle in r.stderr


def test_writes_stay_inside_the_temp_dir(tmp_path) -> None:
    target = tmp_path / "escaped.txt"
    r = run_python(f"open({str(target)!r}, 'w').write('x')")
    assert not r.passed
    assert not target.exists()
    r = run_python("open('notes.txt', 'w').write('kept')\nprint(open('notes.txt').read())")
    assert r.passed, r.stderr
    assert r.stdout.strip() == "kept"


def test_empty_environment_and_fresh_cwd() -> None:
    os.environ["SALE_SANDBOX_SECRET"] = "leak"
    try:
        code = textwrap.dedent(
            """
            import os
            print('SALE_SANDBOX_SECRET' in os.environ)
            print(sorted(p for p in os.listdir('.') if not p.startswith('_')))
            """
        )
        r = run_python(code)
    finally:
        del os.environ["SALE_SANDBOX_SECRET"]
    assert r.passed, r.stderr
    assert r.stdout.split("\n")[:2] == ["False", "['solution.py']"]


def test_output_is_capped_and_tail_kept() -> None:
    r = run_python("import sys\nfor i in range(10**6):\n    print(i)", max_output_bytes=50_000)
    assert not r.passed  # exceeding RLIMIT_FSIZE kills the writer
    assert len(r.stdout) <= 4100


def test_numpy_still_imports() -> None:
    pytest.importorskip("numpy")
    r = run_python("import numpy as np\nprint(int(np.arange(4).sum()))")
    assert r.passed, r.stderr
    assert r.stdout.strip() == "6"


def test_invalid_timeout_rejected() -> None:
    with pytest.raises(ValueError):
        run_python("pass", timeout=0)
