"""End to end: ``autolab demo`` on the embedded tiny-lm, checked from the lab itself."""

from __future__ import annotations

import subprocess

import pytest

from autolab.protocol.lab import Lab

from .conftest import run_cli

pytestmark = pytest.mark.slow


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
