"""Review: the gate that holds winners back (``[policy] review``) and rejection.

A *candidate* is an experiment that finished (``done``, result ``ok``) and was neither
promoted nor rejected. Under ``policy.review = "required"`` a worker never promotes:
every winner waits for ``autolab review accept``, which promotes it through the same
transaction (:func:`autolab.protocol.transactions.promote`) with the reviewer's id and
note on the ``promoted`` row. Under ``"above-bar"`` a winner waits when it beats the
best by less than ``policy.review_bar`` (an absolute metric delta: the interim bar
until the lab has a noise model) or when its change touches a ``[paths] sensitive``
path. A rejection is a ``rejected`` queue row; the fold marks the experiment, which
stays ``done``, so its patch is never proposed again and it is never promoted.
"""

from __future__ import annotations

from dataclasses import dataclass

from autolab.protocol.config import LabConfig
from autolab.protocol.errors import AutoLabError
from autolab.protocol.lab import Lab, MainChange, now
from autolab.protocol.patches import matches
from autolab.protocol.reader import LabView
from autolab.protocol.redact import redact
from autolab.protocol.store import LabStore

REASON_CHARS = 2000  # a rejection's reason and an acceptance's note are kept this long


def changed_paths(store: LabStore, parent: str | None, head: str) -> set[str]:
    """Every path the experiment's result commit changes relative to its parent."""
    if parent is None:
        return set()
    return {c.path for c in store.tree_changes(parent, head)}


def review_hold(config: LabConfig, best: float | None, metric: float,
                paths: set[str] | None) -> str | None:
    """Why a winner (``metric``, changing ``paths``, against the current ``best``) must
    wait for a reviewer under the lab's ``policy.review`` (None: its worker may promote
    it).

    ``paths`` None means not known (the result commit is not here): then only the
    metric decides. A change of no path (the planner's baseline) never waits: its
    promotion changes no code, it only records the lab's first best.
    """
    mode = config.policy.review
    if paths is not None and not paths:
        return None  # it changes nothing (a baseline): promoting it only records a best
    if mode == "required":
        return "the lab requires review (policy.review = required)"
    if mode != "above-bar":
        return None
    bar = config.policy.review_bar
    if best is not None and bar > 0 and abs(metric - best) < bar:
        return (f"improvement {abs(metric - best):.6g} over the best {best:.6g} is below "
                f"policy.review_bar {bar:g}")
    touched = sorted(p for p in paths or () if matches(p, config.sensitive))
    if touched:
        return f"changes sensitive path(s) {', '.join(touched[:5])}"
    return None


@dataclass
class Rejection:
    """Outcome of :func:`reject`: ``rejected``, or why not (already promoted or rejected)."""

    experiment_id: str
    rejected: bool
    reason: str = ""
    commit: str | None = None


def reject(lab: Lab, experiment_id: str, reason: str) -> Rejection:
    """Record a reviewer's rejection of a finished, unpromoted experiment.

    Decided on the exact parent it commits on: a rejection racing an acceptance
    either lands first (the promotion then refuses) or finds the experiment promoted
    and records nothing.

    Raises:
        AutoLabError: an unknown experiment, or one that has not finished.
    """
    if not reason.strip():
        raise AutoLabError("a rejection needs a reason")
    outcome = Rejection(experiment_id, rejected=False)

    def decide(view: LabView) -> MainChange | None:
        exp = view.state.experiments.get(experiment_id)
        if exp is None:
            raise AutoLabError(f"unknown experiment {experiment_id}")
        if exp.promoted:
            outcome.reason = "already promoted"
            return None
        if exp.rejected:
            outcome.reason = f"already rejected: {exp.rejection}"
            return None
        if exp.state != "done":
            raise AutoLabError(f"experiment {experiment_id} is {exp.state}, not done: only "
                               "finished experiments are reviewed")
        text = redact(reason)[:REASON_CHARS]
        row = {"experiment_id": experiment_id, "event": "rejected", "at": now(),
               "attempt": exp.attempt or None, "reason": text, "reviewer": lab.agent}
        return MainChange(message=f"reject {experiment_id}: {text[:60]}",
                          rows={"queue": [row]}, result=True)

    _, commit, done = lab.commit_main(decide)
    if done:
        outcome.rejected, outcome.commit, outcome.reason = True, commit, "rejected"
    return outcome
