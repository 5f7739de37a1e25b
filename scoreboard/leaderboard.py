"""Leaderboard rows: finished experiments ranked by the lab's metric."""

from __future__ import annotations

from typing import Any

from autolab.protocol.reader import LabView


def leaderboard(view: LabView, limit: int = 10) -> list[dict[str, Any]]:
    """Best ``ok`` results first (direction-aware), one row per experiment."""
    config = view.config
    rows = [
        {"experiment_id": e.id, "metric": e.result["metric"], "hypothesis": e.hypothesis,
         "agent": e.result["agent"], "runtime_s": e.result["runtime_s"],
         "promoted": e.promoted}
        for e in view.state.experiments.values()
        if e.result and e.result["status"] == "ok" and e.result["metric"] is not None
    ]
    rows.sort(key=lambda r: r["metric"], reverse=config.direction == "max")
    return rows[:limit]
