"""What commands and long-lived agents print, for scripts and coding agents to follow:
``--json`` is one JSON object per event, one per line; text is one dated line per
event; ``-q``/``-v`` lower and raise what is shown; nothing a remote or a proposal
holds can break a line or leak a credential."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime

from autolab.protocol import transactions as tx
from autolab.protocol.knobs import set_knobs, unified_diff
from autolab.protocol.lab import Lab

from .conftest import REPO, run_cli
from .helpers import propose_x

DATED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (worker|planner|reporter|swarm)\b")


def _events(stdout: str) -> list[dict]:
    """Every stdout line as a JSON object with the fields every event has."""
    events = [json.loads(line) for line in stdout.splitlines()]
    for event in events:
        assert {"event", "at", "level", "role", "agent", "message"} <= set(event), event
        assert datetime.fromisoformat(event["at"]).tzinfo is not None  # ISO 8601, UTC
    return events


def test_agents_print_one_json_object_per_event(daemon_remote):
    url = daemon_remote.url
    planner = run_cli("planner", "--once", "--json", "--lab", url, "--agent", "p1")
    assert planner.returncode == 0, planner.stderr
    events = _events(planner.stdout)
    assert [e["event"] for e in events][0] == "started"
    assert events[-1]["event"] == "done"
    proposed = [e for e in events if e["event"] == "proposed"]
    assert proposed and all(e["experiment_id"] and e["hypothesis"] for e in proposed)
    assert {e["role"] for e in events} == {"planner"} and {e["agent"] for e in events} == {"p1"}

    worker = run_cli("worker", "--once", "--json", "--lab", url, "--agent", "w1")
    assert worker.returncode == 0, worker.stderr
    names = [e["event"] for e in _events(worker.stdout)]
    assert names[0] == "started" and names[-1] == "done"
    for name in ("claimed", "running", "scored", "promoted"):
        assert name in names, names
    claimed = next(e for e in _events(worker.stdout) if e["event"] == "claimed")
    assert claimed["experiment_id"] == proposed[0]["experiment_id"] and claimed["attempt"] == 1

    reporter = run_cli("reporter", "--once", "--json", "--no-trackio", "--lab", url)
    assert reporter.returncode == 0, reporter.stderr
    names = [e["event"] for e in _events(reporter.stdout)]
    assert names[0] == "started" and names[-1] == "done"


def test_an_agent_that_ends_badly_says_so_in_its_json_stream(daemon_remote, tmp_path):
    idle = run_cli("worker", "--once", "--json", "--lab", daemon_remote.url)
    assert idle.returncode == 3
    last = _events(idle.stdout)[-1]
    assert last["event"] == "nothing_to_do" and last["exit_code"] == 3
    assert idle.stderr == "autolab: nothing to claim\n"  # the one line, as without --json
    broken = run_cli("planner", "--once", "--json", "--lab", str(tmp_path / "nowhere.git"))
    assert broken.returncode == 1
    last = _events(broken.stdout)[-1]
    assert last["event"] == "error" and last["exit_code"] == 1
    assert "no such lab" in last["message"] and len(broken.stderr.splitlines()) == 1


def test_agents_log_dated_lines_and_q_v_set_how_many(daemon_remote):
    url = daemon_remote.url
    text = run_cli("planner", "--once", "--lab", url, "--depth", "2")
    lines = text.stdout.splitlines()
    assert lines and all(DATED.match(line) for line in lines), lines
    assert any("proposed 0001" in line for line in lines)
    # The queue is full now: only -v tells so (a debug event).
    assert "queued (depth 2)" not in run_cli("planner", "--once", "--lab", url, "--depth",
                                            "2").stdout
    verbose = run_cli("planner", "--once", "--lab", url, "--depth", "2", "-v")
    assert any("2 queued (depth 2): not proposing" in line for line in verbose.stdout
               .splitlines())
    quiet = run_cli("worker", "--once", "--lab", url, "-q")
    assert quiet.returncode == 0 and quiet.stdout == ""
    both = run_cli("worker", "--once", "--lab", url, "-q", "-v")
    assert both.returncode == 2 and "at most one of -q/--quiet and -v/--verbose" in both.stderr


def test_a_hostile_hypothesis_cannot_break_or_colour_a_log_line(daemon_remote):
    """A hypothesis is anyone's text: in a log line its newlines and terminal escapes
    are shown as escapes, one line per event; the JSON event keeps it exactly."""
    source = (REPO / "repo_template" / "blank" / "experiment.py").read_text()
    hypothesis = "X up\n2026-01-01 00:00:00 worker w0: promoted 9999\x1b[31m red\x1b[0m"
    lab = Lab.open(daemon_remote.url, "someone")
    tx.propose(lab, [tx.Proposal(hypothesis, unified_diff(
        "experiment.py", source, set_knobs(source, {"X": 2.0})))])
    text = run_cli("worker", "--once", "--lab", daemon_remote.url)
    assert text.returncode == 0, text.stderr
    assert "\x1b" not in text.stdout
    lines = text.stdout.splitlines()
    assert all(DATED.match(line) for line in lines), lines
    assert not any("promoted 9999" in line and not line.count("claimed") for line in lines)
    assert any("X up\\x0a2026-01-01" in line for line in lines), lines
    propose_x(lab, 2.5)
    as_json = run_cli("worker", "--once", "--json", "--lab", daemon_remote.url)
    assert as_json.returncode == 0, as_json.stderr


def test_credentials_in_a_lab_url_never_reach_the_event_stream(tmp_path):
    url = "http://user:sekrit-pass-123@127.0.0.1:9/lab.git"
    # Both at once: each spends its time retrying the refused connection, asleep.
    procs = [subprocess.Popen([sys.executable, "-m", "autolab.agents.cli", *args, "--lab", url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for args in (["planner", "--once", "--json"], ["worker", "--once"])]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 1
        assert "sekrit-pass-123" not in out + err
        outputs.append(out)
    started = _events(outputs[0])[0]  # the planner's
    assert started["lab"].endswith("127.0.0.1:9/lab.git") and "sekrit" not in started["lab"]


def test_swarm_prints_its_events_as_json_lines(daemon_remote, tmp_path):
    proc = run_cli("swarm", "--lab", daemon_remote.url, "--duration", "6s", "--workers", "1",
                   "--json", "--log-dir", str(tmp_path / "logs"))
    assert proc.returncode == 0, proc.stderr
    events = _events(proc.stdout)
    assert [e["event"] for e in events] == ["started", "stopped"]
    assert events[0]["duration_s"] == 6 and events[0]["workers"] == 1
    assert set(events[1]["exit_codes"]) == {"planner", "worker-1", "reporter"}
    logged = [line for name in ("planner", "worker-1", "reporter")
              for line in (tmp_path / "logs" / f"{name}.log").read_text().splitlines()]
    assert logged and all(DATED.match(line) for line in logged), logged


def test_claim_json_prints_an_answer_when_there_is_nothing_to_claim(daemon_remote):
    proc = run_cli("claim", "--json", "--lab", daemon_remote.url, "--agent", "me")
    assert proc.returncode == 3 and proc.stderr == "autolab: nothing to claim\n"
    assert json.loads(proc.stdout) == {"claimed": False, "experiment_id": None,
                                       "agent": "me", "reason": "nothing to claim"}
    propose_x(Lab.open(daemon_remote.url, "p"), 1.0)
    won = json.loads(run_cli("claim", "--json", "--lab", daemon_remote.url).stdout)
    assert won["claimed"] is True and won["experiment_id"] == "0001"


def test_init_and_trackio_sync_print_json(daemon_remote, tmp_path):
    made = run_cli("init", str(tmp_path / "new.git"), "--template", "blank", "--bare",
                   "--json")
    assert json.loads(made.stdout) == {"lab": str(tmp_path / "new.git"), "template": "blank",
                                       "bare": True}
    lab = Lab.open(daemon_remote.url, "w")
    propose_x(lab, 2.0)
    run_cli("worker", "--once", "--lab", daemon_remote.url, check=True)
    synced = run_cli("trackio-sync", "--json", "--lab", daemon_remote.url)
    assert synced.returncode == 0, synced.stderr
    doc = json.loads(synced.stdout)
    assert doc["changed"] is True and doc["runs"] == ["exp-0001"]
    again = run_cli("trackio-sync", "--json", "--lab", daemon_remote.url)
    assert again.returncode == 3 and json.loads(again.stdout)["changed"] is False


def test_a_planner_whose_proposals_lose_a_race_with_a_promotion_keeps_going(remote,
                                                                              monkeypatch):
    """A promotion landing between the planner's read of main and its proposal moves
    the knob lines its patches change: the proposal no longer applies. That lost race
    killed the planner (and so a swarm or a demo); it is now a warning, and the next
    round proposes from the new main."""
    import random

    from autolab.agents import planner
    from autolab.protocol.transactions import claim as do_claim

    from .helpers import finish

    lab, worker = Lab.open(remote.url, "planner"), Lab.open(remote.url, "w1")
    propose_x(worker, 2.0)
    real = planner.propose_space

    def then_a_promotion_lands(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        proposals = real(*args, **kwargs)
        finish(worker, do_claim(worker), 2.0)  # X = 2.0 on main now
        return proposals

    monkeypatch.setattr(planner, "propose_space", then_a_promotion_lands)
    said: list[str] = []
    main = remote.main()
    assert planner.plan_once(lab, 4, said.append, rng=random.Random(1)) == []
    assert remote.main() != main and any("main moved while proposing" in s for s in said)
    monkeypatch.setattr(planner, "propose_space", real)
    assert planner.plan_once(lab, 4, said.append, rng=random.Random(1))  # from the new main


def test_an_agent_whose_reader_goes_away_stops_instead_of_running_on(daemon_remote):
    """``autolab planner --loop --json | head -1``: once the pipe's reader is gone, the
    next line cannot be written; the agent stops as on SIGTERM (exit code 0, no
    traceback) instead of running on with nobody reading."""
    import os
    import subprocess
    import sys

    proc = subprocess.Popen(
        # -v: a line every round (queue_full), so there is always a next line to write
        [sys.executable, "-m", "autolab.agents.cli", "planner", "--loop", "--json", "-v",
         "--interval", "0.5", "--depth", "2", "--lab", daemon_remote.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ})
    try:
        first = json.loads(proc.stdout.readline())
        assert first["event"] == "started"
        proc.stdout.close()  # the reader goes away, as `head -1` does
        assert proc.wait(timeout=120) == 0
        assert proc.stderr.read() == b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
