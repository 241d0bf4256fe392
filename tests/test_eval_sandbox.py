"""The sandbox for generated code: each hostile program is one failed sample, and nothing else is harmed."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from qwenkit.evals.sandbox import UID_BASE, UID_POOL, Limits, isolation, run_python

FORK_BOMB = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"

needs_namespaces = pytest.mark.skipif(
    sys.platform != "linux" or isolation() != "namespaces", reason="the sandbox has no namespaces here"
)


def _sandbox_processes() -> int:
    """Processes running under any sandbox uid right now."""
    out = subprocess.run(["ps", "-e", "-o", "uid="], capture_output=True, text=True, check=True).stdout
    return sum(UID_BASE <= int(uid) < UID_BASE + UID_POOL for uid in out.split())


def test_a_good_program_passes_and_its_output_is_kept():
    outcome = run_python("print(sum(range(10)))")
    assert outcome.passed and outcome.stdout == "45\n"


def test_an_exception_or_exit_status_fails():
    assert run_python("assert 1 == 2").status == "failed"
    assert run_python("raise SystemExit(3)").exit_code == 3


def test_the_environment_is_minimal(monkeypatch):
    monkeypatch.setenv("QWENKIT_SECRET_FOR_TEST", "leak")
    outcome = run_python("import os; print(sorted(os.environ))")
    assert outcome.passed and "QWENKIT_SECRET_FOR_TEST" not in outcome.stdout and "PATH" in outcome.stdout


def test_an_infinite_loop_times_out():
    outcome = run_python("while True:\n    pass\n", Limits(wall_seconds=1))
    assert outcome.status == "timeout"


@needs_namespaces
def test_a_fork_bomb_is_contained_and_leaves_no_process():
    outcome = run_python(FORK_BOMB, Limits(wall_seconds=2, processes=16))
    assert not outcome.passed
    time.sleep(0.2)
    assert _sandbox_processes() == 0


@needs_namespaces
def test_a_process_that_leaves_the_session_dies_with_the_sample():
    program = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
    assert run_python(program).passed
    time.sleep(0.2)
    assert _sandbox_processes() == 0


def test_a_10_gb_allocation_fails_the_sample():
    outcome = run_python("x = bytearray(10 * 1024**3)")
    assert outcome.status == "failed" and "MemoryError" in outcome.stderr


def test_a_file_over_the_size_limit_fails():
    outcome = run_python("open('big', 'wb').write(b'x' * (4 << 20))", Limits(file_bytes=1 << 20))
    assert outcome.status == "failed"


@needs_namespaces
def test_writes_outside_the_working_directory_fail(tmp_path):
    tmp_path.chmod(0o777)  # the sandbox uid could write here by permissions: only the read-only mount stops it
    targets = [tmp_path / "escape", Path("/tmp/qwenkit-sandbox-escape"), Path.home() / "qwenkit-sandbox-escape"]
    for target in targets:
        outcome = run_python(f"open({str(target)!r}, 'w').write('x')")
        assert outcome.status == "failed", target
        assert not target.exists()


@needs_namespaces
def test_the_working_directory_is_writable_and_removed():
    outcome = run_python("import os\nopen('note', 'w').write('x')\nprint(os.getcwd())")
    assert outcome.passed
    assert not Path(outcome.stdout.strip()).exists()


def _listener() -> socket.socket:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    return server


def test_opening_a_socket_fails():
    with _listener() as server:
        port = server.getsockname()[1]
        outcome = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)")
        assert outcome.status == "failed" and "network access is disabled" in outcome.stderr
        with pytest.raises(BlockingIOError):
            server.accept()


@needs_namespaces
def test_a_child_process_outside_the_audit_hook_has_no_network_either():
    with _listener() as server:
        port = server.getsockname()[1]
        child = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)"
        outcome = run_python(f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {child!r}], check=True)")
        assert outcome.status == "failed" and "CalledProcessError" in outcome.stderr
        with pytest.raises(BlockingIOError):
            server.accept()


def test_hostile_samples_each_fail_alone_while_the_rest_run():
    programs = {
        "loop": "while True:\n    pass\n",
        "memory": "x = bytearray(10 * 1024**3)",
        "socket": "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=2)",
        "good": "print('fine')",
    }
    if isolation() == "namespaces":  # without a PID namespace and a uid of its own, no fork bomb is run
        programs["fork"] = FORK_BOMB
    limits = Limits(wall_seconds=2, processes=16)
    with ThreadPoolExecutor(2) as pool:
        outcomes = dict(zip(programs, pool.map(lambda code: run_python(code, limits), programs.values()), strict=True))
    assert [name for name, o in outcomes.items() if o.passed] == ["good"]
    assert outcomes["good"].stdout == "fine\n"


@pytest.mark.parametrize(
    ("program", "status"),
    [
        ("while True:\n    pass\n", "timeout"),
        ("x = bytearray(10 * 1024**3)", "failed"),
        ("import socket\nsocket.socket()", "failed"),
    ],
)
def test_without_namespaces_the_limits_and_the_audit_hook_still_hold(program, status):
    assert run_python(program, Limits(wall_seconds=1), isolation="rlimits").status == status
