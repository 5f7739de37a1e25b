"""``autolab show`` and ``autolab logs`` against a real lab: one experiment in full, and
a run's log from this host or, from any other host, from the lab's log ref."""

from __future__ import annotations

import json

from autolab.agents.backends.hf_jobs import store_log
from autolab.protocol.lab import Lab

from .conftest import run_cli


def _propose(url: str, x: str) -> str:
    proc = run_cli("propose", "--lab", url, "--hypothesis", f"X to {x}", "--set", f"X={x}",
                   "--json", check=True)
    return json.loads(proc.stdout)["experiment_id"]


def test_show_gives_hypothesis_diff_metrics_attempts_lineage_and_log(remote):
    first = _propose(remote.url, "2.0")
    run_cli("worker", "--lab", remote.url, "--once", check=True)
    second = _propose(remote.url, "2.5")
    run_cli("worker", "--lab", remote.url, "--once", check=True)

    text = run_cli("show", second, "--lab", remote.url, check=True).stdout
    assert "X to 2.5" in text and "+X = 2.5" in text and "-X = 2.0" in text
    assert "built on: the promotion of " + first in text
    assert "score: 0.250000" in text  # the log excerpt, from this host's worker log

    data = json.loads(run_cli("show", second, "--lab", remote.url, "--json",
                              check=True).stdout)
    assert data["state"] == "done" and data["promoted"] and data["metric"] == 0.25
    assert data["metrics"] == {"score": 0.25}
    assert data["lineage"]["built_on"] == {"experiment_id": first, "metric": 1.0}
    assert data["lineage"]["promoted"]["metric"] == 0.25
    [attempt] = data["attempts"]
    assert [e["event"] for e in attempt["events"]] == ["claimed"]
    assert attempt["score"]["status"] == "ok" and attempt["score"]["branch_commit"]
    assert data["log"]["attempt"] == 1 and "score: 0.250000" in data["log"]["tail"]


def test_logs_come_from_this_host_or_from_the_labs_log_ref(remote, tmp_path):
    eid = _propose(remote.url, "1.0")
    run_cli("worker", "--lab", remote.url, "--once", check=True)
    here = run_cli("logs", eid, "--lab", remote.url, check=True)
    assert "score: 4.000000" in here.stdout and here.stderr.startswith("# ")
    assert run_cli("logs", eid, "--lab", remote.url, "--tail", "1",
                   check=True).stdout == "score: 4.000000\n"

    # Another host has no local copy: without a log ref there is nothing to show.
    elsewhere = {"AUTOLAB_CACHE": str(tmp_path / "other-host")}
    missing = run_cli("logs", eid, "--lab", remote.url, env=elsewhere)
    assert missing.returncode == 1 and "no log of" in missing.stderr
    # A run in a job keeps its log in the lab; any host reads it from there.
    store_log(Lab.open(remote.url, "job"), eid, 1, b"line one\nscore: 4.0\n")
    there = run_cli("logs", eid, "--lab", remote.url, env=elsewhere, check=True)
    assert there.stdout == "line one\nscore: 4.0\n"
    assert f"refs/autolab-logs/{eid}/1" in there.stderr


def test_show_and_logs_refuse_unknown_experiments_and_attempts(remote):
    eid = _propose(remote.url, "1.0")
    for args in (("show", "0099"), ("logs", "0099"), ("logs", eid, "--attempt", "3")):
        proc = run_cli(*args, "--lab", remote.url)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    text = run_cli("show", eid, "--lab", remote.url, check=True).stdout
    assert f"experiment {eid} queued" in text and "+X = 1.0" in text
