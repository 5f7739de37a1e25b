"""The review queue: what ``autolab review list`` prints and ``status`` and ``report`` sum up.

A candidate is an experiment that finished with an ``ok`` result and was neither
promoted nor rejected. Each carries its metric's deltas against the best its parent
commit had (what it set out to beat) and against the current best (negative is
better for a ``min`` metric), whether it beats the current best by the lab's policy,
and, if it does, whether the lab's review gate holds it (``awaiting_review``: its
worker did not promote it; ``autolab review accept`` does).
"""

from __future__ import annotations

from typing import Any

import pyarrow.compute as pc

from autolab.protocol.patches import header_paths
from autolab.protocol.reader import LabView
from autolab.protocol.review import changed_paths, review_hold

_COLUMNS = ["experiment_id", "hypothesis", "metric", "parent_commit", "agent",
            "result_event_id", "patch_hash", "attempt"]


def candidates(view: LabView, *, winners_only: bool = False) -> list[dict[str, Any]]:
    """Finished, unpromoted, unrejected experiments, best first.

    Args:
        winners_only: only those that beat the current best (cheaper: no lineage walk,
            ``parent_best`` left None).

    Each row: ``experiment_id``, ``hypothesis``, ``metric``, ``attempt``, ``agent``
    (who ran it), ``parent_commit``, ``parent_best``, ``delta_parent``, ``best``,
    ``delta_best``, ``beats_best``, ``awaiting_review``, ``hold`` (why the gate holds it).
    """
    config, folded = view.config, view.folded()
    exps = folded.experiments
    mask = pc.and_(pc.and_(pc.equal(exps.column("state"), "done"),
                           pc.equal(exps.column("status"), "ok")),
                   pc.and_(pc.invert(exps.column("promoted")),
                           pc.invert(pc.fill_null(exps.column("rejected"), False))))
    promotions = folded.promotions
    best = promotions.column("metric")[-1].as_py() if promotions.num_rows else None
    if winners_only and best is not None:  # narrowed in arrow: status calls this in loops
        beats = (pc.less(exps.column("metric"), best) if config.direction == "min"
                 else pc.greater(exps.column("metric"), best))
        mask = pc.and_(mask, beats)
    rows = [r for r in exps.filter(pc.fill_null(mask, False)).select(_COLUMNS).to_pylist()
            if r["metric"] is not None]
    for row in rows:
        row["beats_best"] = config.better(row["metric"], best)
    if winners_only:
        rows = [r for r in rows if r["beats_best"]]
    parents: dict[str, float | None] = {}
    if not winners_only:
        from autolab.scoreboard.lineage import best_at

        parents = best_at(view, {r["parent_commit"] for r in rows if r["parent_commit"]})
    heads = _branch_commits(folded.scores, [r["result_event_id"] for r in rows])
    patches: dict[str, str] = {}
    for row in rows:
        parent_best = parents.get(row["parent_commit"] or "")
        row.update(
            parent_best=parent_best, best=best,
            delta_parent=None if parent_best is None else row["metric"] - parent_best,
            delta_best=None if best is None else row["metric"] - best,
            branch_commit=heads.get(row["result_event_id"]), awaiting_review=False, hold=None)
        if row["beats_best"] and config.policy.review != "none":
            if not patches:
                ids = [r["experiment_id"] for r in rows if r["beats_best"]]
                patches = dict(zip(ids, view.patches(ids), strict=True))
            paths = _paths(view, row, patches.get(row["experiment_id"], ""))
            row["hold"] = review_hold(config, best, row["metric"], paths)
            row["awaiting_review"] = row["hold"] is not None
        del row["result_event_id"], row["patch_hash"]
    rows.sort(key=lambda r: r["metric"], reverse=config.direction == "max")
    return rows


def review_queue(view: LabView) -> dict[str, Any]:
    """The queue's summary for ``status`` and ``report``: the lab's review mode, how
    many candidates there are, and the winners waiting for a reviewer."""
    exps = view.folded().experiments
    waiting = candidates(view, winners_only=True)
    done_ok = pc.and_(pc.equal(exps.column("state"), "done"),
                      pc.equal(exps.column("status"), "ok"))
    open_ = pc.and_(done_ok, pc.and_(pc.invert(exps.column("promoted")),
                                    pc.invert(pc.fill_null(exps.column("rejected"), False))))
    return {
        "mode": view.config.policy.review,
        "candidates": int(pc.sum(pc.fill_null(open_, False).cast("int64")).as_py() or 0),
        "rejected": int(pc.sum(pc.fill_null(exps.column("rejected"), False).cast("int64"))
                        .as_py() or 0),
        "awaiting": [{k: r[k] for k in ("experiment_id", "metric", "delta_best", "hold",
                                        "hypothesis")}
                     for r in waiting if r["awaiting_review"]],
    }


def _branch_commits(scores: Any, event_ids: list[str | None]) -> dict[str, str | None]:
    wanted = [e for e in event_ids if e]
    if not wanted:
        return {}
    import pyarrow as pa

    found = scores.filter(pc.is_in(scores.column("event_id"),
                                   value_set=pa.array(wanted, pa.string())))
    return dict(zip(found.column("event_id").to_pylist(),
                    found.column("branch_commit").to_pylist(), strict=True))


def _paths(view: LabView, row: dict[str, Any], patch: str) -> set[str] | None:
    """What the candidate changes: from its result commit when it is here, else from
    its patch's headers (an open experiment's patch is empty: unknown)."""
    head = row["branch_commit"]
    if head and view.store.has_commit(head):
        try:
            return changed_paths(view.store, row["parent_commit"], head)
        except (KeyError, ValueError):
            pass
    return set(header_paths(patch)) if patch else None
