"""What a lab's runs cost: per experiment, per promotion, in total, and the budget.

Costs are recorded where they happen: a score's ``cost_usd`` (a job's running seconds
at its flavor's price, from ``list_jobs_hardware()``), and the ``cost_usd`` of a queue
row that ended an attempt without a score (a job that errored or was cancelled; the
fold keeps these as ``charges``). Runs without a cost (local ones) count as zero.

Shape::

    {"total_usd": float, "priced_runs": int, "budget_usd": float | null,
     "left_usd": float | null,
     "per_experiment": [{"experiment_id": str, "cost_usd": float, "runs": int,
                         "flavors": [str]}],
     "per_promotion": [{"experiment_id": str, "metric": float, "cost_usd": float,
                        "runs": int}]}

``per_experiment`` lists priced experiments, the most expensive first.
``per_promotion`` charges each promotion with every priced run recorded after the
previous promotion, up to its own: what the improvement cost to find.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autolab.protocol.reader import LabView


def spend(view: LabView) -> dict[str, Any]:
    """Summarize the cost of ``view``'s runs (see the module docstring for the shape)."""
    import pyarrow.compute as pc

    folded = view.folded()
    events: list[tuple[float, int, str, float, str | None]] = []  # order, kind, exp, cost
    for kind, table in enumerate((folded.scores, folded.charges)):
        priced = table.filter(pc.is_valid(table.column("cost_usd")))
        if not priced.num_rows:
            continue
        flavors = (priced.column("flavor").to_pylist() if kind == 0
                   else [None] * priced.num_rows)
        for seq, eid, cost, flavor in zip(priced.column("seq").to_pylist(),
                                          priced.column("experiment_id").to_pylist(),
                                          priced.column("cost_usd").to_pylist(), flavors,
                                          strict=True):
            # Rows still in record refs (no seq yet) come after everything on main.
            events.append((float("inf") if seq is None else seq, kind, eid, cost, flavor))
    events.sort(key=lambda e: (e[0], e[1]))
    by_exp: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"cost_usd": 0.0, "runs": 0, "flavors": set()})
    for _, _, eid, cost, flavor in events:
        entry = by_exp[eid]
        entry["cost_usd"] += cost
        entry["runs"] += 1
        if flavor:
            entry["flavors"].add(flavor)
    total = sum(e[3] for e in events)

    promoted: list[dict[str, Any]] = []
    if events:
        promoted = folded.promotions.select(["seq", "experiment_id", "metric"]).to_pylist()
        # One main commit numbers its queue rows before its score rows, so a promotion
        # can carry a lower seq than its own score: it happened after both.
        last: dict[str, float] = {}
        for order, _, eid, _, _ in events:
            last[eid] = order
        for row in promoted:
            row["order"] = max(_seq(row), last.get(row["experiment_id"], float("-inf")))
        promoted.sort(key=lambda r: r["order"])
    per_promotion = []
    spent, runs, index = 0.0, 0, 0
    for order, _, _, cost, _ in events:
        while index < len(promoted) and promoted[index]["order"] < order:
            p = promoted[index]
            per_promotion.append({"experiment_id": p["experiment_id"], "metric": p["metric"],
                                  "cost_usd": spent, "runs": runs})
            spent, runs, index = 0.0, 0, index + 1
        spent += cost
        runs += 1
    for p in promoted[index:]:
        per_promotion.append({"experiment_id": p["experiment_id"], "metric": p["metric"],
                              "cost_usd": spent, "runs": runs})
        spent, runs = 0.0, 0
    cap = view.config.policy.max_usd
    return {
        "total_usd": total, "priced_runs": len(events), "budget_usd": cap,
        "left_usd": None if cap is None else cap - total,
        "per_experiment": sorted(
            ({"experiment_id": eid, "cost_usd": e["cost_usd"], "runs": e["runs"],
              "flavors": sorted(e["flavors"])} for eid, e in by_exp.items()),
            key=lambda r: -r["cost_usd"]),
        "per_promotion": per_promotion,
    }


def _seq(row: dict[str, Any]) -> float:
    return float("inf") if row["seq"] is None else row["seq"]


def llm_spend(view: LabView) -> dict[str, Any]:
    """What asking models and coding agents for proposals cost, from the ``proposed``
    queue rows (refused proposals included: their calls were paid for too).

    Shape::

        {"proposals": int, "prompt_tokens": int, "completion_tokens": int,
         "usd": float | null, "models": [str], "by_proposer": {str: int}}

    ``proposals`` counts rows proposed by a model or an agent; ``usd`` is null when no
    row carries a price (``[llm] usd_per_mtok_in/out`` unset).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    queue = view.table("queue", lean=True)
    proposed = queue.filter(pc.equal(queue.column("event"), "proposed"))
    by_proposer: dict[str, int] = defaultdict(int)
    for name in proposed.column("proposer").to_pylist():
        by_proposer[name or "unknown"] += 1
    asked = proposed.filter(pc.is_in(proposed.column("proposer"),
                                     value_set=pa.array(["llm", "agent"], pa.string())))
    priced = asked.column("llm_usd").drop_null()

    def total(name: str) -> int:
        value = pc.sum(asked.column(name)).as_py()
        return int(value or 0)

    return {
        "proposals": asked.num_rows,
        "prompt_tokens": total("prompt_tokens"),
        "completion_tokens": total("completion_tokens"),
        "usd": float(pc.sum(priced).as_py()) if len(priced) else None,
        "models": sorted({m for m in asked.column("model").to_pylist() if m}),
        "by_proposer": dict(by_proposer),
    }
