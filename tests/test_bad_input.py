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
from autolab.protocol.schemas import SCHEMA_VERSION
from autolab.protocol.store import FileChange

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
    # Only the patch column is wrong: scoreboard reads leave patches undecoded, and must
    # refuse it all the same.
    "patch of another type": (lambda good: _parquet(_with_int_patch(good)),
                              "wrong type ['patch']"),
}


def _with_int_patch(shard: bytes) -> pa.Table:
    table = pq.read_table(io.BytesIO(shard))
    index = table.schema.get_field_index("patch")
    table = table.set_column(index, "patch", pa.array([7] * table.num_rows, pa.int64()))
    return table.set_column(table.schema.get_field_index("event_id"), "event_id",
                            pa.array(["other-event"] * table.num_rows))


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_shard_fails_reads_and_doctor_names_file_and_commit(remote, tmp_path, case):
    lab = Lab.open(remote.url, "agent")
    propose_x(lab, 1.0)
    data, reason = BAD[case]
    good = lab.store.list_dir(lab.read().main, ".autolab/queue")
    good_bytes = lab.store.read_blob(next(iter(good.values())))
    if data is None:  # a real shard cut in half
        data = good_bytes[:200]
    elif callable(data):
        data = data(good_bytes)
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
    assert reason in proc.stderr  # a new process reads lean: the same refusal

    # --fix moves the shard, bytes unchanged, to the quarantine, in one recorded commit.
    proc = run_cli("doctor", "--lab", remote.url, "--fix")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    moved = ".autolab/quarantine/queue/000000000099-intruder-00000000000000aa.parquet"
    assert f"quarantined {rel} -> {moved}" in proc.stdout
    assert _blob(remote, f"main:{moved}") == data
    assert rel in remote.git("log", "-1", "--format=%B", "main")
    state = Lab.open(remote.url, "reader").read().state
    assert [e.state for e in state.experiments.values()] == ["queued"]  # nothing lost


def _blob(remote, spec: str) -> bytes:
    return subprocess.run(["git", "cat-file", "blob", spec], cwd=remote.bare, check=True,
                          capture_output=True).stdout


def _copy_shard(lab: Lab, change=None) -> tuple[str, bytes]:
    """A second shard holding the rows of the lab's first queue shard (optionally changed)."""
    path, blob = next(iter(lab.store.list_dir(lab.read().main, ".autolab/queue").items()))
    table = pq.read_table(io.BytesIO(lab.store.read_blob(blob)))
    if change is not None:
        table = change(table)
    seq = max(table.column("seq").to_pylist())
    return f".autolab/queue/{seq:012d}-replay-00000000000000cc.parquet", _parquet(table)


def test_duplicate_rows_are_refused_then_fixed_without_losing_a_row(remote, tmp_path):
    lab = Lab.open(remote.url, "agent")
    propose_x(lab, 1.0, 2.0)
    before = Lab.open(remote.url, "before").read()
    rows_before = before.table("queue").num_rows
    rel, data = _copy_shard(lab)
    commit = _push_file(remote, tmp_path, rel, data)
    with pytest.raises(ShardError, match="duplicate rows") as info:
        Lab.open(remote.url, "reader").read()
    assert rel in str(info.value) or ".autolab/queue/" in str(info.value)
    assert commit[:12] in str(info.value)
    proc = run_cli("doctor", "--lab", remote.url)
    assert proc.returncode == 1 and "duplicate rows" in proc.stdout

    proc = run_cli("doctor", "--lab", remote.url, "--fix")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dropped 2 duplicate rows" in proc.stdout
    after = Lab.open(remote.url, "after").read()
    assert after.table("queue").num_rows == rows_before
    assert {e.id: e.state for e in after.state.experiments.values()} == {
        e.id: e.state for e in before.state.experiments.values()}
    assert run_cli("doctor", "--lab", remote.url).returncode == 0


def test_doctor_fix_refuses_what_it_cannot_repair_and_changes_nothing(remote, tmp_path):
    lab = Lab.open(remote.url, "agent")
    propose_x(lab, 1.0)

    def differ(table: pa.Table) -> pa.Table:
        i = table.schema.get_field_index("hypothesis")
        return table.set_column(i, "hypothesis", pa.array(["edited"] * table.num_rows))

    rel, data = _copy_shard(lab, differ)
    _push_file(remote, tmp_path, rel, data)
    main = remote.main()
    proc = run_cli("doctor", "--lab", remote.url, "--fix")
    assert proc.returncode == 1
    assert "refused" in proc.stdout and "differs from its copy" in proc.stdout
    assert remote.main() == main


def test_unreadable_record_ref_is_quarantined(remote):
    lab = Lab.open(remote.url, "agent")
    [eid] = propose_x(lab, 1.0)
    bad = lab.store.make_commit(None, FileChange(add={
        ".autolab/queue/000000000000-evil-00000000000000dd.json": b"{not json"}), "record")
    ref = f"refs/autolab/claims/{eid}/1"
    lab.store.create_ref(ref, bad)
    # Left out of the fold and reported, never a reason for every reader to fail.
    view = Lab.open(remote.url, "reader").read()
    assert [(b.ref, b.commit) for b in view.quarantined] == [(ref, bad)]
    assert "not a JSON record" in view.quarantined[0].reason
    assert view.state.experiments[eid].state == "queued"
    status = run_cli("status", "--lab", remote.url)
    assert f"invalid record {ref}" in status.stdout and "not a JSON record" in status.stdout
    proc = run_cli("doctor", "--lab", remote.url, "--fix")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"moved record {ref} -> refs/autolab-quarantine/" in proc.stdout
    assert remote.git("rev-parse", f"refs/autolab-quarantine/autolab/claims/{eid}/1") == bad
    assert Lab.open(remote.url, "reader").read().state.experiments[eid].state == "queued"


def test_wrong_schema_version_is_refused(daemon_remote, tmp_path):
    lab = Lab.open(daemon_remote.url, "agent")
    propose_x(lab, 1.0)
    blob = next(iter(lab.store.list_dir(lab.read().main, ".autolab/queue").values()))
    table = pq.read_table(io.BytesIO(lab.store.read_blob(blob)))
    newer = SCHEMA_VERSION + 1
    table = table.set_column(table.schema.get_field_index("schema_version"), "schema_version",
                             pa.array([newer] * table.num_rows, pa.int16()))
    table = table.set_column(0, "seq", pa.array([50] * table.num_rows, pa.int64()))
    rel = ".autolab/queue/000000000050-future-00000000000000bb.parquet"
    _push_file(daemon_remote, tmp_path, rel, _parquet(table))
    with pytest.raises(ShardError, match=f"schema_version {newer} is newer"):
        Lab.open(daemon_remote.url, "reader").read()
    main = daemon_remote.main()
    proc = run_cli("doctor", "--lab", daemon_remote.url, "--fix")
    assert proc.returncode == 1 and "upgrade autolab" in proc.stdout
    assert daemon_remote.main() == main  # a newer shard is never quarantined


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


def test_a_shard_of_an_older_schema_version_is_read_with_nulls(remote, tmp_path):
    """Version 1 scores had no flavor/job_seconds/cost_usd/log_ref: still readable."""
    from autolab.protocol import transactions as tx
    from autolab.protocol.schemas import ADDED_IN

    from .helpers import finish

    lab = Lab.open(remote.url, "agent")
    propose_x(lab, 2.0)
    finish(lab, tx.claim(lab), 2.0)
    lab.fold(always=True)
    before = lab.read().state.experiments["0001"].result
    path, blob = next(iter(lab.store.list_dir(lab.read().main, ".autolab/scores").items()))
    table = pq.read_table(io.BytesIO(lab.store.read_blob(blob)))
    old = table.drop_columns(list(ADDED_IN["scores"]))
    old = old.set_column(old.schema.get_field_index("schema_version"), "schema_version",
                         pa.array([1] * old.num_rows, pa.int16()))
    _push_file(remote, tmp_path, path, _parquet(old))
    after = Lab.open(remote.url, "reader").read().state.experiments["0001"].result
    assert after["metric"] == before["metric"] and after["schema_version"] == 1
    assert all(after[name] is None for name in ADDED_IN["scores"])
    assert run_cli("doctor", "--lab", remote.url).returncode == 0


def test_a_row_repeated_inside_one_shard_keeps_one_copy(remote, tmp_path):
    lab = Lab.open(remote.url, "agent")
    propose_x(lab, 1.0)
    lab.fold(always=True)
    path, blob = next(iter(lab.store.list_dir(lab.read().main, ".autolab/queue").items()))
    table = pq.read_table(io.BytesIO(lab.store.read_blob(blob)))
    _push_file(remote, tmp_path, path, _parquet(pa.concat_tables([table, table])))
    with pytest.raises(ShardError, match="duplicate rows"):
        Lab.open(remote.url, "reader").read()
    proc = run_cli("doctor", "--lab", remote.url, "--fix")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    after = Lab.open(remote.url, "after").read()
    assert after.table("queue").num_rows == table.num_rows
    assert after.state.experiments["0001"].state == "queued"
