"""Syncing a lab into Trackio (the real package), read back from Trackio's own storage."""

from __future__ import annotations

import os
import queue
import sqlite3
import subprocess
import sys
import threading
import urllib.request
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from autolab.agents.lab_init import init_lab
from autolab.protocol import transactions as tx
from autolab.protocol.lab import Lab, now
from autolab.scoreboard.trackio_sync import find_anomalies, finished, main_harness, sync

from .conftest import free_port
from .helpers import propose_x

TABLES = ("metrics", "configs", "alerts")


@pytest.fixture
def trackio_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
                ) -> Path:
    """Trackio's storage in a temp dir (trackio reads ``$TRACKIO_DIR`` once, at import)."""
    base = tmp_path_factory.mktemp("trackio")
    monkeypatch.setenv("TRACKIO_DIR", str(base))
    # Imported earlier in this process: point its module constants here instead.
    for name, module in list(sys.modules.items()):
        if name == "trackio" or name.startswith("trackio."):
            for attr, sub in (("TRACKIO_DIR", ""), ("MEDIA_DIR", "media"),
                              ("ARTIFACTS_DIR", "artifacts")):
                if hasattr(module, attr):
                    monkeypatch.setattr(module, attr, base / sub if sub else base)
    import trackio.utils

    assert base == trackio.utils.TRACKIO_DIR
    return base


def _score(lab: Lab, eid: str, attempt: int, status: str, metric: float | None,
           **extra: object) -> str:
    metrics = {"score": metric, "loss": 2 * metric} if metric is not None else {}
    return tx.submit(lab, tx.make_score(eid, attempt, status=status, metric=metric, metrics=metrics,
                                 agent=lab.agent, runtime_s=1.5, backend="local",
                                 **extra)).outcome


def _run(lab: Lab, eid: str, status: str = "ok", metric: float | None = None,
         **extra: object) -> None:
    won = tx.claim(lab, experiment_id=eid, backend="local")
    _score(lab, eid, won.attempt, status, metric, **extra)


def _build(url: str) -> Lab:
    """0001-0005 ok (0004 on another harness, 0005 a suspicious jump); w2 crashes
    0006-0008 (0008 twice: one expired attempt, then a late crash); 0010 fails after three
    expired leases and 0011 proposes its patch again."""
    planner, w1, w2 = Lab.open(url, "planner"), Lab.open(url, "w1"), Lab.open(url, "w2")
    assert propose_x(planner, 1, 2, 4, 5, 6, 7, 8, 9, -1, -2) == [f"{i:04d}" for i in
                                                                  range(1, 11)]
    for eid, metric in (("0001", 10.0), ("0002", 9.0), ("0003", 8.5)):
        _run(w1, eid, metric=metric)
    _run(w1, "0004", metric=8.0, harness_hash="0" * 32)
    _run(w1, "0005", metric=1.0)
    _run(w2, "0006", "crash")
    _run(w2, "0007", "timeout")
    later = now() + timedelta(hours=1)
    tx.claim(w2, experiment_id="0008")
    tx.reap(w2, at=later)
    _run(w2, "0008", "crash")
    assert _score(w2, "0008", 1, "crash", None) == "late"  # its lease had expired
    for _ in range(3):  # max_attempts = 3
        tx.claim(w1, experiment_id="0010")
        tx.reap(w1, at=later)
    assert propose_x(planner, -2) == ["0011"]  # 0010 failed, so its patch may run again
    w1.fold(always=True)
    return w1


def _counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}


def test_sync_runs_best_alerts_and_idempotence(remote, trackio_dir):
    import trackio
    from trackio.sqlite_storage import SQLiteStorage

    lab = _build(remote.url)
    project = f"lab-{remote.kind}"
    said: list[str] = []
    report = sync(lab.read(), project, say=said.append)
    runs = [f"exp-{i:04d}" for i in range(1, 9)]
    assert report.runs == runs
    assert len(said) == 1 and "8 run(s), 8 running-best point(s), 9 alert(s)" in said[0]

    api = trackio.Api()
    by_name = {r.name: r for r in api.runs(project)}
    assert set(by_name) == {*runs, "running-best", "anomalies"}
    config = by_name["exp-0002"].config
    assert {k: config[k] for k in ("experiment", "hypothesis", "agent", "backend", "attempt",
                                   "status", "knob.X")} == {
        "experiment": "0002", "hypothesis": "set X to 2", "agent": "w1", "backend": "local",
        "attempt": 1, "status": "ok", "knob.X": 2.0}
    assert len(config["parent_commit"]) == 40
    assert by_name["exp-0008"].config["attempt"] == 2
    assert by_name["exp-0008"].config["status"] == "crash"
    # One logged step per experiment, in finishing order: the summary block + lab metric.
    logs = SQLiteStorage.get_logs(project, "exp-0002")
    assert [(row["step"], row["score"], row["loss"], row["runtime_s"]) for row in logs] == [
        (1, 9.0, 18.0, 1.5)]
    assert [row["step"] for row in SQLiteStorage.get_logs(project, "exp-0007")] == [6]
    assert "score" not in SQLiteStorage.get_logs(project, "exp-0007")[0]
    # The running best skips 0004 (another harness) and holds through the crashes.
    best = [(row["step"], row["score"]) for row in SQLiteStorage.get_logs(project,
                                                                          "running-best")]
    assert best == [(0, 10.0), (1, 9.0), (2, 8.5), (3, 8.5), (4, 1.0), (5, 1.0), (6, 1.0),
                    (7, 1.0)]

    alerts = {a["title"]: a for a in api.alerts(project)}
    assert set(alerts) == {
        "suspicious gain: exp-0005", "harness mismatch: exp-0004 attempt 1",
        "crash loop: agent w2 from exp-0006", "crash loop: exp-0008",
        "expired lease: exp-0008 attempt 1", "expired lease: exp-0010 attempt 1",
        "expired lease: exp-0010 attempt 2", "expired lease: exp-0010 attempt 3",
        "duplicate work: exp-0011"}
    assert all(a["run"] == "anomalies" for a in alerts.values())
    assert alerts["crash loop: exp-0008"]["level"] == "error"
    assert "exp-0010" in alerts["duplicate work: exp-0011"]["text"]

    db = SQLiteStorage.get_project_db_path(project)
    before = _counts(db)
    mtime = db.stat().st_mtime_ns
    again = sync(lab.read(), project, say=said.append)
    assert not again.changed and len(said) == 1
    assert _counts(db) == before and db.stat().st_mtime_ns == mtime

    _run(lab, "0011", metric=0.5)
    third = sync(lab.read(), project, say=said.append)
    assert (third.runs, third.points, third.alerts) == (["exp-0011"], 1, [])
    after = _counts(db)
    # One run: its metrics row and config, plus the running best's new point.
    assert after == {**before, "metrics": before["metrics"] + 2,
                     "configs": before["configs"] + 1}
    assert SQLiteStorage.get_logs(project, "exp-0011")[0]["step"] == 8
    best.append((8, 0.5))
    # A sync killed before it wrote the running best: the next one writes it.
    assert SQLiteStorage.delete_run(project, "running-best")
    repair = sync(lab.read(), project, say=said.append)
    assert (repair.runs, repair.points, repair.alerts) == ([], 9, [])
    assert [(row["step"], row["score"]) for row in SQLiteStorage.get_logs(
        project, "running-best")] == best


def test_floor_and_median_gain_rules(tmp_path):
    bare = tmp_path / "lab.git"
    init_lab(bare, "blank", bare=True)
    lab = Lab.open(str(bare), "w1")
    propose_x(lab, 1, 2, 4, 5)
    for eid, metric in (("0001", 10.0), ("0002", 9.0), ("0003", 8.0), ("0004", 7.0)):
        _run(lab, eid, metric=metric)
    view = lab.read()
    assert [e.id for e in finished(view.state)] == ["0001", "0002", "0003", "0004"]
    harness = main_harness(view)
    assert find_anomalies(view.state, view.config, harness) == []  # steady gains
    floored = find_anomalies(view.state, replace(view.config, floor=7.5), harness)
    assert [a.title for a in floored] == ["suspicious gain: exp-0004"]
    assert "beyond the floor 7.5" in floored[0].text


def test_dashboard_serves_on_loopback(tmp_path, trackio_dir):
    bare = tmp_path / "mylab.git"
    init_lab(bare, "blank", bare=True)
    lab = Lab.open(str(bare), "w1")
    propose_x(lab, 1)
    _run(lab, "0001", metric=4.0)
    port = free_port()
    env = {**os.environ, "TRACKIO_DIR": str(trackio_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "autolab.agents.cli", "dashboard", "--lab", str(bare),
         "--project", "dash", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    out: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [out.put(line) for line in proc.stdout], daemon=True).start()
    try:
        while not any(line.startswith("dashboard: ") for line in lines):
            lines.append(out.get(timeout=60))
        url = lines[-1].split()[1]
        assert url == f"http://127.0.0.1:{port}/?project=dash"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=10) as resp:
            assert resp.status == 200
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    assert "1 run(s), 1 running-best point(s), 0 alert(s) added to project dash" in lines[0]
    import trackio

    assert [r.name for r in trackio.Api().runs("dash")] == ["exp-0001", "running-best"]
