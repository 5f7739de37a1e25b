"""The worker: claim an experiment, run it, record the score, promote if it wins.

One cycle (DESIGN.md §6): claim -> worktree at the experiment's parent -> apply the
patch, harness from ``main`` -> run on a backend -> push ``autolab/exp/<id>`` (the
patch commit, then a result commit carrying the metrics) -> submit the score ->
promote when the policy allows. Every outcome, including a patch that does not
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
from autolab.protocol.errors import Conflict, NothingToDo, PatchError
from autolab.protocol.harness import harness_files, harness_hash
from autolab.protocol.lab import Lab, now
from autolab.protocol.store import FileChange


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
        """Claim and run one experiment; None when nothing is claimable."""
        start = time.monotonic()
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
        with Worktree() as tree:
            try:
                touched = tree.prepare(store, parent, claim.patch, main, config)
            except PatchError as exc:
                result = RunResult("invalid", None, {}, str(exc), 0.0)
            else:
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
                head = self._push_branch(claim, parent, tree, touched, result)
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
        """More score columns (where a run happened and what it cost); none locally."""
        return {}

    def _push_branch(self, claim: tx.Claim, parent: str, tree: Worktree, touched: list[str],
                     result: RunResult) -> str | None:
        """Push ``autolab/exp/<id>``: the patch commit, then the result commit."""
        store = self.lab.store
        present = {p: tree.read(p) for p in touched}
        change = FileChange(add={p: d for p, d in present.items() if d is not None},
                            remove=[p for p, d in present.items() if d is None])
        patch_commit = store.make_commit(
            parent, change, f"experiment {claim.experiment_id}: {claim.hypothesis}",
            agent=self.lab.agent)
        lines = [f"{k}: {v:g}" for k, v in sorted(result.metrics.items())]
        message = (f"result {claim.experiment_id} attempt {claim.attempt}: {result.status}"
                   + (f" ({result.reason})" if result.reason else "")
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
            fd = os.open(self.stats_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)

    def recover(self) -> list[str]:
        """Release attempts this agent id still holds from a previous process that died.

        A worker restarted under the same ``--agent`` (a supervisor, cron, a swarm) gives
        its dead predecessor's claims back at once instead of leaving them to lease
        expiry. Agent ids must therefore be unique per live process (the default,
        host-pid, is); if two live processes shared one, the other's result would only
        be recorded as late, never lost or promoted twice.
        """
        released = []
        for exp in self.lab.read().state.by_state("claimed"):
            if exp.agent == self.lab.agent and tx.release(
                    self.lab, exp.id, exp.attempt, "its worker restarted"):
                released.append(exp.id)
                self.say(f"released {exp.id} attempt {exp.attempt}: held by a previous "
                         f"process of {self.lab.agent}")
        return released

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
