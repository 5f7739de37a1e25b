"""What ``autolab report`` shows, gathered from a lab's columnar state: the runs in order
of finishing, the leaderboard with each row's gain over its parent's best, failures
by reason, and the spend."""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from autolab.protocol.reader import LabView


@dataclass(frozen=True)
class Run:
    """One finished attempt (a score row), as the report shows it."""

    experiment_id: str
    attempt: int
    agent: str
    status: str  # ok | crash | timeout | invalid
    outcome: str  # ok | promoted | crash | timeout | invalid | late
    metric: float | None
    late: bool
    started: datetime | None
    finished: datetime | None
    runtime_s: float | None
    reason: str | None

    @property
    def promoted(self) -> bool:
        return self.outcome == "promoted"


def queue_events(view: LabView, events: tuple[str, ...]) -> pa.Table:
    """Queue rows of the given events, a few columns only, as arrow."""
    table = view.table("queue", lean=True)
    mask = pc.is_in(table.column("event"), value_set=pa.array(events))
    columns = ["seq", "experiment_id", "event", "attempt", "at", "reason"]
    return table.filter(mask).select(columns)


def _rows_of(table: pa.Table, event: str) -> list[dict[str, Any]]:
    return table.filter(pc.equal(table.column("event"), event)).to_pylist()


def runs(view: LabView, queue: pa.Table | None = None) -> list[Run]:
    """Every score row as a :class:`Run`, in order of finishing.

    A run without ``started_at`` starts when its attempt was claimed, else
    ``runtime_s`` before it finished.
    """
    from autolab.protocol.shard_cache import values_of

    folded = view.folded()
    scores, exps = folded.scores, folded.experiments
    # The score row that finished each promoted experiment.
    promoted = set(exps.filter(exps.column("promoted")).column("result_event_id")
                   .drop_null().to_pylist())
    names = ["experiment_id", "attempt", "agent", "status", "metric", "late", "started_at",
             "finished_at", "runtime_s", "reason", "event_id"]
    columns = {name: values_of(scores.column(name)) for name in names}
    claimed: dict[tuple[str, int], datetime] = {}
    if any(s is None for s in columns["started_at"]):
        queue = queue_events(view, ("claimed",)) if queue is None else queue
        for row in _rows_of(queue, "claimed"):
            if row["at"] is not None:
                claimed.setdefault((row["experiment_id"], row["attempt"]), row["at"])
    out: list[tuple[tuple[Any, ...], Run]] = []
    for index, values in enumerate(zip(*(columns[n] for n in names), strict=True)):
        (eid, attempt, agent, status, metric, late, started, finished, runtime, reason,
         event_id) = values
        started = started or claimed.get((eid, attempt))
        if started is None and finished is not None and runtime is not None:
            started = finished - timedelta(seconds=runtime)
        if late:
            outcome = "late"
        elif status != "ok":
            outcome = status
        elif event_id in promoted:
            outcome = "promoted"
        else:
            outcome = "ok"
        run = Run(eid, attempt, agent or "?", status, outcome,
                  metric if status == "ok" else None, bool(late), started, finished, runtime,
                  reason)
        # Hosts' clocks differ a little; finish times still order runs far better than
        # the order rows reached main. Rows without one keep their place at the end.
        key = (finished is None, finished.timestamp() if finished else 0.0, index)
        out.append((key, run))
    out.sort(key=lambda item: item[0])
    return [run for _, run in out]


def leaderboard_rows(view: LabView, queue: pa.Table | None = None,
                     limit: int = 20) -> list[dict[str, Any]]:
    """The leaderboard, each row with ``delta``: its metric minus the best on ``main``
    when it was proposed (the best its parent commit held; None before any promotion).

    A proposal's ``seq`` is after every row of its parent commit, so the promotions
    with a smaller ``seq`` are exactly those its parent contained.
    """
    from autolab.scoreboard.leaderboard import leaderboard

    queue = queue_events(view, ("proposed",)) if queue is None else queue
    promotions = [p for p in view.folded().promotions.to_pylist() if p["seq"] is not None]
    seqs = [p["seq"] for p in promotions]
    rows = leaderboard(view, limit=limit)
    wanted = pa.array([row["experiment_id"] for row in rows], pa.string())
    shown = queue.filter(pc.and_(pc.equal(queue.column("event"), "proposed"),
                                 pc.is_in(queue.column("experiment_id"), value_set=wanted)))
    proposed: dict[str, int] = {}
    for eid, seq in zip(shown.column("experiment_id").to_pylist(),
                        shown.column("seq").to_pylist(), strict=True):
        if seq is not None:
            proposed.setdefault(eid, seq)
    for row in rows:
        seq = proposed.get(row["experiment_id"])
        before = bisect.bisect_left(seqs, seq) if seq is not None else 0
        parent_best = promotions[before - 1]["metric"] if before else None
        row["parent_best"] = parent_best
        row["delta"] = None if parent_best is None else row["metric"] - parent_best
    return rows


def failures(view: LabView, run_list: list[Run], queue: pa.Table | None = None
             ) -> list[tuple[str, str, int]]:
    """``(reason, status, count)`` of failed runs and expired leases, most common first."""
    queue = queue_events(view, ("expired", "failed")) if queue is None else queue
    counts: Counter[tuple[str, str]] = Counter()
    for run in run_list:
        if run.status != "ok":
            reason = (run.reason or "").strip().splitlines()
            counts[(f"{run.status}: {reason[0]}" if reason else run.status, run.status)] += 1
    ended = queue.filter(pc.is_in(queue.column("event"), value_set=pa.array(
        ["expired", "failed"]))).select(["event", "reason"]).to_pylist()
    for row in ended:
        reason = (row["reason"] or "").strip()
        if row["event"] == "expired" or "lease" in reason:
            # Reap reasons name the attempt and the agent; one bucket reads better.
            counts[("lease expired", "expired")] += 1
        else:
            counts[(f"failed: {reason.splitlines()[0]}" if reason else "failed", "failed")] += 1
    return [(reason, status, n) for (reason, status), n in counts.most_common()]


def spend_usd(scores: pa.Table) -> float | None:
    """Total ``cost_usd`` of the score rows, or None while no row carries a cost."""
    if "cost_usd" not in scores.column_names:
        return None
    column = scores.column("cost_usd")
    if column.null_count == len(column):
        return None
    return float(pc.sum(column).as_py())
