"""Multi-process races with real processes against real remotes (DESIGN.md §4)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from autolab.protocol import transactions as tx
from autolab.protocol.lab import Lab

from .helpers import main_harness_hash, propose_x, push_branch

pytestmark = pytest.mark.slow


def _checkout_main(remote, dest: Path) -> Path:
    subprocess.run(["git", "clone", "-q", "--branch", "main", remote.url, str(dest)], check=True)
    return dest


# Sixteen experiments for eight processes: every process starts its loop at once and
# contends for each of them (the race is there from the first claim on), each wins a
# couple on average, and every loop ends on "nothing to claim". More experiments only
# make the same race longer.
CLAIMED = 16


def test_eight_processes_claim_sixteen_experiments_exactly_once(remote, tmp_path):
    _claim_with_eight_processes(remote, CLAIMED)


def test_eight_processes_claim_eight_experiments_exactly_once_over_https_and_ssh(
        served_remote):
    """The same race through a token-protected smart HTTPS host and through sshd (as many
    experiments as processes: each claim there pays a TLS or SSH handshake per git
    command; the eight still contend for every one of them)."""
    _claim_with_eight_processes(served_remote, 8)


def _claim_with_eight_processes(remote, count: int) -> None:
    lab = Lab.open(remote.url, "planner")
    ids = propose_x(lab, *[float(v) / 10 for v in range(1, count + 1)])
    assert len(set(ids)) == count
    loop = (f'while "{sys.executable}" -m autolab.agents.cli claim --json --lab "$LAB" '
            '--agent "$AGENT"; do :; done; echo "exit=${PIPESTATUS[0]}" >&2')
    procs = [
        subprocess.Popen(["bash", "-c", loop], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env={**os.environ, "LAB": remote.url, "AGENT": f"p{n}"})
        for n in range(8)
    ]
    claimed: list[tuple[str, str]] = []
    for n, proc in enumerate(procs):
        out, err = proc.communicate(timeout=240)
        assert "exit=3" in err, err  # each loop ends on "nothing to claim"
        rows = [json.loads(line) for line in out.splitlines()]
        # every claim answers with one JSON document; the last one says none was left
        assert rows and rows[-1]["claimed"] is False and rows[-1]["experiment_id"] is None
        claimed += [(row["experiment_id"], f"p{n}") for row in rows[:-1] if row["claimed"]]
        assert all(row["claimed"] for row in rows[:-1]), rows
    won = [eid for eid, _ in claimed]
    assert sorted(won) == sorted(ids)  # all of them, each exactly once
    assert len({agent for _, agent in claimed}) > 1  # the processes really contended
    lab.fold(always=True)
    state = lab.read().state
    assert not state.anomalies
    assert {e.id: e.agent for e in state.experiments.values()} == dict(claimed)
    assert all(e.state == "claimed" and e.attempt == 1 for e in state.experiments.values())


def _submit_all(url: str, cache: str, agent: str, items: list[tuple[str, float]],
                barrier) -> list[str]:
    os.environ["AUTOLAB_CACHE"] = cache
    # Fewer than the records already pending (the claims): submits fold into main as
    # they go, racing each other's folds and record pushes (as the default threshold,
    # 64, does in a lab with more records).
    lab = Lab.open(url, agent, fold_threshold=16)
    lab.read()
    barrier.wait()
    outcomes = []
    for eid, metric in items:
        score = tx.make_score(eid, 1, status="ok", metric=metric, agent=agent)
        outcomes.append(tx.submit(lab, score).outcome)
    return outcomes


def test_eight_processes_submit_thirty_two_scores_all_land_on_main(remote, tmp_path):
    """Four scores from each of eight processes started at once (a barrier): their
    record pushes overlap, and none is lost or reordered on main. More scores per
    process only make the same race longer."""
    count = 32
    lab = Lab.open(remote.url, "setup", fold_threshold=10_000)
    propose_x(lab, *[float(v) / 10 for v in range(1, count + 1)])
    claims = [tx.claim(lab) for _ in range(count)]
    ctx = mp.get_context("spawn")
    barrier = ctx.Manager().Barrier(8)
    chunks = [[(c.experiment_id, float(i)) for i, c in enumerate(claims) if i % 8 == n]
              for n in range(8)]
    with ctx.Pool(8) as pool:
        results = pool.starmap(_submit_all, [
            (remote.url, os.environ["AUTOLAB_CACHE"], f"s{n}", chunk, barrier)
            for n, chunk in enumerate(chunks)
        ])
    assert [o for r in results for o in r] == ["recorded"] * count
    lab.fold(always=True)
    main = _checkout_main(remote, tmp_path / "main")
    con = duckdb.connect()
    rows = con.execute(
        f"SELECT experiment_id, metric FROM read_parquet('{main}/.autolab/scores/*.parquet')"
    ).fetchall()
    assert len(rows) == count
    expected = {c.experiment_id: float(i) for i, c in enumerate(claims)}
    assert dict(rows) == expected
    seqs = con.execute(
        f"SELECT count(DISTINCT seq), min(seq) > 0 FROM "
        f"read_parquet('{main}/.autolab/*/*.parquet', union_by_name=true)").fetchone()
    total = con.execute(
        f"SELECT count(*) FROM read_parquet('{main}/.autolab/*/*.parquet', union_by_name=true)"
    ).fetchone()[0]
    assert seqs == (total, True)  # one total order over every row on main


def _promote(url: str, cache: str, experiment_id: str, barrier) -> bool:
    os.environ["AUTOLAB_CACHE"] = cache
    lab = Lab.open(url, f"promoter-{experiment_id}")
    lab.read()
    barrier.wait()
    return tx.promote(lab, experiment_id).promoted


@pytest.mark.parametrize("better_first", [True, False])
def test_two_processes_promote_at_once_main_ends_with_the_better(remote, tmp_path, better_first):
    lab = Lab.open(remote.url, "worker")
    propose_x(lab, 2.0, 2.5)  # scores (X-3)^2: 1.0 and 0.25
    claims = {c.experiment_id: c for c in (tx.claim(lab), tx.claim(lab))}
    heads = {}
    for eid, x in (("0001", 2.0), ("0002", 2.5)):
        heads[eid] = push_branch(lab, eid, x)
        score = tx.make_score(eid, claims[eid].attempt, status="ok", metric=(x - 3) ** 2,
                              branch_commit=heads[eid], harness_hash=main_harness_hash(lab))
        tx.submit(lab, score)
    order = ["0002", "0001"] if better_first else ["0001", "0002"]
    ctx = mp.get_context("spawn")
    barrier = ctx.Manager().Barrier(2)
    with ctx.Pool(2) as pool:
        done = pool.starmap(_promote, [(remote.url, os.environ["AUTOLAB_CACHE"], eid, barrier)
                                       for eid in order])
    assert done[order.index("0002")] is True  # the better one always ends up promoted
    state = lab.read().state
    assert state.best["experiment_id"] == "0002" and state.best_metric == 0.25
    assert sorted(s["metric"] for s in state.scores) == [0.25, 1.0]
    assert remote.git("show", "main:experiment.py") == remote.git(
        "show", f"{heads['0002']}:experiment.py")
    metrics = [p["metric"] for p in state.promotions]
    assert metrics == sorted(metrics, reverse=True)  # every promotion improved on the last


def _propose_many(url: str, cache: str, agent: str, count: int, barrier
                  ) -> tuple[list[str], int]:
    os.environ["AUTOLAB_CACHE"] = cache
    from .conftest import knob_patch_text

    lab = Lab.open(url, agent)
    lab.read()
    barrier.wait()
    ids: list[str] = []
    for n in range(count):
        # A distinct patch per proposal (X = 0.01 ... 1.60), each its own commit.
        value = (int(agent[1:]) * count + n + 1) / 100
        [eid] = tx.propose(lab, [tx.Proposal(f"{agent} #{n}", knob_patch_text(value))])
        assert eid is not None
        ids.append(eid)
    return ids, lab.stats["conflicts"]


def test_sixteen_processes_proposing_at_once_all_land(daemon_remote, tmp_path):
    """Lost races for main are never an error while time is left (a deadline, not a count
    of lost races): every proposal lands, under contention of 16 processes (each with
    its own cache, so they do not take turns at main: they race). Two proposals each:
    the last of 32 commits to land has lost many races first; more per process only
    make the same race longer."""
    remote = daemon_remote
    procs, count = 16, 2
    ctx = mp.get_context("spawn")
    barrier = ctx.Manager().Barrier(procs)
    with ctx.Pool(procs) as pool:
        results = [pool.apply_async(_propose_many, (remote.url, str(tmp_path / f"c{n}"),
                                                    f"p{n}", count, barrier))
                   for n in range(procs)]
        done = [r.get(timeout=600) for r in results]
    ids = [eid for got, _ in done for eid in got]
    lost = [conflicts for _, conflicts in done]
    assert max(lost) >= 3, lost  # main was contended: a process lost races and went on
    assert len(ids) == procs * count and len(set(ids)) == procs * count
    state = Lab.open(remote.url, "check").read().state
    assert sorted(state.experiments) == sorted(ids)
