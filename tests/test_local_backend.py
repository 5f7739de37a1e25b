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


def test_log_is_capped_and_the_summary_still_parsed(tmp_path):
    big = LOG_CAP_BYTES * 2
    script = (f"import sys; sys.stdout.write('x' * {big}); "
              f"sys.stdout.write('\\n---\\nm: 2.5\\n')")
    log = tmp_path / "run.log"
    result = LocalBackend().run(RunRequest(f'{sys.executable} -c "{script}"', tmp_path,
                                           timeout=60.0, metric="m", log_path=log))
    assert (result.status, result.metric) == ("ok", 2.5)
    assert log.stat().st_size < LOG_CAP_BYTES + 512 * 1024
    assert log.read_bytes().endswith(b"m: 2.5\n")
