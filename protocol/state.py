"""The lab state: a deterministic fold of all rows by their order (DESIGN.md §4.3).

Rows on ``main`` are ordered by ``seq``; rows that still live in record refs come
after them, in record order. The fold is a pure function of that ordered stream, so
any agent reading the same commit and refs computes the same state, whatever order
the shard files were listed in.

Per experiment and attempt, the *first* claim and the *first* outcome (score,
expiry, release, failure) win; anything later for the same attempt is kept as data
and marked (a later score is ``late``; a second claim is ignored).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

TERMINAL = ("done", "failed", "cancelled")


@dataclass
class Experiment:
    """Folded state of one experiment."""

    id: str
    state: str = "queued"  # queued | claimed | done | failed | cancelled
    attempt: int = 0  # the last attempt claimed (0: never claimed)
    patch: str = ""
    patch_hash: str = ""
    hypothesis: str = ""
    priority: float = 1.0
    parent_commit: str | None = None
    proposed_by: str | None = None
    proposed_at: datetime | None = None
    agent: str | None = None  # claimant of the current attempt
    lease_until: datetime | None = None
    claimed_at: datetime | None = None
    backend: str | None = None
    job_id: str | None = None
    reason: str | None = None
    result: dict[str, Any] | None = None  # the score row that finished it
    outcomes: dict[int, str] = field(default_factory=dict)  # attempt -> first outcome
    promoted: bool = False

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment_id": self.id, "state": self.state, "attempt": self.attempt,
            "hypothesis": self.hypothesis, "priority": self.priority,
            "patch_hash": self.patch_hash, "parent_commit": self.parent_commit,
            "proposed_by": self.proposed_by, "agent": self.agent,
            "lease_until": self.lease_until, "claimed_at": self.claimed_at,
            "backend": self.backend, "job_id": self.job_id, "reason": self.reason,
            "status": self.result["status"] if self.result else None,
            "metric": self.result["metric"] if self.result else None,
            "promoted": self.promoted,
        }


@dataclass
class LabState:
    """Everything an agent decides on: folded from one snapshot.

    Attributes:
        main: the ``main`` commit the state was read at.
        max_seq: the largest ``seq`` on ``main`` (new rows get numbers after it).
        experiments: by id, in proposal order.
        scores: every score row, with ``late`` as the fold decided it.
        promotions: ``promoted`` events in order.
        anomalies: rows the fold ignored, one line each (reported by ``doctor``).
    """

    main: str
    max_seq: int = 0
    experiments: dict[str, Experiment] = field(default_factory=dict)
    scores: list[dict[str, Any]] = field(default_factory=list)
    promotions: list[dict[str, Any]] = field(default_factory=list)
    ideas: list[dict[str, Any]] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)
    _shared: set[str] = field(default_factory=set, repr=False)

    def fork(self, main: str) -> LabState:
        """A copy-on-write copy: experiments are copied only when :meth:`own` is called."""
        return LabState(main=main, max_seq=self.max_seq, experiments=dict(self.experiments),
                        scores=list(self.scores), promotions=list(self.promotions),
                        ideas=list(self.ideas), anomalies=list(self.anomalies),
                        _shared=set(self.experiments))

    def own(self, experiment_id: str) -> Experiment:
        """The experiment, copied first if it is shared with the state this was forked from."""
        exp = self.experiments[experiment_id]
        if experiment_id in self._shared:
            self._shared.discard(experiment_id)
            exp = replace(exp, outcomes=dict(exp.outcomes))
            self.experiments[experiment_id] = exp
        return exp

    @property
    def best(self) -> dict[str, Any] | None:
        """The current best: the last promotion (None before the first)."""
        return self.promotions[-1] if self.promotions else None

    @property
    def best_metric(self) -> float | None:
        return self.best["metric"] if self.best else None

    def by_state(self, state: str) -> list[Experiment]:
        return [e for e in self.experiments.values() if e.state == state]

    def patch_hashes(self) -> set[str]:
        """Hashes of every patch that is not failed (what a new proposal must avoid)."""
        return {e.patch_hash for e in self.experiments.values() if e.state != "failed"}

    def scores_for(self, experiment_id: str, attempt: int | None = None) -> list[dict]:
        return [
            s for s in self.scores
            if s["experiment_id"] == experiment_id and (attempt is None or s["attempt"] == attempt)
        ]


def fold(main: str, max_seq: int, queue: list[dict], scores: list[dict],
         ideas: list[dict], base: LabState | None = None) -> LabState:
    """Fold ordered rows into a :class:`LabState`.

    Each row carries an ``_order`` key (main rows: ``(0, seq, event_id)``; record rows:
    ``(1, record_index, row_index)``); rows are processed in that order. With ``base``,
    folding continues from that state (left untouched: it is forked copy-on-write),
    so the fold of ``main`` can be cached and only record rows applied on top.
    """
    state = base.fork(main) if base is not None else LabState(main=main, max_seq=max_seq)
    state.max_seq = max_seq
    stream = [(r["_order"], 0, r) for r in queue] + [(r["_order"], 1, r) for r in scores]
    stream.sort(key=lambda item: (item[0], item[1]))
    for _, kind, row in stream:
        if kind == 1:
            _fold_score(state, row)
        else:
            _fold_event(state, row)
    state.ideas = state.ideas + sorted(ideas, key=lambda r: r["_order"])
    return state


def _fold_event(state: LabState, row: dict) -> None:
    event, eid = row["event"], row["experiment_id"]
    exps = state.experiments
    if event == "proposed":
        if eid in exps:
            state.anomalies.append(f"experiment {eid} proposed twice (seq {row['seq']})")
            return
        exps[eid] = Experiment(
            id=eid, patch=row["patch"] or "", patch_hash=row["patch_hash"] or "",
            hypothesis=row["hypothesis"] or "", priority=_num(row["priority"], 1.0),
            parent_commit=row["parent_commit"], proposed_by=row["agent"],
            proposed_at=row["at"],
        )
        return
    if eid not in exps:
        state.anomalies.append(f"{event} for unknown experiment {eid} (seq {row['seq']})")
        return
    exp = state.own(eid)
    attempt = row["attempt"]
    if event == "claimed":
        if exp.state == "queued" and attempt == exp.attempt + 1:
            exp.state, exp.attempt, exp.agent = "claimed", attempt, row["agent"]
            exp.lease_until, exp.claimed_at = row["lease_until"], row["at"]
            exp.backend, exp.job_id, exp.reason = row["backend"], row["job_id"], None
        else:
            state.anomalies.append(
                f"claim of {eid} attempt {attempt} by {row['agent']} ignored "
                f"(experiment {exp.state} at attempt {exp.attempt})"
            )
    elif event in ("released", "expired", "failed"):
        if attempt is not None and attempt in exp.outcomes:
            return  # the attempt already ended; first outcome wins
        if attempt is not None:
            exp.outcomes[attempt] = event
        if exp.terminal or (attempt is not None and attempt != exp.attempt):
            return
        exp.reason = row["reason"]
        exp.state = "failed" if event == "failed" else "queued"
        exp.agent = exp.lease_until = None
    elif event == "cancelled":
        if not exp.terminal:
            exp.state, exp.reason = "cancelled", row["reason"]
    elif event == "promoted":
        exp.promoted = True
        state.promotions.append(
            {"experiment_id": eid, "attempt": attempt, "metric": row["metric"],
             "source_commit": row["source_commit"], "agent": row["agent"],
             "at": row["at"], "seq": row["seq"]}
        )


def _fold_score(state: LabState, row: dict) -> None:
    row = dict(row)
    eid = row["experiment_id"]
    exp = state.experiments.get(eid)
    attempt = row["attempt"]
    current = (
        exp is not None
        and not row["late"]
        and exp.state == "claimed"
        and attempt == exp.attempt
        and attempt not in exp.outcomes
    )
    row["late"] = not current
    if exp is None:
        state.anomalies.append(f"score for unknown experiment {eid}")
    elif current:
        exp = state.own(eid)
        exp.outcomes[attempt] = "score"
        exp.state, exp.result, exp.reason = "done", row, row["reason"]
        exp.lease_until = None
    state.scores.append(row)


def _num(value: float | None, default: float) -> float:
    return default if value is None else float(value)
