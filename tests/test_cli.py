"""The CLI contract (DESIGN.md §7), through the real entry point in subprocesses."""

from __future__ import annotations

import json
import subprocess

from .conftest import run_cli


def test_propose_claim_submit_status_sql_flow(daemon_remote, tmp_path):
    url = daemon_remote.url
    ok = run_cli("propose", "--lab", url, "--hypothesis", "X=2 is closer", "--set", "X=2",
                 "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"experiment_id": "0001", "duplicate": False}
    dup = run_cli("propose", "--lab", url, "--hypothesis", "same", "--set", "X=2", "--json")
    assert json.loads(dup.stdout)["duplicate"] is True
    bad = run_cli("propose", "--lab", url, "--hypothesis", "h", "--set", "X=99")
    assert bad.returncode == 1 and "outside" in bad.stderr

    won = run_cli("claim", "--lab", url, "--json", "--agent", "w1")
    claim = json.loads(won.stdout)
    assert (claim["experiment_id"], claim["attempt"]) == ("0001", 1)
    assert "X = 2.0" in claim["patch"]
    none = run_cli("claim", "--lab", url)
    assert none.returncode == 3 and "nothing to claim" in none.stderr

    log = tmp_path / "run.log"
    log.write_text("training...\n---\nscore: 1.0\nseconds: 0.1\n")
    sub = run_cli("submit", "--lab", url, "--experiment", "0001", "--attempt", "1",
                  "--log", str(log), "--json", "--agent", "w1")  # only the claimant may
    assert json.loads(sub.stdout)["outcome"] == "recorded", sub.stderr
    again = run_cli("submit", "--lab", url, "--experiment", "0001", "--attempt", "1",
                    "--log", str(log), "--json", "--agent", "w1")
    assert json.loads(again.stdout)["outcome"] == "duplicate"

    status = json.loads(run_cli("status", "--lab", url, "--json").stdout)
    assert status["counts"]["done"] == 1 and status["metric"] == "score"
    assert status["recent"][0]["metric"] == 1.0
    assert set(status) >= {"running", "best", "failures", "pending_records", "gap_to_floor"}

    rows = json.loads(run_cli("sql", "--lab", url, "--json",
                              "SELECT experiment_id, status, metric FROM scores").stdout)
    assert rows == [{"experiment_id": "0001", "status": "ok", "metric": 1.0}]
    csv = run_cli("sql", "--lab", url, "--csv", "SELECT state, count(*) n FROM experiments "
                  "GROUP BY state")
    assert csv.stdout.splitlines() == ["state,n", "done,1"]
    err = run_cli("sql", "--lab", url, "SELECT * FROM nope")
    assert err.returncode == 1 and err.stderr.startswith("autolab: error: sql:")


def test_lab_defaults_to_env_then_origin(daemon_remote, tmp_path):
    via_env = run_cli("status", "--json", env={"AUTOLAB_LAB": daemon_remote.url})
    assert via_env.returncode == 0, via_env.stderr
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", daemon_remote.url, str(clone)], check=True)
    via_origin = run_cli("status", "--json", cwd=clone)
    assert json.loads(via_origin.stdout)["lab"] == daemon_remote.url
    nowhere = run_cli("status", cwd=tmp_path)
    assert nowhere.returncode == 2 and "no lab given" in nowhere.stderr


def test_usage_errors_exit_2(tmp_path):
    assert run_cli("claim", "--bogus").returncode == 2
    assert run_cli().returncode in (0, 2)  # no command: help


def test_init_creates_labs(tmp_path):
    bare = run_cli("init", str(tmp_path / "lab.git"), "--template", "blank", "--bare")
    assert bare.returncode == 0, bare.stderr
    assert (tmp_path / "lab.git" / "HEAD").exists()
    work = run_cli("init", str(tmp_path / "work"), "--template", "blank")
    assert (tmp_path / "work" / "autolab.toml").exists()
    assert work.returncode == 0
    again = run_cli("init", str(tmp_path / "work"), "--template", "blank")
    assert again.returncode == 1 and "not empty" in again.stderr
    unknown = run_cli("init", str(tmp_path / "x"), "--template", "nope")
    assert unknown.returncode == 2 and "--template" in unknown.stderr  # a bad choice
