"""The lab state: a deterministic fold of all rows by their order (DESIGN.md §4.3).

Rows on ``main`` are ordered by ``seq``; rows that still live in record refs come
after them, in record order. The fold is a pure function of that ordered stream, so
any agent reading the same commit and refs computes the same state, whatever order
the shard files were listed in.

Per experiment and attempt, the *first* claim and the *first* outcome (score,
expiry, release, failure) win; anything later for the same attempt is kept as data
and marked (a later score is ``late``; a second claim is ignored).

A review's ``rejected`` row marks a finished experiment as rejected (the first one
counts; one for a promoted experiment is an anomaly): it stays ``done``, so its patch
stays among the hashes proposals must avoid, and it is never promoted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import pyarrow as pa

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
    rejected: bool = False
    rejection: str | None = None  # the reviewer's reason, when rejected
    rejected_by: str | None = None

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
            "promoted": self.promoted, "rejected": self.rejected,
            "rejection": self.rejection, "rejected_by": self.rejected_by,
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
        charges: queue rows that carry a cost (an attempt that ended without a score on
            paid compute), as ``{"seq", "experiment_id", "cost_usd"}``, in order.
    """

    main: str
    max_seq: int = 0
    experiments: dict[str, Experiment] = field(default_factory=dict)
    scores: list[dict[str, Any]] = field(default_factory=list)
    promotions: list[dict[str, Any]] = field(default_factory=list)
    ideas: list[dict[str, Any]] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)
    charges: list[dict[str, Any]] = field(default_factory=list)
    _shared: set[str] = field(default_factory=set, repr=False)

    def fork(self, main: str) -> LabState:
        """A copy-on-write copy: experiments are copied only when :meth:`own` is called."""
        return LabState(main=main, max_seq=self.max_seq, experiments=dict(self.experiments),
                        scores=list(self.scores), promotions=list(self.promotions),
                        ideas=list(self.ideas), anomalies=list(self.anomalies),
                        charges=list(self.charges),
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
        """Hashes of every patch that is not failed (what a new proposal must avoid).

        Rejected experiments are ``done``, so their patches are avoided too: a reviewer's
        "no" is never proposed again (only a failed attempt may be retried).
        """
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
    stream = [(r["_order"], 0, r) for r in queue] + [(r["_order"], 1, r) for r in scores]
    stream.sort(key=lambda item: (item[0], item[1]))
    return fold_ordered(main, max_seq, ((kind, row) for _, kind, row in stream),
                        sorted(ideas, key=lambda r: r["_order"]), base)


def fold_ordered(main: str, max_seq: int, stream: Iterable[tuple[int, dict]],
                 ideas: list[dict], base: LabState | None = None) -> LabState:
    """:func:`fold` of rows already in fold order: ``(0, queue row)`` or ``(1, score row)``
    pairs, in the order ``fold`` sorts them into, and ideas in order.

    For readers that can produce the order without sorting a list of every row (and
    create each row only when it is folded).
    """
    state = base.fork(main) if base is not None else LabState(main=main, max_seq=max_seq)
    state.max_seq = max_seq
    for kind, row in stream:
        if kind == 1:
            _fold_score(state, row)
        else:
            _fold_event(state, row)
    state.ideas = state.ideas + ideas
    return state


def _fold_event(state: LabState, row: dict) -> None:
    event, eid = row["event"], row["experiment_id"]
    if row.get("cost_usd") is not None:
        state.charges.append({"seq": row["seq"], "experiment_id": eid,
                              "cost_usd": row["cost_usd"]})
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
             "at": row["at"], "seq": row["seq"], "reviewer": row.get("reviewer"),
             "note": row.get("note")}
        )
    elif event == "rejected":
        if exp.promoted:
            state.anomalies.append(f"rejection of promoted experiment {eid} ignored "
                                   f"(seq {row['seq']})")
        elif not exp.rejected:  # the first rejection counts
            exp.rejected, exp.rejection = True, row["reason"]
            exp.rejected_by = row.get("reviewer") or row["agent"]


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


# -- the columnar form ------------------------------------------------------------------
#
# Building 100,000 Experiment objects (or unpickling them) takes seconds; the scoreboard
# only needs columns. ``StateTables`` is a ``LabState`` as arrow tables: derived from a
# folded state (``state_tables``), cheap to store and to load, and continued with new
# rows by the fold itself (``continue_tables``): each experiment depends only on its own
# rows, so the experiments a batch of rows touches are taken out of the table, folded
# exactly as ``fold`` folds them, and put back.

_TS = pa.timestamp("us", tz="UTC")
EXPERIMENT_STATE = pa.schema([
    ("experiment_id", pa.string()), ("state", pa.string()), ("attempt", pa.int32()),
    ("patch_hash", pa.string()), ("hypothesis", pa.string()),
    ("priority", pa.float64()), ("parent_commit", pa.string()), ("proposed_by", pa.string()),
    ("proposed_at", _TS), ("agent", pa.string()), ("lease_until", _TS), ("claimed_at", _TS),
    ("backend", pa.string()), ("job_id", pa.string()), ("reason", pa.string()),
    ("result_event_id", pa.string()),  # the score row that finished it (in ``scores``)
    ("status", pa.string()), ("metric", pa.float64()),  # that row's, for queries
    ("outcomes", pa.map_(pa.int32(), pa.string())), ("promoted", pa.bool_()),
    ("rejected", pa.bool_()), ("rejection", pa.string()), ("rejected_by", pa.string()),
])
PROMOTIONS = pa.schema([
    ("experiment_id", pa.string()), ("attempt", pa.int32()), ("metric", pa.float64()),
    ("source_commit", pa.string()), ("agent", pa.string()), ("at", _TS), ("seq", pa.int64()),
    ("reviewer", pa.string()), ("note", pa.string()),
])
ANOMALIES = pa.schema([("anomaly", pa.string())])
CHARGES = pa.schema([("seq", pa.int64()), ("experiment_id", pa.string()),
                     ("cost_usd", pa.float64())])


@dataclass
class StateTables:
    """A :class:`LabState` in columnar form.

    Attributes:
        experiments: one row per experiment, in the order of ``LabState.experiments``
            (schema ``EXPERIMENT_STATE``). Patches are not part of it: they are most of
            a lab's bytes and no summary reads them (``LabView.patches`` gives them), so
            an :class:`Experiment` made from this table has ``patch`` empty.
        scores: ``LabState.scores`` (the ``scores`` schema, ``late`` as the fold decided).
        promotions, ideas, anomalies, charges: the state's lists, in order.
    """

    main: str
    max_seq: int
    experiments: pa.Table
    scores: pa.Table
    promotions: pa.Table
    ideas: pa.Table
    anomalies: pa.Table
    charges: pa.Table
    _index: dict[str, int] | None = field(default=None, repr=False)

    def index(self) -> dict[str, int]:
        """Experiment id -> row of ``experiments`` (built once)."""
        if self._index is None:
            ids = self.experiments.column("experiment_id").to_pylist()
            self._index = {eid: i for i, eid in enumerate(ids)}
        return self._index

    def experiment(self, experiment_id: str) -> Experiment | None:
        """The experiment as :class:`Experiment`, exactly as the fold left it."""
        found = self.experiments_by_id([experiment_id])
        return found.get(experiment_id)

    def experiments_by_id(self, ids: list[str]) -> dict[str, Experiment]:
        """Materialize the experiments ``ids`` (those that exist), in ``ids`` order."""
        index = self.index()
        known = [i for i in ids if i in index]
        if not known:
            return {}
        rows = self.experiments.take(pa.array([index[i] for i in known], pa.int64())).to_pylist()
        wanted = [r["result_event_id"] for r in rows if r["result_event_id"] is not None]
        results = {}
        if wanted:
            import pyarrow.compute as pc

            found = self.scores.filter(pc.is_in(self.scores.column("event_id"),
                                                value_set=pa.array(wanted, pa.string())))
            results = {r["event_id"]: r for r in found.to_pylist()}
        return {r["experiment_id"]: _experiment_from_row(r, results.get(r["result_event_id"]))
                for r in rows}


def _experiment_from_row(row: dict[str, Any], result: dict[str, Any] | None) -> Experiment:
    return Experiment(
        id=row["experiment_id"], state=row["state"], attempt=row["attempt"],
        patch_hash=row["patch_hash"], hypothesis=row["hypothesis"],
        priority=row["priority"], parent_commit=row["parent_commit"],
        proposed_by=row["proposed_by"], proposed_at=row["proposed_at"], agent=row["agent"],
        lease_until=row["lease_until"], claimed_at=row["claimed_at"], backend=row["backend"],
        job_id=row["job_id"], reason=row["reason"], result=result,
        outcomes=dict(row["outcomes"] or ()), promoted=row["promoted"],
        rejected=bool(row["rejected"]), rejection=row["rejection"],
        rejected_by=row["rejected_by"],
    )


def _experiments_table(exps: list[Experiment]) -> pa.Table:
    """Column by column: about ten times faster than a row dict per experiment."""
    results = [e.result for e in exps]
    columns = {
        "experiment_id": [e.id for e in exps], "state": [e.state for e in exps],
        "attempt": [e.attempt for e in exps],
        "patch_hash": [e.patch_hash for e in exps],
        "hypothesis": [e.hypothesis for e in exps], "priority": [e.priority for e in exps],
        "parent_commit": [e.parent_commit for e in exps],
        "proposed_by": [e.proposed_by for e in exps],
        "proposed_at": [e.proposed_at for e in exps], "agent": [e.agent for e in exps],
        "lease_until": [e.lease_until for e in exps],
        "claimed_at": [e.claimed_at for e in exps], "backend": [e.backend for e in exps],
        "job_id": [e.job_id for e in exps], "reason": [e.reason for e in exps],
        "result_event_id": [r["event_id"] if r else None for r in results],
        "status": [r["status"] if r else None for r in results],
        "metric": [r["metric"] if r else None for r in results],
        "outcomes": [list(e.outcomes.items()) for e in exps],
        "promoted": [e.promoted for e in exps],
        "rejected": [e.rejected for e in exps],
        "rejection": [e.rejection for e in exps],
        "rejected_by": [e.rejected_by for e in exps],
    }
    return pa.table([pa.array(columns[f.name], f.type) for f in EXPERIMENT_STATE],
                    schema=EXPERIMENT_STATE)


def _rows_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    return pa.table([pa.array([r.get(f.name) for r in rows], f.type) for f in schema],
                    schema=schema)


def state_tables(state: LabState, raw_scores: pa.Table | None = None) -> StateTables:
    """The columnar form of ``state``.

    Args:
        raw_scores: the score rows as read, if the caller has them in the order of
            ``state.scores``: then only their ``late`` flags are rebuilt (converting
            10^5 score dicts back to arrow takes seconds).
    """
    from autolab.protocol.schemas import IDEAS, SCORES

    scores = None
    if raw_scores is not None and raw_scores.num_rows == len(state.scores) and (
            raw_scores.column("event_id").to_pylist() == [s["event_id"] for s in state.scores]):
        late = pa.array([s["late"] for s in state.scores], pa.bool_())
        scores = raw_scores.set_column(raw_scores.schema.get_field_index("late"),
                                       SCORES.field("late"), late)
    return StateTables(
        main=state.main, max_seq=state.max_seq,
        experiments=_experiments_table(list(state.experiments.values())),
        scores=scores if scores is not None else _rows_table(state.scores, SCORES),
        promotions=_rows_table(state.promotions, PROMOTIONS),
        ideas=_rows_table(state.ideas, IDEAS),
        anomalies=pa.table({"anomaly": pa.array(state.anomalies, pa.string())}),
        charges=_rows_table(state.charges, CHARGES),
    )


def continue_tables(tables: StateTables, main: str, max_seq: int, queue: list[dict],
                    scores: list[dict], ideas: list[dict]) -> StateTables:
    """``state_tables(fold(main, max_seq, queue, scores, ideas, base=<tables' state>))``.

    Only the experiments the rows name are materialized and folded; the fold is the
    same function, so the result is what folding everything would give.
    """
    ids = list(dict.fromkeys([r["experiment_id"] for r in queue]
                             + [r["experiment_id"] for r in scores]))
    partial = LabState(main=tables.main, max_seq=tables.max_seq,
                       experiments=tables.experiments_by_id(ids))
    out = fold(main, max_seq, queue, scores, ideas, base=partial)
    index = tables.index()
    changed = list(out.experiments.values())
    experiments, new_index = tables.experiments, index
    if changed:
        n = experiments.num_rows
        order = list(range(n))
        added = {}
        for k, exp in enumerate(changed):
            if exp.id in index:
                order[index[exp.id]] = n + k
            else:
                added[exp.id] = len(order)
                order.append(n + k)
        both = pa.concat_tables([experiments, _experiments_table(changed)])
        experiments = both.take(pa.array(order, pa.int64()))
        new_index = {**index, **added} if added else index
    from autolab.protocol.schemas import IDEAS, SCORES

    return StateTables(
        main=main, max_seq=max_seq, experiments=experiments, _index=new_index,
        scores=_concat(tables.scores, _rows_table(out.scores, SCORES)),
        promotions=_concat(tables.promotions, _rows_table(out.promotions, PROMOTIONS)),
        ideas=_concat(tables.ideas, _rows_table(out.ideas, IDEAS)),
        anomalies=_concat(tables.anomalies, pa.table(
            {"anomaly": pa.array(out.anomalies, pa.string())})),
        charges=_concat(tables.charges, _rows_table(out.charges, CHARGES)),
    )


def _concat(first: pa.Table, second: pa.Table) -> pa.Table:
    return first if not second.num_rows else pa.concat_tables([first, second])
