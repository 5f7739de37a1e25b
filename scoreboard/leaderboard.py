"""``autolab leaderboard``: finished experiments ranked by the lab's metric.

One row per experiment whose result is ``ok`` with a metric, best first (the lab's
metric direction decides). JSON shape (``--json``)::

    [{"rank": int, "experiment_id": str, "attempt": int, "metric": float,
      "parent_best": float | null, "delta": float | null, "hypothesis": str,
      "agent": str | null, "runtime_s": float | null, "promoted": bool}]

``parent_best`` is the best metric on ``main`` when the experiment's parent commit was
``main``: that of the promotion in force at its ``parent_commit`` (null before the
first promotion, or when the parent is not on ``main``'s first-parent history);
``delta`` is ``metric - parent_best`` (negative is better when the direction is min).
``agent`` and ``runtime_s`` are the result's: who ran it and for how long.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from autolab.protocol.reader import LabView


def leaderboard(view: LabView, limit: int = 10, *, deltas: bool = True) -> list[dict[str, Any]]:
    """The ``limit`` best ``ok`` results (shape: module docstring).

    Args:
        deltas: compute ``parent_best`` and ``delta`` (walks ``main``'s history).
    """
    exps = view.folded().experiments
    ok = pc.indices_nonzero(pc.fill_null(pc.and_(pc.equal(exps.column("status"), "ok"),
                                                 pc.is_valid(exps.column("metric"))), False))
    order = "descending" if view.config.direction == "max" else "ascending"
    # Rank only the columns that decide the order (not 10^5 patches); ties go to the
    # earlier experiment (ids grow with proposal order).
    keys = pa.table({"metric": exps.column("metric").take(ok),
                     "experiment_id": exps.column("experiment_id").take(ok), "row": ok})
    best = pc.select_k_unstable(keys, k=min(max(limit, 0), keys.num_rows), sort_keys=[
        ("metric", order), ("experiment_id", "ascending")]) if keys.num_rows else []
    top = exps.take(keys.column("row").take(best)) if len(best) else exps.slice(0, 0)
    rows = top.select(["experiment_id", "attempt", "metric", "hypothesis", "promoted",
                       "parent_commit", "result_event_id"]).to_pylist()
    results = _results(view, [r["result_event_id"] for r in rows])
    parents: dict[str, float | None] = {}
    if deltas and rows:
        from autolab.scoreboard.lineage import best_at

        parents = best_at(view, [r["parent_commit"] for r in rows if r["parent_commit"]])
    out = []
    for rank, row in enumerate(rows, 1):
        result = results.get(row["result_event_id"], {})
        best = parents.get(row["parent_commit"]) if row["parent_commit"] else None
        out.append({
            "rank": rank, "experiment_id": row["experiment_id"],
            "attempt": result.get("attempt", row["attempt"]), "metric": row["metric"],
            "parent_best": best, "delta": None if best is None else row["metric"] - best,
            "hypothesis": row["hypothesis"], "agent": result.get("agent"),
            "runtime_s": result.get("runtime_s"), "promoted": row["promoted"],
        })
    return out


def _results(view: LabView, event_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Score rows by event id (agent, attempt and runtime of each result)."""
    if not event_ids:
        return {}
    scores = view.folded().scores
    found = scores.filter(pc.is_in(scores.column("event_id"),
                                   value_set=pa.array(event_ids, pa.string())))
    return {r["event_id"]: r for r in found.select(
        ["event_id", "attempt", "agent", "runtime_s"]).to_pylist()}
