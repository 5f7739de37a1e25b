"""Concurrent reapers and compactors (real processes): each expired lease is reaped
once, compaction loses no row, and the folded state is the same before and after."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections import Counter

import pytest

from autolab.protocol import transactions as tx
from autolab.protocol.lab import Lab

from .helpers import propose_x

pytestmark = pytest.mark.slow


def _reap_and_compact(url: str, cache: str, agent: str, barrier) -> int:
    os.environ["AUTOLAB_CACHE"] = cache
    lab = Lab.open(url, agent)
    lab.read()
    barrier.wait()
    reaped = 0
    for _ in range(3):
        reaped += len(tx.reap(lab))
        lab.fold(always=True)
        tx.compact(lab)
    return reaped


def _signature(view):
    state = view.state
    return ({k: e.to_dict() for k, e in state.experiments.items()},
            sorted(s["event_id"] for s in state.scores), state.promotions)


def test_concurrent_reapers_and_compactors(remote, tmp_path):
    lab = Lab.open(remote.url, "setup", fold_threshold=10_000)
    for start in range(0, 24, 4):  # several proposal shards on main
        propose_x(lab, *[float(v) / 10 for v in range(start + 1, start + 5)])
    for _ in range(12):
        tx.claim(lab, lease_seconds=0.2)
    won = tx.claim(lab)  # a long lease: must not be reaped
    finished = tx.claim(lab, lease_seconds=0.2)
    tx.submit(lab, tx.make_score(finished.experiment_id, 1, status="ok", metric=1.0))
    time.sleep(0.5)
    before = lab.read()
    rows_before = {t: before.table(t).num_rows for t in ("queue", "scores")}

    ctx = mp.get_context("spawn")
    barrier = ctx.Manager().Barrier(4)
    with ctx.Pool(4) as pool:
        counts = pool.starmap(_reap_and_compact, [
            (remote.url, os.environ["AUTOLAB_CACHE"], f"reporter{n}", barrier) for n in range(4)
        ])
    assert sum(counts) == 12  # each expired lease reaped exactly once, across processes

    lab.fold(always=True)
    after = lab.read()
    expired = Counter((r["experiment_id"], r["attempt"])
                      for r in after.table("queue").to_pylist() if r["event"] == "expired")
    assert len(expired) == 12 and set(expired.values()) == {1}
    assert after.table("queue").num_rows == rows_before["queue"] + 12  # no row lost
    assert after.table("scores").num_rows == rows_before["scores"]
    assert after.state.experiments[won.experiment_id].state == "claimed"
    assert after.state.experiments[finished.experiment_id].state == "done"
    assert sum(e.state == "queued" for e in after.state.experiments.values()) == 22

    signature = _signature(after)
    tx.compact(lab)
    compacted = lab.read()
    assert {t: len(f) for t, f in compacted.main_shards.items() if f} == {"queue": 1,
                                                                          "scores": 1}
    assert _signature(compacted) == signature
    seqs = compacted.table("queue").column("seq").to_pylist()
    assert len(set(seqs)) == len(seqs) and None not in seqs
