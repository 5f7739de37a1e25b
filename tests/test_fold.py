"""The state is a deterministic fold: the same rows give the same state whatever the
order their shards are listed or read in."""

from __future__ import annotations

import random
from datetime import timedelta

from autolab.protocol import transactions as tx
from autolab.protocol.lab import Lab, now
from autolab.protocol.reader import read_view
from autolab.protocol.state import fold

from .helpers import finish, propose_x


def _signature(state):
    return (
        {k: e.to_dict() for k, e in state.experiments.items()},
        state.promotions,
        sorted((s["event_id"], s["late"]) for s in state.scores),
        state.max_seq,
    )


def _busy_lab(url: str) -> Lab:
    lab = Lab.open(url, "agent")
    propose_x(lab, 1.0, 2.0, 2.5, 4.0, 6.0)
    finish(lab, tx.claim(lab, experiment_id="0002"), 2.0)
    finish(lab, tx.claim(lab, experiment_id="0003"), 2.5)
    tx.claim(lab, experiment_id="0001")
    tx.reap(lab, at=now() + timedelta(hours=1))
    tx.claim(lab, experiment_id="0001")
    tx.cancel(lab, "0005", "not worth it")
    tx.claim(lab, experiment_id="0004")
    return lab


def test_fold_is_independent_of_row_and_file_order(daemon_remote):
    lab = _busy_lab(daemon_remote.url)
    lab.fold(always=True)
    view = lab.read()
    rows = {t: [dict(r) for r in view._rows[t]] for t in ("queue", "scores", "ideas")}
    reference = _signature(view.state)
    rng = random.Random(7)
    for _ in range(20):
        shuffled = {t: rng.sample(r, len(r)) for t, r in rows.items()}
        again = fold(view.main, view.state.max_seq, shuffled["queue"], shuffled["scores"],
                     shuffled["ideas"])
        assert _signature(again) == reference
    exp = view.state.experiments
    assert [exp[i].state for i in ("0001", "0002", "0003", "0004", "0005")] == [
        "claimed", "done", "done", "claimed", "cancelled"]
    assert exp["0001"].attempt == 2
    assert view.state.best["experiment_id"] == "0003"


def test_listing_order_of_shards_does_not_matter(daemon_remote):
    lab = _busy_lab(daemon_remote.url)
    view = lab.read()
    assert view.pending  # some rows still live in record refs

    class Reordered(type(lab.store)):
        def list_dir(self, commit, path):
            items = list(super().list_dir(commit, path).items())
            random.Random(path).shuffle(items)
            return dict(reversed(items))

    other = Reordered(daemon_remote.url)
    snapshot = other.refresh()
    snapshot = type(snapshot)(snapshot.main, dict(reversed(list(snapshot.records.items()))),
                              snapshot.fetched_at)
    assert _signature(read_view(other, snapshot).state) == _signature(view.state)
    # and folding every record onto main changes nothing either
    lab.fold(view, always=True)
    assert _signature(lab.read().state)[:3] == _signature(view.state)[:3]
