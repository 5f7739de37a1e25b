"""``autolab status``: the lab at a glance, as a documented JSON shape.

Shape (``--json``)::

    {"lab": str, "main": str, "metric": str, "direction": "min"|"max",
     "counts": {"queued": int, "claimed": int, "done": int, "failed": int, "cancelled": int},
     "running": [{"experiment_id", "attempt", "agent", "lease_left_s", "backend"}],
     "recent": [{"experiment_id", "attempt", "status", "metric", "agent", "late"}],
     "best": {"experiment_id", "metric"} | null,
     "floor": float | null, "gap_to_floor": float | null,
     "failures": {reason: count}, "pending_records": int, "promotions": int}
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from autolab.protocol.reader import LabView
from autolab.protocol.state import Experiment


def status(view: LabView, *, recent: int = 10) -> dict[str, Any]:
    """Summarize ``view`` (see the module docstring for the shape)."""
    config, state = view.config, view.state
    moment = datetime.now(UTC)
    counts = Counter(e.state for e in state.experiments.values())
    running = [
        {"experiment_id": e.id, "attempt": e.attempt, "agent": e.agent,
         "lease_left_s": _left(e, moment), "backend": e.backend}
        for e in state.by_state("claimed")
    ]
    finished = [s for s in state.scores][-recent:]
    best = state.best
    failures = Counter(
        (e.reason or e.result["status"] if e.result else e.reason) or e.state
        for e in state.experiments.values()
        if e.state == "failed" or (e.result and e.result["status"] != "ok")
    )
    gap = None
    if best and config.floor is not None:
        gap = best["metric"] - config.floor
    from autolab.protocol.redact import redact

    return {
        "lab": redact(view.store.url), "main": view.main, "metric": config.metric,
        "direction": config.direction,
        "counts": {k: counts.get(k, 0) for k in ("queued", "claimed", "done", "failed",
                                                 "cancelled")},
        "running": running,
        "recent": [
            {"experiment_id": s["experiment_id"], "attempt": s["attempt"],
             "status": s["status"], "metric": s["metric"], "agent": s["agent"],
             "late": s["late"]}
            for s in reversed(finished)
        ],
        "best": {"experiment_id": best["experiment_id"], "metric": best["metric"]}
        if best else None,
        "floor": config.floor, "gap_to_floor": gap,
        "failures": dict(failures), "pending_records": len(view.pending),
        "promotions": len(state.promotions),
    }


def _left(exp: Experiment, moment: datetime) -> float | None:
    if exp.lease_until is None:
        return None
    return round((exp.lease_until - moment).total_seconds(), 1)
