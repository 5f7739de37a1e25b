"""The fold of ``main``: every row on one ``main`` commit folded into state.

The fold is incremental. Rows are immutable and known by their ``event_id``
(compaction rewrites shards, never rows), and a commit on ``main`` numbers its rows
after every row already there. So the fold of a new ``main`` is an earlier fold (its
*base*) continued with the rows numbered after the base's last one, once the reader
has checked that every other row is exactly one of the base's. The base is one of
this process's last folds or, for a new process such as a CLI command, a fold cached
on disk beside the cache clone (:mod:`autolab.protocol.fold_cache`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from autolab.protocol import fold_cache
from autolab.protocol.columnar_fold import few_chunks, fold_columns, sorted_main
from autolab.protocol.errors import ShardError
from autolab.protocol.schemas import SCHEMAS, TABLES
from autolab.protocol.shard_cache import gc_paused, lean_table, read_table, row_dicts, values_of
from autolab.protocol.state import (
    LabState,
    StateTables,
    continue_tables,
    fold,
    fold_ordered,
    state_tables,
)
from autolab.protocol.store import LabStore


class MainFold:
    """The fold of every row on one ``main`` commit, in two forms built on demand.

    ``state`` is a :class:`LabState` (what transactions decide on); ``tables(store)`` the
    same as :class:`StateTables` (what the scoreboard reads; cached on disk, where a new
    process loads it in milliseconds instead of refolding 10^5 rows in seconds).
    """

    def __init__(self, main: str, shards: dict[str, dict[str, str]], max_seq: int, *,
                 max_row_seq: int, rows: int, ids: pa.ChunkedArray,
                 state: LabState | None = None, tables: StateTables | None = None,
                 derive: tuple[StateTables, dict[str, list[dict]]] | None = None,
                 main_tables: dict[str, pa.Table] | None = None, unsaved: float = math.inf,
                 store: LabStore | None = None,
                 parts: dict[str, list[pa.Table]] | None = None,
                 lean_parts: bool = False) -> None:
        self.main, self.shards, self.max_seq = main, shards, max_seq
        self.max_row_seq = max_row_seq  # the largest seq of any row (-1: none)
        self.rows = rows
        # Every event id on main, as arrow: a set of 10^5 strings would cost 40 MB more.
        self._ids = ids if ids.num_chunks <= 64 else pa.chunked_array([ids.combine_chunks()])
        self._state, self._tables, self._derive = state, tables, derive
        self._main_tables = main_tables or {}
        self.unsaved = unsaved  # rows folded since this fold's line was last on disk
        self._store = store
        # The decoded shards, until the state is folded from them: the per-blob cache
        # holds 8192 shards, and a lab can have more. Lean parts lack ``LEAN_SKIPS``.
        self._parts = parts
        self._lean_parts = lean_parts
        self._lean_tables: dict[str, pa.Table] = {}

    @property
    def state(self) -> LabState:
        if self._state is None:
            assert self._store is not None
            parts = self._full_parts()
            self._state = _fold_tables(self.main, self.max_seq, parts)
            for name in TABLES:  # no copy: the same buffers, in order
                if name not in self._main_tables:
                    self._main_tables[name] = sorted_main(name, parts[name])
            self._parts = None
        return self._state

    def tables(self, store: LabStore) -> StateTables:
        if self._tables is None:
            with gc_paused():
                if self._derive is not None:
                    base, rows = self._derive
                    self._tables = continue_tables(base, self.main, self.max_seq,
                                                   rows["queue"], rows["scores"], rows["ideas"])
                elif self._state is not None:
                    self._tables = state_tables(self._state, self.main_table(store, "scores"))
                else:
                    # Folded only to be turned into tables (a scoreboard command): straight
                    # from the columns, without building the rows and the state.
                    main = {t: self.main_table(store, t, lean=True) for t in TABLES}
                    if any(main[t].column("seq").null_count for t in TABLES):
                        # Rows without seq on main (hand-made shards): the row fold
                        # orders them; it is not kept, it is most of the memory.
                        state = self.state
                        self._state = None
                        self._tables = state_tables(state, self.main_table(store, "scores"))
                    else:
                        self._parts = None
                        self._tables = fold_columns(self.main, self.max_seq, main["queue"],
                                                    main["scores"], main["ideas"])
            self._derive = None
            fold_cache.maybe_save(store, self)
        return self._tables

    def which_on_main(self, ids: list[str]) -> set[str]:
        """Those of ``ids`` that are rows on this ``main``."""
        if not ids:
            return set()
        return set(pc.filter(self._ids, pc.is_in(self._ids, value_set=pa.array(
            ids, pa.string()))).to_pylist())

    def contains_any(self, ids: list[str]) -> bool:
        return bool(ids) and bool(self.which_on_main(ids))

    def id_column(self) -> pa.ChunkedArray:
        return self._ids

    def _full_parts(self) -> dict[str, list[pa.Table]]:
        assert self._store is not None
        if self._parts is not None and not self._lean_parts:
            return self._parts
        return {t: [read_table(self._store, t, blob, path, self.main)
                    for path, blob in files.items()] for t, files in self.shards.items()}

    def main_table(self, store: LabStore, name: str, *, lean: bool = False) -> pa.Table:
        """``main``'s rows of table ``name``, sorted by ``(seq, event_id)``; ``lean``: without
        the columns ``LEAN_SKIPS`` names (a cheaper read where they are not needed)."""
        hit = self._main_tables.get(name)
        if hit is None and self._parts is not None and not self._lean_parts:
            hit = self._main_tables[name] = sorted_main(name, self._parts[name])
        if hit is not None:
            return lean_table(hit) if lean else hit
        if lean:
            hit = self._lean_tables.get(name)
            if hit is None:
                if self._parts is not None:
                    parts = self._parts[name]
                else:
                    parts = [read_table(store, name, blob, path, self.main, lean=True)
                             for path, blob in sorted(self.shards[name].items())]
                hit = self._lean_tables[name] = sorted_main(name, parts)
            return hit
        parts = [read_table(store, name, blob, path, self.main)
                 for path, blob in sorted(self.shards[name].items())]
        hit = self._main_tables[name] = sorted_main(name, parts)
        return hit


def _by_id(name: str, parts: list[pa.Table]) -> pa.Table:
    """Rows of ``parts`` by event id (to compare two sets of rows value for value)."""
    data = pa.concat_tables(parts) if parts else SCHEMAS[name].empty_table()
    return data.sort_by([("event_id", "ascending")])


def _id_column(parts: list[pa.Table | pa.ChunkedArray]) -> pa.ChunkedArray:
    """The event ids of ``parts`` (tables, or id columns) as one column, without copying."""
    chunks = [chunk for part in parts for chunk in (
        part.column("event_id") if isinstance(part, pa.Table) else part).chunks]
    return pa.chunked_array(chunks, pa.string())


def _max_seq_of(parts: list[pa.Table], default: int) -> int:
    seqs = [pc.max(p.column("seq")).as_py() for p in parts if p.num_rows]
    return max([default, *(s for s in seqs if s is not None)])


_folds: OrderedDict[str, MainFold] = OrderedDict()
_FOLDS_KEPT = 4
_DERIVE_ROWS = 50_000  # rows kept to derive tables lazily before giving up on it


def fold_main(store: LabStore, main: str, shards: dict[str, dict[str, str]],
              max_seq: int) -> MainFold:
    """The fold of ``main``: cached, continued from a base, or folded from scratch."""
    hit = _folds.get(main)
    if hit is not None:
        _folds.move_to_end(main)
        return hit
    result = None
    for base in reversed(_folds.values()):
        result = _continue(store, base, main, shards, max_seq)
        if result is not None:
            break
    if result is None:
        for base in fold_cache.disk_bases(store, main, shards):
            result = base if base.main == main else _continue(store, base, main, shards,
                                                                  max_seq)
            if result is not None:
                break
    if result is None:
        result = _fold_everything(store, main, shards, max_seq)
    result._store = store
    _folds[main] = result
    while len(_folds) > _FOLDS_KEPT:
        _folds.popitem(last=False)
    return result


def _fold_everything(store: LabStore, main: str, shards: dict[str, dict[str, str]],
                     max_seq: int) -> MainFold:
    """Read and fold every row on ``main``.

    Raises:
        ShardError: a shard does not decode, or repeats an event already on main.
    """
    # A few big shards are read lean (their patches only when asked for); many small ones
    # whole, since their rows are kept on disk with the fold (see ``_save``).
    lean = sum(len(files) for files in shards.values()) <= fold_cache.MAIN_SHARDS_SAVED
    parts: dict[str, list[pa.Table]] = {t: [] for t in TABLES}
    for table, files in shards.items():
        for path, blob in files.items():
            parts[table].append(read_table(store, table, blob, path, main, lean=lean))
    every = [p for t in TABLES for p in parts[t]]
    ids = _id_column(every)
    rows = len(ids)
    if rows and len(pc.unique(ids)) != rows:  # (count_distinct is several times slower)
        _raise_duplicate(shards, parts, main)
    # Folded when first needed: as a state (transactions), or only to become tables.
    return MainFold(main, shards, max_seq, max_row_seq=_max_seq_of(every, -1),
                    rows=rows, ids=ids, store=store, parts=parts, lean_parts=lean)


def _raise_duplicate(shards: dict[str, dict[str, str]], parts: dict[str, list[pa.Table]],
                     main: str) -> None:
    """Name the first shard (in listing order) that repeats an event id.

    Every event lands on main once; a copy (a botched manual merge, a replayed shard)
    would count a claim or a score twice.
    """
    seen: set[str] = set()
    for table, files in shards.items():
        for path, data in zip(files, parts[table], strict=True):
            shard_ids = data.column("event_id").to_pylist()
            before = len(seen)
            seen.update(shard_ids)
            if len(seen) - before != len(shard_ids):
                raise ShardError(path, main, "duplicate rows (an event_id already on main): "
                                 "run `autolab doctor --fix`")


def _fold_tables(main: str, max_seq: int, parts: dict[str, list[pa.Table]]) -> LabState:
    """``fold`` of main's rows given as arrow tables.

    ``fold`` sorts a list of every row; here arrow sorts the (seq, event_id, kind) keys
    into the same order, and rows are built a block at a time as they are folded, so
    10^5 row dicts are never alive at once (they were most of a cold read's memory).
    """
    data = {t: few_chunks(pa.concat_tables(parts[t])) if parts[t]
            else SCHEMAS[t].empty_table() for t in TABLES}
    with gc_paused():
        if any(d.column("seq").null_count for d in data.values()):
            rows = {t: row_dicts(data[t], order=True) for t in TABLES}
            return fold(main, max_seq, rows["queue"], rows["scores"], rows["ideas"])
        ideas = row_dicts(sorted_main("ideas", [data["ideas"]]), order=True)
        return fold_ordered(main, max_seq, _ordered_rows(data["queue"], data["scores"]), ideas)


_BLOCK = 32768


def _ordered_rows(queue: pa.Table, scores: pa.Table) -> Iterator[tuple[int, dict[str, Any]]]:
    """Queue (kind 0) and score (kind 1) rows in ``fold``'s order: by ``(0, seq,
    event_id)``, then kind. Every ``seq`` must be set."""
    tables = (queue, scores)
    keys = pa.table({
        "seq": pa.chunked_array([*queue.column("seq").chunks, *scores.column("seq").chunks],
                                pa.int64()),
        "event_id": pa.chunked_array([*queue.column("event_id").chunks,
                                      *scores.column("event_id").chunks], pa.string()),
        "kind": pa.array([0] * queue.num_rows + [1] * scores.num_rows, pa.int8()),
        "row": pa.array([*range(queue.num_rows), *range(scores.num_rows)], pa.int64()),
    }).sort_by([("seq", "ascending"), ("event_id", "ascending"), ("kind", "ascending")])
    kinds, positions = keys.column("kind").to_pylist(), keys.column("row").to_pylist()
    names = [t.column_names for t in tables]
    seq_at = [n.index("seq") for n in names]
    id_at = [n.index("event_id") for n in names]
    for start in range(0, len(kinds), _BLOCK):
        block_kinds = kinds[start:start + _BLOCK]
        block_rows = positions[start:start + _BLOCK]
        values = []
        for kind, table in enumerate(tables):
            wanted = [r for k, r in zip(block_kinds, block_rows, strict=True) if k == kind]
            part = table.take(pa.array(wanted, pa.int64()))
            values.append(iter(list(zip(*(values_of(part.column(n)) for n in names[kind]),
                                        strict=True))))
        for kind in block_kinds:
            row_values = next(values[kind])
            row = dict(zip(names[kind], row_values, strict=True))
            row["_order"] = (0, row_values[seq_at[kind]], row_values[id_at[kind]])
            yield kind, row


def _continue(store: LabStore, base: MainFold, main: str, shards: dict[str, dict[str, str]],
              max_seq: int) -> MainFold | None:
    """Continue ``base``'s fold to ``main``, or None if its rows are not a prefix of main's.

    Shards only ``main`` has are read. Their rows numbered up to the base's last one
    must be, value for value, the rows of the shards only the base had (compaction
    moved them); the others must be events new to the base.
    """
    new = {t: [p for p in shards[t] if base.shards[t].get(p) != shards[t][p]] for t in TABLES}
    gone = {t: [p for p in base.shards[t] if shards[t].get(p) != base.shards[t][p]]
            for t in TABLES}
    if sum(len(g) for g in gone.values()) > fold_cache.MAX_GONE:
        return None
    fresh: dict[str, list[pa.Table]] = {t: [] for t in TABLES}
    fresh_ids: list[str] = []
    for table in TABLES:
        moved = []
        for path in sorted(new[table]):
            data = read_table(store, table, shards[table][path], path, main)
            seq = data.column("seq")
            if seq.null_count:
                return None
            later = pc.greater(seq, base.max_row_seq)
            moved.append(data.filter(pc.invert(later)))
            part = data.filter(later)
            fresh_ids += part.column("event_id").to_pylist()
            fresh[table].append(part)
        lost = [read_table(store, table, base.shards[table][p], p, base.main)
                for p in gone[table]]
        if (moved or lost) and not _by_id(table, moved).equals(_by_id(table, lost)):
            return None
    if len(set(fresh_ids)) != len(fresh_ids) or base.contains_any(fresh_ids):
        return None
    with gc_paused():
        rows = {t: [r for p in fresh[t] for r in row_dicts(p, order=True)] for t in TABLES}
    state = None
    if base._state is not None:
        with gc_paused():
            state = fold(main, max_seq, rows["queue"], rows["scores"], rows["ideas"],
                         base=base._state)
    derive = None
    if base._tables is not None:
        derive = (base._tables, rows)
    elif base._derive is not None and base.unsaved + len(fresh_ids) <= _DERIVE_ROWS:
        then, earlier = base._derive
        derive = (then, {t: earlier[t] + rows[t] for t in TABLES})
    if state is None and derive is None and base._tables is None:
        return None  # nothing to continue from: fold from scratch
    ids = _id_column([base._ids, *(p for t in TABLES for p in fresh[t])])
    main_tables = {}
    for table in TABLES:
        had = base._main_tables.get(table)
        if had is not None and not gone[table]:
            main_tables[table] = sorted_main(table, [had, *fresh[table]])
    every = [p for t in TABLES for p in fresh[t]]
    moved = any(gone.values())
    return MainFold(main, shards, max_seq, max_row_seq=_max_seq_of(every, base.max_row_seq),
                    rows=base.rows + len(fresh_ids), ids=ids, state=state, derive=derive,
                    main_tables=main_tables, store=store,
                    unsaved=math.inf if moved else base.unsaved + len(fresh_ids))
