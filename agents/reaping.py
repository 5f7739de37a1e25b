"""Reaping with liveness: what planners, reporters and ``autolab reap`` call.

Leases end attempts whose worker went silent. Two witnesses are better than time and
are asked first: for attempts claimed by a worker on this host, whether its process
still lives (:mod:`autolab.agents.host_claims`: a dead one's attempts end at once);
for attempts running as remote jobs, the job's own status
(:func:`autolab.agents.backends.hf_jobs.liveness`: a job still running keeps its
lease, whatever the clock says).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from autolab.agents.events import emit
from autolab.agents.host_claims import HostClaims
from autolab.protocol import transactions as tx
from autolab.protocol.lab import Lab
from autolab.protocol.reader import LabView


def reap(lab: Lab, view: LabView | None = None, say: Callable[[str], None] = print, *,
         at: datetime | None = None) -> list[tx.Reaped]:
    """Settle ended remote jobs, then expire the leases nobody vouches for."""
    view = view or lab.read()
    done: list[tx.Reaped] = []
    for exp in HostClaims(lab.store).dead_claims(view):
        event = tx.abandon(lab, exp, f"its worker process on this host ({exp.agent}) is gone",
                           view.config.policy.max_attempts)
        if event is not None:
            done.append(tx.Reaped(exp.id, exp.attempt, event))
            emit(say, event, f"{event} {exp.id} attempt {exp.attempt}: its worker process "
                 "is gone", experiment_id=exp.id, attempt=exp.attempt,
                 reason="its worker process is gone", holder=exp.agent)
    alive: set[str] = {r.experiment_id for r in done}  # ended already: not again below
    if any(e.backend == "hf-jobs" for e in view.state.by_state("claimed")):
        from autolab.agents.backends.hf_jobs import liveness

        jobs = liveness(lab, view, say, at=at)
        alive |= jobs.alive | {r.experiment_id for r in jobs.ended}
        done += jobs.ended
    expired = tx.reap(lab, view, keep=alive, at=at)
    for reaped in expired:
        emit(say, reaped.event, f"{reaped.event} {reaped.experiment_id} attempt "
             f"{reaped.attempt}: lease expired", experiment_id=reaped.experiment_id,
             attempt=reaped.attempt, reason="lease expired")
    return done + expired
