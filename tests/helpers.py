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


def write_claim_records(bare, start: int, count: int) -> dict[str, str]:
    """Write ``count`` valid claim records (experiments ``bulk-<n>``, attempt 1, a lease
    of a day) straight into the bare lab ``bare`` with ``git fast-import``, as thousands
    of agents would have; return {ref: commit} of every record ref of the lab."""
    import secrets
    import subprocess
    from datetime import UTC, datetime, timedelta

    from autolab.protocol.shards import encode_record

    if count > 0:
        at = datetime.now(UTC)
        row = {"event_id": "E" * 24, "agent": "bulk", "experiment_id": "EXPERIMENT",
               "event": "claimed", "attempt": 1, "at": at, "lease_until": at + timedelta(days=1),
               "backend": "local", "job_id": None, "seq": None}
        template = encode_record("queue", [row]).decode()  # validated once, then varied
        chunks = []
        for n in range(start, start + count):
            body = (template.replace("E" * 24, secrets.token_hex(12))
                    .replace("EXPERIMENT", f"bulk-{n:07d}").encode())
            chunks.append(b"commit refs/autolab/claims/bulk-%07d/1\n"
                          b"committer bulk <bulk@localhost> 1700000000 +0000\ndata 6\nclaim\n"
                          b"M 100644 inline .autolab/queue/000000000000-bulk-%016x.json\n"
                          b"data %d\n" % (n, n, len(body)) + body + b"\n")
        subprocess.run(["git", "fast-import", "--quiet"], cwd=bare, input=b"".join(chunks),
                       check=True, capture_output=True)
    listed = subprocess.run(["git", "for-each-ref", "--format=%(refname) %(objectname)",
                             "refs/autolab/"], cwd=bare, check=True, capture_output=True,
                            text=True).stdout
    return dict(line.split(" ", 1) for line in listed.splitlines())
