"""Shards as read: decoded once per blob and kept in-process.

Blobs are immutable, so a shard decoded once (by blob id) never needs decoding again:
a long-lived agent (``--loop``) only parses what is new since its last read.
"""

from __future__ import annotations

import contextlib
import gc
from collections import OrderedDict
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa

from autolab.protocol.schemas import SCHEMAS
from autolab.protocol.shards import decode, decode_columns, decode_record
from autolab.protocol.store import LabStore

CACHE_SIZE = 8192
_decoded: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
_tables: OrderedDict[str, pa.Table] = OrderedDict()


def _remember(cache: OrderedDict, key: str, value: Any) -> Any:
    cache[key] = value
    if len(cache) > CACHE_SIZE:
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
    return _remember(_decoded, blob, row_dicts(read_table(store, table, blob, path, commit)))


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
        return lean_table(hit) if lean else hit
    skips = tuple(name for name in LEAN_SKIPS if name in SCHEMAS[table].names)
    parquet = not path.endswith(".json")
    if lean and skips and parquet:
        key = f"{blob} lean"
        hit = _tables.get(key)
        if hit is None:
            hit = _remember(_tables, key, decode(table, store.read_blob_buffer(blob), path,
                                                 commit, skip=skips))
        return hit
    if lean:
        return lean_table(read_table(store, table, blob, path, commit))
    if parquet:
        part = _tables.get(f"{blob} lean") if skips else None
        if part is not None:
            # Read lean before: decode only what that left out (patches), not it all again.
            rest = decode_columns(table, store.read_blob_buffer(blob), skips, path, commit)
            schema = SCHEMAS[table]
            whole = pa.table([(rest if f.name in skips else part).column(f.name)
                              for f in schema], schema=schema)
            return _remember(_tables, blob, whole)
        return _remember(_tables, blob, decode(table, store.read_blob_buffer(blob), path,
                                               commit))
    rows = read_rows(store, table, blob, path, commit)
    clean = [{k: v for k, v in r.items() if k != "_order"} for r in rows]
    return _remember(_tables, blob, pa.Table.from_pylist(clean, schema=SCHEMAS[table]))


def lean_table(data: pa.Table) -> pa.Table:
    skip = [name for name in LEAN_SKIPS if name in data.column_names]
    return data.drop_columns(skip) if skip else data


def values_of(column: pa.ChunkedArray) -> list[Any]:
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


def row_dicts(data: pa.Table, order: bool = False) -> list[dict[str, Any]]:
    """``data.to_pylist()``, a column at a time (several times faster), optionally with
    each main row's fold order ``_order = (0, seq, event_id)``."""
    names = data.column_names
    rows = [dict(zip(names, values, strict=True))
            for values in zip(*(values_of(data.column(n)) for n in names), strict=True)]
    if order:
        for row in rows:
            seq = row["seq"]
            row["_order"] = (0, seq if seq is not None else -1, row["event_id"])
    return rows


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Building 10^5 objects triggers the cyclic collector hundreds of times for no
    garbage at all; pausing it makes large folds about a third faster."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
