"""The README's manual flow, run exactly as written: a person (or an outside agent)
claims, runs and submits by hand, with ``--worktree`` and with git alone."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from autolab.protocol.lab import Lab

from .conftest import REPO, run_cli


def _readme_block(name: str) -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(rf"<!-- manual-flow: {name} -->\n```bash\n(.*?)```", text, re.S)
    assert match, f"README has no manual-flow block {name!r}"
    return match[1]


def _bash(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # `autolab` as installed: the console script beside this interpreter.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PATH": path})


def test_the_readmes_manual_flow_works_as_written(tmp_path):
    worktree, by_git = _readme_block("worktree"), _readme_block("git")
    # The second block continues the first (same shell): the promote of 0001 may exit 3
    # only if it does not beat the best, which a first experiment always does.
    proc = _bash(worktree + by_git, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lab = Lab.open(str(tmp_path / "mylab.git"), "check").read()
    done = {e.id: e for e in lab.state.experiments.values()}
    assert [e.state for e in done.values()] == ["done", "done"]
    assert all(e.promoted for e in done.values())  # 2.5 then 2.8: each beats the best
    assert done["0001"].result["metric"] == 0.25 and done["0002"].result["metric"] == 0.04
    assert all(e.result["agent"] == "me" and e.result["branch_commit"]
               for e in done.values())
    assert "X = 2.8" in lab.store.read_file(lab.main, "experiment.py").decode()


def test_a_changed_worktree_is_not_submitted_as_the_experiment(remote, tmp_path):
    env = {"AUTOLAB_AGENT": "me"}
    run_cli("propose", "--lab", remote.url, "--hypothesis", "X to 2", "--set", "X=2.0",
            env=env, check=True)
    work = tmp_path / "run"
    claimed = run_cli("claim", "--lab", remote.url, "--worktree", str(work), env=env)
    assert claimed.returncode == 0, claimed.stderr
    source = (work / "experiment.py").read_text()
    assert "X = 2.0" in source and not (work / ".autolab").exists()
    (work / "experiment.py").write_text(source.replace("X = 2.0", "X = 3.0"))
    log = tmp_path / "run.log"
    log.write_text("---\nscore: 0.0\n")
    proc = run_cli("submit", "--worktree", str(work), "--log", str(log), env=env)
    assert proc.returncode == 1 and "experiment.py differs" in proc.stderr, proc.stderr
    assert Lab.open(remote.url, "c").read().state.experiments["0001"].state == "claimed"
    # Not empty: refused before anything is claimed.
    again = run_cli("claim", "--lab", remote.url, "--worktree", str(work), env=env)
    assert again.returncode == 2 and "not empty" in again.stderr
