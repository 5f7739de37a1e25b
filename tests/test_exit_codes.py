"""The documented exit codes (README.md, "Exit codes"; DESIGN.md §7), command by command:
0 success, 1 error, 2 usage error, 3 nothing to do; a one-line reason on stderr for
every code but 0."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from autolab.protocol import transactions as tx
from autolab.protocol.lab import Lab

from .conftest import Remote, run_cli
from .helpers import finish, propose_x

Setup = Callable[[Remote, Path], list[str]]


def _lab(*args: str) -> Setup:
    """A command against the test's lab, nothing set up."""
    return lambda remote, tmp: [*args, "--lab", remote.url]


def _queued(*args: str) -> Setup:
    """A command against a lab with experiment 0001 (X = 1) queued."""
    def setup(remote: Remote, tmp: Path) -> list[str]:
        propose_x(Lab.open(remote.url, "planner"), 1.0)
        return [*args, "--lab", remote.url]
    return setup


def _done(*args: str) -> Setup:
    """A command against a lab where 0001 ran and was promoted."""
    def setup(remote: Remote, tmp: Path) -> list[str]:
        lab = Lab.open(remote.url, "w1")
        propose_x(lab, 2.0)
        finish(lab, tx.claim(lab), 2.0)
        return [*args, "--lab", remote.url]
    return setup


def _in(tmp_args: Callable[[Path], list[str]]) -> Setup:
    """A command that needs no lab (paths under the test's directory)."""
    return lambda remote, tmp: tmp_args(tmp)


def _non_empty(tmp: Path) -> list[str]:
    (tmp / "full").mkdir()
    (tmp / "full" / "file").write_text("x")
    return ["init", str(tmp / "full"), "--template", "blank"]


def _metrics(tmp: Path) -> str:
    (tmp / "m.json").write_text('{"score": 1.0}')
    return str(tmp / "m.json")


# case: (setup -> argv, exit code, words the one stderr line holds)
CASES: dict[str, tuple[Setup, int, str]] = {
    # 3: nothing to do
    "claim, queue empty": (_lab("claim"), 3, "nothing to claim"),
    "reap, no lease expired": (_queued("reap"), 3, "nothing to reap"),
    "reap --json, no lease expired": (_queued("reap", "--json"), 3, "nothing to reap"),
    "promote, not done": (_queued("promote", "0001"), 3, "not promoted: experiment is queued"),
    "promote, already promoted": (_done("promote", "0001"), 3, "already promoted"),
    "compact, nothing to compact": (_lab("compact"), 3, "nothing to compact"),
    "propose, duplicate": (_queued("propose", "--hypothesis", "again", "--set", "X=1"), 3,
                           "duplicate"),
    "worker --once, queue empty": (_lab("worker", "--once"), 3, "nothing to claim"),
    "worker (drain), queue empty": (_lab("worker"), 3, "nothing to claim"),
    "trackio-sync, up to date": (_lab("trackio-sync"), 3, "is up to date"),
    "run, attempt not current": (_done("run", "--experiment", "0001", "--attempt", "1"), 3,
                                 "is not current"),
    # 1: error
    "promote, unknown experiment": (_queued("promote", "0042"), 1, "unknown experiment 0042"),
    "run, unknown experiment": (_lab("run", "--experiment", "0042", "--attempt", "1"), 1,
                                "unknown experiment 0042"),
    "submit, never claimed": (lambda r, t: ["submit", "--lab", r.url, "--experiment", "0001",
                                            "--attempt", "1", "--metrics-file", _metrics(t)],
                              1, "unknown experiment 0001"),
    "propose, patch not a diff": (lambda r, t: ["propose", "--lab", r.url, "--hypothesis",
                                                "h", "--patch", _metrics(t)], 1,
                                  "m.json: patch is not a unified diff"),
    "sql, bad query": (_lab("sql", "SELECT * FROM nope"), 1, "sql:"),
    "status, no such lab": (lambda r, t: ["status", "--lab", str(t / "nowhere.git")], 1,
                            "no such lab"),
    "init, directory not empty": (_in(_non_empty), 1, "not empty"),
    # 2: usage error
    "propose, neither --patch nor --set": (_lab("propose", "--hypothesis", "h"), 2,
                                           "give exactly one of --patch FILE, --set"),
    "propose, --priority nan": (_lab("propose", "--hypothesis", "h", "--set", "X=1",
                                     "--priority", "nan"), 2, "--priority nan"),
    "submit, --log and --metrics-file": (
        lambda r, t: ["submit", "--lab", r.url, "--experiment", "0001", "--attempt", "1",
                      "--metrics-file", _metrics(t), "--log", _metrics(t)], 2,
        "give exactly one of --metrics-file"),
    "submit, unknown --status": (
        lambda r, t: ["submit", "--lab", r.url, "--experiment", "0001", "--attempt", "1",
                      "--metrics-file", _metrics(t), "--status", "great"], 2,
        "Invalid value for '--status': 'great' is not one of 'ok'"),
    "worker, unknown backend": (_lab("worker", "--backend", "cloud"), 2,
                                "Invalid value for '--backend': 'cloud' is not one of"),
    "worker, --once and --loop": (_lab("worker", "--once", "--loop"), 2,
                                  "at most one of --once and --loop"),
    "planner, --once and --loop": (_lab("planner", "--once", "--loop"), 2,
                                   "at most one of --once and --loop"),
    "worker, --env not KEY=VALUE": (_lab("worker", "--backend", "hf-jobs", "--env", "X"), 2,
                                    "--env 'X': expected KEY=VALUE"),
    "init, unknown template": (_in(lambda t: ["init", str(t / "x"), "--template", "nope"]), 2,
                               "Invalid value for '--template': 'nope' is not one of"),
    "swarm, bad duration": (_lab("swarm", "--duration", "nan"), 2,
                            "Invalid value for '--duration': 'nan' is not a duration"),
    "schedule, unknown role": (_lab("schedule", "create", "--role", "boss", "--every", "10m"),
                               2, "Invalid value for '--role': 'boss' is not one of"),
    "schedule, unknown role (old spelling)": (_lab("schedule", "--role", "boss", "--every",
                                                   "10m"), 2, "Invalid value for '--role'"),
    "schedule, --every and --cron": (_lab("schedule", "--role", "worker", "--every", "10m",
                                          "--cron", "* * * * *"), 2, "give one of --every"),
    "schedule, --every 7m": (_lab("schedule", "--role", "worker", "--every", "7m"), 2,
                             "use a divisor of an hour"),
    "status, no lab given": (_in(lambda t: ["status"]), 2, "no lab given"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_exit_codes_follow_the_documented_contract(daemon_remote, tmp_path, case):
    setup, code, words = CASES[case]
    args = setup(daemon_remote, tmp_path)
    main = daemon_remote.main()
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == code, (args, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], (args, proc.stderr)
    kind = "autolab: " if code == 3 else "autolab: error: "
    assert lines[0].startswith(kind), lines
    assert daemon_remote.main() == main  # nothing to do, or refused: main unchanged


def test_nothing_to_do_with_json_still_prints_the_document(daemon_remote):
    """``--json`` keeps stdout one JSON document even when the exit code is 3."""
    import json

    propose_x(Lab.open(daemon_remote.url, "planner"), 1.0)
    reaped = run_cli("reap", "--lab", daemon_remote.url, "--json")
    assert reaped.returncode == 3 and json.loads(reaped.stdout) == []
    again = run_cli("propose", "--lab", daemon_remote.url, "--hypothesis", "h", "--set",
                    "X=1", "--json")
    assert again.returncode == 3
    assert json.loads(again.stdout) == {"experiment_id": None, "duplicate": True}
    promoted = run_cli("promote", "0001", "--lab", daemon_remote.url, "--json")
    assert promoted.returncode == 3 and json.loads(promoted.stdout)["promoted"] is False


def test_commands_that_did_their_work_exit_0(daemon_remote, tmp_path):
    lab = Lab.open(daemon_remote.url, "planner")
    propose_x(lab, 1.0)
    assert run_cli("claim", "--lab", daemon_remote.url, "--agent", "w1").returncode == 0
    assert run_cli("compact", "--lab", daemon_remote.url).returncode == 0  # folds the claim
    assert run_cli("status", "--lab", daemon_remote.url).returncode == 0
    assert run_cli("doctor", "--lab", daemon_remote.url).returncode == 0
