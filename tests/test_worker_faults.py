"""Workers stopped or killed at the wrong moment, and a lab damaged under a running
worker: a finished result is never lost, and a claim never waits for its lease when
its holder is known to be gone. Real worker processes over a real ``git daemon``; the
moments are made exact with a ``pre-receive`` hook that holds a chosen push open.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autolab.agents.host_claims import HostClaims, process_identity
from autolab.agents.lab_init import init_lab
from autolab.protocol.lab import Lab

from .conftest import run_cli

FAULTY = Path(__file__).parent / "labs" / "faulty"


@pytest.fixture
def slow_lab(tmp_path, git_daemon):
    """The faulty lab with a 60 s run timeout (so leases are long), served by the daemon."""
    template = tmp_path / "template"
    shutil.copytree(FAULTY, template)
    config = template / "autolab.toml"
    config.write_text(re.sub(r"(?m)^timeout = .*$", "timeout = 60", config.read_text()))
    name = f"slow-{tmp_path.name}.git"
    bare = git_daemon.base / name
    init_lab(bare, str(template), bare=True)
    yield git_daemon.url(name), bare
    proc = subprocess.run(["git", "fsck", "--no-progress"], cwd=bare, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr


def _propose(url: str, **knobs: str) -> str:
    args = [a for k, v in knobs.items() for a in ("--set", f"{k}={v}")]
    proc = run_cli("propose", "--lab", url, "--hypothesis", f"try {knobs}", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split('"experiment_id": "')[1].split('"')[0]


def _hold_pushes(bare: Path, pattern: str, marker: Path, seconds: float) -> None:
    """A pre-receive hook: a push updating a ref matching ``pattern`` touches
    ``marker`` and is held ``seconds`` before it is accepted."""
    hook = bare / "hooks" / "pre-receive"
    hook.write_text(
        "#!/bin/sh\n"
        "while read old new ref; do\n"
        f"  case \"$ref\" in {pattern}) touch '{marker}'; sleep {seconds};; esac\n"
        "done\n")
    hook.chmod(0o755)


def _start_worker(url: str, agent: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "autolab.agents.cli", "worker", "--once", "--lab", url,
         "--agent", agent, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ})


def _wait_claimed(lab: Lab, eid: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while lab.read().state.experiments[eid].state != "claimed":
        assert time.monotonic() < deadline, f"{eid} was never claimed"
        time.sleep(0.1)


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"worker ended first:\n{proc.stdout.read()}")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("moment", ["refs/heads/autolab/exp/*", "refs/autolab/results/*"])
def test_sigterm_while_pushing_the_result_records_it(slow_lab, tmp_path, moment):
    url, bare = slow_lab
    eid = _propose(url, X="1.0")
    marker = tmp_path / "pushing"
    _hold_pushes(bare, moment, marker, 2)
    worker = _start_worker(url, "stopped-late")
    _wait_for(marker, worker)
    worker.send_signal(signal.SIGTERM)
    out, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, out
    exp = Lab.open(url, "check").read().state.experiments[eid]
    # The finished run counts: its result is recorded, not held until a lease expires.
    assert exp.state == "done" and exp.attempt == 1, (exp.state, out)
    assert exp.result["metric"] == 4.0 and exp.result["status"] == "ok"
    assert exp.promoted, out  # a stop held back until the cycle's writes are done


def test_sigterm_while_pushing_the_claim_releases_it_at_once(slow_lab, tmp_path):
    url, bare = slow_lab
    eid = _propose(url, X="1.0")
    marker = tmp_path / "claiming"
    _hold_pushes(bare, "refs/autolab/claims/*", marker, 2)
    worker = _start_worker(url, "stopped-early")
    _wait_for(marker, worker)
    worker.send_signal(signal.SIGTERM)
    out, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, out
    exp = Lab.open(url, "check").read().state.experiments[eid]
    assert exp.state == "queued" and exp.outcomes == {1: "released"}, (exp.state, out)


def test_sigterm_before_the_run_releases_the_attempt_at_once(slow_lab):
    url, _ = slow_lab
    eid = _propose(url, MODE="hang")
    worker = _start_worker(url, "stopped-mid-run")
    lab = Lab.open(url, "check")
    _wait_claimed(lab, eid)
    worker.send_signal(signal.SIGTERM)
    out, _ = worker.communicate(timeout=60)
    exp = lab.read().state.experiments[eid]
    assert exp.state == "queued" and exp.outcomes == {1: "released"}, out


def test_foreign_shard_arriving_mid_run_keeps_the_finished_result(slow_lab, tmp_path):
    url, bare = slow_lab
    eid = _propose(url, MODE="slow")
    worker = _start_worker(url, "steady")
    lab = Lab.open(url, "check")
    _wait_claimed(lab, eid)
    # Someone with push rights drops a file that is not a shard under the scores table.
    clone = tmp_path / "vandal"
    subprocess.run(["git", "clone", "-q", url, str(clone)], check=True)
    (clone / ".autolab" / "scores").mkdir(parents=True, exist_ok=True)
    (clone / ".autolab" / "scores" / "garbage.parquet").write_bytes(b"not parquet at all")
    for args in (["add", "-A"], ["-c", "user.name=v", "-c", "user.email=v@x", "commit", "-qm",
                                 "garbage"], ["push", "-q", "origin", "main"]):
        subprocess.run(["git", *args], cwd=clone, check=True)
    out, _ = worker.communicate(timeout=60)
    assert worker.returncode == 1 and "bad shard" in out, out
    assert "result recorded" in out, out
    fixed = run_cli("doctor", "--fix", "--lab", url)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    exp = Lab.open(url, "after").read().state.experiments[eid]
    assert exp.state == "done" and exp.result["status"] == "ok", exp.state
    assert exp.result["metric"] == 9.0


def test_dead_local_worker_claim_is_released_by_any_agent_on_the_host(slow_lab):
    url, _ = slow_lab
    eid = _propose(url, MODE="hang")
    worker = subprocess.Popen(
        [sys.executable, "-m", "autolab.agents.cli", "worker", "--once", "--lab", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    lab = Lab.open(url, "check")
    _wait_claimed(lab, eid)
    # A live worker's claim is never touched by another agent on the host.
    assert f"{eid} attempt 1" not in run_cli("reap", "--lab", url).stdout
    assert lab.read().state.experiments[eid].state == "claimed"
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    exp = lab.read().state.experiments[eid]
    assert exp.state == "claimed" and (exp.lease_until.timestamp() - time.time()) > 30
    reaped = run_cli("reap", "--lab", url)
    # Released at once, under a default id nobody will ever start again, long before
    # its 60 s lease would end.
    assert f"expired {eid} attempt 1" in reaped.stdout, reaped.stdout + reaped.stderr
    exp = lab.read().state.experiments[eid]
    assert exp.state == "queued" and exp.outcomes == {1: "expired"}


def test_a_restarted_worker_leaves_a_live_namesake_claim_alone(slow_lab):
    """Two live processes under one agent id: the second must not end the first's claim
    (its process on this host is alive)."""
    url, _ = slow_lab
    eid = _propose(url, MODE="hang")
    first = _start_worker(url, "twin")
    lab = Lab.open(url, "check")
    _wait_claimed(lab, eid)
    second = run_cli("worker", "--once", "--lab", url, "--agent", "twin")
    assert second.returncode == 3, second.stdout + second.stderr  # nothing left to claim
    exp = lab.read().state.experiments[eid]
    assert exp.state == "claimed" and exp.attempt == 1
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=60)


def test_host_claim_notes_see_pid_reuse_as_a_dead_holder(tmp_path):
    class Store:
        path = tmp_path / "cache" / "lab"

    notes = HostClaims(Store())  # type: ignore[arg-type]
    notes.note("0001", 1, "me")
    (note,) = notes.dir.glob("0001.1.*.json")
    assert process_identity(os.getpid()) is not None
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_identity(child.pid) is None  # gone (and reaped)
    # The same pid with another start time (a reused pid) is another process.
    text = note.read_text()
    note.write_text(text.replace(process_identity(os.getpid()), "other-boot:1"))

    class Exp:
        id, attempt, agent, state = "0001", 1, "me", "claimed"

    assert notes.holder_alive(Exp()) is False  # type: ignore[arg-type]
    Exp.agent = "someone-else"
    assert notes.holder_alive(Exp()) is None  # a note only speaks for its own agent


def _unshare_problem() -> str | None:
    if shutil.which("unshare") is None:
        return "no unshare(1)"
    probe = subprocess.run(["unshare", "-U", "-r", "-m", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True)
    return None if probe.returncode == 0 else "cannot mount a tmpfs in a user namespace"


def _on_a_small_disk(directory: Path, size: str, *argv: str) -> list[str]:
    """``argv`` in a user and mount namespace where ``directory`` is a tmpfs of ``size``."""
    directory.mkdir(parents=True, exist_ok=True)
    return ["unshare", "-U", "-r", "-m", "sh", "-c",
            f"mount -t tmpfs -o size={size} tmpfs '{directory}' && exec \"$@\"", "sh", *argv]


@pytest.mark.skipif(_unshare_problem() is not None, reason="needs user namespaces")
def test_full_disk_under_the_log_stops_the_run_and_releases_the_attempt(slow_lab, tmp_path):
    url, _ = slow_lab
    eid = _propose(url, MODE="loud")
    disk = tmp_path / "small"
    # The cache clone and the logs beside it on a 16 MiB filesystem: the clone fits, the
    # run's 32 MiB of output does not.
    env = {**os.environ, "AUTOLAB_CACHE": str(disk / "cache"), "AUTOLAB_SANDBOX": "none"}
    started = time.monotonic()
    proc = subprocess.run(
        _on_a_small_disk(disk, "16m", sys.executable, "-m", "autolab.agents.cli", "worker",
                         "--once", "--lab", url, "--agent", "cramped"),
        capture_output=True, text=True, env=env, timeout=120)
    took = time.monotonic() - started
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    error = proc.stderr.strip().splitlines()
    assert len(error) == 1 and f"{eid}-1.log" in error[0] and "No space left" in error[0], error
    assert took < 40, took  # stopped at once, not at the run's 60 s timeout
    exp = Lab.open(url, "check").read().state.experiments[eid]
    # Given back, not counted against the experiment: the host was at fault.
    assert exp.state == "queued" and exp.outcomes == {1: "released"}, (exp.state, proc.stdout)


@pytest.mark.skipif(_unshare_problem() is not None, reason="needs user namespaces")
def test_full_disk_under_the_worktrees_releases_the_attempt(slow_lab, tmp_path):
    url, _ = slow_lab
    eid = _propose(url, X="2.0")
    work = tmp_path / "work"
    env = {**os.environ, "AUTOLAB_WORK": str(work), "AUTOLAB_SANDBOX": "none"}
    fill = f"dd if=/dev/zero of='{work}/filler' bs=64k count=64 2>/dev/null; exec \"$@\""
    argv = ["unshare", "-U", "-r", "-m", "sh", "-c",
            f"mount -t tmpfs -o size=1m tmpfs '{work}' && {fill}", "sh", sys.executable, "-m",
            "autolab.agents.cli", "worker", "--once", "--lab", url, "--agent", "cramped"]
    work.mkdir()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "No space left" in proc.stderr and eid in proc.stderr, proc.stderr
    exp = Lab.open(url, "check").read().state.experiments[eid]
    assert exp.state == "queued" and exp.outcomes == {1: "released"}, exp.state
