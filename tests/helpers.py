"""Helpers shared by tests: run one experiment of the blank lab through the protocol."""

from __future__ import annotations

from autolab.protocol import transactions as tx
from autolab.protocol.harness import harness_files, harness_hash
from autolab.protocol.lab import Lab
from autolab.protocol.patch_judge import judge_patch


def propose_x(lab: Lab, *values: float) -> list[str | None]:
    """Propose setting X to each value, as diffs against main's experiment.py."""
    from autolab.protocol.knobs import set_knobs, unified_diff

    source = lab.store.read_file(lab.read().main, "experiment.py").decode()
    return tx.propose(lab, [tx.Proposal(f"set X to {v}", unified_diff(
        "experiment.py", source, set_knobs(source, {"X": v}))) for v in values])


def push_branch(lab: Lab, experiment_id: str, x: float | None = None) -> str:
    """Push ``autolab/exp/<id>`` as a worker does: the experiment's parent plus exactly
    its patch, as git applies it; return its head. (``x`` is what the patch sets: the
    commit comes from the patch itself.)"""
    view = lab.read()
    exp = view.state.experiments[experiment_id]
    judged = judge_patch(lab.store, exp.parent_commit, exp.patch, view.config)
    head = lab.store.commit_tree(exp.parent_commit, judged.tree, f"experiment {experiment_id}")
    lab.store.push_ref(f"refs/heads/{tx.branch_name(experiment_id)}", head, None)
    return head


def main_harness_hash(lab: Lab) -> str:
    view = lab.read()
    return harness_hash(harness_files(lab.store, view.main, view.config))


def finish(lab: Lab, claim: tx.Claim, x: float, *, promote: bool = True) -> tx.Promotion | None:
    """Score a claimed experiment as the blank lab would ((X-3)^2) and maybe promote it."""
    head = push_branch(lab, claim.experiment_id, x)
    score = tx.make_score(claim.experiment_id, claim.attempt, status="ok",
                          metric=(x - 3) ** 2, metrics={"score": (x - 3) ** 2},
                          branch_commit=head, agent=lab.agent,
                          harness_hash=main_harness_hash(lab))
    tx.submit(lab, score)
    return tx.promote(lab, claim.experiment_id) if promote else None
