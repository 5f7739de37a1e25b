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
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from autolab.agents.backends.base import Backend, HostError, RunRequest, RunResult
from autolab.agents.events import DEBUG, WARNING, emit
from autolab.agents.host_claims import HostClaims
from autolab.agents.stopping import STOP, Stopped
from autolab.agents.worktree import Worktree
from autolab.protocol import transactions as tx
from autolab.protocol.compute import check_budget
from autolab.protocol.errors import Conflict, NothingToDo, PatchError, ShardError
from autolab.protocol.harness import harness_files, harness_hash
from autolab.protocol.lab import Lab, now
from autolab.protocol.patch_judge import judge_patch
from autolab.protocol.redact import redact
from autolab.protocol.store import FileChange

if TYPE_CHECKING:
    from autolab.protocol.reader import LabView

# A job's running time is counted from this process's start (when it runs in a job).
_STARTED = time.monotonic()

__all__ = ["Cycle", "Stopped", "Worker"]


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


@dataclass
class _Ran:
    """A finished run, not yet recorded."""

    result: RunResult
    patch_commit: str | None  # None: the patch was refused before anything ran
    harness_hash: str
    started: datetime
    metric_name: str


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
        # Local runs die with this process, so this host can tell when its claims are
        # orphaned; a remote job's claim outlives the process that made it.
        self.host_claims = HostClaims(lab.store) if backend.name == "local" else None

    def run_once(self) -> Cycle | None:
        """Claim and run one experiment; None when nothing is claimable.

        Raises:
            NothingToDo: the lab's budget (``policy.max_usd``) is spent.
        """
        start = time.monotonic()
        check_budget(self.lab.read(max_age=2.0))
        # A stop during the claim's push lands after it: the claim is then released
        # at once instead of waiting for its lease.
        with STOP.shielded():
            try:
                writes = self._writes()
                claim = tx.claim(self.lab, backend=self.backend.name, notify=self._note_claim,
                                 skip_open=not writes, lease_seconds=self._lease(writes))
            except NothingToDo:
                return None
            if STOP.pending:
                self._release(claim, "worker stopped")
                STOP.check()
        emit(self.say, "claimed",
             f"claimed {claim.experiment_id} attempt {claim.attempt}: {claim.hypothesis}",
             experiment_id=claim.experiment_id, attempt=claim.attempt,
             hypothesis=claim.hypothesis, lease_until=claim.lease_until)
        try:
            return self.execute(claim, start)
        finally:
            if self.host_claims is not None:
                self.host_claims.forget(claim.experiment_id, claim.attempt)

    def _writes(self) -> bool:
        """Whether this worker takes open experiments: it runs locally and the lab names
        a coding agent (``[agent] command``) to write them."""
        if self.backend.name != "local":
            return False
        return bool(self.lab.read(max_age=30.0).config.agent.command.strip())

    def _lease(self, writes: bool) -> float | None:
        """A worker that may have to write an open experiment first holds its claims
        for the coding agent's time too (None: the lab's lease)."""
        if not writes:
            return None
        config = self.lab.read(max_age=30.0).config
        return config.lease_seconds() + config.agent.timeout

    def _note_claim(self, experiment_id: str, attempt: int, trying: bool) -> None:
        if self.host_claims is None:
            return
        if trying:
            self.host_claims.note(experiment_id, attempt, self.lab.agent)
        else:
            self.host_claims.forget(experiment_id, attempt)

    def _release(self, claim: tx.Claim, reason: str) -> None:
        with STOP.shielded():
            tx.release(self.lab, claim.experiment_id, claim.attempt, reason)
            emit(self.say, "released", f"released {claim.experiment_id}: {reason}",
                 level=WARNING, experiment_id=claim.experiment_id, attempt=claim.attempt,
                 reason=reason)

    def execute(self, claim: tx.Claim, start: float | None = None) -> Cycle:
        """Run a claimed attempt to its recorded score (and promotion).

        A stop (:class:`Stopped`) before the run has finished releases the attempt at
        once; one after it is held back until the result is recorded (and promoted).
        """
        start = time.monotonic() if start is None else start
        try:
            prepared = self._run(claim)
        except Stopped:
            self._release(claim, "worker stopped")
            raise
        except OSError as exc:
            # This host cannot run it (a full disk, a vanished directory): give the
            # attempt back at once, not counted against the experiment, and stop.
            where = f" {exc.filename}" if exc.filename else ""
            error = HostError(f"cannot run {claim.experiment_id} here:{where} "
                              f"{exc.strerror or exc}")
            self._release(claim, str(error))
            raise error from None
        except Exception as exc:
            self._release(claim, f"the worker failed before the run ended: {str(exc)[:300]}")
            raise
        with STOP.shielded():
            return self._record(claim, start, prepared)

    def _run(self, claim: tx.Claim) -> _Ran:
        """Judge the patch, build the experiment's commit, run it."""
        lab, store = self.lab, self.lab.store
        view = lab.read(max_age=5.0)
        config, main = view.config, view.main
        parent = claim.parent_commit or main
        harness = harness_files(store, main, config)
        started = now()
        try:
            # Judged again here, on main's rules: a proposal may come from anyone.
            if not store.is_ancestor(parent, main):
                raise PatchError(f"parent commit {parent[:12]} is not on main")
            patch = claim.patch
            if claim.open:  # a hypothesis without a patch: the lab's coding agent writes it
                patch = self._write(claim, parent, view)
            judged = judge_patch(store, parent, patch, config)
        except PatchError as exc:
            return _Ran(RunResult("invalid", None, {}, str(exc), 0.0), None,
                        harness_hash(harness), started, config.metric)
        # The commit that runs is built before the run: nothing it writes enters it.
        patch_commit = store.commit_tree(
            parent, judged.tree, f"experiment {claim.experiment_id}: {claim.hypothesis}",
            agent=lab.agent)
        with Worktree() as tree:
            tree.populate(store, patch_commit, harness)
            emit(self.say, "running", f"running `{config.command}` for {claim.experiment_id}",
                 experiment_id=claim.experiment_id, attempt=claim.attempt,
                 command=config.command, timeout_s=config.timeout)
            request = RunRequest(
                command=config.command, workdir=tree.path, timeout=config.timeout,
                env={**config.env, "AUTOLAB_EXPERIMENT": claim.experiment_id,
                     "AUTOLAB_ATTEMPT": str(claim.attempt)},
                log_path=self.log_dir / f"{claim.experiment_id}-{claim.attempt}.log",
                metric=config.metric, bounds=config.bounds,
            )
            result = self.backend.run(request)
        return _Ran(result, patch_commit, harness_hash(harness), started, config.metric)

    def _write(self, claim: tx.Claim, parent: str, view: LabView) -> str:
        """The patch ``[agent]``'s coding agent writes for the open experiment ``claim``.

        Raises:
            PatchError: the agent wrote nothing usable (the reason is the run's).
        """
        from autolab.agents.proposers.coding_agent import WRITE_TASK, write_change
        from autolab.agents.proposers.context import build_context, render

        if not view.config.agent.command.strip():
            raise PatchError("an open experiment (no patch), and the lab names no coding "
                             "agent ([agent] command) to write it")
        ctx = build_context(self.lab, view)
        ctx.files = {}
        prompt = render(ctx, 60_000, WRITE_TASK.format(hypothesis=claim.hypothesis))
        emit(self.say, "writing", f"the coding agent writes {claim.experiment_id}: "
             f"{claim.hypothesis}", experiment_id=claim.experiment_id, attempt=claim.attempt)
        edit = write_change(self.lab, parent, view.config, view.config.agent, prompt, self.say)
        if edit.refused is not None:
            raise PatchError(f"the coding agent's change: {edit.refused}")
        return edit.patch

    def _record(self, claim: tx.Claim, start: float, ran: _Ran) -> Cycle:
        """Push the branch, record the score, promote it if it wins.

        Reads nothing from ``main`` before the score is recorded: the result must
        survive a ``main`` that became unreadable during the run.
        """
        lab, result, metric_name = self.lab, ran.result, ran.metric_name
        head = self._push_branch(claim, ran.patch_commit, result) if ran.patch_commit else None
        fields = {"reason": result.reason, "branch_commit": head,
                  "runtime_s": round(result.runtime_s, 3), "backend": self.backend.name,
                  "job_id": result.job_id, "harness_hash": ran.harness_hash,
                  "patch_hash": claim.patch_hash, "started_at": ran.started, "agent": lab.agent}
        fields.update(self.score_extras(claim, result))
        score = tx.make_score(claim.experiment_id, claim.attempt, status=result.status,
                              metric=result.metric, metrics=result.metrics, **fields)
        try:
            submitted = tx.submit(lab, score)
        except ShardError as exc:
            # main became unreadable mid-run (a foreign or damaged shard): the result
            # needs nothing from main, so it is recorded first, then the damage reported.
            if not exc.newer and tx.record_unread(lab, score, claim.lease_until):
                emit(self.say, "recorded_unread",
                     f"{claim.experiment_id}: result recorded (attempt {claim.attempt}); "
                     "main cannot be read until it is repaired (`autolab doctor --fix`)",
                     level=WARNING, experiment_id=claim.experiment_id,
                     attempt=claim.attempt, status=score["status"], metric=score["metric"])
            raise
        self._note({"event": "submitted", "experiment_id": claim.experiment_id,
                    "attempt": claim.attempt, "outcome": submitted.outcome,
                    "result_digest": score["result_digest"]})
        shown = f"{metric_name}={score['metric']:.6g}" if score["metric"] is not None else (
            score["reason"] or "")
        emit(self.say, "scored", f"{claim.experiment_id}: {score['status']} {shown} in "
             f"{result.runtime_s:.1f}s ({submitted.outcome})",
             experiment_id=claim.experiment_id, attempt=claim.attempt,
             status=score["status"], metric_name=metric_name, metric=score["metric"],
             reason=score["reason"], runtime_s=score["runtime_s"], outcome=submitted.outcome)
        promoted = False
        if submitted.outcome == "recorded" and score["status"] == "ok":
            outcome = tx.promote(lab, claim.experiment_id)
            promoted = outcome.promoted
            if promoted:
                emit(self.say, "promoted", f"promoted {claim.experiment_id}: {metric_name} "
                     f"{outcome.previous} -> {outcome.metric}",
                     experiment_id=claim.experiment_id, metric=outcome.metric,
                     previous=outcome.previous, commit=outcome.commit)
            elif outcome.awaiting_review:
                emit(self.say, "awaiting_review",
                     f"{claim.experiment_id} awaits review ({outcome.reason}): "
                     f"`autolab review accept {claim.experiment_id}` promotes it",
                     experiment_id=claim.experiment_id, reason=outcome.reason)
            else:
                emit(self.say, "not_promoted",
                     f"not promoted {claim.experiment_id}: {outcome.reason}",
                     experiment_id=claim.experiment_id, reason=outcome.reason)
        cycle = Cycle(claim.experiment_id, claim.attempt, score["status"], score["metric"],
                      submitted.outcome, promoted, time.monotonic() - start, result.runtime_s)
        self._note_cycle(cycle)
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
            try:
                exp = self.lab.read().state.experiments[claim.experiment_id]
            except ShardError:
                return None  # main cannot be read: record the result without a branch
            if exp.attempt != claim.attempt or exp.state != "claimed":
                return None  # we are stale: leave the current attempt's branch alone
            current = store.fetch_ref(ref)
            try:
                self.lab.retry_transport(lambda: store.push_ref(ref, head, current))
            except Conflict:
                return None  # another attempt owns the branch: we have no pushed head
        return head

    def _note_cycle(self, cycle: Cycle) -> None:
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
                emit(self.say, "stats_unwritten", f"cannot write {self.stats_file}: {exc}",
                     level=WARNING, path=self.stats_file)

    def recover(self) -> list[str]:
        """End the attempts a dead process left behind: this agent id's, and this host's.

        A worker restarted under the same ``--agent`` (a supervisor, cron, a swarm) ends
        its dead predecessor's claims at once instead of leaving them to lease expiry,
        and so does any worker on the host for claims whose noted process is gone
        (:mod:`autolab.agents.host_claims`). They end as lost (``expired``), counting
        toward ``max_attempts``: a run that kills its worker every time must end, not
        loop under ``Restart=always``. Only claims of this worker's backend are touched
        (a remote job of the same agent id may still be running), and never one whose
        noted process on this host is alive (two live workers sharing an agent id).
        """
        view = self.lab.read()
        ended = []
        dead = {e.id for e in self.host_claims.dead_claims(view)} if self.host_claims else set()
        for exp in view.state.by_state("claimed"):
            if exp.backend != self.backend.name:
                continue
            if exp.id in dead:
                why = "its worker process on this host is gone"
            elif exp.agent == self.lab.agent and not (
                    self.host_claims and self.host_claims.holder_alive(exp)):
                why = "its worker died (restarted under the same agent id)"
            else:
                continue
            event = tx.abandon(self.lab, exp, why, view.config.policy.max_attempts)
            if event:
                ended.append(exp.id)
                emit(self.say, event, f"{event} {exp.id} attempt {exp.attempt}: {why} "
                     f"({exp.agent})", experiment_id=exp.id, attempt=exp.attempt,
                     reason=why, holder=exp.agent)
        return ended

    def loop(self, *, max_experiments: int | None = None, idle: float = 2.0,
             exit_when_idle: bool = False) -> int:
        """Run cycles until stopped (or ``max_experiments``); return how many ran."""
        done = 0
        while max_experiments is None or done < max_experiments:
            if self.run_once() is None:
                if exit_when_idle:
                    break
                emit(self.say, "idle", f"nothing to claim; looking again in {idle:g}s",
                     level=DEBUG)
                time.sleep(idle)
                continue
            done += 1
        return done
