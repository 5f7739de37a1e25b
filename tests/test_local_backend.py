"""The local backend ends everything a run starts and caps logs (real processes), in
each containment mode this machine has (docs/security.md)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

from autolab.agents.backends import sandbox
from autolab.agents.backends.base import RunRequest
from autolab.agents.backends.local import LOG_CAP_BYTES, LocalBackend


@pytest.fixture(params=["namespaces", "none"])
def containment(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test once per mode; the namespaces mode only where this machine has them."""
    if request.param == "namespaces" and sandbox.namespaces_problem():
        pytest.skip(f"no namespaces here ({sandbox.namespaces_problem()}); "
                    "the process-tree sweep is tested instead")
    monkeypatch.setenv("AUTOLAB_SANDBOX", request.param)
    return request.param


def procs_with(token: str) -> list[int]:
    """Live (non-zombie) processes of this host whose last argument is ``token``.

    Found from outside: a namespaced run's own pids mean nothing here."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if cmdline.rstrip(b"\0").rsplit(b"\0", 1)[-1] == token.encode() and state != "Z":
            found.append(int(entry))
    return found


def wait_gone(token: str, seconds: float = 5.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while procs_with(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    return procs_with(token)


def sleeper(token: str, seconds: int = 60) -> str:
    """A shell command whose process carries ``token`` in its command line."""
    return f"{sys.executable} -c 'import time; time.sleep({seconds})' {token}"


def test_timeout_kills_children_that_ignore_sigterm(tmp_path, containment):
    token = f"stubborn-{uuid.uuid4().hex}"
    stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "time.sleep(60)")
    command = f'{sys.executable} -c "{stubborn}" {token} & sleep 60'
    result = LocalBackend().run(RunRequest(command, tmp_path, timeout=1.0, metric="m"))
    assert result.status == "timeout"
    assert wait_gone(token) == []


def test_background_child_does_not_outlive_a_clean_run(tmp_path, containment):
    token = f"background-{uuid.uuid4().hex}"
    command = f'({sleeper(token)} &); printf -- "---\\nm: 1\\n"'
    result = LocalBackend().run(RunRequest(command, tmp_path, timeout=10.0, metric="m"))
    assert (result.status, result.metric) == ("ok", 1.0)
    assert wait_gone(token) == []


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


def test_a_killed_worker_takes_its_run_down(tmp_path, containment):
    """SIGKILL the process running the backend: everything its run started dies too,
    a child that left the run's session included."""
    token = f"orphan-{uuid.uuid4().hex}"
    started = tmp_path / "started"
    command = (f"{sleeper(token)} & setsid {sleeper(token + '-detached')} & "
               f"touch {started}; sleep 60")
    runner = (
        "import sys; from pathlib import Path; "
        "from autolab.agents.backends.base import RunRequest; "
        "from autolab.agents.backends.local import LocalBackend; "
        f"LocalBackend().run(RunRequest({command!r}, Path({str(tmp_path)!r}), timeout=120))"
    )
    worker = subprocess.Popen([sys.executable, "-c", runner])
    deadline = time.monotonic() + 20
    while not (started.exists() and procs_with(token) and procs_with(token + '-detached')):
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.05)
    background = procs_with(token)[0]
    assert os.getpgid(background) != os.getpgid(worker.pid)  # the run has its own group
    worker.kill()
    worker.wait()
    assert wait_gone(token) == []
    assert wait_gone(token + '-detached') == []
