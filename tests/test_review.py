"""Review from the terminal (``autolab review``) and the review gate (``[policy] review``),
end to end on the ``blank`` lab: accept, reject, the gate holding a winner back, and
reviewers racing each other with real processes against a real ``git daemon``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autolab.agents.lab_init import init_lab
from autolab.protocol import transactions as tx
from autolab.protocol.config import parse_config
from autolab.protocol.errors import ConfigError
from autolab.protocol.lab import Lab
from autolab.protocol.review import review_hold

from .conftest import REPO, run_cli
from .helpers import finish, propose_x

BLANK_TOML = (REPO / "repo_template" / "blank" / "autolab.toml").read_text()


def _finished(lab: Lab, *values: float) -> list[str]:
    """Propose X=value for each value, run each (score (X-3)^2), promote none."""
    ids = propose_x(lab, *values)
    for _ in ids:
        claim = tx.claim(lab)
        exp = lab.read().state.experiments[claim.experiment_id]
        x = float(exp.hypothesis.rsplit(" ", 1)[1])
        finish(lab, claim, x, promote=False)
    return [i for i in ids if i]


def _gated_lab(tmp_path: Path, git_daemon, policy: str, paths: str = "") -> str:
    def edit(root: Path) -> None:
        toml = root / "autolab.toml"
        text = toml.read_text().replace("min_delta = 0.0", f"min_delta = 0.0\n{policy}")
        toml.write_text(text.replace('protected = ["program.md", "SKILL.md"]',
                                     f'protected = ["program.md", "SKILL.md"]\n{paths}'))

    name = f"review-{tmp_path.name}.git"
    init_lab(git_daemon.base / name, "blank", bare=True, edit=edit)
    return git_daemon.url(name)


def _json(proc: subprocess.CompletedProcess[str]) -> dict:
    return json.loads(proc.stdout)


def test_accept_promotes_best_first_and_records_the_reviewer_and_note(daemon_remote):
    url = daemon_remote.url
    lab = Lab.open(url, "worker")
    first, second = _finished(lab, 2.0, 2.5)  # scores 1.0 and 0.25
    listed = run_cli("review", "list", "--json", "--lab", url)
    assert listed.returncode == 0, listed.stderr
    rows = _json(listed)["candidates"]
    assert [r["experiment_id"] for r in rows] == [second, first]  # best first
    assert all(r["beats_best"] and r["best"] is None and not r["awaiting_review"]
               for r in rows)
    accepted = run_cli("review", "accept", second, "--note", "clean change", "--agent",
                       "alice", "--json", "--lab", url)
    assert accepted.returncode == 0, accepted.stderr
    assert _json(accepted)["promoted"] is True
    state = lab.read().state
    promotion = state.promotions[-1]
    assert (promotion["experiment_id"], promotion["reviewer"], promotion["note"]) == (
        second, "alice", "clean change")
    assert "X = 2.5" in lab.store.read_file(state.main, "experiment.py").decode()
    # the columnar state (what status and the scoreboard read) agrees
    promotions = lab.read().folded().promotions.to_pylist()
    assert promotions[-1]["reviewer"] == "alice" and promotions[-1]["note"] == "clean change"
    # the other candidate no longer beats the best: listed with its delta, accept exits 3
    rows = _json(run_cli("review", "list", "--json", "--lab", url))["candidates"]
    assert [r["experiment_id"] for r in rows] == [first]
    assert rows[0]["beats_best"] is False and rows[0]["delta_best"] == pytest.approx(0.75)
    late = run_cli("review", "accept", first, "--lab", url)
    assert late.returncode == 3 and "does not beat the best" in late.stderr
    again = run_cli("review", "accept", second, "--lab", url)
    assert again.returncode == 3 and "already promoted" in again.stderr
    unknown = run_cli("review", "accept", "9999", "--lab", url)
    assert unknown.returncode == 1 and len(unknown.stderr.strip().splitlines()) == 1
    shown = run_cli("review", "show", first, "--json", "--lab", url)
    assert shown.returncode == 0, shown.stderr
    doc = _json(shown)
    assert doc["review"]["standing"] == "candidate" and doc["patch"]
    assert doc["review"]["delta_parent"] is None  # its parent had no best yet
    text = run_cli("review", "show", first, "--lab", url)
    assert text.returncode == 0 and "review: candidate" in text.stdout


def test_a_rejected_patch_is_folded_never_promoted_and_never_proposed_again(daemon_remote):
    url = daemon_remote.url
    lab = Lab.open(url, "worker")
    (eid,) = _finished(lab, 2.0)
    usage = run_cli("review", "reject", eid, "--lab", url)  # --reason is required
    assert usage.returncode == 2
    rejected = run_cli("review", "reject", eid, "--reason", "tunes on the eval set",
                       "--agent", "bob", "--json", "--lab", url)
    assert rejected.returncode == 0, rejected.stderr
    view = lab.read()
    exp = view.state.experiments[eid]
    assert (exp.state, exp.rejected, exp.rejection, exp.rejected_by) == (
        "done", True, "tunes on the eval set", "bob")
    row = view.folded().experiments.to_pylist()[0]
    assert (row["rejected"], row["rejection"], row["rejected_by"]) == (
        True, "tunes on the eval set", "bob")
    assert exp.patch_hash in view.state.patch_hashes()
    # the same patch again: a duplicate (exit 3), by the CLI and by the protocol
    dup = run_cli("propose", "--lab", url, "--hypothesis", "X to 2 again", "--set", "X=2.0")
    assert dup.returncode == 3 and "duplicate" in dup.stderr
    assert propose_x(lab, 2.0) == [None]
    # never promoted, not a candidate, not rejected twice
    accept = run_cli("review", "accept", eid, "--lab", url)
    assert accept.returncode == 3 and "rejected by bob" in accept.stderr
    assert tx.promote(lab, eid).promoted is False
    assert run_cli("review", "list", "--lab", url).returncode == 3
    twice = run_cli("review", "reject", eid, "--reason", "again", "--lab", url)
    assert twice.returncode == 3 and "already rejected" in twice.stderr
    assert run_cli("review", "reject", "9999", "--reason", "x", "--lab", url).returncode == 1
    # proposers are told, with the reason
    from autolab.agents.proposers.context import build_context, render

    prompt = render(build_context(lab, lab.read()), 100_000)
    assert "rejected by a reviewer: tunes on the eval set" in prompt
    status = _json(run_cli("status", "--json", "--lab", url))
    assert status["review"]["rejected"] == 1 and status["review"]["candidates"] == 0


def test_required_review_holds_the_winner_until_a_reviewer_accepts_it(tmp_path, git_daemon):
    url = _gated_lab(tmp_path, git_daemon, 'review = "required"')
    assert run_cli("planner", "--once", "--lab", url, "--depth", "1").returncode == 0
    baseline = run_cli("worker", "--once", "--json", "--lab", url)
    assert baseline.returncode == 0, baseline.stderr
    # a baseline changes nothing: it is promoted without waiting
    assert "promoted" in [json.loads(line)["event"] for line in baseline.stdout.splitlines()]
    lab = Lab.open(url, "test")
    before = lab.read()
    run_cli("propose", "--lab", url, "--hypothesis", "X to 2.5", "--set", "X=2.5", check=True)
    worker = run_cli("worker", "--once", "--json", "--lab", url)
    assert worker.returncode == 0, worker.stderr
    events = [json.loads(line) for line in worker.stdout.splitlines()]
    held = [e for e in events if e["event"] == "awaiting_review"]
    assert held and not [e for e in events if e["event"] == "promoted"]
    eid = held[0]["experiment_id"]
    after = lab.read()
    assert after.state.best_metric == before.state.best_metric
    assert after.store.read_file(after.main, "experiment.py") == before.store.read_file(
        before.main, "experiment.py")  # the planner keeps building on the reviewed main
    status = _json(run_cli("status", "--json", "--lab", url))
    assert status["review"]["mode"] == "required"
    assert [r["experiment_id"] for r in status["review"]["awaiting"]] == [eid]
    assert "awaiting-review" in run_cli("status", "--lab", url).stdout
    from autolab.scoreboard.report import build

    page = build(lab.read()).html
    assert "<h2>Review</h2>" in page and "awaiting review" in page and "X to 2.5" in page
    rows = _json(run_cli("review", "list", "--json", "--lab", url))["candidates"]
    assert rows[0]["experiment_id"] == eid and rows[0]["awaiting_review"]
    assert rows[0]["delta_parent"] == pytest.approx(0.25 - 9.0)  # baseline X = 0: 9.0
    # `autolab promote` respects the gate too; `review accept` promotes
    assert run_cli("promote", eid, "--lab", url).returncode == 3
    accepted = run_cli("review", "accept", eid, "--lab", url, "--agent", "carol")
    assert accepted.returncode == 0, accepted.stderr
    final = lab.read()
    assert final.state.best["experiment_id"] == eid
    assert final.state.best["reviewer"] == "carol"
    assert "X = 2.5" in final.store.read_file(final.main, "experiment.py").decode()
    assert _json(run_cli("status", "--json", "--lab", url))["review"]["awaiting"] == []


def test_above_bar_holds_small_gains_and_sensitive_paths_only():
    def config(policy: str, paths: str = ""):
        text = BLANK_TOML.replace("min_delta = 0.0", f"min_delta = 0.0\n{policy}")
        return parse_config(text.replace('protected = ["program.md", "SKILL.md"]',
                                         f'protected = ["program.md", "SKILL.md"]\n{paths}'))

    touched = {"experiment.py"}
    bar = config('review = "above-bar"\nreview_bar = 0.5')
    assert review_hold(bar, 1.0, 0.8, touched) is not None  # gains 0.2 < 0.5
    assert review_hold(bar, 1.0, 0.4, touched) is None  # gains 0.6
    assert review_hold(bar, None, 0.8, touched) is None  # a first best has no bar
    plain = config('review = "above-bar"')  # bar 0: as "none"
    assert review_hold(plain, 1.0, 0.99, touched) is None
    sensitive = config('review = "above-bar"', 'sensitive = ["experiment.py"]')
    assert "sensitive" in (review_hold(sensitive, 1.0, 0.0, touched) or "")
    assert review_hold(sensitive, 1.0, 0.0, {"other.py"}) is None
    required = config('review = "required"')
    assert review_hold(required, 1.0, 0.0, touched) is not None
    assert review_hold(required, None, 0.0, set()) is None  # the baseline
    assert review_hold(config(""), 1.0, 0.0, touched) is None
    for bad, key in (('review = "maybe"', "policy.review"),
                     ("review_bar = -1", "policy.review_bar")):
        with pytest.raises(ConfigError, match=key):
            config(bad)


def _racers(url: str, commands: list[list[str]]) -> list[subprocess.CompletedProcess[str]]:
    """Start every command at once (real processes), then wait for all of them."""
    procs = [subprocess.Popen([sys.executable, "-m", "autolab.agents.cli", *args,
                               "--lab", url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ})
             for args in commands]
    out = []
    for args, proc in zip(commands, procs, strict=True):
        stdout, stderr = proc.communicate(timeout=240)
        out.append(subprocess.CompletedProcess(args, proc.returncode, stdout, stderr))
    return out


@pytest.mark.slow
def test_reviewers_accepting_at_once_promote_the_candidate_once(daemon_remote):
    url = daemon_remote.url
    lab = Lab.open(url, "worker")
    (eid,) = _finished(lab, 2.5)
    results = _racers(url, [["review", "accept", eid, "--agent", f"r{n}", "--note", f"n{n}"]
                            for n in range(4)])
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 3, 3, 3], [(r.returncode, r.stderr) for r in results]
    winner = next(r for r in results if r.returncode == 0)
    view = lab.read()
    assert [p["experiment_id"] for p in view.state.promotions] == [eid]
    assert view.state.promotions[0]["reviewer"] == winner.args[4]  # the winner's --agent
    merges = subprocess.run(["git", "log", "--first-parent", "--merges", "--format=%s",
                             "main"], cwd=daemon_remote.bare, capture_output=True, text=True,
                            check=True).stdout.splitlines()
    assert len([m for m in merges if m.startswith(f"promote {eid}")]) == 1


@pytest.mark.slow
def test_accept_racing_reject_one_wins_and_both_folds_agree(daemon_remote):
    url = daemon_remote.url
    lab = Lab.open(url, "worker")
    ids = _finished(lab, 2.5, 2.0)
    for eid in ids:
        results = _racers(url, [["review", "accept", eid, "--agent", "yes"],
                                ["review", "reject", eid, "--reason", "no", "--agent", "no"],
                                ["review", "accept", eid, "--agent", "yes2"],
                                ["review", "reject", eid, "--reason", "no", "--agent", "no2"]])
        assert sorted(r.returncode for r in results) == [0, 3, 3, 3], [
            (r.args, r.returncode, r.stderr) for r in results]
        view = lab.read()
        exp = view.state.experiments[eid]
        assert exp.promoted != exp.rejected  # exactly one of them happened
        assert not view.state.anomalies
        row = next(r for r in view.folded().experiments.to_pylist()
                   if r["experiment_id"] == eid)
        assert (row["promoted"], row["rejected"]) == (exp.promoted, exp.rejected)
        assert [p["experiment_id"] for p in view.state.promotions].count(eid) == int(
            exp.promoted)
        if exp.rejected:  # the losers' way back is closed too
            assert run_cli("review", "accept", eid, "--lab", url).returncode == 3
