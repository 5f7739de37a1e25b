"""The worker against a real lab: every failure mode is recorded with a reason, the
worker goes on, and a killed worker's experiment is run again and recorded once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autolab.agents.lab_init import init_lab
from autolab.protocol import transactions as tx
from autolab.protocol.lab import Lab

from .conftest import run_cli

FAULTY = Path(__file__).parent / "labs" / "faulty"


@pytest.fixture
def faulty_lab(tmp_path, git_daemon):
    name = f"faulty-{tmp_path.name}.git"
    bare = git_daemon.base / name
    init_lab(bare, str(FAULTY), bare=True)
    yield git_daemon.url(name), bare
    proc = subprocess.run(["git", "fsck", "--no-progress"], cwd=bare, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr


def _propose(url: str, **knobs: str) -> str:
    args = [a for k, v in knobs.items() for a in ("--set", f"{k}={v}")]
    proc = run_cli("propose", "--lab", url, "--hypothesis", f"try {knobs}", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split('"experiment_id": "')[1].split('"')[0]


def test_each_failure_is_recorded_with_a_reason_and_the_worker_goes_on(faulty_lab, tmp_path):
    url, _ = faulty_lab
    ids = {mode: _propose(url, MODE=mode) for mode in
           ("crash", "hang", "nometric", "nan", "outside", "env")}
    ids["good"] = _propose(url, X="2.0")
    bad_patch = tmp_path / "bad.diff"
    bad_patch.write_text("--- a/experiment.py\n+++ b/experiment.py\n@@ -1,1 +1,1 @@\n"
                         "-this line is not in the file\n+neither is this\n")
    proc = run_cli("propose", "--lab", url, "--hypothesis", "does not apply", "--patch",
                   str(bad_patch), "--json")
    # git's own reading decides, at propose already: nothing unrunnable is enqueued.
    assert proc.returncode == 1 and "patch does not apply" in proc.stderr, proc.stderr

    work = run_cli("worker", "--lab", url, env={"SECRET_TOKEN": "hunter2"})
    assert work.returncode == 0, work.stderr + work.stdout
    state = Lab.open(url, "check").read().state
    result = {k: state.experiments[v].result for k, v in ids.items()}
    assert {k: r["status"] for k, r in result.items()} == {
        "crash": "crash", "hang": "timeout", "nometric": "invalid", "nan": "invalid",
        "outside": "invalid", "env": "ok", "good": "ok"}
    assert "boom" in result["crash"]["reason"]
    assert "timeout" in result["hang"]["reason"]
    assert "no score" in result["nometric"]["reason"]
    assert "nan" in result["nan"]["reason"]
    assert "outside the lab's bounds" in result["outside"]["reason"]
    assert result["env"]["metric"] == 0.0  # the run saw none of the worker's secrets
    assert result["good"]["metric"] == 1.0
    assert result["hang"]["runtime_s"] < 15  # killed at the timeout, with its group
    assert all(e.terminal for e in state.experiments.values())
    assert state.best["experiment_id"] in (ids["good"], ids["env"])
    for line in ("claimed", "crash", "timeout", "promoted"):
        assert line in work.stdout


def test_protected_files_come_from_main_not_the_patch(faulty_lab, tmp_path):
    url, _ = faulty_lab
    lab = Lab.open(url, "t")
    view = lab.read()
    source = lab.store.read_file(view.main, "experiment.py").decode()
    # A patch that edits experiment.py to bring its own harness is refused at run time
    # too: write the patch by hand so that propose's check is the only thing bypassed.
    from autolab.protocol.knobs import unified_diff

    harness = lab.store.read_file(view.main, "harness.py").decode()
    evil = unified_diff("harness.py", harness, harness.replace("** 2", "* 0"))
    with pytest.raises(Exception, match="protected"):
        tx.propose(lab, [tx.Proposal("cheat", evil)])
    good = unified_diff("experiment.py", source, source.replace("X = 0.0", "X = 3.0"))
    tx.propose(lab, [tx.Proposal("exact", good)])
    run_cli("worker", "--lab", url, "--once", check=True)
    result = lab.read().state.experiments["0001"].result
    assert result["metric"] == 0.0 and result["harness_hash"]


def test_killed_worker_lease_expires_and_the_experiment_is_recorded_once(faulty_lab):
    url, _ = faulty_lab
    eid = _propose(url, MODE="slow")
    worker = subprocess.Popen(
        [sys.executable, "-m", "autolab.agents.cli", "worker", "--once", "--lab", url,
         "--agent", "doomed"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ}, start_new_session=True)
    lab = Lab.open(url, "watcher")
    deadline = time.monotonic() + 60
    while lab.read().state.experiments[eid].state != "claimed":
        assert time.monotonic() < deadline, "the worker never claimed"
        time.sleep(0.2)
    os.killpg(worker.pid, signal.SIGKILL)  # the worker and its run die mid-experiment
    worker.wait()
    exp = lab.read().state.experiments[eid]
    assert exp.state == "claimed" and exp.agent == "doomed"
    time.sleep(max(0.0, (exp.lease_until.timestamp() - time.time())) + 0.5)
    reaped = run_cli("reap", "--lab", url, check=True)
    assert f"expired {eid} attempt 1" in reaped.stdout
    run_cli("worker", "--lab", url, "--agent", "second", check=True)
    state = lab.read().state
    exp = state.experiments[eid]
    assert exp.state == "done" and exp.attempt == 2 and exp.result["agent"] == "second"
    assert [(s["attempt"], s["late"]) for s in state.scores_for(eid)] == [(2, False)]
