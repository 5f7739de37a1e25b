"""``autolab status``: the lab at a glance, as a documented JSON shape.

Shape (``--json``)::

    {"lab": str, "main": str, "name": str, "metric": str, "direction": "min" | "max",
     "experiments": int, "queue_depth": int,
     "counts": {"queued": int, "claimed": int, "done": int, "failed": int,
                "cancelled": int},
     "running": [{"experiment_id": str, "attempt": int, "agent": str | null,
                  "backend": str | null, "job_id": str | null,
                  "claimed_at": str | null, "lease_until": str | null,
                  "lease_left_s": float | null, "hypothesis": str}],
     "recent": [{"experiment_id": str, "attempt": int, "status": str,
                 "metric": float | null, "agent": str | null, "late": bool,
                 "reason": str | null, "finished_at": str | null,
                 "runtime_s": float | null}],
     "best": {"experiment_id": str, "attempt": int | null, "metric": float,
              "agent": str | null, "at": str | null, "hypothesis": str | null} | null,
     "floor": float | null, "gap_to_floor": float | null,
     "failures": {str: int},
     "failure_reasons": [{"kind": str, "reason": str | null, "count": int}],
     "pending_records": int, "promotions": int, "anomalies": int,
     "quarantined_records": [{"ref": str, "commit": str, "reason": str}],
     "spend": {"total_usd": float, "priced_runs": int, "budget_usd": float | null,
               "left_usd": float | null,
               "per_experiment": [{"experiment_id": str, "cost_usd": float, "runs": int,
                                   "flavors": [str]}],
               "per_promotion": [{"experiment_id": str, "metric": float,
                                  "cost_usd": float, "runs": int}]},
     "llm": {"proposals": int, "prompt_tokens": int, "completion_tokens": int,
             "usd": float | null, "models": [str], "by_proposer": {str: int}},
     "review": {"mode": "none" | "required" | "above-bar", "candidates": int,
                "rejected": int,
                "awaiting": [{"experiment_id": str, "metric": float,
                              "delta_best": float | null, "hold": str,
                              "hypothesis": str}]}}

``queue_depth`` is the number of queued experiments; ``running`` lists the claimed
ones, the lease that runs out first first (``lease_left_s`` is negative once it has
expired: the next reap puts it back); ``recent`` the last score rows, newest first.
``floor`` is the best value the metric can reach where the lab knows it (the tiny-lm
template's entropy floor) and ``gap_to_floor`` how far the best is from it (positive
while there is room: ``best - floor`` for a min metric, ``floor - best`` for max).
``failures`` counts experiments by how they failed: the status of a result that was
not ``ok`` (``crash``, ``timeout``, ``invalid``), or ``failed`` for an experiment whose
attempts ran out (leases expired ``max_attempts`` times); ``failure_reasons`` gives
the most common reasons, word for word. ``spend`` is what runs on paid compute cost
(:mod:`autolab.scoreboard.spend`), ``llm`` what proposing with models and coding
agents cost (tokens, and dollars where ``[llm]`` gives prices).
``review`` is the review queue (:mod:`autolab.scoreboard.review`): the lab's
``policy.review``, how many finished experiments are neither promoted nor rejected,
how many were rejected, and the winners that wait for ``autolab review accept``
(``awaiting-review``: the gate held them, ``hold`` says why).
``quarantined_records`` are record refs left out of the fold
as invalid (:mod:`autolab.protocol.records`) until ``autolab doctor --fix`` or
a reporter moves them aside. Times are ISO 8601 strings.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from autolab.protocol.reader import LabView

STATES = ("queued", "claimed", "done", "failed", "cancelled")
TOP_REASONS = 5


def status(view: LabView, *, recent: int = 10) -> dict[str, Any]:
    """Summarize ``view`` (see the module docstring for the shape)."""
    from autolab.protocol.errors import shown
    from autolab.protocol.redact import redact
    from autolab.scoreboard.lineage import hypotheses_of
    from autolab.scoreboard.review import review_queue
    from autolab.scoreboard.spend import llm_spend, spend

    config, folded = view.config, view.folded()
    exps, scores = folded.experiments, folded.scores
    moment = datetime.now(UTC)
    counts = _counts(exps.column("state"))
    claimed = exps.filter(pc.equal(exps.column("state"), "claimed")).select(
        ["experiment_id", "attempt", "agent", "backend", "job_id", "claimed_at", "lease_until",
         "hypothesis"]).to_pylist()
    for row in claimed:
        until = row["lease_until"]
        row["lease_left_s"] = None if until is None else round(
            (until - moment).total_seconds(), 1)
    claimed.sort(key=lambda r: (r["lease_left_s"] is None, r["lease_left_s"] or 0.0,
                                r["experiment_id"]))
    last = scores.slice(max(0, scores.num_rows - recent)).select(
        ["experiment_id", "attempt", "status", "metric", "agent", "late", "reason",
         "finished_at", "runtime_s"]).to_pylist()
    promotions = folded.promotions
    best = promotions.slice(promotions.num_rows - 1).to_pylist()[0] if promotions.num_rows \
        else None
    gap = None
    if best is not None and config.floor is not None and best["metric"] is not None:
        gap = (best["metric"] - config.floor if config.direction == "min"
               else config.floor - best["metric"])
    failures, reasons = _failures(exps)
    return {
        "lab": redact(view.store.url), "main": view.main, "name": config.name,
        "metric": config.metric, "direction": config.direction,
        "experiments": exps.num_rows, "queue_depth": counts["queued"], "counts": counts,
        "running": claimed,
        "recent": last[::-1],
        "best": None if best is None else {
            "experiment_id": best["experiment_id"], "attempt": best["attempt"],
            "metric": best["metric"], "agent": best["agent"], "at": best["at"],
            "hypothesis": hypotheses_of(view, [best["experiment_id"]]).get(
                best["experiment_id"])},
        "floor": config.floor, "gap_to_floor": gap,
        "failures": failures, "failure_reasons": reasons,
        "pending_records": len(view.pending), "promotions": promotions.num_rows,
        "anomalies": folded.anomalies.num_rows,
        # Ref names and reasons come from the remote: printable, one line (shown).
        "quarantined_records": [{"ref": shown(b.ref), "commit": b.commit,
                                 "reason": shown(redact(b.reason))}
                                for b in view.quarantined],
        "spend": spend(view),
        "llm": llm_spend(view),
        "review": review_queue(view),
    }


def _counts(states: pa.ChunkedArray) -> dict[str, int]:
    found = {item["values"]: item["counts"]
             for item in pc.value_counts(states).to_pylist()} if len(states) else {}
    return {state: int(found.get(state, 0)) for state in STATES}


def _failures(exps: pa.Table) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Failed experiments by kind, and the most common (kind, reason) pairs."""
    state, result = exps.column("state"), exps.column("status")
    failed = pc.equal(state, "failed")
    bad_result = pc.and_(pc.is_valid(result), pc.not_equal(result, "ok"))
    rows = exps.filter(pc.or_kleene(failed, pc.fill_null(bad_result, False))).select(
        ["state", "status", "reason"]).to_pylist()
    kinds: Counter[str] = Counter()
    reasons: Counter[tuple[str, str | None]] = Counter()
    for row in rows:
        kind = row["status"] if row["status"] not in (None, "ok") else row["state"]
        kinds[kind] += 1
        reasons[(kind, row["reason"])] += 1
    top = [{"kind": kind, "reason": reason, "count": n}
           for (kind, reason), n in sorted(reasons.items(),
                                           key=lambda item: (-item[1], item[0][0],
                                                             item[0][1] or ""))[:TOP_REASONS]]
    return dict(sorted(kinds.items())), top
