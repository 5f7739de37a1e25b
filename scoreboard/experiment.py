"""One experiment in full: what ``autolab show ID`` prints.

Everything comes from the lab's tables and ``main``'s history: the proposal
(hypothesis, patch, parent), every attempt with its claim, outcome and score, and the
experiment's place in the lineage (what its parent was, and the merge that promoted
it, if any).
"""

from __future__ import annotations

from typing import Any

from autolab.protocol.errors import AutoLabError
from autolab.protocol.reader import LabView


def describe(view: LabView, experiment_id: str) -> dict[str, Any]:
    """The experiment ``experiment_id`` in full (JSON-ready but for datetimes).

    Raises:
        AutoLabError: no such experiment.
    """
    import pyarrow.compute as pc

    exp = view.state.experiments.get(experiment_id)
    if exp is None:
        raise AutoLabError(f"unknown experiment {experiment_id}")
    queue = view.table("queue")
    rows = queue.filter(pc.equal(queue.column("experiment_id"), experiment_id)).to_pylist()
    scores = view.state.scores_for(experiment_id)
    attempts: dict[int, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: (r["seq"] is None, r["seq"] or 0)):
        if row["attempt"] is None or row["event"] in ("proposed", "promoted"):
            continue
        entry = attempts.setdefault(row["attempt"], {"attempt": row["attempt"], "events": []})
        entry["events"].append({"event": row["event"], "at": row["at"], "agent": row["agent"],
                                "reason": row["reason"], "backend": row["backend"],
                                "job_id": row["job_id"]})
    for score in scores:
        entry = attempts.setdefault(score["attempt"], {"attempt": score["attempt"],
                                                        "events": []})
        entry["score"] = {k: score.get(k) for k in (
            "status", "metric", "metrics", "reason", "runtime_s", "backend", "job_id",
            "branch_commit", "harness_hash", "late", "agent", "flavor", "cost_usd",
            "log_ref")}
    promotion = next((p for p in view.state.promotions
                      if p["experiment_id"] == experiment_id), None)
    return {
        **exp.to_dict(),
        "patch": exp.patch,
        "proposed_at": exp.proposed_at,
        "outcomes": {str(k): v for k, v in exp.outcomes.items()},
        "metrics": dict(exp.result["metrics"] or {}) if exp.result else {},
        "attempts": [attempts[k] for k in sorted(attempts)],
        "lineage": _lineage(view, exp.parent_commit, promotion),
    }


def _lineage(view: LabView, parent: str | None, promotion: dict | None) -> dict[str, Any]:
    """Which promotion the experiment was built on, and the one it made (if any)."""
    from autolab.scoreboard.lineage import promotions_by_source

    built_on = None
    if parent:
        repo = getattr(view.store, "repo", None)
        by_source = promotions_by_source(view)
        if repo is not None:
            try:
                commit = repo.get(parent)
                parents = [str(p) for p in commit.parent_ids] if commit is not None else []
            except (ValueError, KeyError):
                parents = []
            source = parents[1] if len(parents) > 1 else None
            row = by_source.get(source) if source else None
            if row is not None:
                built_on = {"experiment_id": row["experiment_id"], "metric": row["metric"]}
    promoted = None
    if promotion is not None:
        promoted = {"metric": promotion["metric"], "source_commit": promotion["source_commit"],
                    "at": promotion["at"]}
    return {"parent_commit": parent, "built_on": built_on, "promoted": promoted,
            "best_metric": view.state.best_metric}
