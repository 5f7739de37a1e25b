"""End to end: ``autolab demo`` on the embedded tiny-lm, checked from the lab itself."""

from __future__ import annotations

import subprocess

import pytest

from autolab.agents.lab_init import init_lab
from autolab.protocol.lab import Lab

from .conftest import REPO, run_cli


@pytest.mark.slow
def test_demo_improves_the_model_and_leaves_a_consistent_lab(tmp_path):
    proc = run_cli("demo", "--workers", "2", "--minutes", "0.9", "--budget", "1",
                   "--dir", str(tmp_path / "demo"), "--no-live",
                   env={"AUTOLAB_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "leaderboard" in proc.stdout and "protocol overhead per experiment" in proc.stdout
    lab_path = tmp_path / "demo" / "lab.git"
    view = Lab.open(str(lab_path), "check").read()
    state, config = view.state, view.config
    assert len(state.experiments) >= 3
    assert all(e.terminal for e in state.experiments.values())
    assert state.promotions, "no promotion happened"
    best = state.best
    ok = [s["metric"] for s in state.scores if s["status"] == "ok" and not s["late"]]
    assert best["metric"] <= min(ok) + config.policy.min_delta
    assert best["metric"] == state.experiments[best["experiment_id"]].result["metric"]

    def show(rev: str) -> str:
        return subprocess.run(["git", "show", f"{rev}:train.py"], cwd=lab_path, check=True,
                              capture_output=True, text=True).stdout

    assert show("main") == show(best["source_commit"])
    first_parent = subprocess.run(["git", "log", "--first-parent", "--format=%s", "main"],
                                  cwd=lab_path, capture_output=True, text=True).stdout
    assert f"promote {best['experiment_id']}" in first_parent
    assert run_cli("doctor", "--lab", str(lab_path)).returncode == 0


def test_demo_refuses_a_non_empty_dir_instead_of_writing_beside_it(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = run_cli("demo", "--dir", str(mine), "--minutes", "0.05", "--no-live")
    assert proc.returncode == 2, proc.stdout[-2000:]
    assert proc.stderr == (f"autolab: error: demo directory {mine} is not empty: remove it, "
                           "choose another --dir, or pass --reuse to continue the demo lab "
                           "in it\n")
    reuse = run_cli("demo", "--dir", str(mine), "--reuse", "--minutes", "0.05", "--no-live")
    assert reuse.returncode == 2
    assert reuse.stderr == (f"autolab: error: --reuse: {mine} holds no demo lab "
                            f"({mine / 'lab.git'} is missing)\n")
    afile = tmp_path / "afile"
    afile.write_text("x")
    proc = run_cli("demo", "--dir", str(afile), "--minutes", "0.05", "--no-live")
    assert proc.returncode == 2
    assert proc.stderr == f"autolab: error: demo directory {afile} is not a directory\n"
    # Nothing written anywhere: not in the directory, not beside it (no "mine-2").
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "afile"])
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_demo_reuse_continues_the_lab_an_earlier_demo_left(tmp_path):
    demo = tmp_path / "demo"
    init_lab(demo / "lab.git", "tiny-lm", bare=True)  # what a demo leaves: DIR/lab.git
    lab_path = demo / "lab.git"

    def root_commit() -> str:
        return subprocess.run(["git", "rev-list", "--max-parents=0", "main"], cwd=lab_path,
                              check=True, capture_output=True, text=True).stdout.strip()

    first = root_commit()
    budget = run_cli("demo", "--dir", str(demo), "--reuse", "--budget", "1", "--no-live")
    assert budget.returncode == 2 and "--budget sets up a new demo lab" in budget.stderr
    proc = run_cli("demo", "--workers", "1", "--minutes", "0.25", "--dir", str(demo),
                   "--reuse", "--no-live")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "leaderboard" in proc.stdout and str(lab_path) in proc.stdout
    assert root_commit() == first, "the lab was made again instead of continued"
    state = Lab.open(str(lab_path), "check").read().state
    assert state.experiments and all(e.terminal for e in state.experiments.values())
    assert (demo / "logs" / "planner.log").is_file()


def test_demo_and_swarm_default_dirs_are_ignored_by_git():
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    paths = ["autolab-demo/lab.git/HEAD", "autolab-logs/worker-1.log", "autolab-report/x.png"]
    proc = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.stdout.split() == paths
