"""Bad shards on main fail loudly, naming the file and the commit; doctor reports them."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from autolab.protocol.errors import LabError, ShardError
from autolab.protocol.lab import Lab

from .conftest import run_cli
from .helpers import propose_x


def _push_file(remote, tmp_path: Path, rel: str, data: bytes) -> str:
    work = tmp_path / "work"
    subprocess.run(["git", "clone", "-q", remote.url, str(work)], check=True)
    target = work / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    for cmd in (["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                ["push", "-q", "origin", "HEAD:main"]):
        subprocess.run(["git", *cmd], cwd=work, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=work, check=True, capture_output=True,
                          text=True).stdout.strip()


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


BAD = {
    "not parquet": (b"this is not parquet", "not readable as parquet"),
    "truncated": (None, "not readable as parquet"),
    "wrong schema": (_parquet(pa.table({"seq": [1], "event_id": ["x"], "foo": [1]})),
                     "schema mismatch"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_shard_fails_reads_and_doctor_names_file_and_commit(remote, tmp_path, case):
    lab = Lab.open(remote.url, "agent")
    propose_x(lab, 1.0)
    data, reason = BAD[case]
    if data is None:  # a real shard cut in half
        good = lab.store.list_dir(lab.read().main, ".autolab/queue")
        data = lab.store.read_blob(next(iter(good.values())))[:200]
    rel = ".autolab/queue/000000000099-intruder-00000000000000aa.parquet"
    commit = _push_file(remote, tmp_path, rel, data)
    with pytest.raises(ShardError) as info:
        Lab.open(remote.url, "reader").read()
    message = str(info.value)
    assert rel in message and commit[:12] in message and reason in message
    proc = run_cli("doctor", "--lab", remote.url)
    assert proc.returncode == 1
    assert rel in proc.stdout and commit[:12] in proc.stdout and reason in proc.stdout
    assert "PROBLEMS FOUND" in proc.stdout
    proc = run_cli("status", "--lab", remote.url)
    assert proc.returncode == 1 and rel in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_wrong_schema_version_is_refused(daemon_remote, tmp_path):
    lab = Lab.open(daemon_remote.url, "agent")
    propose_x(lab, 1.0)
    blob = next(iter(lab.store.list_dir(lab.read().main, ".autolab/queue").values()))
    table = pq.read_table(io.BytesIO(lab.store.read_blob(blob)))
    table = table.set_column(table.schema.get_field_index("schema_version"), "schema_version",
                             pa.array([2] * table.num_rows, pa.int16()))
    table = table.set_column(0, "seq", pa.array([50] * table.num_rows, pa.int64()))
    rel = ".autolab/queue/000000000050-future-00000000000000bb.parquet"
    _push_file(daemon_remote, tmp_path, rel, _parquet(table))
    with pytest.raises(ShardError, match="schema_version"):
        Lab.open(daemon_remote.url, "reader").read()


def test_doctor_is_clean_on_a_healthy_lab(remote):
    lab = Lab.open(remote.url, "agent")
    propose_x(lab, 1.0, 2.0)
    proc = run_cli("doctor", "--lab", remote.url, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '"ok": true' in proc.stdout


def test_rewritten_main_is_reported_not_followed(daemon_remote, tmp_path):
    lab = Lab.open(daemon_remote.url, "agent")
    propose_x(lab, 1.0)
    first = lab.read().main
    propose_x(lab, 2.0)
    lab.read()
    daemon_remote.git("update-ref", "refs/heads/main", first)  # a force-push elsewhere
    other = daemon_remote.git("commit-tree", "-p", first, "-m", "rewritten",
                              f"{first}^{{tree}}")
    daemon_remote.git("update-ref", "refs/heads/main", other)
    with pytest.raises(LabError, match="rewritten"):
        Lab.open(daemon_remote.url, "agent").read()
    proc = run_cli("doctor", "--lab", daemon_remote.url)
    assert proc.returncode == 1 and "was rewritten" in proc.stdout
    proc = run_cli("doctor", "--lab", daemon_remote.url, "--accept-rewrite")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert Lab.open(daemon_remote.url, "agent").read().main == other
