"""The planner: keeps the queue at a target depth with proposals, and reaps leases."""

from __future__ import annotations

import random
from collections.abc import Callable

from autolab.agents.events import DEBUG, WARNING, emit
from autolab.agents.proposers.space import propose_space
from autolab.agents.reaping import reap
from autolab.protocol import transactions as tx
from autolab.protocol.compute import check_budget
from autolab.protocol.errors import NothingToDo, PatchError
from autolab.protocol.lab import Lab


def plan_once(lab: Lab, depth: int, say: Callable[[str], None] = print,
              rng: random.Random | None = None) -> list[str]:
    """Reap expired leases, then top the queue up to ``depth``; return new ids."""
    view = lab.read()
    reap(lab, view, say)
    state, config = view.state, view.config
    try:
        check_budget(view)
    except NothingToDo as exc:
        emit(say, "budget_spent", f"{exc}: not proposing", reason=str(exc))
        return []
    queued = len(state.by_state("queued"))
    if queued >= depth:
        emit(say, "queue_full", f"{queued} queued (depth {depth}): not proposing",
             level=DEBUG, queued=queued, depth=depth)
        return []
    files = {k.file: (lab.store.read_file(view.main, k.file) or b"").decode()
             for k in config.knobs.values()}
    measured = state.best is not None or any(s["status"] == "ok" for s in state.scores)
    proposals = propose_space(config, files, state.patch_hashes(), depth - queued,
                              baseline=not measured, rng=rng)
    if not proposals:
        emit(say, "no_proposal", "no new proposal found (the knobs' changes are tried)",
             level=DEBUG, queued=queued, depth=depth)
        return []
    try:
        ids = [i for i in tx.propose(lab, proposals) if i]
    except PatchError as exc:
        # Built on view.main; a promotion may have moved main (and the knob lines the
        # patches change) since: a lost race, not a fault. Next round starts from it.
        if lab.read().main == view.main:
            raise
        emit(say, "main_moved", f"not proposing: main moved while proposing ({exc})",
             level=WARNING, reason=str(exc))
        return []
    for eid, proposal in zip(ids, proposals, strict=False):
        emit(say, "proposed", f"proposed {eid}: {proposal.hypothesis}", experiment_id=eid,
             hypothesis=proposal.hypothesis, priority=proposal.priority)
    return ids
