"""The git server goes away: agents retry with backoff, finish when it returns, and
exit with one clear line when it never does (real git daemon, real processes)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from autolab.agents.lab_init import init_lab
from autolab.protocol.lab import Lab

from .conftest import GitDaemon, run_cli
from .helpers import propose_x

pytestmark = pytest.mark.slow


@pytest.fixture
def own_daemon(tmp_path):
    daemon = GitDaemon(tmp_path / "served")
    daemon.base.mkdir()
    daemon.start()
    init_lab(daemon.base / "lab.git", "blank", bare=True)
    yield daemon
    daemon.stop()


def test_worker_rides_out_a_server_restart(own_daemon):
    url = own_daemon.url("lab.git")
    propose_x(Lab.open(url, "planner"), 1.0, 2.0, 4.0)
    own_daemon.stop()
    worker = subprocess.Popen([sys.executable, "-m", "autolab.agents.cli", "worker", "--lab",
                               url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3.0)  # the worker is retrying against a dead port
    assert worker.poll() is None
    own_daemon.start()
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err
    state = Lab.open(url, "check").read().state
    assert [e.state for e in state.experiments.values()] == ["done"] * 3
    assert state.promotions
    fsck = subprocess.run(["git", "fsck"], cwd=own_daemon.base / "lab.git", capture_output=True)
    assert fsck.returncode == 0


def test_a_server_that_never_returns_is_one_clear_error(own_daemon):
    url = own_daemon.url("lab.git")
    Lab.open(url, "warm").read()
    own_daemon.stop()
    start = time.monotonic()
    proc = run_cli("status", "--lab", url)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("autolab: error: cannot fetch git://127.0.0.1")
    assert time.monotonic() - start < 90  # bounded retries
