"""Reading a lab: shards on ``main`` plus live record refs, folded into state.

Decoded shards are cached in-process by blob id (blobs are immutable), so a
long-lived agent (``--loop``) only parses what is new since its last read.

The fold of ``main`` is incremental. Rows are immutable and known by their
``event_id`` (compaction rewrites shards, never rows), and a commit on ``main`` numbers
its rows after every row already there. So the fold of a new ``main`` is an earlier
fold (its *base*) continued with the rows numbered after the base's last one, once
the reader has checked that every other row is exactly one of the base's. The base is
one of this process's last folds or, for a new process such as a CLI command, a fold
cached on disk beside the cache clone, in columnar form (see :class:`MainFold`).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import math
import os
import pickle
import shutil
import sys
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from autolab.protocol.columnar_fold import few_chunks, fold_columns, sorted_main
from autolab.protocol.config import CONFIG_FILE, LabConfig, parse_config
from autolab.protocol.errors import ConfigError, LabError, ShardError
from autolab.protocol.schemas import SCHEMA_VERSION, SCHEMAS, TABLES
from autolab.protocol.shards import (
    STATE_DIR,
    ShardName,
    decode,
    decode_record,
    parse_shard_path,
)
from autolab.protocol.state import (
    ANOMALIES,
    CHARGES,
    EXPERIMENT_STATE,
    PROMOTIONS,
    LabState,
    StateTables,
    continue_tables,
    fold,
    fold_ordered,
    state_tables,
)
from autolab.protocol.store import RECORD_PREFIX, LabStore, Snapshot

_CACHE_SIZE = 8192
_decoded: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
_tables: OrderedDict[str, pa.Table] = OrderedDict()
_configs: dict[str, LabConfig] = {}


def _remember(cache: OrderedDict, key: str, value: Any) -> Any:
    cache[key] = value
    if len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)
    return value


def read_rows(store: LabStore, table: str, blob: str, path: str, commit: str
              ) -> list[dict[str, Any]]:
    """Rows of one shard, parquet or JSON record (cached by blob id; do not mutate).

    Raises:
        ShardError: naming ``path`` and ``commit``.
    """
    hit = _decoded.get(blob)
    if hit is not None:
        _decoded.move_to_end(blob)
        return hit
    if path.endswith(".json"):
        rows = decode_record(table, store.read_blob(blob), path, commit)
        return _remember(_decoded, blob, rows)
    return _remember(_decoded, blob, _row_dicts(read_table(store, table, blob, path, commit)))


# Columns a *lean* read leaves out: patches are most of a lab's bytes (and of its decode
# time), and the columnar fold does not need them.
LEAN_SKIPS = ("patch",)


def read_table(store: LabStore, table: str, blob: str, path: str, commit: str, *,
               lean: bool = False) -> pa.Table:
    """One shard as an arrow table (cached by blob id); ``lean``: without ``LEAN_SKIPS``.

    Raises:
        ShardError: naming ``path`` and ``commit``.
    """
    hit = _tables.get(blob)
    if hit is not None:
        return _lean(hit) if lean else hit
    if lean:
        key = f"{blob} lean"
        hit = _tables.get(key)
        if hit is None and not path.endswith(".json"):
            hit = _remember(_tables, key, decode(table, store.read_blob_buffer(blob), path,
                                                 commit, skip=LEAN_SKIPS))
        if hit is not None:
            return hit
        return _lean(read_table(store, table, blob, path, commit))
    if not path.endswith(".json"):
        return _remember(_tables, blob, decode(table, store.read_blob_buffer(blob), path,
                                               commit))
    rows = read_rows(store, table, blob, path, commit)
    clean = [{k: v for k, v in r.items() if k != "_order"} for r in rows]
    return _remember(_tables, blob, pa.Table.from_pylist(clean, schema=SCHEMAS[table]))


def _lean(data: pa.Table) -> pa.Table:
    skip = [name for name in LEAN_SKIPS if name in data.column_names]
    return data.drop_columns(skip) if skip else data


def _values(column: pa.ChunkedArray) -> list[Any]:
    """``column.to_pylist()``, faster for the types that dominate a lab's rows.

    pyarrow builds each zone-aware datetime in about 3 us and each map entry slowly;
    UTC timestamps are the epoch plus a timedelta here (the same value and tzinfo
    object), and maps are zipped from their flat keys and items.
    """
    kind = column.type
    if pa.types.is_timestamp(kind) and kind.tz == "UTC" and column.null_count < len(column):
        first = column.drop_null()[0].as_py()  # the tzinfo pyarrow itself gives
        epoch = datetime(1970, 1, 1, tzinfo=first.tzinfo)
        micros = column.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_pylist()
        return [None if m is None else epoch + timedelta(microseconds=m) for m in micros]
    if pa.types.is_map(kind) and len(column):
        flat = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        offsets = flat.offsets.to_pylist()
        keys, items = flat.keys.to_pylist(), flat.items.to_pylist()
        valid = flat.is_valid().to_pylist()
        return [list(zip(keys[a:b], items[a:b], strict=True)) if ok else None
                for a, b, ok in zip(offsets, offsets[1:], valid, strict=False)]
    return column.to_pylist()


def _row_dicts(data: pa.Table, order: bool = False) -> list[dict[str, Any]]:
    """``data.to_pylist()``, a column at a time (several times faster), optionally with
    each main row's fold order ``_order = (0, seq, event_id)``."""
    names = data.column_names
    rows = [dict(zip(names, values, strict=True))
            for values in zip(*(_values(data.column(n)) for n in names), strict=True)]
    if order:
        for row in rows:
            seq = row["seq"]
            row["_order"] = (0, seq if seq is not None else -1, row["event_id"])
    return rows


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Building 10^5 objects triggers the cyclic collector hundreds of times for no
    garbage at all; pausing it makes large folds about a third faster."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass(frozen=True)
class Record:
    """A record ref: rows written beside ``main`` until some agent folds them in."""

    ref: str
    commit: str
    shards: tuple[tuple[ShardName, str], ...]  # (name, blob id)
    event_ids: frozenset[str]
    on_main: bool  # every row already folded onto main

    @property
    def kind(self) -> str:
        return self.ref.removeprefix(RECORD_PREFIX).split("/", 1)[0]


@dataclass
class LabView:
    """One consistent read of a lab: the snapshot, its config, records and state.

    ``state`` (Python objects, what transactions decide on) and :meth:`folded` (the same
    state as arrow tables, what the scoreboard reads) are each built when first used.
    """

    store: LabStore
    snapshot: Snapshot
    main_shards: dict[str, dict[str, str]]  # table -> path -> blob
    records: list[Record]
    _fold: MainFold = field(repr=False)
    _pending_rows: dict[str, list[dict[str, Any]]] = field(repr=False)

    @property
    def main(self) -> str:
        return self.snapshot.main

    @cached_property
    def config(self) -> LabConfig:
        return load_config(self.store, self.main)

    @property
    def pending(self) -> list[Record]:
        """Records whose rows are not on ``main`` yet."""
        return [r for r in self.records if not r.on_main]

    @property
    def max_seq(self) -> int:
        """The largest ``seq`` on ``main`` (new rows get numbers after it)."""
        return self._fold.max_seq

    @cached_property
    def state(self) -> LabState:
        rows = self._pending_rows
        return fold(self.main, self._fold.max_seq, rows["queue"], rows["scores"], rows["ideas"],
                    base=self._fold.state)

    def folded(self) -> StateTables:
        """:attr:`state` as arrow tables (built without materializing the state)."""
        hit = self.__dict__.get("_folded")
        if hit is None:
            base, rows = self._fold.tables(self.store), self._pending_rows
            hit = base if not any(rows.values()) else continue_tables(
                base, self.main, self._fold.max_seq, rows["queue"], rows["scores"],
                rows["ideas"])
            self.__dict__["_folded"] = hit
        return hit

    def patches(self, experiment_ids: list[str]) -> list[str]:
        """The patch each of ``experiment_ids`` was proposed with ("" if none, or unknown).

        Patches are not in :meth:`folded`'s tables: this reads the proposals (main's queue
        whole, then pending records); an experiment's first proposal wins, as in the fold.
        """
        if not experiment_ids:
            return []
        main = self._fold.main_table(self.store, "queue")
        proposed = main.filter(pc.and_(
            pc.equal(main.column("event"), "proposed"),
            pc.is_in(main.column("experiment_id"),
                     value_set=pa.array(experiment_ids, pa.string()))))
        found: dict[str, str] = {}
        for eid, patch in zip(proposed.column("experiment_id").to_pylist(),
                              proposed.column("patch").to_pylist(), strict=True):
            found.setdefault(eid, patch or "")
        for row in self._pending_rows["queue"]:  # in fold order already
            if row["event"] == "proposed":
                found.setdefault(row["experiment_id"], row["patch"] or "")
        return [found.get(eid, "") for eid in experiment_ids]

    def table(self, name: str) -> pa.Table:
        """The whole table as arrow: ``main`` rows by ``seq``, then pending record rows."""
        main = self._fold.main_table(self.store, name)
        parts = [read_table(self.store, name, blob, shard.path, record.commit)
                 for record in self.pending for shard, blob in record.shards
                 if shard.table == name]
        if not parts:
            return main
        extra = pa.concat_tables(parts)
        key = [("seq", "ascending"), ("event_id", "ascending")]
        if extra.column("seq").null_count == extra.num_rows and not main.column("seq").null_count:
            # Main is sorted already; record rows (no seq yet) sort after it.
            return pa.concat_tables([main, extra.sort_by(key[1:])])
        return pa.concat_tables([main, extra]).sort_by(key)

    @cached_property
    def _rows(self) -> dict[str, list[dict[str, Any]]]:
        """Every row with its fold order: ``main``'s, then pending records' (for tests)."""
        return {t: _row_dicts(self._fold.main_table(self.store, t), order=True)
                + self._pending_rows[t] for t in TABLES}


def load_config(store: LabStore, commit: str) -> LabConfig:
    """Parse ``autolab.toml`` at ``commit`` (cached by blob id)."""
    files = store.list_dir(commit, "")
    blob = files.get(f"/{CONFIG_FILE}") or files.get(CONFIG_FILE)
    if blob is None:
        raise LabError(f"{store.url}: no {CONFIG_FILE} on main at {commit[:12]}: not a lab")
    if blob not in _configs:
        try:
            _configs[blob] = parse_config(store.read_blob(blob).decode())
        except UnicodeDecodeError:
            raise ConfigError(f"{CONFIG_FILE}: not UTF-8 text") from None
    return _configs[blob]


def list_main_shards(store: LabStore, commit: str) -> dict[str, dict[str, str]]:
    """Shard files per table at ``commit``; anything else under a table dir is an error."""
    return _list_main_shards(store, commit)[0]


def _list_main_shards(store: LabStore, commit: str) -> tuple[dict[str, dict[str, str]], int]:
    """:func:`list_main_shards` and the largest ``seq`` the shard names give."""
    out: dict[str, dict[str, str]] = {}
    max_seq = 0
    for table in TABLES:
        files = store.list_dir(commit, f"{STATE_DIR}/{table}")
        for path in files:
            name = parse_shard_path(path)
            if name is None or name.table != table or name.record:
                raise ShardError(path, commit, "not a shard name (<seq>-<agent>-<nonce>.parquet)")
            max_seq = max(max_seq, name.seq)
        out[table] = files
    return out, max_seq


_records: dict[str, tuple[tuple[ShardName, str], ...]] = {}


def _record_files(store: LabStore, ref: str, commit: str
                  ) -> tuple[tuple[ShardName, str], ...]:
    """Shards of a record commit; cached, since commits are immutable."""
    hit = _records.get(commit)
    if hit is not None:
        return hit
    shards: list[tuple[ShardName, str]] = []
    for path, blob in store.list_files(commit).items():
        name = parse_shard_path(path)
        if name is None:
            raise ShardError(path, commit, f"not a shard name in record {ref}")
        shards.append((name, blob))
    if len(_records) > _CACHE_SIZE:
        _records.clear()
    _records[commit] = tuple(sorted(shards, key=str))
    return _records[commit]


_KIND_RANK = {"claims": 0, "results": 1}


def _causal_key(ref: str) -> tuple[str, int, int, str]:
    """Order records causally: per experiment, claim(a) < outcome(a) < claim(a + 1).

    Commit times are too coarse (and hosts' clocks too loose) to order records; the
    protocol itself does: a claim of attempt a + 1 is only written after attempt a
    ended. Records of different experiments commute.
    """
    parts = ref.removeprefix(RECORD_PREFIX).split("/")
    if len(parts) == 3 and parts[2].isdigit():
        return (parts[1], int(parts[2]), _KIND_RANK.get(parts[0], 2), ref)
    return ("~", 0, 3, ref)


def read_view(store: LabStore, snapshot: Snapshot) -> LabView:
    """Fold ``main`` and the live record refs of ``snapshot`` into a :class:`LabView`."""
    main = snapshot.main
    main_shards, max_seq = _list_main_shards(store, main)
    main_fold = _fold_main(store, main, main_shards, max_seq)

    listed = []
    for ref, commit in snapshot.records.items():
        listed.append((_causal_key(ref), ref, commit, _record_files(store, ref, commit)))
    listed.sort()
    decoded = [[(name, read_rows(store, name.table, blob, name.path, commit))
                for name, blob in shards] for _, _, commit, shards in listed]
    on_main = main_fold.which_on_main([row["event_id"] for shards in decoded
                                       for _, rows in shards for row in rows])
    records: list[Record] = []
    pending: dict[str, list[dict[str, Any]]] = {t: [] for t in TABLES}
    for index, ((_, ref, commit, shards), shard_rows) in enumerate(zip(listed, decoded,
                                                                      strict=True)):
        ids: set[str] = set()
        fresh = False
        for name, rows in shard_rows:
            for i, row in enumerate(rows):
                ids.add(row["event_id"])
                if row["event_id"] not in on_main:
                    fresh = True
                    pending[name.table].append({**row, "_order": (1, index, i)})
        records.append(Record(ref, commit, shards, frozenset(ids), on_main=not fresh))
    return LabView(store, snapshot, main_shards, records, main_fold, pending)


# -- the fold of main -----------------------------------------------------------------


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
                self._main_tables.setdefault(name, sorted_main(name, parts[name]))
            self._parts = None
        return self._state

    def tables(self, store: LabStore) -> StateTables:
        if self._tables is None:
            with _gc_paused():
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
            _maybe_save(store, self)
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
            return _lean(hit) if lean else hit
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
_MAX_GONE = 256  # shards a base may have lost (to compaction) and still be used
_DERIVE_ROWS = 50_000  # rows kept to derive tables lazily before giving up on it


def _fold_main(store: LabStore, main: str, shards: dict[str, dict[str, str]],
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
        for base in _disk_bases(store, main, shards):
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
    lean = sum(len(files) for files in shards.values()) <= _MAIN_SHARDS_SAVED
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
    with _gc_paused():
        if any(d.column("seq").null_count for d in data.values()):
            rows = {t: _row_dicts(data[t], order=True) for t in TABLES}
            return fold(main, max_seq, rows["queue"], rows["scores"], rows["ideas"])
        ideas = _row_dicts(sorted_main("ideas", [data["ideas"]]), order=True)
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
            values.append(iter(list(zip(*(_values(part.column(n)) for n in names[kind]),
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
    if sum(len(g) for g in gone.values()) > _MAX_GONE:
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
    with _gc_paused():
        rows = {t: [r for p in fresh[t] for r in _row_dicts(p, order=True)] for t in TABLES}
    state = None
    if base._state is not None:
        with _gc_paused():
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


# -- the fold cached on disk -----------------------------------------------------------
#
# ``<cache clone>.state/<main>-<key>/``: the fold of one main commit as arrow IPC files
# (memory-mapped when read) and its shard list. ``key`` hashes the code that defines
# the fold and the tables, so a new autolab never reads an old autolab's fold. Entries
# are written to a temporary directory and renamed into place: readers see whole
# entries or none. A reader uses an entry whose main is its own, or one whose rows are
# a prefix of its main's (then it continues the fold, as above).

_KEEP_ON_DISK = 3
# Main's rows are saved with the fold when main has more shards than this: a few shards
# (a compacted lab) decode faster than their copy is written.
_MAIN_SHARDS_SAVED = 64
_DISK_TABLES = ("experiments", "scores", "promotions", "ideas", "anomalies", "charges")


def _code_key() -> str:
    digest = hashlib.sha256(f"{SCHEMA_VERSION} {sys.version_info[:2]} {pa.__version__}".encode())
    here = Path(__file__).parent
    for module in ("reader.py", "state.py", "schemas.py", "shards.py"):
        with contextlib.suppress(OSError):
            digest.update((here / module).read_bytes())
    return digest.hexdigest()[:16]


_KEY = _code_key()


def state_cache_dir(store: LabStore) -> Path | None:
    """Where folds of ``store``'s lab are cached on this host (None: not cached).

    Beside the cache clone, so a lab's caches go together; other read-side caches
    (derived from immutable rows) may keep files here too.
    """
    path = getattr(store, "path", None)
    return Path(f"{path}.state") if isinstance(path, Path) else None


_disk_dir = state_cache_dir


def _save_threshold() -> int:
    """Folds of fewer rows are not worth a file (``AUTOLAB_STATE_CACHE_ROWS``; < 0: never)."""
    try:
        return int(os.environ.get("AUTOLAB_STATE_CACHE_ROWS", "10000"))
    except ValueError:
        return 10000


def _maybe_save(store: LabStore, fold_: MainFold) -> None:
    threshold = _save_threshold()
    where = _disk_dir(store)
    if (where is None or threshold < 0 or fold_.rows < threshold
            or fold_.unsaved < max(2000, fold_.rows // 20)):
        return
    with contextlib.suppress(OSError):
        _save(store, where, fold_)
        fold_.unsaved = 0


def _save(store: LabStore, where: Path, fold_: MainFold) -> None:
    assert fold_._tables is not None
    final = where / f"{fold_.main}-{_KEY}"
    if final.exists():
        return
    where.mkdir(parents=True, exist_ok=True)
    tmp = where / f".tmp-{os.getpid()}-{fold_.main[:12]}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        folded = fold_._tables
        files = {name: getattr(folded, name) for name in _DISK_TABLES}
        if sum(len(files) for files in fold_.shards.values()) > _MAIN_SHARDS_SAVED:
            # Main's rows too, where reading them back from git means decoding many shards.
            files.update({f"main-{t}": fold_.main_table(store, t) for t in TABLES})
        files["ids"] = pa.table({"event_id": fold_.id_column()})
        for name, table in files.items():
            with pa.OSFile(str(tmp / f"{name}.arrow"), "wb") as sink, \
                    pa.ipc.new_file(sink, table.schema) as writer:
                # One batch: a table of 10^4 shards' chunks is slow to compute on.
                writer.write_table(table.combine_chunks())
        meta = {"main": fold_.main, "max_seq": fold_.max_seq, "max_row_seq": fold_.max_row_seq,
                "rows": fold_.rows, "shards": fold_.shards}
        (tmp / "meta.pickle").write_bytes(pickle.dumps(meta))
        os.rename(tmp, final)  # fails if another process saved it first: fine
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        return
    entries = sorted((p for p in where.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=_mtime, reverse=True)
    for old in entries[_KEEP_ON_DISK:]:
        shutil.rmtree(old, ignore_errors=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _disk_bases(store: LabStore, main: str, shards: dict[str, dict[str, str]]
                ) -> Iterator[MainFold]:
    """Folds on disk that could serve ``main``: its own first, then the newest others."""
    where = _disk_dir(store)
    if where is None or _save_threshold() < 0 or not where.is_dir():
        return
    entries = sorted(where.glob(f"*-{_KEY}"), key=_mtime, reverse=True)
    entries.sort(key=lambda p: not p.name.startswith(main))
    for entry in entries[:_KEEP_ON_DISK]:
        try:
            meta = pickle.loads((entry / "meta.pickle").read_bytes())
            gone = sum(1 for t in TABLES for p, b in meta["shards"][t].items()
                       if shards[t].get(p) != b)
            if gone > _MAX_GONE:
                continue
            yield _load(entry, meta)
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, pa.ArrowInvalid):
            continue  # removed by another process meanwhile, or unreadable: skip it


def _load(entry: Path, meta: dict[str, Any]) -> MainFold:
    def arrow(name: str) -> pa.Table:
        return pa.ipc.open_file(pa.memory_map(str(entry / f"{name}.arrow"))).read_all()

    loaded = {name: arrow(name) for name in _DISK_TABLES}
    expected = {"experiments": EXPERIMENT_STATE, "promotions": PROMOTIONS,
                "anomalies": ANOMALIES, "scores": SCHEMAS["scores"], "ideas": SCHEMAS["ideas"],
                "charges": CHARGES}
    for name, schema in expected.items():
        if not loaded[name].schema.equals(schema):
            raise pa.ArrowInvalid(f"{entry}: {name} has another schema")
    tables = StateTables(main=meta["main"], max_seq=meta["max_seq"], **loaded)
    return MainFold(meta["main"], meta["shards"], meta["max_seq"],
                    max_row_seq=meta["max_row_seq"], rows=meta["rows"],
                    ids=arrow("ids").column("event_id"), tables=tables,
                    main_tables={t: arrow(f"main-{t}") for t in TABLES
                                 if (entry / f"main-{t}.arrow").exists()}, unsaved=0)
