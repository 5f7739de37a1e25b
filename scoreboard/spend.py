"""What a lab's runs cost: per experiment, per promotion, in total, and the budget.

Costs come from the scores (``cost_usd``: a job's running seconds at its flavor's price,
recorded by the run itself or by whoever recovered its result). Runs without a
recorded cost (local ones) count as zero and are reported as ``unpriced``.

Shape::

    {"total_usd": float, "priced_runs": int, "unpriced_runs": int,
     "budget_usd": float | null, "left_usd": float | null,
     "per_experiment": [{"experiment_id", "cost_usd", "runs", "flavors"}],
     "per_promotion": [{"experiment_id", "metric", "cost_usd", "runs"}]}

``per_promotion`` charges each promotion with every run that finished after the
previous promotion's experiment, up to and including its own: what the improvement
cost to find.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from autolab.protocol.reader import LabView


def spend(view: LabView) -> dict[str, Any]:
    """Summarize the cost of ``view``'s runs (see the module docstring for the shape)."""
    by_exp: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"cost_usd": 0.0, "runs": 0, "flavors": set()})
    total, priced, unpriced = 0.0, 0, 0
    order: list[tuple[str, float]] = []
    for score in view.state.scores:
        cost = score.get("cost_usd")
        entry = by_exp[score["experiment_id"]]
        entry["runs"] += 1
        if score.get("flavor"):
            entry["flavors"].add(score["flavor"])
        if cost is None:
            unpriced += 1
            order.append((score["experiment_id"], 0.0))
            continue
        priced += 1
        entry["cost_usd"] += cost
        total += cost
        order.append((score["experiment_id"], cost))
    per_promotion = []
    promoted = [p["experiment_id"] for p in view.state.promotions]
    spent, runs, position = 0.0, 0, 0
    for eid, cost in order:
        spent += cost
        runs += 1
        if position < len(promoted) and eid == promoted[position]:
            promotion = view.state.promotions[position]
            per_promotion.append({"experiment_id": eid, "metric": promotion["metric"],
                                  "cost_usd": spent, "runs": runs})
            spent, runs, position = 0.0, 0, position + 1
    cap = view.config.policy.max_usd
    return {
        "total_usd": total, "priced_runs": priced, "unpriced_runs": unpriced,
        "budget_usd": cap, "left_usd": None if cap is None else cap - total,
        "per_experiment": [
            {"experiment_id": eid, "cost_usd": e["cost_usd"], "runs": e["runs"],
             "flavors": sorted(e["flavors"])}
            for eid, e in by_exp.items() if e["cost_usd"] or e["flavors"]
        ],
        "per_promotion": per_promotion,
    }
