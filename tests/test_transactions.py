"""Transactions against real remotes: propose, claim, submit, reap, promote, compact."""

from __future__ import annotations

import subprocess
import time
from datetime import timedelta

import pytest

from autolab.protocol import transactions as tx
from autolab.protocol.errors import NothingToDo, PatchError, ResultMismatch
from autolab.protocol.lab import Lab, now

from .helpers import finish, propose_x


def test_propose_dedups_by_normalized_patch(remote):
    lab = Lab.open(remote.url, "planner")
    assert propose_x(lab, 1.0, 2.0) == ["0001", "0002"]
    assert propose_x(lab, 2.0, 4.0) == [None, "0003"]  # 2.0 is a duplicate
    # The same edit with other context and line numbers (git finds it at an offset) is
    # still a duplicate.
    patch = ("--- a/experiment.py\n+++ b/experiment.py\n@@ -9,3 +9,3 @@\n \n-X = 0.0\n+X = 1.0\n"
             " \n")
    assert tx.propose(lab, [tx.Proposal("again", patch)]) == [None]
    state = lab.read().state
    assert [e.state for e in state.experiments.values()] == ["queued"] * 3


@pytest.mark.parametrize("patch, match", [
    ("--- a/program.md\n+++ b/program.md\n@@ -1 +1 @@\n-a\n+b\n", "program.md: protected path"),
    ("--- a/autolab.toml\n+++ b/autolab.toml\n@@ -1 +1 @@\n-a\n+b\n", "protected"),
    ("--- a/.autolab/queue/x\n+++ b/.autolab/queue/x\n@@ -1 +1 @@\n-a\n+b\n", "state"),
    ("--- a/other.py\n+++ b/other.py\n@@ -1 +1 @@\n-a\n+b\n", "not an editable path"),
    ("just some text", "not a unified diff"),
    ("--- a/experiment.py\n+++ b/experiment.py\n@@ -1 +1 @@\n-a\n+" + "x" * 300_000 + "\n",
     "the limit is"),
])
def test_propose_refuses_bad_patches(remote, patch, match):
    lab = Lab.open(remote.url, "planner")
    before = remote.main()
    with pytest.raises(PatchError, match=match):
        tx.propose(lab, [tx.Proposal("bad", patch)])
    assert remote.main() == before


def test_claim_submit_is_idempotent_and_mismatch_fails(remote):
    lab = Lab.open(remote.url, "worker")
    propose_x(lab, 1.0)
    won = tx.claim(lab)
    assert (won.experiment_id, won.attempt) == ("0001", 1)
    with pytest.raises(NothingToDo):
        tx.claim(lab)
    score = tx.make_score("0001", 1, status="ok", metric=4.0, metrics={"score": 4.0})
    assert tx.submit(lab, score).outcome == "recorded"
    assert tx.submit(lab, score).outcome == "duplicate"
    other = tx.make_score("0001", 1, status="ok", metric=5.0)
    with pytest.raises(ResultMismatch):
        tx.submit(lab, other)
    lab.fold(always=True)
    state = lab.read().state
    assert state.experiments["0001"].state == "done"
    assert [s["metric"] for s in state.scores] == [4.0]


def test_nan_metric_is_invalid(remote):
    lab = Lab.open(remote.url, "worker")
    propose_x(lab, 1.0)
    won = tx.claim(lab)
    score = tx.make_score(won.experiment_id, won.attempt, status="ok", metric=float("nan"))
    tx.submit(lab, score)
    result = lab.read().state.experiments["0001"].result
    assert result["status"] == "invalid" and result["metric"] is None
    assert "nan" in result["reason"]


def test_reap_requeues_then_fails_after_max_attempts_and_late_result(remote):
    lab = Lab.open(remote.url, "worker")
    propose_x(lab, 1.0)
    later = now() + timedelta(hours=1)
    for attempt in (1, 2, 3):  # the blank lab has max_attempts = 3
        won = tx.claim(lab)
        assert won.attempt == attempt
        reaped = tx.reap(lab, at=later)
        assert [(r.experiment_id, r.attempt) for r in reaped] == [("0001", attempt)]
        assert tx.reap(lab, at=later) == []  # each lease is reaped once
    exp = lab.read().state.experiments["0001"]
    assert exp.state == "failed" and "max_attempts" in exp.reason
    # The stale worker of attempt 3 submits after its lease was reaped: kept, late.
    score = tx.make_score("0001", 3, status="ok", metric=4.0)
    assert tx.submit(lab, score).outcome == "late"
    assert tx.submit(lab, score).outcome == "duplicate"
    state = lab.read().state
    assert state.experiments["0001"].state == "failed"
    assert [s["late"] for s in state.scores] == [True]
    assert tx.promote(lab, "0001").promoted is False


def test_released_attempts_do_not_count_toward_max_attempts(remote):
    lab = Lab.open(remote.url, "worker")
    propose_x(lab, 1.0)
    for _ in range(3):  # three workers stopped (or restarted) while holding it
        won = tx.claim(lab)
        assert tx.release(lab, won.experiment_id, won.attempt, "worker stopped")
    later = now() + timedelta(hours=1)
    events = []
    for _ in range(3):
        won = tx.claim(lab)
        events += [r.event for r in tx.reap(lab, at=later)]
    assert won.attempt == 6
    assert events == ["expired", "expired", "failed"]


def test_stale_attempt_after_reclaim_is_late_and_current_counts(remote):
    lab = Lab.open(remote.url, "worker")
    propose_x(lab, 2.0)
    first = tx.claim(lab)
    tx.reap(lab, at=now() + timedelta(hours=1))
    second = tx.claim(lab)
    assert second.attempt == 2
    stale = tx.make_score("0001", first.attempt, status="ok", metric=1.0)
    assert tx.submit(lab, stale).outcome == "late"
    finish(lab, second, 2.0)
    state = lab.read().state
    exp = state.experiments["0001"]
    assert exp.state == "done" and exp.result["attempt"] == 2
    assert state.best["attempt"] == 2


def test_promote_is_a_merge_with_the_experiments_editable_files(remote, tmp_path):
    lab = Lab.open(remote.url, "worker")
    propose_x(lab, 2.0, 5.5)
    claims = {c.experiment_id: c for c in (tx.claim(lab), tx.claim(lab))}
    good = finish(lab, claims["0001"], 2.0)  # score 1
    assert good.promoted, good.reason
    worse = finish(lab, claims["0002"], 5.5)  # score 6.25: not better
    assert not worse.promoted and "does not beat" in worse.reason
    main = remote.main()
    parents = remote.git("rev-list", "--parents", "-n", "1", main).split()[1:]
    assert len(parents) == 2
    assert parents[1] == remote.git("rev-parse", "refs/heads/autolab/exp/0001")
    assert remote.git("show", f"{main}:experiment.py") == remote.git(
        "show", "refs/heads/autolab/exp/0001:experiment.py")
    state = lab.read().state
    assert [p["experiment_id"] for p in state.promotions] == ["0001"]
    assert state.best_metric == 1.0
    log = subprocess.run(["git", "log", "--first-parent", "--format=%s", "main"],
                         cwd=remote.bare, capture_output=True, text=True).stdout
    assert "promote 0001" in log


def test_compaction_keeps_every_row_and_the_state(remote):
    lab = Lab.open(remote.url, "worker")
    propose_x(lab, 1.0, 2.0, 4.0)
    propose_x(lab, 5.0)
    for _ in range(3):
        finish(lab, tx.claim(lab), 2.0, promote=False)
    lab.fold(always=True)
    before = lab.read()
    rows = {t: before.table(t).num_rows for t in ("queue", "scores")}
    report = tx.compact(lab)
    assert report.commit is not None
    after = lab.read()
    assert {t: len(f) for t, f in after.main_shards.items() if f} == {"queue": 1, "scores": 1}
    assert {t: after.table(t).num_rows for t in ("queue", "scores")} == rows
    assert after.table("queue").to_pylist() == before.table("queue").to_pylist()
    assert _summary(after.state) == _summary(before.state)


def _summary(state):
    return ({k: e.to_dict() for k, e in state.experiments.items()}, state.promotions,
            [{k: v for k, v in s.items() if k != "_order"} for s in state.scores], state.max_seq)


def test_folded_record_refs_are_deleted_after_the_grace_period(remote):
    lab = Lab.open(remote.url, "worker", ref_grace=0.0)
    propose_x(lab, 1.0, 2.0)
    finish(lab, tx.claim(lab), 2.0, promote=False)
    tx.claim(lab)
    before = lab.read()
    assert len(before.records) == 3 and len(before.pending) == 3
    lab.fold(before, always=True)  # rows onto main; the refs stay until seen folded
    middle = lab.read()
    assert len(middle.records) == 3 and not middle.pending
    lab.fold(middle, always=True)
    after = lab.read()
    assert after.records == [] and remote.git("for-each-ref", "refs/autolab") == ""
    assert {k: e.to_dict() for k, e in after.state.experiments.items()} == {
        k: e.to_dict() for k, e in before.state.experiments.items()}


def test_score_with_another_harness_is_never_promoted(remote):
    lab = Lab.open(remote.url, "worker")
    propose_x(lab, 2.0)
    won = tx.claim(lab)
    from .helpers import push_branch

    head = push_branch(lab, won.experiment_id, 2.0)
    score = tx.make_score(won.experiment_id, won.attempt, status="ok", metric=1.0,
                          branch_commit=head, harness_hash="0" * 32)
    tx.submit(lab, score)
    outcome = tx.promote(lab, won.experiment_id)
    assert not outcome.promoted and "harness" in outcome.reason
    assert lab.read().state.promotions == []


def test_grace_runs_from_when_the_fold_was_seen_not_from_the_records_age(remote):
    lab = Lab.open(remote.url, "reporter", ref_grace=1.0)
    propose_x(lab, 1.0)
    tx.claim(lab)
    time.sleep(1.2)  # the record is older than the grace before it is even folded
    lab.fold(always=True)
    assert lab.delete_folded(lab.read()) == []  # just seen on main: kept
    time.sleep(1.1)
    assert lab.delete_folded(lab.read()) == ["refs/autolab/claims/0001/1"]
    assert lab.read().state.experiments["0001"].state == "claimed"
