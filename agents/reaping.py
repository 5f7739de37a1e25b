"""Reaping with liveness: what planners, reporters and ``autolab reap`` call.

Leases end attempts whose worker went silent. Attempts running as remote jobs have a
better witness than time: the job's own status, so those are asked first
(:func:`autolab.agents.backends.hf_jobs.liveness`) and a job still running keeps its
lease, whatever the clock says.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from autolab.protocol import transactions as tx
from autolab.protocol.lab import Lab
from autolab.protocol.reader import LabView


def reap(lab: Lab, view: LabView | None = None, say: Callable[[str], None] = print, *,
         at: datetime | None = None) -> list[tx.Reaped]:
    """Settle ended remote jobs, then expire the leases nobody vouches for."""
    view = view or lab.read()
    alive: set[str] = set()
    if any(e.backend == "hf-jobs" for e in view.state.by_state("claimed")):
        from autolab.agents.backends.hf_jobs import liveness

        alive = liveness(lab, view, say)
    done = tx.reap(lab, view, keep=alive, at=at)
    for reaped in done:
        say(f"{reaped.event} {reaped.experiment_id} attempt {reaped.attempt}: lease expired")
    return done
