"""Bookkeeping of paid, remote compute: which job runs an attempt, and what runs cost.

Launch records are create-only refs like claims (``refs/autolab/launches/<exp>/<n>``),
so an attempt is launched at most once; costs are the ``cost_usd`` columns of scores
and of queue rows that ended an attempt without a score.
"""

from __future__ import annotations

from typing import Any

from autolab.protocol.errors import Conflict, NothingToDo
from autolab.protocol.lab import Lab, now, record_ref
from autolab.protocol.reader import LabView


def launched(lab: Lab, experiment_id: str, attempt: int, *, job_id: str,
             backend: str) -> bool:
    """Record that ``attempt`` runs as remote job ``job_id`` (create-only: one launch per
    attempt, so two launchers can never both start it). False if already recorded."""
    row = {"experiment_id": experiment_id, "event": "launched", "attempt": attempt,
           "at": now(), "job_id": job_id, "backend": backend}
    try:
        lab.create_record(record_ref("launches", experiment_id, attempt), {"queue": [row]},
                          f"launch {experiment_id} attempt {attempt}: job {job_id}")
    except Conflict:
        return False
    return True


def launches(view: LabView) -> dict[tuple[str, int], dict[str, Any]]:
    """``(experiment, attempt) -> launched row`` (the first per attempt)."""
    queue = view.table("queue")
    if not queue.num_rows:
        return {}
    import pyarrow.compute as pc

    rows = queue.filter(pc.equal(queue.column("event"), "launched")).to_pylist()
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for row in rows:
        out.setdefault((row["experiment_id"], row["attempt"]), row)
    return out


def spent_usd(view: LabView) -> float:
    """What the lab's recorded runs cost: scores' ``cost_usd`` plus that of attempts that
    ended without a score (a job that errored); unknown counts as 0."""
    import pyarrow.compute as pc

    total = 0.0
    for table in ("scores", "queue"):
        data = view.table(table)
        if data.num_rows:
            total += pc.sum(data.column("cost_usd")).as_py() or 0.0
    return total


def budget_left(view: LabView) -> float | None:
    """USD left under ``policy.max_usd``; None when the lab sets no budget."""
    cap = view.config.policy.max_usd
    return None if cap is None else cap - spent_usd(view)


def check_budget(view: LabView) -> None:
    """Raise NothingToDo once the lab's ``policy.max_usd`` is spent."""
    left = budget_left(view)
    if left is not None and left <= 0:
        raise NothingToDo(f"budget spent: ${spent_usd(view):.2f} of "
                          f"${view.config.policy.max_usd:.2f} (policy.max_usd)")
