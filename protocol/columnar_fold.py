"""The fold of ``main``'s rows computed from arrow columns, straight into :class:`StateTables`.

:func:`autolab.protocol.state.fold` works on row dicts; building 3 * 10^5 of them and
then turning 10^5 experiments back into columns takes seconds. Each experiment's state
depends only on a few small values of its own rows (event, attempt, a score's ``late``)
and on *which* row last set each field. So the fold here walks the rows in fold order
over plain integers, remembering per experiment the row that set each field, and then
gathers every field with one ``take`` per column.

Contract: ``fold_columns(...)`` equals ``state_tables(fold(...))`` for the same rows
(tests compare the two on random row streams, anomalies included). It needs every
``seq`` set, as it is on ``main``, and no ``patch`` column (the columnar state has none).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from autolab.protocol.schemas import SCHEMAS
from autolab.protocol.state import ANOMALIES, CHARGES, EXPERIMENT_STATE, PROMOTIONS, StateTables

# Experiment states, ordered so that ``code >= _DONE`` means terminal.
_QUEUED, _CLAIMED, _DONE, _FAILED, _CANCELLED = range(5)
_STATE_NAMES = ("queued", "claimed", "done", "failed", "cancelled")
# Queue events, as the walk sees them.
_PROPOSED, _CLAIM, _RELEASED, _EXPIRED, _FAILED_EV, _CANCEL, _PROMOTED, _REJECTED, _OTHER = \
    range(9)
_EVENT_CODES = {"proposed": _PROPOSED, "claimed": _CLAIM, "released": _RELEASED,
                "expired": _EXPIRED, "failed": _FAILED_EV, "cancelled": _CANCEL,
                "promoted": _PROMOTED, "rejected": _REJECTED}
_ENDS = {_RELEASED: "released", _EXPIRED: "expired", _FAILED_EV: "failed"}


def sorted_main(name: str, parts: list[pa.Table]) -> pa.Table:
    """Shards of table ``name`` concatenated in order of ``(seq, event_id)``; no copy when
    they already are (the usual case: each shard is in seq order, and names sort by seq)
    and are few (many are combined into one chunk: see :func:`few_chunks`)."""
    if not parts:
        return SCHEMAS[name].empty_table()
    data = few_chunks(pa.concat_tables(parts))
    seq = data.column("seq")
    if not seq.null_count and (data.num_rows < 2 or pc.all(pc.greater(
            seq.slice(1), seq.slice(0, data.num_rows - 1))).as_py()):
        return data
    return data.sort_by([("seq", "ascending"), ("event_id", "ascending")])


def few_chunks(data: pa.Table) -> pa.Table:
    """``data`` in one chunk if it has many: taking rows from 10^4 shards' chunks is slow
    (and a big compacted shard's few chunks are not worth a copy)."""
    return data.combine_chunks() if data.num_columns and data.column(0).num_chunks > 64 \
        else data


def _codes(column: pa.ChunkedArray) -> tuple[list[int], list[Any]]:
    """Dictionary-encode ``column``: (index per row, the distinct values)."""
    encoded = column.combine_chunks().dictionary_encode()
    return encoded.indices.to_pylist(), encoded.dictionary.to_pylist()


def _stream_order(queue: pa.Table, scores: pa.Table) -> list[int]:
    """Row positions in fold order, by ``(seq, event_id)``, queue before score on a tie:
    ``p < len(queue)`` is queue row ``p``, otherwise score row ``p - len(queue)``."""
    keys = pa.table({
        "seq": pa.chunked_array([*queue.column("seq").chunks, *scores.column("seq").chunks],
                                pa.int64()),
        "event_id": pa.chunked_array([*queue.column("event_id").chunks,
                                      *scores.column("event_id").chunks], pa.string()),
        "kind": pa.concat_arrays([pa.nulls(queue.num_rows, pa.int8()).fill_null(0),
                                  pa.nulls(scores.num_rows, pa.int8()).fill_null(1)]),
    })
    return pc.sort_indices(keys, sort_keys=[("seq", "ascending"), ("event_id", "ascending"),
                                            ("kind", "ascending")]).to_pylist()


def _take(column: pa.ChunkedArray | pa.Array, rows: list[int | None]) -> pa.Array:
    """``column`` at ``rows`` (None gives null)."""
    return column.take(pa.array(rows, pa.int64()))


class _Walk:
    """Per-experiment registers of the fold, indexed by experiment code."""

    def __init__(self, count: int, scores: int) -> None:
        self.proposal = [-1] * count  # queue row of the proposal (-1: not proposed yet)
        self.state = [_QUEUED] * count
        self.attempt = [0] * count
        self.outcomes: list[dict[int, str] | None] = [None] * count
        self.claim: list[int | None] = [None] * count  # row that set claimed_at, backend, job
        self.agent: list[int | None] = [None] * count  # row that set agent (cleared: None)
        self.lease: list[int | None] = [None] * count  # row that set lease_until
        self.reason: list[int | None] = [None] * count  # index into queue reasons + scores'
        self.result: list[int | None] = [None] * count  # score row that finished it
        self.promoted = [False] * count
        self.rejected: list[int | None] = [None] * count  # queue row of the first rejection
        self.order: list[int] = []  # experiment codes, in proposal order
        self.late = [True] * scores  # a score row's ``late`` as the fold decides it
        self.promotions: list[int] = []  # queue rows of promotions, in order
        self.anomalies: list[str] = []


def fold_columns(main: str, max_seq: int, queue: pa.Table, scores: pa.Table,
                 ideas: pa.Table) -> StateTables:
    """``state_tables(fold(main, max_seq, <rows of queue, scores, ideas>))``, from columns.

    Args:
        queue, scores, ideas: main's rows of each table (any order; every ``seq`` set;
            the queue's ``patch`` column may be left out).

    Raises:
        ValueError: a row has no ``seq``.
    """
    tables = {"queue": queue, "scores": scores, "ideas": ideas}
    for name, data in tables.items():
        if data.column("seq").null_count:
            raise ValueError(f"{name} rows without seq: not main's rows")
        tables[name] = sorted_main(name, [data])  # (few chunks, too)
    queue, scores, ideas = tables["queue"], tables["scores"], tables["ideas"]
    nq = queue.num_rows
    exp_codes, exp_ids = _codes(pa.chunked_array(
        [*queue.column("experiment_id").chunks, *scores.column("experiment_id").chunks],
        pa.string()))
    event_index, event_names = _codes(queue.column("event"))
    to_code = [_EVENT_CODES.get(name, _OTHER) for name in event_names]
    walk = _Walk(len(exp_ids), scores.num_rows)
    _walk(walk, _stream_order(queue, scores), nq, [to_code[i] for i in event_index],
          exp_codes, queue.column("attempt").to_pylist(), scores.column("attempt").to_pylist(),
          scores.column("late").to_pylist(), _Describe(queue, exp_ids, event_names, event_index))
    return _tables(walk, main, max_seq, queue, scores, ideas)


class _Describe:
    """Anomaly texts, worded exactly as :func:`autolab.protocol.state.fold` words them
    (anomalies are rare: the values are looked up one row at a time)."""

    def __init__(self, queue: pa.Table, exp_ids: list[str], event_names: list[str],
                 event_index: list[int]) -> None:
        self.queue, self.exp_ids = queue, exp_ids
        self.event_names, self.event_index = event_names, event_index

    def _value(self, column: str, row: int) -> Any:
        return self.queue.column(column)[row].as_py()

    def twice(self, code: int, row: int) -> str:
        return f"experiment {self.exp_ids[code]} proposed twice (seq {self._value('seq', row)})"

    def unknown(self, code: int, row: int) -> str:
        event = self.event_names[self.event_index[row]]
        seq = self._value("seq", row)
        return f"{event} for unknown experiment {self.exp_ids[code]} (seq {seq})"

    def claim_ignored(self, code: int, row: int, attempt: int | None, state: int,
                      current: int) -> str:
        return (f"claim of {self.exp_ids[code]} attempt {attempt} by "
                f"{self._value('agent', row)} ignored "
                f"(experiment {_STATE_NAMES[state]} at attempt {current})")

    def rejection_ignored(self, code: int, row: int) -> str:
        return (f"rejection of promoted experiment {self.exp_ids[code]} ignored "
                f"(seq {self._value('seq', row)})")

    def unknown_score(self, code: int) -> str:
        return f"score for unknown experiment {self.exp_ids[code]}"


def _walk(w: _Walk, order: list[int], nq: int, events: list[int], exps: list[int],
          q_attempts: list[int | None], s_attempts: list[int], s_late: list[bool | None],
          describe: _Describe) -> None:
    """The fold's state machine (``state._fold_event`` and ``_fold_score``) over codes."""
    # Locals, not attributes: this loop runs once per row (3 * 10^5 times in a big lab).
    proposal, state, attempt, outcomes = w.proposal, w.state, w.attempt, w.outcomes
    claim, agent, lease, reason, result = w.claim, w.agent, w.lease, w.reason, w.result
    late, anomalies, promoted, promotions = w.late, w.anomalies, w.promoted, w.promotions
    for pos in order:
        x = exps[pos]
        if pos >= nq:  # a score row
            row = pos - nq
            if proposal[x] < 0:
                anomalies.append(describe.unknown_score(x))
                continue
            a = s_attempts[row]
            done = outcomes[x]
            if (state[x] == _CLAIMED and not s_late[row] and a == attempt[x]
                    and (done is None or a not in done)):
                if done is None:
                    done = outcomes[x] = {}
                done[a] = "score"
                late[row] = False
                state[x], result[x], reason[x], lease[x] = _DONE, row, pos, None
            continue
        event = events[pos]
        if event == _PROPOSED:
            if proposal[x] >= 0:
                anomalies.append(describe.twice(x, pos))
            else:
                proposal[x] = pos
                w.order.append(x)
            continue
        if proposal[x] < 0:
            anomalies.append(describe.unknown(x, pos))
            continue
        a = q_attempts[pos]
        if event == _CLAIM:
            if state[x] == _QUEUED and a is not None and a == attempt[x] + 1:
                state[x], attempt[x] = _CLAIMED, a
                claim[x] = agent[x] = lease[x] = pos
                reason[x] = None
            else:
                anomalies.append(describe.claim_ignored(x, pos, a, state[x], attempt[x]))
        elif event in _ENDS:
            if a is not None:
                done = outcomes[x]
                if done is None:
                    done = outcomes[x] = {}
                elif a in done:
                    continue  # the attempt already ended; first outcome wins
                done[a] = _ENDS[event]
            if state[x] >= _DONE or (a is not None and a != attempt[x]):
                continue
            reason[x] = pos
            state[x] = _FAILED if event == _FAILED_EV else _QUEUED
            agent[x] = lease[x] = None
        elif event == _CANCEL:
            if state[x] < _DONE:
                state[x], reason[x] = _CANCELLED, pos
        elif event == _PROMOTED:
            promoted[x] = True
            promotions.append(pos)
        elif event == _REJECTED:
            if promoted[x]:
                anomalies.append(describe.rejection_ignored(x, pos))
            elif w.rejected[x] is None:  # the first rejection counts
                w.rejected[x] = pos


def _tables(w: _Walk, main: str, max_seq: int, queue: pa.Table, scores: pa.Table,
            ideas: pa.Table) -> StateTables:
    """Gather each experiment's fields from the rows the walk remembered."""
    order = w.order
    wanted = ["experiment_id", "patch_hash", "hypothesis", "priority", "parent_commit", "agent",
              "at"]
    proposals = queue.select(wanted).take(pa.array([w.proposal[x] for x in order], pa.int64()))
    claims = [w.claim[x] for x in order]
    results = [w.result[x] for x in order]
    rejections = [w.rejected[x] for x in order]
    reasons = pa.chunked_array([*queue.column("reason").chunks, *scores.column("reason").chunks],
                               pa.string())
    keys: list[int] = []
    values: list[str] = []
    offsets = [0]
    for x in order:
        done = w.outcomes[x]
        if done:
            keys += done
            values += done.values()
        offsets.append(len(keys))
    outcomes = pa.MapArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(keys, pa.int32()),
                                       pa.array(values, pa.string()))
    columns = {
        "experiment_id": proposals.column("experiment_id"),
        "state": pa.array([_STATE_NAMES[w.state[x]] for x in order], pa.string()),
        "attempt": pa.array([w.attempt[x] for x in order], pa.int32()),
        "patch_hash": pc.fill_null(proposals.column("patch_hash"), ""),
        "hypothesis": pc.fill_null(proposals.column("hypothesis"), ""),
        "priority": pc.fill_null(proposals.column("priority"), 1.0),
        "parent_commit": proposals.column("parent_commit"),
        "proposed_by": proposals.column("agent"),
        "proposed_at": proposals.column("at"),
        "agent": _take(queue.column("agent"), [w.agent[x] for x in order]),
        "lease_until": _take(queue.column("lease_until"), [w.lease[x] for x in order]),
        "claimed_at": _take(queue.column("at"), claims),
        "backend": _take(queue.column("backend"), claims),
        "job_id": _take(queue.column("job_id"), claims),
        "reason": _take(reasons, [w.reason[x] for x in order]),
        "result_event_id": _take(scores.column("event_id"), results),
        "status": _take(scores.column("status"), results),
        "metric": _take(scores.column("metric"), results),
        "outcomes": outcomes,
        "promoted": pa.array([w.promoted[x] for x in order], pa.bool_()),
        "rejected": pa.array([w.rejected[x] is not None for x in order], pa.bool_()),
        "rejection": _take(queue.column("reason"), rejections),
        "rejected_by": pc.coalesce(_take(queue.column("reviewer"), rejections),
                                   _take(queue.column("agent"), rejections)),
    }
    experiments = pa.table([_one_chunk(columns[f.name]).cast(f.type) for f in EXPERIMENT_STATE],
                           schema=EXPERIMENT_STATE)
    late_at = scores.schema.get_field_index("late")
    folded_scores = scores.set_column(late_at, SCHEMAS["scores"].field("late"),
                                      pa.array(w.late, pa.bool_()))
    promoted = queue.take(pa.array(w.promotions, pa.int64())).select(PROMOTIONS.names)
    return StateTables(
        main=main, max_seq=max_seq, experiments=experiments,
        scores=folded_scores.cast(SCHEMAS["scores"]),
        promotions=promoted.cast(PROMOTIONS),
        ideas=ideas.cast(SCHEMAS["ideas"]),
        anomalies=pa.table({"anomaly": pa.array(w.anomalies, pa.string())}, schema=ANOMALIES),
        charges=queue.filter(pc.is_valid(queue.column("cost_usd"))).select(CHARGES.names)
        .cast(CHARGES),
    )


def _one_chunk(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return column
