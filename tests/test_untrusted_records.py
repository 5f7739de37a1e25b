"""Forged records, forged submissions and credentials in plain sight (real git, real
processes): nothing invalid is folded, every one is reported and quarantined, and no
credential reaches argv, a config file or the tables."""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from autolab.agents.reporter import report_once
from autolab.protocol import transactions as tx
from autolab.protocol.gitstore import GitStore
from autolab.protocol.lab import Lab
from autolab.protocol.schemas import SCHEMA_VERSION
from autolab.protocol.store import FileChange

from .conftest import run_cli
from .helpers import propose_x, push_branch


def forge_record(lab: Lab, ref: str, table: str, rows: list[dict]) -> str:
    """Create record ``ref`` holding ``rows`` as given (no validation): what any agent
    with push rights can do."""
    body = [{"event_id": secrets.token_hex(12), "schema_version": SCHEMA_VERSION, "seq": None,
             "agent": "mallory", **row} for row in rows]
    name = f".autolab/{table}/000000000000-mallory-{secrets.token_hex(8)}.json"
    commit = lab.store.make_commit(None, FileChange(add={name: json.dumps(body).encode()}),
                                   "forged")
    lab.store.create_ref(ref, commit)
    return commit


_AT = datetime.now(UTC).isoformat()
_LEASE = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
FORGERIES = [
    ("promoted-row-in-claim", "claims", "queue",
     [{"experiment_id": "0001", "event": "promoted", "attempt": 1, "at": _AT, "metric": 0.0,
       "source_commit": "0" * 40}], "a 'promoted' row in a claims record"),
    ("other-experiment", "claims", "queue",
     [{"experiment_id": "0002", "event": "claimed", "attempt": 1, "at": _AT,
       "lease_until": _LEASE}], "its row is for experiment '0002'"),
    ("other-attempt", "claims", "queue",
     [{"experiment_id": "0001", "event": "claimed", "attempt": 5, "at": _AT,
       "lease_until": _LEASE}], "attempt 5"),
    ("two-rows", "claims", "queue",
     [{"experiment_id": "0001", "event": "claimed", "attempt": 1, "at": _AT,
       "lease_until": _LEASE}] * 2, "holds 2 rows"),
    ("naive-time", "claims", "queue",
     [{"experiment_id": "0001", "event": "claimed", "attempt": 1,
       "at": "2026-01-01T00:00:00", "lease_until": "2026-01-01T00:00:00"}], "no UTC offset"),
    ("score-in-claim", "claims", "scores",
     [{"experiment_id": "0001", "attempt": 1, "status": "ok", "metric": 0.0}],
     "a scores row in a claims record"),
]


@pytest.mark.parametrize("name, kind, table, rows, why", FORGERIES,
                         ids=[f[0] for f in FORGERIES])
def test_forged_claim_records_are_never_folded_and_get_quarantined(daemon_remote, name, kind,
                                                                   table, rows, why):
    lab = Lab.open(daemon_remote.url, "agent")
    propose_x(lab, 1.0, 2.0)
    ref = f"refs/autolab/{kind}/0001/1"
    bad = forge_record(lab, ref, table, rows)
    view = Lab.open(daemon_remote.url, "reader").read()
    assert [(b.ref, b.commit) for b in view.quarantined] == [(ref, bad)]
    assert why in view.quarantined[0].reason
    assert view.state.experiments["0001"].state == "queued"
    assert view.state.promotions == []
    tx.reap(lab, view, at=datetime.now(UTC) + timedelta(days=2))  # no crash on any row
    status = json.loads(run_cli("status", "--lab", daemon_remote.url, "--json",
                                check=True).stdout)
    assert status["quarantined_records"][0]["ref"] == ref
    doctor = run_cli("doctor", "--lab", daemon_remote.url)
    assert doctor.returncode == 1 and ref in doctor.stdout and why in doctor.stdout
    said: list[str] = []
    report_once(Lab.open(daemon_remote.url, "reporter"), said.append, trackio=False)
    assert any(f"quarantined record {ref}" in line for line in said), said
    assert daemon_remote.git("rev-parse", f"refs/autolab-quarantine/autolab/{kind}/0001/1") \
        == bad
    # The attempt it blocked is free again.
    assert tx.claim(lab, experiment_id="0001", max_age=0).attempt == 1


def test_a_nan_result_record_is_quarantined_and_never_best(daemon_remote):
    lab = Lab.open(daemon_remote.url, "agent")
    propose_x(lab, 2.0)
    won = tx.claim(lab)
    head = push_branch(lab, won.experiment_id)
    forge_record(lab, f"refs/autolab/results/{won.experiment_id}/{won.attempt}", "scores",
                 [{"experiment_id": won.experiment_id, "attempt": won.attempt, "status": "ok",
                   "metric": float("nan"), "branch_commit": head, "late": False}])
    view = lab.read()
    assert "metric is nan" in view.quarantined[0].reason
    assert view.state.experiments[won.experiment_id].state == "claimed"
    assert not tx.promote(lab, won.experiment_id).promoted


def test_submit_by_an_agent_that_did_not_claim_is_refused(daemon_remote, tmp_path):
    url = daemon_remote.url
    lab = Lab.open(url, "alice")
    propose_x(lab, 2.0)
    won = tx.claim(lab)
    metrics = tmp_path / "m.json"
    metrics.write_text(json.dumps({"score": 0.0}))
    args = ("submit", "--lab", url, "--experiment", won.experiment_id, "--attempt",
            str(won.attempt), "--metrics-file", str(metrics))
    proc = run_cli(*args, "--agent", "mallory")
    assert proc.returncode == 1 and "claimed by alice, not by mallory" in proc.stderr
    assert lab.read().state.experiments[won.experiment_id].state == "claimed"
    # The claimant may; a --branch-commit must be the experiment's parent plus its patch.
    main = lab.read().main
    forged = run_cli(*args, "--agent", "alice", "--branch-commit", main)
    assert forged.returncode == 1 and "not on autolab/exp/" in forged.stderr, forged.stderr
    head = push_branch(lab, won.experiment_id)
    ok = run_cli(*args, "--agent", "alice", "--branch-commit", head)
    assert ok.returncode == 0, ok.stderr
    result = lab.read().state.experiments[won.experiment_id].result
    assert result["branch_commit"] == head and result["harness_hash"]


def test_a_crash_reason_carrying_a_token_is_redacted_on_main(daemon_remote, tmp_path,
                                                             monkeypatch):
    from autolab.agents.backends.local import LocalBackend
    from autolab.agents.worker import Worker

    from .adversary import git_patch

    secret = f"hf_{secrets.token_hex(16)}"
    plain = f"plain-{secrets.token_hex(8)}"
    monkeypatch.setenv("AUTOLAB_GIT_TOKEN", plain)
    lab = Lab.open(daemon_remote.url, "agent")
    # The run builds both at run time: neither is in the patch (which is on main anyway).
    halves = [(t[:5], t[5:]) for t in (secret, plain)]
    script = ("parts = " + repr(halves) + "\n"
              "raise SystemExit('leaking ' + ' and '.join(a + b for a, b in parts))\n")
    patch = git_patch(tmp_path, lambda w: (w / "experiment.py").write_text(script))
    [eid] = tx.propose(lab, [tx.Proposal("leak", patch)])
    Worker(Lab.open(daemon_remote.url, "worker"), LocalBackend(), tmp_path / "logs",
           say=lambda _: None).run_once()
    reason = lab.read().state.experiments[eid].result["reason"]
    assert "leaking" in reason and secret not in reason and plain not in reason
    lab.fold(always=True)
    from .adversary import all_objects_text

    everything = all_objects_text(daemon_remote.bare)
    assert secret.encode() not in everything and plain.encode() not in everything


class _AuthRecorder(BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        type(self).seen.append(self.headers.get("Authorization", ""))
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_credentials_in_a_lab_url_reach_git_only_through_its_environment(tmp_path):
    server = HTTPServer(("127.0.0.1", 0), _AuthRecorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    password = f"pw-{secrets.token_hex(8)}"
    url = f"http://alice:{password}@127.0.0.1:{server.server_port}/lab.git"
    try:
        store = GitStore(url)
        with pytest.raises(Exception):  # noqa: B017 (the server has no lab: any failure)
            store.refresh()
    finally:
        server.shutdown()
    assert password not in store.url and password not in str(store.path)
    config = (store.path / "config").read_text()
    assert password not in config and "127.0.0.1" in config
    sent = [base64.b64decode(h.split()[1]).decode() for h in _AuthRecorder.seen if h]
    assert f"alice:{password}" in sent  # git authenticated all the same


def test_swarm_children_never_carry_the_lab_url_in_argv(tmp_path):
    from autolab.agents.swarm import Swarm

    password = f"pw-{secrets.token_hex(8)}"
    url = f"https://alice:{password}@127.0.0.1:9/lab.git"  # nothing listens: agents fail
    swarm = Swarm(url, workers=1, log_dir=tmp_path / "logs")
    swarm.start()
    try:
        for name, proc in swarm.procs.items():
            argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
            assert password.encode() not in argv, name
    finally:
        swarm.stop(grace=5)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert password not in ps
