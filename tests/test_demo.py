"""End to end: ``autolab demo`` on the embedded tiny-lm, checked from the lab itself."""

from __future__ import annotations

import subprocess

import pytest

from autolab.agents.lab_init import init_lab
from autolab.protocol.lab import Lab

from .conftest import REPO, run_cli

DEMO_SECONDS = 30


@pytest.mark.slow
def test_demo_improves_the_model_and_leaves_a_consistent_lab(tmp_path):
    # A --dir long enough that a command naming it is wider than any terminal.
    where = tmp_path / ("a-directory-with-a-long-name-" * 3) / "demo"
    # 30 s: long enough for a few 1 s experiments and a promotion, and for six progress
    # lines 5 s apart; a longer demo only runs more of the same.
    proc = run_cli("demo", "--workers", "2", "--duration", f"{DEMO_SECONDS}s", "--budget",
                   "1s", "--dir", str(where), "--no-live",
                   env={"AUTOLAB_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "leaderboard" in proc.stdout and "protocol overhead per experiment" in proc.stdout
    _check_progress_lines(proc.stdout)
    _check_commands_are_whole(proc.stdout, where)
    lab_path = where / "lab.git"
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


def _check_progress_lines(stdout: str) -> None:
    """Not on a terminal: a dated progress line at least every 10 s."""
    from datetime import datetime

    stamps = [datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S")
              for line in stdout.splitlines() if line[19:26] == " demo: "]
    assert len(stamps) >= DEMO_SECONDS / 10, stdout
    gaps = [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:], strict=False)]
    assert max(gaps) <= 10, gaps  # whole seconds: a 5 s cadence reads as at most 6


def _check_commands_are_whole(stdout: str, where) -> None:  # noqa: ANN001
    """Each command to copy is on one line, whole, its paths quoted for the shell."""
    import shlex

    lines = stdout.split("inspect the lab:\n", 1)[1].splitlines()
    lab = shlex.quote(str(where / "lab.git"))
    assert lines[0] == f"  autolab status --lab {lab}"
    assert lines[1] == (f"  autolab sql --lab {lab} \"SELECT experiment_id, state, metric, "
                        'hypothesis FROM experiments ORDER BY metric"')
    assert lines[2] == f"  git -C {lab} log --first-parent --oneline main"
    commands = [line for line in lines if line.startswith(("  autolab", "  git", "  TRACKIO"))]
    assert len(commands) >= 3 and all(len(shlex.split(line)) > 2 for line in commands)


@pytest.mark.slow
def test_demo_as_json_lines_with_its_old_minutes_flag(tmp_path):
    """--json: progress events at least every 10 s, then ``finished`` with the summary
    and the commands; --minutes, the old spelling of --duration, still counts minutes."""
    import json
    from datetime import datetime

    # 0.1 minutes: progress at once and 5 s later (and maybe while closing), enough to
    # check the cadence and that --minutes counts minutes.
    proc = run_cli("demo", "--workers", "1", "--minutes", "0.1", "--budget", "1",
                   "--dir", str(tmp_path / "demo"), "--json",
                   env={"AUTOLAB_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    progress = [e for e in events if e["event"] == "progress"]
    assert len(progress) >= 2 and all(e["total_s"] == 6 for e in progress)
    stamps = [datetime.fromisoformat(e["at"]) for e in progress]
    assert max((b - a).total_seconds() for a, b in zip(stamps, stamps[1:], strict=False)
               ) <= 10
    finished = events[-1]
    assert finished["event"] == "finished" and finished["lab"] == str(tmp_path / "demo" /
                                                                     "lab.git")
    assert finished["commands"][0] == f"autolab status --lab {finished['lab']}"
    assert set(finished["counts"]) == {"done", "failed", "cancelled"}


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
    proc = run_cli("demo", "--workers", "1", "--minutes", "0.15", "--dir", str(demo),
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
