"""Hostile runs: a run that detaches a child to tamper with later experiments, writes
into other worktrees and the cache clone, or reads its worker's credentials. Real
workers, real runs, in each containment mode this machine has (docs/security.md)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from autolab.agents.backends.local import LocalBackend
from autolab.agents.worker import Worker
from autolab.agents.worktree import work_root
from autolab.protocol import transactions as tx
from autolab.protocol.lab import Lab

from .adversary import git_patch
from .helpers import propose_x
from .test_local_backend import containment as containment  # noqa: F811 (the fixture)
from .test_local_backend import wait_gone

TOKEN_VALUE = f"tok-{uuid.uuid4().hex}"


def _propose_script(lab: Lab, tmp_path: Path, script: str, hypothesis: str) -> str:
    """Propose replacing experiment.py with ``script``."""
    patch = git_patch(tmp_path, lambda w: (w / "experiment.py").write_text(script))
    [eid] = tx.propose(lab, [tx.Proposal(hypothesis, patch)])
    return eid


def _worker(url: str, tmp_path: Path, name: str = "worker") -> Worker:
    return Worker(Lab.open(url, name), LocalBackend(), tmp_path / "logs", say=lambda _: None)


def _log(tmp_path: Path, eid: str) -> str:
    return (tmp_path / "logs" / f"{eid}-1.log").read_text()


def test_a_detached_child_never_touches_a_later_experiment(remote, tmp_path, containment):  # noqa: F811, E501
    """The run starts a `setsid` child that waits, then appends code to every worktree
    and cache file it can find; the next, honest experiment runs after it."""
    token = f"tamper-{uuid.uuid4().hex}"
    root, cache = work_root(), Path(str(tmp_path / "cache"))
    tamper = (
        "import glob, os, time\n"
        "time.sleep(1.5)\n"
        f"for path in glob.glob('{root}/*/experiment.py') + "
        f"glob.glob('{cache}/**/*', recursive=True):\n"
        "    try:\n"
        "        with open(path, 'a') as f: f.write('\\nX = 3.0  # INJECTED\\n')\n"
        "    except OSError: pass\n"
    )
    script = (
        "import subprocess, sys\n"
        f"subprocess.Popen([sys.executable, '-c', {tamper!r}, {token!r}], "
        "start_new_session=True)\n"
        "print('no score: never promoted, so later patches apply to the same main')\n"
    )
    lab = Lab.open(remote.url, "planner")
    evil = _propose_script(lab, tmp_path, script, "plant a sleeper")
    worker = _worker(remote.url, tmp_path)
    assert worker.run_once().experiment_id == evil
    assert wait_gone(token) == []  # it did not outlive its run
    [honest] = propose_x(lab, 2.0)
    slow = git_patch(tmp_path, lambda w: (w / "experiment.py").write_text(
        "import time\ntime.sleep(2.5)\nX = 2.0\nprint('---'); print(f'score: {(X-3)**2}')\n"))
    [slower] = tx.propose(lab, [tx.Proposal("honest and slow", slow)])
    for _ in range(2):
        worker.run_once()
    state = lab.read().state
    assert {state.experiments[e].result["status"] for e in (honest, slower)} == {"ok"}
    for eid in (honest, slower):
        head = state.experiments[eid].result["branch_commit"]
        assert b"INJECTED" not in lab.store.read_file(head, "experiment.py")
    assert b"INJECTED" not in lab.store.read_file(state.main, "experiment.py")
    for path in cache.rglob("*"):
        if path.is_file():
            assert b"INJECTED" not in path.read_bytes(), path


def test_a_run_sees_no_other_worktree_no_cache_and_no_credentials(remote, tmp_path,
                                                                   monkeypatch, containment):
    if containment == "none":
        pytest.skip("without namespaces a run of the worker's uid can list other worktrees "
                    "and read its ancestors' /proc/*/environ: docs/security.md says so; the "
                    "namespaces mode is what closes it")
    monkeypatch.setenv("AUTOLAB_GIT_TOKEN", TOKEN_VALUE)
    other = work_root() / f"exp-other-{uuid.uuid4().hex[:8]}"
    other.mkdir()
    cache = tmp_path / "cache"
    script = (
        "import glob, os\n"
        f"print('worktrees', sorted(os.listdir({str(work_root())!r})))\n"
        f"print('cache', sorted(os.listdir({str(cache)!r})))\n"
        "found = []\n"
        "for pid in os.listdir('/proc'):\n"
        "    if pid.isdigit():\n"
        "        for what in ('environ', 'cmdline'):\n"
        "            try:\n"
        "                data = open(f'/proc/{pid}/{what}', 'rb').read()\n"
        "            except OSError: continue\n"
        f"            if {TOKEN_VALUE.encode()!r} in data: found.append((pid, what))\n"
        "print('pids', len([p for p in os.listdir('/proc') if p.isdigit()]))\n"
        "print('found', found)\n"
        "print('---'); print('score: 9.0')\n"
    )
    lab = Lab.open(remote.url, "planner")
    eid = _propose_script(lab, tmp_path, script, "look around")
    assert _worker(remote.url, tmp_path).run_once().status == "ok"
    log = _log(tmp_path, eid)
    worktrees = next(ln for ln in log.splitlines() if ln.startswith("worktrees"))
    assert other.name not in worktrees and worktrees.count("exp-") == 1, worktrees
    assert "cache []" in log and "found []" in log, log
    assert int(next(ln for ln in log.splitlines() if ln.startswith("pids")).split()[1]) < 10
    other.rmdir()


def test_a_run_cannot_kill_or_signal_its_worker(remote, tmp_path, containment):
    """The run signals its parent and every pid it can see; the worker records its
    result all the same (namespaces: it sees no pid outside its run)."""
    if containment == "none":
        pytest.skip("without namespaces a run of the worker's uid can signal the worker "
                    "(docs/security.md)")
    script = ("import os, signal\n"
              "for pid in [os.getppid()] + [int(p) for p in os.listdir('/proc') "
              "if p.isdigit()]:\n"
              "    if pid != os.getpid():\n"
              "        try: os.kill(pid, signal.SIGKILL)\n"
              "        except OSError: pass\n"
              "print('---'); print('score: 7.0')\n")
    lab = Lab.open(remote.url, "planner")
    eid = _propose_script(lab, tmp_path, script, "kill everything")
    cycle = _worker(remote.url, tmp_path).run_once()
    assert cycle is not None and cycle.experiment_id == eid
    # It killed its own shell at most: whatever it printed, the worker is alive here.
    assert lab.read().state.experiments[eid].state == "done"
