"""``autolab run``: one claimed attempt, run to its recorded score, statelessly.

This is what an HF job executes (and what anyone may run by hand to finish an attempt
they hold): open the lab, check the attempt is still the current claim, run it exactly
as a local worker would (worktree at the parent, harness from ``main``, branch
``autolab/exp/<id>``, score, promotion), with the run's output echoed to stdout so
the job's logs hold the summary block. The score also records the job's flavor, its
running seconds and their cost, and the log's ref.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from autolab.agents.backends.base import RunResult
from autolab.agents.backends.local import LocalBackend
from autolab.agents.events import WARNING, emit
from autolab.agents.worker import Cycle, Worker
from autolab.protocol import compute
from autolab.protocol import transactions as tx
from autolab.protocol.errors import AutoLabError, NothingToDo
from autolab.protocol.lab import Lab


class JobRun(Worker):
    """A worker for exactly one attempt that also keeps the run's log in the lab."""

    def __init__(self, lab: Lab, backend_name: str, log_dir: Path,
                 say: Callable[[str], None] = print) -> None:
        super().__init__(lab, LocalBackend(echo=True, name=backend_name), log_dir, say)
        self.job_id: str | None = None

    def score_extras(self, claim: tx.Claim, result: RunResult) -> dict:
        from autolab.agents.backends.hf_jobs import store_log

        extras = {**super().score_extras(claim, result), "job_id": self.job_id or result.job_id}
        if result.log_path is not None and result.log_path.exists():
            try:
                extras["log_ref"] = store_log(self.lab, claim.experiment_id, claim.attempt,
                                              result.log_path.read_bytes())
            except (AutoLabError, OSError) as exc:  # a lost log must not cost the result
                emit(self.say, "log_not_kept", f"log of {claim.experiment_id} not kept: {exc}",
                     level=WARNING, experiment_id=claim.experiment_id, attempt=claim.attempt)
        return extras


def run_attempt(lab: Lab, experiment_id: str, attempt: int, *, backend: str = "hf-jobs",
                say: Callable[[str], None] = print) -> Cycle:
    """Run ``attempt`` of ``experiment_id``, which must be the current claim.

    Raises:
        NothingToDo: the attempt is no longer current (finished, reaped, re-claimed):
            running it would only produce a late result.
        AutoLabError: no such experiment or attempt.
    """
    view = lab.read()
    exp = tx.claimed_experiment(view, experiment_id, attempt)
    if exp.state != "claimed" or exp.attempt != attempt:
        raise NothingToDo(f"experiment {experiment_id} attempt {attempt} is not current "
                          f"({exp.state} at attempt {exp.attempt}): nothing to run")
    claim = tx.Claim(experiment_id, attempt, exp.lease_until, exp.patch, exp.patch_hash,
                     exp.hypothesis, exp.parent_commit, view.main)
    runner = JobRun(lab, backend, Path(tempfile.mkdtemp(prefix="autolab-run-")), say)
    launch = compute.launches(view).get((experiment_id, attempt))
    runner.job_id = launch["job_id"] if launch else os.environ.get("JOB_ID")
    return runner.execute(claim)
