"""The worker: claim an experiment, run it, record the score, promote if it wins.

One cycle (DESIGN.md §6): claim -> judge the patch as git applies it to the
experiment's parent, on ``main``'s rules, and build the experiment's commit from that
tree -> worktree of the commit, harness from ``main`` -> run on a backend -> push
``autolab/exp/<id>`` (the patch commit, then a result commit carrying the metrics) ->
submit the score -> promote when the policy allows. Every outcome, including a patch that does not
apply, a crash or a timeout, is recorded as a score with a reason.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from autolab.agents.backends.base import Backend, RunRequest, RunResult
from autolab.agents.worktree import Worktree
from autolab.protocol import transactions as tx
from autolab.protocol.compute import check_budget
from autolab.protocol.errors import Conflict, NothingToDo, PatchError
from autolab.protocol.harness import harness_files, harness_hash
from autolab.protocol.lab import Lab, now
from autolab.protocol.patch_judge import judge_patch
from autolab.protocol.redact import redact
from autolab.protocol.store import FileChange

# A job's running time is counted from this process's start (when it runs in a job).
_STARTED = time.monotonic()


class Stopped(BaseException):
    """Raised in a worker when it is asked to stop (SIGTERM) mid-cycle."""


@dataclass
class Cycle:
    """What one worker cycle did, with its timings (for logs and benchmarks)."""

    experiment_id: str
    attempt: int
    status: str
    metric: float | None
    outcome: str  # recorded | late | duplicate
    promoted: bool
    total_s: float
    run_s: float

    @property
    def overhead_s(self) -> float:
        return self.total_s - self.run_s


class Worker:
    """Runs experiments of one lab on one backend.

    Args:
        lab: the lab, opened with this worker's agent id.
        backend: where commands run.
        log_dir: where run logs are kept (``<experiment>-<attempt>.log``).
        say: where log lines go.
    """

    def __init__(self, lab: Lab, backend: Backend, log_dir: Path,
                 say: Callable[[str], None] = print) -> None:
        self.lab, self.backend, self.log_dir, self.say = lab, backend, log_dir, say
        self.stats_file = os.environ.get("AUTOLAB_STATS")

    def run_once(self) -> Cycle | None:
        """Claim and run one experiment; None when nothing is claimable.

        Raises:
            NothingToDo: the lab's budget (``policy.max_usd``) is spent.
        """
        start = time.monotonic()
        check_budget(self.lab.read(max_age=2.0))
        try:
            claim = tx.claim(self.lab, backend=self.backend.name)
        except NothingToDo:
            return None
        self.say(f"claimed {claim.experiment_id} attempt {claim.attempt}: {claim.hypothesis}")
        return self.execute(claim, start)

    def execute(self, claim: tx.Claim, start: float | None = None) -> Cycle:
        """Run a claimed attempt to its recorded score (and promotion)."""
        start = time.monotonic() if start is None else start
        lab, store = self.lab, self.lab.store
        view = lab.read(max_age=5.0)
        config, main = view.config, view.main
        parent = claim.parent_commit or main
        harness = harness_files(store, main, config)
        started = now()
        head = None
        try:
            # Judged again here, on main's rules: a proposal may come from anyone.
            if not store.is_ancestor(parent, main):
                raise PatchError(f"parent commit {parent[:12]} is not on main")
            judged = judge_patch(store, parent, claim.patch, config)
        except PatchError as exc:
            result = RunResult("invalid", None, {}, str(exc), 0.0)
        else:
            # The commit that runs is built before the run: nothing it writes enters it.
            patch_commit = store.commit_tree(
                parent, judged.tree, f"experiment {claim.experiment_id}: {claim.hypothesis}",
                agent=lab.agent)
            with Worktree() as tree:
                tree.populate(store, patch_commit, harness)
                self.say(f"running `{config.command}` for {claim.experiment_id}")
                request = RunRequest(
                    command=config.command, workdir=tree.path, timeout=config.timeout,
                    env={**config.env, "AUTOLAB_EXPERIMENT": claim.experiment_id,
                         "AUTOLAB_ATTEMPT": str(claim.attempt)},
                    log_path=self.log_dir / f"{claim.experiment_id}-{claim.attempt}.log",
                    metric=config.metric, bounds=config.bounds,
                )
                try:
                    result = self.backend.run(request)
                except Stopped:
                    tx.release(lab, claim.experiment_id, claim.attempt, "worker stopped")
                    self.say(f"released {claim.experiment_id}: worker stopped")
                    raise
            head = self._push_branch(claim, patch_commit, result)
        fields = {"reason": result.reason, "branch_commit": head,
                  "runtime_s": round(result.runtime_s, 3), "backend": self.backend.name,
                  "job_id": result.job_id, "harness_hash": harness_hash(harness),
                  "patch_hash": claim.patch_hash, "started_at": started, "agent": lab.agent}
        fields.update(self.score_extras(claim, result))
        score = tx.make_score(claim.experiment_id, claim.attempt, status=result.status,
                              metric=result.metric, metrics=result.metrics, **fields)
        submitted = tx.submit(lab, score)
        self._note({"event": "submitted", "experiment_id": claim.experiment_id,
                    "attempt": claim.attempt, "outcome": submitted.outcome,
                    "result_digest": score["result_digest"]})
        shown = f"{config.metric}={score['metric']:.6g}" if score["metric"] is not None else (
            score["reason"] or "")
        self.say(f"{claim.experiment_id}: {score['status']} {shown} in {result.runtime_s:.1f}s"
                 f" ({submitted.outcome})")
        promoted = False
        if submitted.outcome == "recorded" and score["status"] == "ok":
            outcome = tx.promote(lab, claim.experiment_id)
            promoted = outcome.promoted
            self.say(f"promoted {claim.experiment_id}: {config.metric} {outcome.previous} -> "
                     f"{outcome.metric}" if promoted else
                     f"not promoted {claim.experiment_id}: {outcome.reason}")
        cycle = Cycle(claim.experiment_id, claim.attempt, score["status"], score["metric"],
                      submitted.outcome, promoted, time.monotonic() - start, result.runtime_s)
        self._record(cycle)
        return cycle

    def score_extras(self, claim: tx.Claim, result: RunResult) -> dict:
        """Where the run happened and what it cost, when this worker runs inside a paid
        job (``$AUTOLAB_JOB_FLAVOR`` and ``$AUTOLAB_JOB_PRICE_PER_S``, set by whoever
        launched the job): the job's running seconds so far, at that price."""
        flavor = os.environ.get("AUTOLAB_JOB_FLAVOR")
        if not flavor:
            return {}
        seconds = round(time.monotonic() - _STARTED, 3)
        price = os.environ.get("AUTOLAB_JOB_PRICE_PER_S")
        return {"flavor": flavor, "job_seconds": seconds,
                "cost_usd": seconds * float(price) if price else None}

    def _push_branch(self, claim: tx.Claim, patch_commit: str, result: RunResult) -> str | None:
        """Push ``autolab/exp/<id>``: the patch commit, then the result commit."""
        store = self.lab.store
        lines = [f"{k}: {v:g}" for k, v in sorted(result.metrics.items())]
        message = (f"result {claim.experiment_id} attempt {claim.attempt}: {result.status}"
                   + (f" ({redact(result.reason)})" if result.reason else "")
                   + "\n\n" + "\n".join(lines) + "\n")
        head = store.make_commit(patch_commit, FileChange(), message, agent=self.lab.agent)
        ref = f"refs/heads/{tx.branch_name(claim.experiment_id)}"
        try:
            self.lab.retry_transport(lambda: store.push_ref(ref, head, None))
        except Conflict:
            # An earlier attempt left its branch; replace it only while we hold the lease.
            exp = self.lab.read().state.experiments[claim.experiment_id]
            if exp.attempt != claim.attempt or exp.state != "claimed":
                return None  # we are stale: leave the current attempt's branch alone
            current = store.fetch_ref(ref)
            try:
                self.lab.retry_transport(lambda: store.push_ref(ref, head, current))
            except Conflict:
                return None  # another attempt owns the branch: we have no pushed head
        return head

    def _record(self, cycle: Cycle) -> None:
        self._note({"event": "cycle", **asdict(cycle), "overhead_s": cycle.overhead_s})

    def _note(self, entry: dict) -> None:
        """Append one JSON line to ``$AUTOLAB_STATS`` (one write: whole lines survive a
        SIGKILL)."""
        if self.stats_file:
            line = json.dumps({**entry, "agent": self.lab.agent, "at": time.time()}) + "\n"
            try:
                fd = os.open(self.stats_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, line.encode())
                finally:
                    os.close(fd)
            except OSError as exc:  # statistics must never cost a result or a promotion
                self.say(f"cannot write {self.stats_file}: {exc}")

    def recover(self) -> list[str]:
        """End the attempts this agent id still holds from a previous process that died.

        A worker restarted under the same ``--agent`` (a supervisor, cron, a swarm) ends
        its dead predecessor's claims at once instead of leaving them to lease expiry.
        They end as lost (``expired``), counting toward ``max_attempts``: a run that
        kills its worker every time must end, not loop under ``Restart=always``. Only
        claims of this worker's backend are touched (a remote job of the same agent id
        may still be running). Agent ids must be unique per live process (the default,
        host-pid, is); if two live processes shared one, the other's result would only
        be recorded as late, never lost or promoted twice.
        """
        view = self.lab.read()
        ended = []
        for exp in view.state.by_state("claimed"):
            if exp.agent != self.lab.agent or exp.backend != self.backend.name:
                continue
            event = tx.abandon(self.lab, exp, "its worker died (restarted under the same "
                               "agent id)", view.config.policy.max_attempts)
            if event:
                ended.append(exp.id)
                self.say(f"{event} {exp.id} attempt {exp.attempt}: held by a previous "
                         f"process of {self.lab.agent}")
        return ended

    def loop(self, *, max_experiments: int | None = None, idle: float = 2.0,
             exit_when_idle: bool = False) -> int:
        """Run cycles until stopped (or ``max_experiments``); return how many ran."""
        done = 0
        while max_experiments is None or done < max_experiments:
            if self.run_once() is None:
                if exit_when_idle:
                    break
                time.sleep(idle)
                continue
            done += 1
        return done
