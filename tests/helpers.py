"""Helpers shared by tests: run one experiment of the blank lab through the protocol."""

from __future__ import annotations

from autolab.agents.knobs import set_knobs
from autolab.protocol import transactions as tx
from autolab.protocol.lab import Lab
from autolab.protocol.store import FileChange

from .conftest import knob_patch_text


def propose_x(lab: Lab, *values: float) -> list[str | None]:
    return tx.propose(lab, [tx.Proposal(f"set X to {v}", knob_patch_text(v)) for v in values])


def push_branch(lab: Lab, experiment_id: str, x: float) -> str:
    """Push ``autolab/exp/<id>`` with experiment.py's X set; return its head."""
    view = lab.read()
    source = lab.store.read_file(view.main, "experiment.py").decode()
    head = lab.store.make_commit(
        view.main, FileChange(add={"experiment.py": set_knobs(source, {"X": x}).encode()}),
        f"experiment {experiment_id}",
    )
    lab.store.push_ref(f"refs/heads/{tx.branch_name(experiment_id)}", head, None)
    return head


def finish(lab: Lab, claim: tx.Claim, x: float, *, promote: bool = True) -> tx.Promotion | None:
    """Score a claimed experiment as the blank lab would ((X-3)^2) and maybe promote it."""
    head = push_branch(lab, claim.experiment_id, x)
    score = tx.make_score(claim.experiment_id, claim.attempt, status="ok",
                          metric=(x - 3) ** 2, metrics={"score": (x - 3) ** 2},
                          branch_commit=head, agent=lab.agent)
    tx.submit(lab, score)
    return tx.promote(lab, claim.experiment_id) if promote else None
