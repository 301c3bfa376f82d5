"""The sandbox contains hostile programs under each isolation layer alone and under all of them.

Every hostile test also checks that the trainer (this process) is alive and that the next run works.
"kernel" runs namespaces + uid without the audit hook, "audit hook" runs the hook alone (no
namespaces, same uid as the trainer): each layer has to hold by itself.
"""

from __future__ import annotations

import os
import resource
import socket
import tempfile
import time
from pathlib import Path

import pytest

from training.sandbox import Isolation, Limits, SandboxPool, available_isolation, run_python

LIMITS = Limits(cpu_seconds=1, wall_seconds=2, memory_mb=256, max_output_bytes=10_000)
REPO_README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(params=["default", "kernel", "audit hook"])
def isolation(request) -> Isolation:
    if request.param == "default":
        return available_isolation()
    if request.param == "kernel":
        if not available_isolation().namespaces:
            pytest.skip("this machine does not allow namespaces")
        return Isolation(namespaces=True, drop_uid=True, audit_hook=False)
    return Isolation(namespaces=False, drop_uid=False, audit_hook=True)


def contained(result, isolation: Isolation) -> None:
    """The hostile run did not pass, and the sandbox still runs a normal program afterwards."""
    assert not result.passed, result
    after = run_python("print(6 * 7)", LIMITS, isolation)
    assert (after.status, after.stdout) == ("passed", "42\n"), after


def guests_alive() -> list[int]:
    """Pids of guest interpreters still running (their command line carries the guest's source)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"\n_guest(" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            pass  # it exited while we looked
    return pids


def no_guest_left(grace: float = 2.0) -> bool:
    """True once no guest interpreter runs (killed processes take a moment to go)."""
    deadline = time.monotonic() + grace
    while guests_alive():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_normal_program_passes_and_its_stdout_is_captured(isolation):
    r = run_python("import sys\nprint(sum(range(10)))\nprint('note', file=sys.stderr)", LIMITS, isolation)
    assert (r.status, r.returncode, r.stdout, r.stderr) == ("passed", 0, "45\n", "note\n")


def test_failing_program_fails(isolation):
    r = run_python("assert 1 == 2, 'wrong'", LIMITS, isolation)
    assert (r.status, r.returncode) == ("failed", 1) and "AssertionError: wrong" in r.stderr


def test_infinite_loop_times_out(isolation):
    r = run_python("while True:\n    pass", LIMITS, isolation)
    assert r.status == "timeout" and r.wall_seconds < LIMITS.wall_seconds + 1.5
    contained(r, isolation)


def test_sleeping_program_is_stopped_by_the_wall_clock():
    r = run_python("import time\ntime.sleep(60)", Limits(wall_seconds=1))
    assert r.status == "timeout" and r.wall_seconds < 2.5
    assert no_guest_left()


def test_fork_bomb_is_contained_and_leaves_no_process(isolation):
    # every process forks forever; each child announces its birth once
    bomb = "import os\nwhile True:\n    try:\n        if os.fork() == 0:\n            print('+', flush=True)\n    except Exception:\n        pass"
    r = run_python(bomb, LIMITS, isolation)
    assert r.stdout.count("+") < LIMITS.max_processes and r.wall_seconds < LIMITS.wall_seconds + 1.5
    assert no_guest_left()
    contained(r, isolation)


def test_a_child_that_leaves_the_session_is_killed_at_the_end(isolation):
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nprint('parent done')"
    run_python(code, LIMITS, isolation)
    assert no_guest_left()


def test_memory_bomb_is_stopped(isolation):
    r = run_python("chunks = []\nwhile True:\n    chunks.append(' ' * 10**7)", LIMITS, isolation)
    assert r.status == "memory", r
    contained(r, isolation)


def test_writing_outside_its_directory_fails(isolation, tmp_path):
    target = tmp_path / "escaped.txt"
    r = run_python(f"open({str(target)!r}, 'w').write('out')\nprint('wrote')", LIMITS, isolation)
    assert not target.exists() and "wrote" not in r.stdout
    contained(r, isolation)


def test_reading_the_repository_fails(isolation):
    readme = REPO_README.read_text()
    r = run_python(f"print(open({str(REPO_README)!r}).read())", LIMITS, isolation)
    assert readme[:200] not in r.stdout + r.stderr
    contained(r, isolation)


def test_no_connection_reaches_a_listening_socket(isolation):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.3)
        port = server.getsockname()[1]
        code = f"import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))\ns.sendall(b'x')"
        r = run_python(code, LIMITS, isolation)
        with pytest.raises(TimeoutError):
            server.accept()
    contained(r, isolation)


@pytest.mark.parametrize("attack", [
    "os.kill(os.getppid(), signal.SIGKILL)",
    "os.killpg(os.getpgid(os.getppid()), signal.SIGKILL)",
    "os.kill(TRAINER, signal.SIGKILL)",
])
def test_killing_its_parent_or_the_trainer_fails(isolation, attack):
    code = f"import os, signal\nTRAINER = {os.getpid()}\n{attack}\nprint('still here')"
    r = run_python(code, LIMITS, isolation)
    assert "still here" not in r.stdout  # the kill raised (or took the guest itself down)
    contained(r, isolation)  # and we are still here to check


def test_printing_gigabytes_is_cut_off_with_bounded_memory(isolation):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    r = run_python("import sys\nwhile True:\n    sys.stdout.write('x' * (1 << 20))", LIMITS, isolation)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert r.status == "output_limit" and len(r.stdout) == LIMITS.max_output_bytes
    assert r.wall_seconds < LIMITS.wall_seconds and grown_mib < 50
    contained(r, isolation)


def test_the_guest_sees_no_trainer_environment_and_its_workdir_is_removed(monkeypatch):
    monkeypatch.setenv("SEEKFLOW_TEST_SECRET", "hunter2")
    before = set(Path(tempfile.gettempdir()).glob("seekflow-sandbox-*"))
    r = run_python("import os\nprint(sorted(os.environ.items()))\nprint(os.environ['HOME'] == os.getcwd())", LIMITS)
    assert r.passed and "hunter2" not in r.stdout and "PYTHONPATH" not in r.stdout
    assert r.stdout.splitlines()[-1] == "True"
    assert set(Path(tempfile.gettempdir()).glob("seekflow-sandbox-*")) == before


def test_pool_returns_the_normal_results_beside_a_hostile_one():
    codes = [f"print({i} * {i})" for i in range(8)]
    codes[5] = "while True:\n    pass"
    with SandboxPool(workers=4, limits=LIMITS) as pool:
        results = pool.map(codes)
    assert [r.status for r in results] == ["passed"] * 5 + ["timeout"] + ["passed"] * 2
    assert [r.stdout for i, r in enumerate(results) if i != 5] == [f"{i * i}\n" for i in range(8) if i != 5]
