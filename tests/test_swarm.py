"""``autolab swarm`` and ``autolab demo`` with agents that die on their own: real agent
processes, killed the way a machine kills them or failing on a bad setting."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autolab.agents.lab_init import init_lab
from autolab.agents.swarm import log_tail

from .conftest import run_cli


@pytest.fixture
def lab(tmp_path: Path) -> str:
    """A blank lab on a path (the transport does not matter here)."""
    init_lab(tmp_path / "lab.git", "blank", bare=True)
    return str(tmp_path / "lab.git")


def _children(pid: int) -> dict[str, int]:
    """Agent name ($AUTOLAB_AGENT without the ``<host>-`` a swarm puts first) -> pid, for
    the live child processes of ``pid``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid != pid:
            continue
        for item in env:
            if item.startswith(b"AUTOLAB_AGENT="):
                agent = item.split(b"=", 1)[1].decode()
                found[agent.removeprefix(f"{socket.gethostname()}-")] = int(entry.name)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _swarm(lab: str, tmp_path: Path, duration: str, env: dict[str, str] | None = None
           ) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "autolab.agents.cli", "swarm", "--lab", lab, "--workers", "2",
         "--duration", duration, "--log-dir", str(tmp_path / "logs")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})})


def test_swarm_fails_loudly_when_the_oom_killer_takes_a_worker(lab, tmp_path):
    start = time.monotonic()
    proc = _swarm(lab, tmp_path, "60s")
    try:
        deadline = time.monotonic() + 30
        agents: dict[str, int] = {}
        while time.monotonic() < deadline and len(agents) < 4:
            agents = _children(proc.pid)
            time.sleep(0.2)
        assert set(agents) == {"planner", "worker-1", "worker-2", "reporter"}, agents
        # Wait until worker-1 has said something, so its log has lines to show.
        log = tmp_path / "logs" / "worker-1.log"
        while time.monotonic() < deadline and not log.read_text().strip():
            time.sleep(0.2)
        os.kill(agents["worker-1"], signal.SIGKILL)  # what the OOM killer does
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, (out, err)
    assert time.monotonic() - start < 45, "the swarm ran on without its worker"
    assert err.startswith("autolab: error: agent worker-1 killed by SIGKILL while the swarm "
                          "was running; last lines of "), err
    assert str(log) in err
    last = log_tail(log)[-1]
    assert f"  | {last}" in err.splitlines()
    assert "Traceback" not in err
    # The others were stopped, not left running.
    assert not [name for name, pid in agents.items() if _alive(pid)]


def test_swarm_fails_loudly_when_workers_die_of_a_bad_setting(lab, tmp_path):
    start = time.monotonic()
    proc = _swarm(lab, tmp_path, "60s", env={"AUTOLAB_SANDBOX": "bogus"})
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, (out, err)
    assert time.monotonic() - start < 45
    assert "agent worker-" in err and "exited with code 1 while the swarm was running" in err
    assert "  | autolab: error: AUTOLAB_SANDBOX='bogus': expected one of" in err


def test_swarm_that_runs_its_duration_exits_zero(lab, tmp_path):
    proc = _swarm(lab, tmp_path, "3s")
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    assert out.splitlines()[-1].endswith(" swarm: stopped")  # a dated log line
    assert err == ""


def test_dead_agent_log_tail_shows_terminal_escapes_escaped(tmp_path):
    log = tmp_path / "agent.log"
    log.write_bytes(b"early\n" * 50 + b"hyp \x1b[2J\x1b]0;owned\x07 \xe2\x80\xae gnp.exe\n\n"
                    + b"x" * 1000 + b"\n")
    tail = log_tail(log)
    assert len(tail) == 10 and tail[0] == "early"
    assert tail[-2] == "hyp \\x1b[2J\\x1b]0;owned\\x07 \\u202e gnp.exe"
    assert tail[-1] == "x" * 300
    assert log_tail(tmp_path / "nope.log") == [f"(cannot read {tmp_path / 'nope.log'}: "
                                               "No such file or directory)"]


@pytest.mark.slow
def test_demo_fails_loudly_when_its_workers_die(tmp_path):
    start = time.monotonic()
    proc = run_cli("demo", "--workers", "1", "--minutes", "1", "--dir", str(tmp_path / "d"),
                   "--no-live", env={"AUTOLAB_SANDBOX": "bogus"})
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert time.monotonic() - start < 45, "the demo ran on without its worker"
    assert proc.stderr.startswith("autolab: error: agent worker-1 exited with code 1 while the "
                                  f"swarm was running; last lines of {tmp_path / 'd' / 'logs'}")
    assert "  | autolab: error: AUTOLAB_SANDBOX='bogus'" in proc.stderr
    assert "leaderboard" not in proc.stdout  # no summary of a demo that did not run
