"""The local backend kills the whole process group and caps logs (real processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from autolab.agents.backends.base import RunRequest
from autolab.agents.backends.local import LOG_CAP_BYTES, LocalBackend


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True,
                           text=True).stdout.strip()
    return bool(state) and not state.startswith("Z")


def test_timeout_kills_children_that_ignore_sigterm(tmp_path):
    pidfile = tmp_path / "child.pid"
    stubborn = (f"import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                f"open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)")
    command = f'{sys.executable} -c "{stubborn}" & sleep 60'
    result = LocalBackend().run(RunRequest(command, tmp_path, timeout=1.0, metric="m"))
    assert result.status == "timeout"
    assert not _alive(int(pidfile.read_text()))


def test_background_child_does_not_outlive_a_clean_run(tmp_path):
    pidfile = tmp_path / "child.pid"
    command = (f'(sleep 60 & echo $! > {pidfile}); printf -- "---\\nm: 1\\n"')
    result = LocalBackend().run(RunRequest(command, tmp_path, timeout=10.0, metric="m"))
    assert (result.status, result.metric) == ("ok", 1.0)
    time.sleep(0.2)
    assert not _alive(int(pidfile.read_text()))


def test_a_gigabyte_of_output_is_capped_and_the_summary_still_parsed(tmp_path):
    script = ("import sys; chunk = 'x' * (1 << 20)\n"
              "for _ in range(1024): sys.stdout.write(chunk)\n"
              "sys.stdout.write('\\n---\\nm: 2.5\\n')")
    log = tmp_path / "run.log"
    (tmp_path / "spew.py").write_text(script)
    started = time.monotonic()
    result = LocalBackend().run(RunRequest(f"{sys.executable} spew.py", tmp_path,
                                           timeout=120.0, metric="m", log_path=log))
    assert (result.status, result.metric) == ("ok", 2.5), result.reason
    assert log.stat().st_size < LOG_CAP_BYTES + 512 * 1024
    assert log.read_bytes().endswith(b"m: 2.5\n")
    print(f"1 GiB of output in {time.monotonic() - started:.1f}s")


def test_a_killed_worker_takes_its_run_down(tmp_path):
    """SIGKILL the process running the backend: the run's whole group dies with it."""
    pidfile = tmp_path / "run.pid"
    command = f"sleep 60 & echo $! > {pidfile}; sleep 60"
    runner = (
        "import sys; from pathlib import Path; "
        "from autolab.agents.backends.base import RunRequest; "
        "from autolab.agents.backends.local import LocalBackend; "
        f"LocalBackend().run(RunRequest({command!r}, Path({str(tmp_path)!r}), timeout=120))"
    )
    worker = subprocess.Popen([sys.executable, "-c", runner])
    deadline = time.monotonic() + 20
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.05)
    background = int(pidfile.read_text())
    group = os.getpgid(background)
    assert group != os.getpgid(worker.pid)  # the run has its own group
    worker.kill()
    worker.wait()
    deadline = time.monotonic() + 5
    while _group_alive(group) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(background)
    assert not _group_alive(group)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
