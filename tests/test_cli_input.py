"""Hostile bytes at the command line and in the lab's tree: every one ends as one line
naming the thing, never a traceback; names that are not UTF-8 are reported and
quarantined like any other bad shard."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autolab.protocol.errors import ShardError
from autolab.protocol.lab import Lab
from autolab.protocol.patches import MAX_PATCH_BYTES

from .conftest import knob_patch_text, run_cli
from .helpers import propose_x
from .test_bad_input import _blob, _push_file

CLI = [os.fsencode(sys.executable), b"-m", b"autolab.agents.cli"]
# A UTF-8 locale other than C/POSIX: Python's stdout is then strict, as on most
# desktops, so text that is not UTF-8 reaching stdout would crash the command.
STRICT = {"LC_ALL": "C.UTF-8"}


def _raw_cli(*args: bytes, stdin: bytes = b"", env: dict | None = None
             ) -> subprocess.CompletedProcess[bytes]:
    """The CLI with argv (and stdin, and environment) as raw bytes."""
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, timeout=300,
                          env={**os.environ, **STRICT, **(env or {})})


def _one_line(stderr: bytes | str) -> str:
    text = stderr.decode() if isinstance(stderr, bytes) else stderr  # strict: must be UTF-8
    assert "Traceback" not in text, text
    assert len(text.strip().splitlines()) == 1, text
    return text.strip()


# -- fault 9: bytes that are not UTF-8 --------------------------------------------------


def test_non_utf8_patch_on_stdin_is_one_line_not_a_traceback(remote):
    main = remote.main()
    patch = knob_patch_text(2.0).encode().replace(b"X = 2.0", b"X = 2.0  # \xff\xfe")
    proc = _raw_cli(b"propose", b"--lab", os.fsencode(remote.url), b"--hypothesis", b"h",
                    b"--patch", b"-", stdin=patch)
    line = _one_line(proc.stderr)
    assert proc.returncode == 1, line
    assert "--patch - (standard input): not UTF-8 text (byte 0xff at offset" in line
    assert remote.main() == main


TEXT_ARGS = {
    "hypothesis": ([b"propose", b"--hypothesis", b"\xff", b"--set", b"X=2"], "--hypothesis"),
    "knob value": ([b"propose", b"--hypothesis", b"h", b"--set", b"X=\xff"], "--set"),
    "agent": ([b"claim", b"--agent", b"w\xff"], "--agent"),
    "sql query": ([b"sql", b"SELECT '\xff'"], "QUERY"),
    "experiment id": ([b"promote", b"00\xff1"], "EXPERIMENT"),
    "submit reason": ([b"submit", b"--experiment", b"0001", b"--attempt", b"1",
                       b"--metrics-file", b"/dev/null", b"--reason", b"\xc3"], "--reason"),
}


@pytest.mark.parametrize("case", sorted(TEXT_ARGS))
def test_non_utf8_argv_is_a_usage_error_naming_the_option(daemon_remote, case):
    args, option = TEXT_ARGS[case]
    main = daemon_remote.main()
    proc = _raw_cli(*args, b"--lab", os.fsencode(daemon_remote.url))
    line = _one_line(proc.stderr)
    assert proc.returncode == 2, line
    assert line.startswith(f"autolab: error: {option}: not UTF-8 text (byte 0x"), line
    assert daemon_remote.main() == main


def test_non_utf8_agent_from_the_environment_is_refused(daemon_remote):
    proc = _raw_cli(b"propose", b"--lab", os.fsencode(daemon_remote.url), b"--hypothesis",
                    b"h", b"--set", b"X=2", env={b"AUTOLAB_AGENT": b"host\xff-1"})
    line = _one_line(proc.stderr)
    assert proc.returncode == 2 and "$AUTOLAB_AGENT: not UTF-8 text (byte 0xff" in line


NAMES = {  # file name on main: (how messages show it, its name in the quarantine)
    "not UTF-8": (b"000000000099-intruder-\xff\xfe.parquet",
                  "000000000099-intruder-\\xff\\xfe.parquet",
                  "000000000099-intruder-%FF%FE.parquet"),
    "control characters": (b"evil\nname\x1b[31m.parquet", "evil\\x0aname\\x1b[31m.parquet",
                           "evil%0Aname%1B%5B31m.parquet"),
}


# Each kind of name once, each table once: how a name is escaped does not depend on
# the table, nor where its shard is quarantined on the name's kind.
@pytest.mark.parametrize("kind, table", [("not UTF-8", "scores"),
                                         ("control characters", "queue")])
def test_shard_file_name_with_invalid_bytes_is_reported_and_quarantined(remote, tmp_path,
                                                                         table, kind):
    raw, plain, quarantined = NAMES[kind]
    lab = Lab.open(remote.url, "agent")
    propose_x(lab, 1.0)
    rel = os.fsdecode(f".autolab/{table}/".encode() + raw)  # surrogate-escaped, like argv
    shown = f".autolab/{table}/{plain}"
    data = b"anything at all"
    commit = _push_file(remote, tmp_path, rel, data)

    with pytest.raises(ShardError) as info:
        Lab.open(remote.url, "reader").read()
    assert f"bad shard {shown} at commit {commit[:12]}: not a shard name" in str(info.value)
    status = run_cli("status", "--lab", remote.url, env=STRICT)
    line = _one_line(status.stderr)
    assert status.returncode == 1 and shown in line and commit[:12] in line

    doctor = run_cli("doctor", "--lab", remote.url, env=STRICT)
    assert doctor.returncode == 1, doctor.stdout + doctor.stderr
    assert f"error: {shown} @ {commit[:12]}: not a shard name" in doctor.stdout

    fixed = run_cli("doctor", "--fix", "--lab", remote.url, env=STRICT)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    target = f".autolab/quarantine/{table}/{quarantined}"
    assert f"quarantined {shown} -> {target}" in fixed.stdout
    assert _blob(remote, f"main:{target}") == data  # bytes kept, under a printable name
    assert shown in remote.git("log", "-1", "--format=%B", "main")
    state = Lab.open(remote.url, "after").read().state
    assert [e.state for e in state.experiments.values()] == ["queued"]
    assert run_cli("status", "--lab", remote.url, env=STRICT).returncode == 0
    assert run_cli("doctor", "--lab", remote.url, env=STRICT).returncode == 0


def test_quarantine_never_overwrites_a_file_whose_name_maps_to_the_same(daemon_remote,
                                                                        tmp_path):
    """``\\xff.parquet`` is quarantined as ``%FF.parquet``: a file already called that
    (quarantined in the same repair) keeps its own bytes under its own name."""
    work = tmp_path / "work"
    subprocess.run(["git", "clone", "-q", daemon_remote.url, str(work)], check=True)
    (work / ".autolab" / "scores").mkdir(parents=True)
    (work / ".autolab" / "scores" / os.fsdecode(b"\xff.parquet")).write_bytes(b"first")
    (work / ".autolab" / "scores" / "%FF.parquet").write_bytes(b"second")
    for cmd in (["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm",
                                "x"], ["push", "-q", "origin", "HEAD:main"]):
        subprocess.run(["git", *cmd], cwd=work, check=True)
    fixed = run_cli("doctor", "--fix", "--lab", daemon_remote.url, env=STRICT)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    held = daemon_remote.git("ls-tree", "--name-only", "main", ".autolab/quarantine/scores/")
    kept = sorted(_blob(daemon_remote, f"main:{p}") for p in held.splitlines())
    assert kept == [b"first", b"second"], held


def test_record_ref_name_with_invalid_bytes_is_reported_and_quarantined(remote):
    lab = Lab.open(remote.url, "agent")
    propose_x(lab, 1.0)
    main = remote.main()
    ref = os.fsdecode(b"refs/autolab/claims/0001/\xff")
    remote.git("update-ref", ref, main)  # argv carries the raw byte

    status = run_cli("status", "--lab", remote.url, env=STRICT)
    assert status.returncode == 0, status.stderr
    assert "invalid record refs/autolab/claims/0001/\\xff" in status.stdout
    doctor = run_cli("doctor", "--lab", remote.url, env=STRICT)
    assert doctor.returncode == 1 and "error: refs/autolab/claims/0001/\\xff @" in doctor.stdout
    fixed = run_cli("doctor", "--fix", "--lab", remote.url, env=STRICT)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert ("moved record refs/autolab/claims/0001/\\xff -> "
            "refs/autolab-quarantine/autolab/claims/0001/%FF") in fixed.stdout
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)"], cwd=remote.bare,
                          check=True, capture_output=True).stdout.splitlines()
    assert refs == [b"refs/autolab-quarantine/autolab/claims/0001/%FF", b"refs/heads/main"]
    assert run_cli("doctor", "--lab", remote.url, env=STRICT).returncode == 0


def test_shard_with_a_string_that_is_not_utf8_is_a_bad_shard(remote, tmp_path):
    """Parquet readers do not check that strings are UTF-8: such a shard is refused when
    read, naming the file and the column, and doctor --fix quarantines it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .test_bad_input import _parquet

    lab = Lab.open(remote.url, "agent")
    propose_x(lab, 1.0)
    propose_x(lab, 2.0)
    path, blob = sorted(lab.store.list_dir(lab.read().main, ".autolab/queue").items())[-1]
    table = pq.read_table(io.BytesIO(lab.store.read_blob(blob)))
    index = table.schema.get_field_index("hypothesis")
    bad = pa.array([b"set X \xff"] * table.num_rows, pa.binary()).view(pa.string())
    data = _parquet(table.set_column(index, table.schema.field(index), bad))
    commit = _push_file(remote, tmp_path, path, data)

    status = run_cli("status", "--lab", remote.url, env=STRICT)
    line = _one_line(status.stderr)
    assert status.returncode == 1
    assert f"bad shard {path} at commit {commit[:12]}: column 'hypothesis' is not UTF-8" in line
    sql = run_cli("sql", "--lab", remote.url, "SELECT hypothesis FROM experiments", env=STRICT)
    assert sql.returncode == 1 and "column 'hypothesis' is not UTF-8" in _one_line(sql.stderr)
    doctor = run_cli("doctor", "--lab", remote.url, env=STRICT)
    assert doctor.returncode == 1 and "column 'hypothesis' is not UTF-8" in doctor.stdout
    fixed = run_cli("doctor", "--fix", "--lab", remote.url, env=STRICT)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert f"quarantined {path} -> .autolab/quarantine/queue/" in fixed.stdout
    state = Lab.open(remote.url, "after").read().state
    assert [e.id for e in state.experiments.values()] == ["0001"]  # the other shard's row


def test_record_with_a_lone_surrogate_is_an_invalid_record(remote):
    """JSON can spell a string that is not text ("\\udcff"): the record is left out of
    the fold and reported, never a traceback in every reader."""
    import json

    from autolab.protocol.store import FileChange

    lab = Lab.open(remote.url, "agent")
    [eid] = propose_x(lab, 1.0)
    row = {"experiment_id": eid, "event": "claimed", "event_id": "e" * 24, "attempt": 1,
           "agent": "\udcff", "schema_version": 1}
    bad = lab.store.make_commit(None, FileChange(add={
        ".autolab/queue/000000000000-evil-00000000000000dd.json": json.dumps([row]).encode()}),
        "record")
    ref = f"refs/autolab/claims/{eid}/1"
    lab.store.create_ref(ref, bad)
    status = run_cli("status", "--lab", remote.url, env=STRICT)
    assert status.returncode == 0, status.stderr
    assert f"invalid record {ref}" in status.stdout and "not UTF-8" in status.stdout
    fixed = run_cli("doctor", "--fix", "--lab", remote.url, env=STRICT)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert f"moved record {ref} -> refs/autolab-quarantine/" in fixed.stdout
    assert Lab.open(remote.url, "after").read().state.experiments[eid].state == "queued"


# -- fault 12: --patch FILE is named in every refusal ------------------------------------


def _not_a_diff(tmp: Path) -> tuple[str, str]:
    (tmp / "notes.txt").write_text("just some notes\n")
    return "notes.txt", "patch is not a unified diff"


def _missing(tmp: Path) -> tuple[str, str]:
    return "missing.diff", "no such file"


def _directory(tmp: Path) -> tuple[str, str]:
    (tmp / "adir").mkdir()
    return "adir", "is a directory"


def _unreadable(tmp: Path) -> tuple[str, str]:
    if os.geteuid() == 0:
        # Root reads any mode; this file opens and then fails every read (EIO).
        return "/proc/self/mem", "cannot read (Input/output error)"
    (tmp / "secret.diff").write_text(knob_patch_text(2.0))
    (tmp / "secret.diff").chmod(0)
    return "secret.diff", "permission denied"


def _too_large(tmp: Path) -> tuple[str, str]:
    (tmp / "huge.diff").write_text(knob_patch_text(2.0) + "#" * MAX_PATCH_BYTES)
    return "huge.diff", f"larger than {MAX_PATCH_BYTES} bytes"


def _endless(tmp: Path) -> tuple[str, str]:
    return "/dev/zero", f"larger than {MAX_PATCH_BYTES} bytes"  # read is capped


def _not_utf8(tmp: Path) -> tuple[str, str]:
    (tmp / "latin1.diff").write_bytes(knob_patch_text(2.0).encode() + b"# caf\xe9\n")
    return "latin1.diff", "not UTF-8 text (byte 0xe9 at offset"


def _does_not_apply(tmp: Path) -> tuple[str, str]:
    (tmp / "stale.diff").write_text(knob_patch_text(2.0).replace("-X = ", "-Y = "))
    return "stale.diff", "does not apply"


PATCH_FILES = {"not a diff": _not_a_diff, "missing": _missing, "directory": _directory,
               "unreadable": _unreadable, "too large": _too_large, "endless": _endless,
               "not UTF-8": _not_utf8, "does not apply": _does_not_apply}


@pytest.mark.parametrize("case", sorted(PATCH_FILES))
def test_patch_file_refusal_names_the_file(daemon_remote, tmp_path, case):
    name, reason = PATCH_FILES[case](tmp_path)
    main = daemon_remote.main()
    proc = run_cli("propose", "--lab", daemon_remote.url, "--hypothesis", "h", "--patch",
                   name, cwd=tmp_path)
    line = _one_line(proc.stderr)
    assert proc.returncode == 1, line  # an error (README, exit codes), not a usage error
    assert line.startswith(f"autolab: error: --patch {name}: "), line
    assert reason in line, line
    assert daemon_remote.main() == main
