"""The planner: keeps the queue at a target depth with proposals, and reaps leases.

The proposer is the built-in one-knob search (``space``) unless one is given: an
``llm`` or ``agent`` proposer (:mod:`autolab.agents.proposers`), whose proposals are
enqueued one at a time and whose refused proposals are recorded with their reason.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from autolab.agents.events import DEBUG, WARNING, emit
from autolab.agents.proposers.base import Outcome, Proposer
from autolab.agents.proposers.space import BASELINE_HYPOTHESIS, propose_space
from autolab.agents.reaping import reap
from autolab.protocol import transactions as tx
from autolab.protocol.compute import check_budget
from autolab.protocol.errors import NothingToDo, PatchError
from autolab.protocol.lab import Lab
from autolab.protocol.patches import normalized_hash
from autolab.protocol.reader import LabView


def plan_once(lab: Lab, depth: int, say: Callable[[str], None] = print,
              rng: random.Random | None = None, proposer: Proposer | None = None) -> list[str]:
    """Reap expired leases, then top the queue up to ``depth``; return new ids.

    Raises:
        LlmUnavailable: the ``llm`` proposer's endpoint could not be used (what it had
            already spent is recorded first).
    """
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
    measured = state.best is not None or any(s["status"] == "ok" for s in state.scores)
    if proposer is not None:
        return _plan_with(lab, view, proposer, depth - queued, measured, say)
    files = {k.file: (lab.store.read_file(view.main, k.file) or b"").decode()
             for k in config.knobs.values()}
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


def _plan_with(lab: Lab, view: LabView, proposer: Proposer, count: int, measured: bool,
               say: Callable[[str], None]) -> list[str]:
    """``count`` proposals of ``proposer``, each enqueued (or recorded as refused) at once.

    One at a time, so that a proposal that cost tokens is never lost to another's
    refusal; a proposal that no longer applies because ``main`` moved, or that another
    planner enqueued first, is recorded as refused with that reason.
    """
    ids: list[str] = []
    if not measured and normalized_hash("") not in view.state.patch_hashes():
        baseline = tx.Proposal(BASELINE_HYPOTHESIS, "", priority=100.0,
                               origin={"proposer": proposer.name})
        ids += _enqueue(lab, Outcome(baseline), say)
        count -= 1
    if count <= 0:
        return ids
    for outcome in proposer.propose(lab, view, count):
        ids += _enqueue(lab, outcome, say)
    return ids


def _enqueue(lab: Lab, outcome: Outcome, say: Callable[[str], None]) -> list[str]:
    proposal, reason = outcome.proposal, outcome.refused
    if reason is None:
        try:
            eid = tx.propose(lab, [proposal])[0]
        except PatchError as exc:
            reason = f"no longer applies to main (main moved while proposing): {exc}"
        else:
            if eid is not None:
                spent = {k: v for k, v in proposal.origin.items() if v is not None}
                emit(say, "proposed", f"proposed {eid}: {proposal.hypothesis}",
                     experiment_id=eid, hypothesis=proposal.hypothesis,
                     priority=proposal.priority, rationale=outcome.rationale or None,
                     idea=outcome.idea, **spent)
                if outcome.idea:
                    from autolab.protocol.ideas import mark_used

                    mark_used(lab, outcome.idea, eid)
                return [eid]
            reason = "another planner proposed the same change first"
    eid = tx.refuse(lab, proposal, reason)
    emit(say, "refused", f"recorded refused proposal {eid}: {reason}", level=WARNING,
         experiment_id=eid, hypothesis=proposal.hypothesis, reason=reason,
         **{k: v for k, v in proposal.origin.items() if v is not None})
    return []
