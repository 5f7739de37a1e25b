"""The protocol's transactions: propose, claim, submit, reap, release, cancel,
promote, compact. Each is bounded in retries, backs off with jitter, and re-decides
on fresh state after a lost race (DESIGN.md §4.4).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from autolab.protocol.errors import (
    AutoLabError,
    Conflict,
    Contended,
    NothingToDo,
    ResultMismatch,
)
from autolab.protocol.lab import Lab, MainChange, now, record_ref
from autolab.protocol.patch_judge import judge_patch, promotable, result_commit_problem
from autolab.protocol.patches import is_open, normalized_hash, open_hash
from autolab.protocol.reader import LabView
from autolab.protocol.redact import redact
from autolab.protocol.review import REASON_CHARS, changed_paths, review_hold
from autolab.protocol.schemas import SCORE_STATUSES, TABLES
from autolab.protocol.shards import encode, new_shard_name, parse_shard_path
from autolab.protocol.state import Experiment
from autolab.protocol.store import FileChange


def branch_name(experiment_id: str) -> str:
    """The experiment's branch: patch commit, then result commit."""
    return f"autolab/exp/{experiment_id}"


# -- propose ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Proposal:
    """An experiment to enqueue: one hypothesis, one patch (a unified diff)."""

    hypothesis: str
    patch: str
    priority: float = 1.0
    # Where it came from, recorded on the ``proposed`` row: any of ``proposer``,
    # ``model``, ``prompt_tokens``, ``completion_tokens``, ``llm_usd``.
    origin: dict[str, Any] = field(default_factory=dict)
    # A hypothesis without a patch: its claimant (a person, a coding agent) writes the
    # change (``patch`` must be empty).
    open: bool = False


ORIGIN_COLUMNS = ("proposer", "model", "prompt_tokens", "completion_tokens", "llm_usd")
REFUSED_PATCH_CHARS = 20_000  # a refused proposal's patch is kept only this long


def _origin(proposal: Proposal) -> dict[str, Any]:
    unknown = set(proposal.origin) - set(ORIGIN_COLUMNS)
    if unknown:
        raise ValueError(f"unknown proposal origin fields: {sorted(unknown)}")
    return dict(proposal.origin)


def propose(lab: Lab, proposals: list[Proposal]) -> list[str | None]:
    """Enqueue experiments in one commit; return their ids (None for duplicates).

    A proposal whose normalized patch hash matches any experiment that has not failed
    (or an earlier proposal of the same batch) is dropped; an open proposal (no patch)
    is dropped when the same hypothesis is open already. Raises PatchError for a
    patch that is not a diff, is too large, does not apply to ``main``, or (as git
    applies it) writes anything but editable paths (:mod:`autolab.protocol.patch_judge`).
    """

    def decide(view: LabView) -> MainChange | None:
        config = view.config
        seen = view.state.patch_hashes()
        next_number = len(view.state.experiments) + 1
        ids: list[str | None] = []
        rows = []
        for p in proposals:
            if p.open:
                if p.patch:
                    raise ValueError("an open proposal has no patch")
                digest = open_hash(p.hypothesis)
            else:
                judge_patch(lab.store, view.main, p.patch, config)
                digest = normalized_hash(p.patch)
            if digest in seen:
                ids.append(None)
                continue
            seen.add(digest)
            eid = f"{next_number:04d}"
            next_number += 1
            ids.append(eid)
            rows.append({
                "experiment_id": eid, "event": "proposed", "at": now(),
                "parent_commit": view.main, "patch": p.patch, "patch_hash": digest,
                "hypothesis": p.hypothesis, "priority": float(p.priority), **_origin(p),
            })
        if not rows:
            return None
        first = next(i for i in ids if i)
        message = f"propose {len(rows)} experiment(s) from {first}: {rows[0]['hypothesis'][:60]}"
        return MainChange(message=message, rows={"queue": rows}, result=ids)

    view, _, ids = lab.commit_main(decide)
    if ids is None:  # everything was a duplicate
        return [None] * len(proposals)
    lab.fold(view)
    return ids


def refuse(lab: Lab, proposal: Proposal, reason: str) -> str:
    """Record a proposal that was not accepted (its patch broke a rule, or its proposer
    gave no usable answer): a ``proposed`` row and a ``failed`` row in one commit, so the
    attempt, its cost and the reason stay in the lab (proposers read them back) while
    no worker ever claims it. The patch is stored as text only, never applied, and
    truncated to ``REFUSED_PATCH_CHARS``. Returns the experiment id.
    """
    patch = redact(proposal.patch[:REFUSED_PATCH_CHARS])

    def decide(view: LabView) -> MainChange:
        eid = f"{len(view.state.experiments) + 1:04d}"
        stamp = now()
        rows = [
            {"experiment_id": eid, "event": "proposed", "at": stamp,
             "parent_commit": view.main, "patch": patch, "patch_hash": normalized_hash(patch),
             "hypothesis": redact(proposal.hypothesis), "priority": float(proposal.priority),
             **_origin(proposal)},
            {"experiment_id": eid, "event": "failed", "at": stamp,
             "reason": redact(f"refused: {reason}")[:2000]},
        ]
        return MainChange(message=f"refuse proposal {eid}: {reason[:60]}",
                          rows={"queue": rows}, result=eid)

    view, _, eid = lab.commit_main(decide)
    lab.fold(view)
    return eid


# -- claim -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """A won claim: run ``patch`` on ``parent_commit`` before ``lease_until``."""

    experiment_id: str
    attempt: int
    lease_until: datetime
    patch: str
    patch_hash: str
    hypothesis: str
    parent_commit: str | None
    main: str

    @property
    def open(self) -> bool:
        """Proposed as a hypothesis without a patch: the claimant writes the change."""
        return is_open(self.patch_hash)

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment_id": self.experiment_id, "attempt": self.attempt,
            "lease_until": self.lease_until.isoformat(), "hypothesis": self.hypothesis,
            "patch": self.patch, "patch_hash": self.patch_hash, "open": self.open,
            "parent_commit": self.parent_commit, "main": self.main,
        }


def claim(lab: Lab, *, backend: str | None = None, job_id: str | None = None,
          lease_seconds: float | None = None, experiment_id: str | None = None,
          max_age: float = 2.0, skip_open: bool = False,
          notify: Callable[[str, int, bool], None] | None = None) -> Claim:
    """Claim one queued experiment: weighted random among the claimable ones.

    The claim is a create-only record ref, so the decision may be taken on this
    agent's view of up to ``max_age`` seconds ago: a stale pick only loses the create
    and is re-decided on a fresh fetch. Random weighted picks keep such losses rare.

    ``notify(experiment_id, attempt, trying)`` is called with ``trying=True`` just before
    each claim is pushed and with ``trying=False`` when that claim was lost: a worker
    notes on its host which process holds the claim before it can exist.
    ``skip_open`` leaves open experiments (no patch) to agents that can write one.

    Raises:
        NothingToDo: nothing is claimable (exit code 3 in the CLI).
    """
    lost: set[str] = set()
    since = None
    started = time.time()
    for n in lab.backoff.delays():
        view = lab.read(since=since, max_age=max_age if n == 0 else 0.0)
        since = time.time()
        queued = [e for e in view.state.by_state("queued") if e.id not in lost
                  and not (skip_open and is_open(e.patch_hash))]
        if experiment_id is not None:
            queued = [e for e in queued if e.id == experiment_id]
        if not queued:
            if view.snapshot.fetched_at < started:
                continue  # "nothing" only counts on a fresh fetch
            if lost:
                # The ones we lost may have been released meanwhile, or we lost only
                # because our view was stale: look again on a fresh fetch.
                lost.clear()
                continue
            raise NothingToDo("nothing to claim")
        exp = random.choices(queued, weights=[max(e.priority, 1e-3) for e in queued])[0]
        attempt = exp.attempt + 1
        lease = lease_seconds if lease_seconds is not None else view.config.lease_seconds()
        lease_until = now() + timedelta(seconds=lease)
        row = {"experiment_id": exp.id, "event": "claimed", "attempt": attempt,
               "at": now(), "lease_until": lease_until, "backend": backend, "job_id": job_id}
        if notify is not None:
            notify(exp.id, attempt, True)
        try:
            lab.create_record(record_ref("claims", exp.id, attempt), {"queue": [row]},
                              f"claim {exp.id} attempt {attempt}")
        except Conflict:
            lab.stats["lost_claims"] = lab.stats.get("lost_claims", 0) + 1
            lost.add(exp.id)
            if notify is not None:
                notify(exp.id, attempt, False)
            continue
        if time.time() - view.snapshot.fetched_at > lab.ref_grace / 4 and not _still_ours(
            lab, exp.id, attempt
        ):
            lost.add(exp.id)
            if notify is not None:
                notify(exp.id, attempt, False)
            continue
        # Keep this agent's cached view truthful about what it just won.
        mine = view.state.own(exp.id)
        mine.state, mine.attempt, mine.agent, mine.lease_until = (
            "claimed", attempt, lab.agent, lease_until)
        lab.fold(view)
        return Claim(exp.id, attempt, lease_until, exp.patch, exp.patch_hash, exp.hypothesis,
                     exp.parent_commit, view.main)
    raise NothingToDo("gave up claiming: every pick was lost to other agents until the "
                      "deadline")


def _still_ours(lab: Lab, experiment_id: str, attempt: int) -> bool:
    """After a slow claim, confirm the fold credits it to us (not an earlier twin)."""
    exp = lab.read().state.experiments[experiment_id]
    return exp.attempt == attempt and exp.agent == lab.agent


# -- submit ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SubmitResult:
    """``recorded`` (counts), ``late`` (kept as data, never promoted) or ``duplicate``."""

    outcome: str
    experiment_id: str
    attempt: int
    late: bool


def result_digest(result: dict[str, Any]) -> str:
    """Identity of a result: what makes two submissions 'the same'."""
    key = {k: result.get(k) for k in ("status", "metric", "branch_commit")}
    key["metrics"] = sorted((result.get("metrics") or {}).items())
    blob = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def make_score(experiment_id: str, attempt: int, *, status: str, metric: float | None,
               metrics: dict[str, float] | None = None, **extra: Any) -> dict[str, Any]:
    """A score row; a non-finite metric turns an ``ok`` status into ``invalid``."""
    if status not in SCORE_STATUSES:
        raise AutoLabError(f"status must be one of {', '.join(SCORE_STATUSES)}, got {status!r}")
    if metric is not None and not math.isfinite(metric):
        status, extra["reason"] = "invalid", extra.get("reason") or f"metric is {metric}"
        metric = None
    clean = {k: float(v) for k, v in (metrics or {}).items()
             if isinstance(v, (int, float)) and math.isfinite(v)}
    if extra.get("reason"):
        # Reasons land on main (often a run's last line): never a credential there.
        extra["reason"] = redact(str(extra["reason"]))
    row = {"experiment_id": experiment_id, "attempt": attempt, "status": status,
           "metric": metric, "metrics": clean, "late": False, **extra}
    row.setdefault("finished_at", now())
    row["result_digest"] = result_digest(row)
    return row


def claimed_experiment(view: LabView, experiment_id: str, attempt: int) -> Experiment:
    """The experiment, checked to exist and to have had ``attempt`` claimed.

    Raises:
        AutoLabError: the experiment is unknown or the attempt was never claimed.
    """
    exp = view.state.experiments.get(experiment_id)
    if exp is None:
        raise AutoLabError(f"unknown experiment {experiment_id}")
    if not 1 <= attempt <= exp.attempt:
        raise AutoLabError(f"attempt {attempt} of experiment {experiment_id} was never claimed")
    return exp


def claimant(view: LabView, experiment_id: str, attempt: int) -> str | None:
    """The agent whose claim of ``attempt`` counted (None: never claimed)."""
    exp = view.state.experiments.get(experiment_id)
    if exp is not None and exp.attempt == attempt and exp.state == "claimed":
        return exp.agent
    import pyarrow.compute as pc

    queue = view.table("queue", lean=True)
    claims = queue.filter(pc.and_(pc.and_(pc.equal(queue.column("event"), "claimed"),
                                          pc.equal(queue.column("experiment_id"),
                                                   experiment_id)),
                                  pc.equal(queue.column("attempt"), attempt)))
    # The first claim of an attempt wins (the fold's rule); later ones were ignored.
    agents = claims.column("agent").to_pylist()
    return agents[0] if agents else None


def submit(lab: Lab, score: dict[str, Any], *, claimant_only: bool = False) -> SubmitResult:
    """Record a finished attempt's score. Idempotent per (experiment, attempt).

    Args:
        claimant_only: refuse unless this agent holds (or held) the attempt: what the
            ``autolab submit`` primitive demands of whoever calls it. Agents that
            settle another's attempt on evidence of their own (a reaper reading a
            finished job's logs) leave it off.

    Raises:
        ResultMismatch: a different result is already recorded for this attempt.
        AutoLabError: the experiment is unknown, the attempt was never claimed, or
            (``claimant_only``) another agent claimed it.
    """
    eid, attempt, digest = score["experiment_id"], score["attempt"], score["result_digest"]
    for _ in lab.backoff.delays():
        view = lab.read()
        exp = claimed_experiment(view, eid, attempt)
        if claimant_only:
            holder = claimant(view, eid, attempt)
            if holder != lab.agent:
                raise AutoLabError(f"experiment {eid} attempt {attempt} was claimed by "
                                   f"{holder}, not by {lab.agent}: only its claimant may "
                                   "submit its result")
        for existing in view.state.scores_for(eid, attempt):
            if existing["result_digest"] == digest:
                return SubmitResult("duplicate", eid, attempt, existing["late"])
            raise ResultMismatch(
                f"experiment {eid} attempt {attempt} already has a different result "
                f"(status {existing['status']}, metric {existing['metric']})"
            )
        current = exp.state == "claimed" and exp.attempt == attempt and attempt not in exp.outcomes
        if not current:
            row = {**score, "late": True}
            lab.commit_main(lambda v, r=row: _late_change(v, r), view)
            return SubmitResult("late", eid, attempt, True)
        try:
            lab.create_record(record_ref("results", eid, attempt), {"scores": [score]},
                              f"result {eid} attempt {attempt}: {score['status']} "
                              f"{score.get('metric')}")
        except Conflict:
            lab.stats["conflicts"] += 1
            continue  # someone ended this attempt first (reaper?): re-read, maybe late
        late = False
        if time.time() - view.snapshot.fetched_at > lab.ref_grace / 4:
            mine = lab.read().state.scores_for(eid, attempt)
            late = any(s["result_digest"] == digest and s["late"] for s in mine)
        lab.fold(view)
        return SubmitResult("late" if late else "recorded", eid, attempt, late)
    raise Contended(f"gave up submitting {eid} attempt {attempt}: lost every race until the "
                    "deadline")


def record_unread(lab: Lab, score: dict[str, Any], claimed_until: datetime | None) -> bool:
    """Record a finished attempt's result without reading ``main`` (it cannot be read).

    A result is a create-only record ref and needs nothing from ``main``: when a foreign
    or damaged shard lands there mid-run, the result is recorded first and the damage
    reported after. Without a read, "is this attempt still current" is answered by the
    ref itself: whoever ended the attempt (a reaper, a release) wrote this very name,
    and that name stays until ``ref_grace`` after it was folded, which cannot happen
    before the lease ran out. So the create is conclusive only until
    ``claimed_until + ref_grace``; after that nothing is written.

    Returns:
        True if the result was recorded; False if the attempt had already ended or it
        is too late to tell.
    """
    eid, attempt = score["experiment_id"], score["attempt"]
    if claimed_until is None or now() >= claimed_until + timedelta(seconds=lab.ref_grace):
        return False
    try:
        lab.create_record(record_ref("results", eid, attempt), {"scores": [score]},
                          f"result {eid} attempt {attempt}: {score['status']} "
                          f"{score.get('metric')}")
    except Conflict:
        return False
    return True


def _late_change(view: LabView, row: dict[str, Any]) -> MainChange | None:
    existing = view.state.scores_for(row["experiment_id"], row["attempt"])
    if any(s["result_digest"] == row["result_digest"] for s in existing):
        return None
    return MainChange(message=f"late result {row['experiment_id']} attempt {row['attempt']}",
                      rows={"scores": [row]})


# -- reap / release / cancel -------------------------------------------------------------


@dataclass(frozen=True)
class Reaped:
    experiment_id: str
    attempt: int
    event: str  # expired | failed | recovered (a job's score read from its logs)


def _end_attempt(lab: Lab, experiment_id: str, attempt: int, event: str, reason: str, *,
                 cost_usd: float | None = None) -> bool:
    reason = redact(reason)
    row = {"experiment_id": experiment_id, "event": event, "attempt": attempt,
           "at": now(), "reason": reason, "cost_usd": cost_usd}
    try:
        lab.create_record(record_ref("results", experiment_id, attempt), {"queue": [row]},
                          f"{event} {experiment_id} attempt {attempt}: {reason}")
    except Conflict:
        return False  # the attempt already ended (a result or another reaper won)
    return True


def reap(lab: Lab, view: LabView | None = None, *, at: datetime | None = None,
         keep: frozenset[str] | set[str] = frozenset()) -> list[Reaped]:
    """End every attempt whose lease expired: back to queued, or failed at max_attempts.

    ``keep``: experiments whose run is known to be alive (a remote job still running)
    keep their lease whatever its time.
    """
    view = view or lab.read()
    moment = at or now()
    done: list[Reaped] = []
    for exp in view.state.by_state("claimed"):
        if exp.id in keep or exp.lease_until is None or exp.lease_until > moment:
            continue
        reason = f"lease of attempt {exp.attempt} by {exp.agent} expired"
        event = abandon(lab, exp, reason, view.config.policy.max_attempts)
        if event is not None:
            done.append(Reaped(exp.id, exp.attempt, event))
    return done


def abandon(lab: Lab, exp: Experiment, reason: str, max_attempts: int, *,
            cost_usd: float | None = None) -> str | None:
    """End ``exp``'s current attempt as lost: ``expired`` (requeued) or, at
    ``max_attempts``, ``failed``. Returns the event, or None if the attempt had already
    ended (its result, or another reaper, came first).

    Only attempts lost this way count toward ``max_attempts`` (a run that keeps killing
    its worker must end); attempts a worker released (it was stopped, or restarted
    after a crash of its own) are not the experiment's fault.
    """
    expiries = 1 + sum(1 for o in exp.outcomes.values() if o == "expired")
    event = "failed" if expiries >= max_attempts else "expired"
    if event == "failed":
        reason += f" (max_attempts {max_attempts} reached)"
    ended = _end_attempt(lab, exp.id, exp.attempt, event, reason, cost_usd=cost_usd)
    return event if ended else None


def release(lab: Lab, experiment_id: str, attempt: int, reason: str) -> bool:
    """Give a claimed attempt back to the queue (e.g. a worker shutting down)."""
    return _end_attempt(lab, experiment_id, attempt, "released", reason)


def cancel(lab: Lab, experiment_id: str, reason: str) -> bool:
    """Cancel an experiment that has not finished; False if it already had."""

    def decide(view: LabView) -> MainChange | None:
        exp = view.state.experiments.get(experiment_id)
        if exp is None:
            raise AutoLabError(f"unknown experiment {experiment_id}")
        if exp.terminal:
            return None
        row = {"experiment_id": experiment_id, "event": "cancelled", "at": now(),
               "reason": redact(reason), "attempt": exp.attempt or None}
        return MainChange(message=f"cancel {experiment_id}: {reason}", rows={"queue": [row]},
                          result=True)

    return bool(lab.commit_main(decide)[2])


# -- promote ---------------------------------------------------------------------------


@dataclass
class Promotion:
    """Outcome of :func:`promote`: ``promoted`` and the merge commit, or the reason not."""

    experiment_id: str
    promoted: bool
    reason: str = ""
    commit: str | None = None
    metric: float | None = None
    previous: float | None = None
    awaiting_review: bool = False  # held back by ``policy.review``: ``reason`` says why


def promotion_blocker(view: LabView, experiment_id: str) -> str | None:
    """Why ``experiment_id`` cannot be promoted on ``view`` (None: it can)."""
    exp = view.state.experiments.get(experiment_id)
    if exp is None:
        return f"unknown experiment {experiment_id}"
    if exp.promoted:
        return "already promoted"
    if exp.rejected:
        return f"rejected by {exp.rejected_by}: {exp.rejection}"
    result = exp.result
    if exp.state != "done" or result is None:
        return f"experiment is {exp.state}, not done"
    if result["status"] != "ok" or result["metric"] is None:
        return f"result status is {result['status']}"
    if not result.get("branch_commit"):
        return "result has no branch commit"
    if not math.isfinite(result["metric"]):
        return f"result metric is {result['metric']}"
    if not result.get("harness_hash"):
        return "result records no harness hash"
    from autolab.protocol.harness import harness_files, harness_hash

    current = harness_hash(harness_files(view.store, view.main, view.config))
    if result["harness_hash"] != current:
        return "its harness hash differs from the harness on main"
    config, best = view.config, view.state.best_metric
    if not config.better(result["metric"], best):
        return (f"{config.metric} {result['metric']:.6g} does not beat the best {best:.6g} "
                f"by min_delta {config.policy.min_delta:g}")
    return None


def promote(lab: Lab, experiment_id: str, *, reviewed: bool = False,
            note: str | None = None) -> Promotion:
    """Merge an experiment into ``main`` if it still beats the best on the exact parent.

    The merge commit's first parent is the previous ``main``, its second the
    experiment's branch head; its editable paths equal the experiment's versions.

    Args:
        reviewed: a reviewer accepts it (``autolab review accept``): the lab's review
            gate (``policy.review``) does not hold it back, and the ``promoted`` row
            records this agent as ``reviewer`` with ``note``. Without it, a winner the
            gate holds is not promoted (``awaiting_review``).
    """
    outcome = Promotion(experiment_id, promoted=False)
    fetched: set[str] = set()
    checked: dict[str, str] = {}  # head -> why it is not parent + patch ("" if it is)

    def decide(view: LabView) -> MainChange | None:
        blocker = promotion_blocker(view, experiment_id)
        if blocker:
            outcome.reason = blocker
            return None
        result = view.state.experiments[experiment_id].result
        assert result is not None
        head = result["branch_commit"]
        if head not in fetched and not lab.store.has_commit(head):
            got = lab.store.fetch_ref(f"refs/heads/{branch_name(experiment_id)}")
            if got is None or not lab.store.has_commit(head):
                outcome.reason = (f"result commit {head[:12]} is not on branch "
                                  f"{branch_name(experiment_id)}")
                return None
        fetched.add(head)
        exp = view.state.experiments[experiment_id]
        config = view.config
        problem = checked.get(head)
        if problem is None:
            problem = checked[head] = result_commit_problem(
                lab.store, exp.parent_commit, exp.patch, head, config,
                open_change=is_open(exp.patch_hash)) or ""
        if problem:
            outcome.reason = problem
            return None
        if lab.store.is_ancestor(head, view.main):
            outcome.reason = f"result commit {head[:12]} is already on main"
            return None
        if not reviewed:
            hold = review_hold(config, view.state.best_metric, result["metric"],
                               changed_paths(lab.store, exp.parent_commit, head))
            if hold:
                outcome.reason, outcome.awaiting_review = f"awaiting review: {hold}", True
                return None
        # Only the experiment's editable files travel: never the harness, the lab's
        # state or git's own files, whatever the branch holds.
        theirs = {p: b for p, b in lab.store.list_files(head).items() if promotable(p, config)}
        ours = [p for p in lab.store.list_files(view.main) if promotable(p, config)]
        previous = view.state.best_metric
        outcome.metric, outcome.previous = result["metric"], previous
        row = {"experiment_id": experiment_id, "event": "promoted", "at": now(),
               "attempt": result["attempt"], "metric": result["metric"], "source_commit": head}
        if reviewed:
            row["reviewer"] = lab.agent
            row["note"] = redact(note)[:REASON_CHARS] if note else None
        was = "none" if previous is None else f"{previous:.6g}"
        return MainChange(
            message=(f"promote {experiment_id}: {view.config.metric} {was} -> "
                     f"{result['metric']:.6g}"),
            rows={"queue": [row]},
            files=FileChange(remove=[p for p in ours if p not in theirs], add_blobs=theirs),
            merge_parent=head,
        )

    _, commit, _ = lab.commit_main(decide)
    if commit is not None:
        outcome.promoted, outcome.commit, outcome.reason = True, commit, "promoted"
    return outcome


# -- compact ---------------------------------------------------------------------------


@dataclass
class Compaction:
    commit: str | None
    shards_before: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)


def compact(lab: Lab, *, min_shards: int = 2) -> Compaction:
    """Rewrite each table's shards on ``main`` as one shard, in one commit.

    Rows keep their ``seq``; pending record refs are left alone. If the push loses a
    race, compaction starts again from scratch on the new ``main``.
    """
    report = Compaction(commit=None)

    def decide(view: LabView) -> MainChange | None:
        counts = {t: len(view.main_shards[t]) for t in TABLES}
        if max(counts.values()) < min_shards:
            return None
        add, remove = {}, []
        for table in TABLES:
            files = view.main_shards[table]
            if len(files) < 2:
                continue
            data = _main_rows(view, table)
            top = max(parse_shard_path(p).seq for p in files)  # type: ignore[union-attr]
            add[new_shard_name(table, "compact", top).path] = encode(table, data)
            remove.extend(files)
            report.rows[table] = data.num_rows
        report.shards_before = counts
        return MainChange(message=f"compact {len(remove)} shards", fold_records=False,
                          files=FileChange(add=add, remove=remove))

    _, report.commit, _ = lab.commit_main(decide)
    return report


def _main_rows(view: LabView, table: str) -> Any:
    import pyarrow as pa

    from autolab.protocol.shard_cache import read_table

    parts = [read_table(view.store, table, blob, path, view.main)
             for path, blob in view.main_shards[table].items()]
    return pa.concat_tables(parts).sort_by([("seq", "ascending"), ("event_id", "ascending")])
