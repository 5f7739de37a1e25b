"""The columnar fold equals the row fold: ``fold_columns`` against ``state_tables(fold())``
on random row streams (anomalies, ties, late scores, unknown events included) and on a
real lab's rows."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from autolab.protocol.columnar_fold import fold_columns
from autolab.protocol.lab import Lab
from autolab.protocol.schemas import SCHEMAS
from autolab.protocol.state import fold, state_tables

from .test_fold import _busy_lab

_T0 = datetime(2026, 1, 1, tzinfo=UTC)
_EVENTS = ["proposed"] * 4 + ["claimed"] * 5 + ["released", "expired", "failed", "cancelled",
                                                "promoted", "rejected", "launched",
                                                "renamed"] * 2


def _maybe(rng: random.Random, value, p: float = 0.3):
    return None if rng.random() < p else value


def _random_rows(rng: random.Random, count: int) -> tuple[list[dict], list[dict], list[dict]]:
    experiments = [f"e{i}" for i in range(rng.randint(1, 12))]
    seqs = list(range(1, count + 1))
    if rng.random() < 0.5:  # ties: rows sharing a seq are ordered by event id, then kind
        seqs = [rng.randint(1, max(1, count // 3)) for _ in range(count)]
    queue, scores, ideas = [], [], []
    for i, seq in enumerate(seqs):
        eid = rng.choice(experiments)
        at = _T0 + timedelta(seconds=rng.randint(0, 10**6))
        common = {"seq": seq, "event_id": f"{rng.randrange(16**6):06x}-{i}", "schema_version": 2}
        kind = rng.random()
        if kind < 0.65:
            queue.append({
                **common, "experiment_id": eid, "event": rng.choice(_EVENTS),
                "attempt": _maybe(rng, rng.randint(1, 3), 0.15),
                "agent": _maybe(rng, rng.choice(["a", "b", "c"]), 0.1), "at": _maybe(rng, at),
                "lease_until": _maybe(rng, at + timedelta(minutes=5)),
                "parent_commit": _maybe(rng, f"p{rng.randint(0, 3)}"),
                "patch": _maybe(rng, f"patch {i}"), "patch_hash": _maybe(rng, f"h{i}"),
                "hypothesis": _maybe(rng, f"idea {i}"), "priority": _maybe(rng, rng.random()),
                "reason": _maybe(rng, f"why {i}"), "metric": _maybe(rng, rng.random()),
                "source_commit": _maybe(rng, f"s{i}"), "backend": _maybe(rng, "local"),
                "job_id": _maybe(rng, f"job{i}"), "cost_usd": _maybe(rng, 0.5, 0.8),
                "reviewer": _maybe(rng, rng.choice(["r1", "r2"]), 0.5),
                "note": _maybe(rng, f"note {i}", 0.5),
            })
        elif kind < 0.95:
            scores.append({
                **common, "experiment_id": eid, "attempt": rng.randint(1, 3),
                "agent": rng.choice(["a", "b"]), "parent_commit": "p0",
                "branch_commit": f"b{i}", "metric": _maybe(rng, rng.random()),
                "metrics": _maybe(rng, [("loss", rng.random())]),
                "status": rng.choice(["ok", "crash", "timeout", "invalid"]),
                "reason": _maybe(rng, f"score why {i}"), "runtime_s": rng.random(),
                "backend": "local", "job_id": None, "harness_hash": "hh", "patch_hash": f"h{i}",
                "started_at": at, "finished_at": _maybe(rng, at), "late": rng.choice(
                    [True, False, False, None]), "result_digest": f"d{i}", "flavor": None,
                "job_seconds": None, "cost_usd": None, "log_ref": None,
            })
        else:
            ideas.append({**common, "idea_id": f"i{i}", "agent": "a", "at": at,
                          "title": f"t{i}", "body": "b", "source": None, "tags": ["x"]})
    return queue, scores, ideas


def _table(name: str, rows: list[dict]) -> pa.Table:
    schema = SCHEMAS[name]
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows],
                                schema=schema)


def _by_rows(rows: dict[str, list[dict]]) -> dict[str, list[dict]]:
    return {t: [{**r, "_order": (0, r["seq"], r["event_id"])} for r in rows[t]] for t in rows}


def _assert_same(expected, got) -> None:
    for name in ("experiments", "scores", "promotions", "ideas", "anomalies", "charges"):
        want, have = getattr(expected, name), getattr(got, name)
        assert have.schema.equals(want.schema), name
        assert have.equals(want), (name, want.to_pylist()[:5], have.to_pylist()[:5])
    assert (got.main, got.max_seq) == (expected.main, expected.max_seq)


@pytest.mark.parametrize("seed", range(300))
def test_columnar_fold_equals_row_fold_on_random_streams(seed):
    rng = random.Random(seed)
    queue, scores, ideas = _random_rows(rng, rng.choice([5, 40, 200]))
    rows = _by_rows({"queue": queue, "scores": scores, "ideas": ideas})
    expected = state_tables(fold("m", 7, rows["queue"], rows["scores"], rows["ideas"]))
    shuffled = {t: rng.sample(r, len(r)) for t, r in (("queue", queue), ("scores", scores),
                                                      ("ideas", ideas))}
    got = fold_columns("m", 7, *(_table(t, shuffled[t]) for t in ("queue", "scores", "ideas")))
    _assert_same(expected, got)


def test_random_streams_reach_every_branch_of_the_fold():
    """The random streams above are worth something only if they make the fold take
    each kind of decision; count them over the seeds used."""
    seen = {"done": 0, "failed": 0, "cancelled": 0, "claimed": 0, "late": 0, "current": 0,
            "anomaly": 0, "promoted": 0}
    for seed in range(300):
        rng = random.Random(seed)
        queue, scores, ideas = _random_rows(rng, rng.choice([5, 40, 200]))
        rows = _by_rows({"queue": queue, "scores": scores, "ideas": ideas})
        state = fold("m", 7, rows["queue"], rows["scores"], rows["ideas"])
        for exp in state.experiments.values():
            if exp.state in seen:
                seen[exp.state] += 1
            seen["promoted"] += exp.promoted
        seen["late"] += sum(s["late"] for s in state.scores)
        seen["current"] += sum(not s["late"] for s in state.scores)
        seen["anomaly"] += len(state.anomalies)
    assert all(count >= 20 for count in seen.values()), seen


def test_columnar_fold_equals_row_fold_on_a_real_lab(daemon_remote):
    lab: Lab = _busy_lab(daemon_remote.url)
    view = lab.read()
    fold_ = view._fold
    main = {t: fold_.main_table(lab.store, t) for t in ("queue", "scores", "ideas")}
    got = fold_columns(view.main, view.max_seq, main["queue"], main["scores"], main["ideas"])
    _assert_same(state_tables(fold_.state, main["scores"]), got)
    assert got.experiments.num_rows == 5
    assert set(got.experiments.column("state").to_pylist()) >= {"done", "claimed", "cancelled"}


def test_lean_fold_then_patches_and_state_in_a_new_process(daemon_remote):
    """A scoreboard read folds lean (no patches decoded); patches and the row state are
    still there when asked for, in the same process, and agree with each other."""
    from autolab.protocol import main_fold, shard_cache

    _busy_lab(daemon_remote.url)
    main_fold._folds.clear()
    shard_cache._tables.clear()
    view = Lab.open(daemon_remote.url, "reader").read()
    folded = view.folded()
    assert "patch" not in folded.experiments.column_names
    cached = list(shard_cache._tables.values())
    assert cached and not any("patch" in t.column_names for t in cached)  # no patch decoded
    ids = folded.experiments.column("experiment_id").to_pylist()
    patches = view.patches([*ids, "no-such-experiment"])
    assert patches[-1] == ""
    state = view.state
    assert patches[:-1] == [state.experiments[i].patch for i in ids]
    assert all(p.startswith("--- a/") or "diff" in p for p in patches[:-1]), patches[0][:80]


def test_columnar_fold_refuses_rows_without_seq():
    queue, scores, ideas = _random_rows(random.Random(1), 20)
    queue[0]["seq"] = None
    with pytest.raises(ValueError, match="without seq"):
        fold_columns("m", 7, _table("queue", queue), _table("scores", scores),
                     _table("ideas", ideas))
