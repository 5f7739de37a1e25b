"""Encoding and decoding of immutable parquet shards.

A shard's name is ``<seq>-<agent>-<nonce>.parquet``: ``seq`` is the largest sequence
number of its rows and ``nonce`` makes the name unique.

Record refs (rows waiting beside ``main``) hold their rows as ``.json`` files of the
same name pattern with ``seq`` zero: a record has one or two rows, which every agent
reads, and JSON decodes about 250 times faster than a one-row parquet file (4 us vs
1.1 ms) and is 25 times smaller. Records are validated against the table's pyarrow
schema when written and again when read, and become parquet when folded onto ``main``.
"""

from __future__ import annotations

import io
import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from autolab.protocol.errors import ShardError
from autolab.protocol.schemas import ADDED_IN, SCHEMA_VERSION, SCHEMAS, TABLES

STATE_DIR = ".autolab"
_NAME = re.compile(
    r"^(?P<seq>\d{12})-(?P<agent>[A-Za-z0-9_.]+)-(?P<nonce>[0-9a-f]{16})\.(?P<ext>parquet|json)$"
)
_AGENT_CHARS = re.compile(r"[^A-Za-z0-9_.]+")
_THREADED_BYTES = 1 << 20
# A transaction's shard (a few rows) is written plain: git compresses every object
# anyway, and a plain shard decodes in about 40 % of the time of a zstd one with
# dictionaries and statistics (each column chunk sets up its own decoder). Bigger shards
# (compaction's) are written packed: they are read whole and rarely, and stay small.
_PLAIN_ROWS = 1024
_PLAIN = {"compression": "none", "use_dictionary": False, "write_statistics": False}
_PACKED = {"compression": "zstd"}


@dataclass(frozen=True)
class ShardName:
    """Parsed shard file name."""

    table: str
    seq: int
    agent: str
    nonce: str
    ext: str = "parquet"  # "json" in record refs

    @property
    def path(self) -> str:
        return f"{STATE_DIR}/{self.table}/{self.seq:012d}-{self.agent}-{self.nonce}.{self.ext}"

    @property
    def record(self) -> bool:
        return self.ext == "json"


def new_shard_name(table: str, agent: str, seq: int = 0, *, record: bool = False) -> ShardName:
    """A fresh, unique shard name for ``agent`` (agent id sanitized for file names)."""
    slug = _AGENT_CHARS.sub("_", agent)[:40] or "agent"
    return ShardName(table, seq, slug, secrets.token_hex(8), "json" if record else "parquet")


def parse_shard_path(path: str) -> ShardName | None:
    """Parse ``.autolab/<table>/<name>``; None if ``path`` is not a shard path."""
    parts = path.split("/")
    if len(parts) != 3 or parts[0] != STATE_DIR or parts[1] not in TABLES:
        return None
    match = _NAME.match(parts[2])
    if not match:
        return None
    return ShardName(parts[1], int(match["seq"]), match["agent"], match["nonce"], match["ext"])


def encode(table: str, rows: list[dict[str, Any]] | pa.Table) -> bytes:
    """Serialize rows of ``table`` to parquet bytes, validated against its schema.

    Missing columns are filled with nulls; ``schema_version`` is set here.
    """
    schema = SCHEMAS[table]
    if isinstance(rows, pa.Table):
        data = rows.select(schema.names).cast(schema)
        # A rewritten shard (compaction, repair) has this version's columns: its rows are
        # this version's rows, whatever version first wrote them.
        index = schema.get_field_index("schema_version")
        data = data.set_column(index, schema.field(index),
                               pa.array([SCHEMA_VERSION] * data.num_rows, pa.int16()))
    else:
        filled = [{**row, "schema_version": SCHEMA_VERSION} for row in rows]
        data = pa.Table.from_pylist(filled, schema=schema)
    sink = io.BytesIO()
    pq.write_table(data, sink, **(_PLAIN if data.num_rows <= _PLAIN_ROWS else _PACKED))
    return sink.getvalue()


def _check_not_newer(versions: list[Any] | pa.ChunkedArray, path: str, commit: str) -> None:
    if isinstance(versions, pa.ChunkedArray):
        newest = pc.max(versions).as_py() if pa.types.is_integer(versions.type) else None
    else:
        newest = max((v for v in versions if isinstance(v, int)), default=None)
    if newest is not None and newest > SCHEMA_VERSION:
        raise ShardError(path, commit, f"schema_version {newest} is newer than the "
                         f"{SCHEMA_VERSION} this autolab reads: upgrade autolab", newer=True)


def _upgrade(table: str, data: pa.Table, got: dict[str, Any], schema: pa.Schema
             ) -> tuple[pa.Table, dict[str, Any]]:
    """Add, as nulls, the columns of ``schema`` a shard of an older version cannot have."""
    oldest = pc.min(data.column("schema_version")).as_py() or 1
    added = [name for name, version in ADDED_IN.get(table, {}).items()
             if version > oldest and name not in got and name in schema.names]
    for name in added:
        field = schema.field(name)
        data = data.append_column(field, pa.nulls(data.num_rows, field.type))
    return data, {f.name: f.type for f in data.schema}


def decode(table: str, payload: bytes | memoryview, path: str, commit: str, *,
           skip: tuple[str, ...] = ()) -> pa.Table:
    """Parse and validate a shard; the columns named in ``skip`` are not even decoded.

    Raises:
        ShardError: the bytes are not parquet, the schema differs from ``table``'s, or a
            row carries another ``schema_version``. The error names ``path`` and ``commit``.
    """
    schema = SCHEMAS[table]
    skip = tuple(name for name in skip if name in schema.names)
    if skip:
        schema = pa.schema([f for f in schema if f.name not in skip], metadata=schema.metadata)
    try:
        source = pq.ParquetFile(pa.BufferReader(payload))
        columns = None
        if skip:
            # Left undecoded, but still checked: a lean read accepts what a full one does.
            _check_declared(table, source.schema_arrow, skip, path, commit)
            columns = [n for n in source.schema_arrow.names if n not in skip]
        # Threads pay off for a big (compacted) shard; for a small one they cost more
        # than its whole decode.
        data = source.read(columns=columns, use_threads=len(payload) > _THREADED_BYTES)
    except ShardError:
        raise
    except Exception as exc:  # pyarrow raises several types for corrupt input
        raise ShardError(path, commit, f"not readable as parquet ({exc})") from None
    _check_values(data, path, commit)
    if data.schema.equals(schema):
        # The usual case, checked in one comparison: this version's columns and types.
        _check_versions(data.column("schema_version"), path, commit)
    else:
        data = _conform(table, data, schema, path, commit)
    if data.column("event_id").null_count:
        raise ShardError(path, commit, "rows without event_id")
    return data.replace_schema_metadata(schema.metadata)


def decode_columns(table: str, payload: bytes | memoryview, names: tuple[str, ...], path: str,
                   commit: str) -> pa.Table:
    """Only the columns ``names`` of a shard (what a lean :func:`decode` left out), typed as
    in the table's schema; a column an older version lacks is nulls.

    Raises:
        ShardError: as :func:`decode`.
    """
    schema = SCHEMAS[table]
    try:
        source = pq.ParquetFile(pa.BufferReader(payload))
        _check_declared(table, source.schema_arrow, names, path, commit)
        present = [n for n in names if n in source.schema_arrow.names]
        data = source.read(columns=present, use_threads=len(payload) > _THREADED_BYTES)
    except ShardError:
        raise
    except Exception as exc:  # pyarrow raises several types for corrupt input
        raise ShardError(path, commit, f"not readable as parquet ({exc})") from None
    _check_values(data, path, commit)
    columns = [data.column(n) if n in present else pa.nulls(data.num_rows, schema.field(n).type)
               for n in names]
    return pa.table(columns, schema=pa.schema([schema.field(n) for n in names]))


def _check_values(data: pa.Table, path: str, commit: str) -> None:
    """Every value well formed, strings valid UTF-8 included: a parquet reader does not
    check that, and a string that is not UTF-8 would fail much later (a fold, a query, a
    print), far from the shard and with no name. About 20 us for a transaction's shard,
    6 ms for 100,000 rows."""
    try:
        data.validate(full=True)
    except pa.ArrowInvalid:
        for name in data.column_names:
            try:
                data.column(name).validate(full=True)
            except pa.ArrowInvalid as exc:
                what = ("is not UTF-8 text" if "UTF8" in str(exc)
                        else f"holds invalid values ({str(exc).splitlines()[0][:200]})")
                raise ShardError(path, commit, f"column {name!r} {what}") from None
        raise ShardError(path, commit, "holds invalid values") from None


def _check_declared(table: str, declared: pa.Schema, names: tuple[str, ...], path: str,
                    commit: str) -> None:
    """The columns ``names`` as a shard's footer declares them: of the table's type, or
    absent where an older version had no such column."""
    schema = SCHEMAS[table]
    for name in names:
        index = declared.get_field_index(name)
        if index < 0:
            if name not in ADDED_IN.get(table, {}):
                raise ShardError(path, commit, f"schema mismatch for table {table} "
                                 f"(missing [{name!r}])")
        elif declared.field(index).type != schema.field(name).type:
            raise ShardError(path, commit, f"schema mismatch for table {table} "
                             f"(wrong type [{name!r}])")


def _check_versions(column: pa.ChunkedArray, path: str, commit: str) -> None:
    """Every row of a version this autolab reads (a newer one: ask for an upgrade)."""
    if len(column) <= 64:  # a transaction's shard: quicker in Python than two kernels
        values = column.to_pylist()
        if all(v is not None and 1 <= v <= SCHEMA_VERSION for v in values):
            return
    _check_not_newer(column, path, commit)
    bounds = pc.min_max(column).as_py()
    if column.null_count or (len(column) and (
            bounds["min"] < 1 or bounds["max"] > SCHEMA_VERSION)):
        versions = sorted(set(column.to_pylist()), key=str)
        raise ShardError(path, commit,
                         f"schema_version {versions} but this autolab reads {SCHEMA_VERSION}")


def _conform(table: str, data: pa.Table, schema: pa.Schema, path: str, commit: str
             ) -> pa.Table:
    """``data`` as ``schema``: an older version's shard gains its missing columns as nulls;
    anything else that differs is an error naming what."""
    if "schema_version" in data.column_names:
        _check_not_newer(data.column("schema_version"), path, commit)
    got = {f.name: f.type for f in data.schema}
    want = {f.name: f.type for f in schema}
    if got != want and pa.types.is_integer(got.get("schema_version", pa.null())):
        data, got = _upgrade(table, data, got, schema)
    if got != want:
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        changed = sorted(n for n in set(want) & set(got) if want[n] != got[n])
        raise ShardError(
            path, commit,
            f"schema mismatch for table {table} (missing {missing}, unexpected {extra}, "
            f"wrong type {changed})",
        )
    _check_versions(data.column("schema_version"), path, commit)
    return data.select(schema.names).cast(schema)


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def encode_record(table: str, rows: list[dict[str, Any]]) -> bytes:
    """Serialize record rows as JSON, after validating them against the table schema."""
    filled = [{**row, "schema_version": SCHEMA_VERSION} for row in rows]
    pa.Table.from_pylist(filled, schema=SCHEMAS[table])  # raises on a wrong type
    return json.dumps([{k: _jsonable(v) for k, v in r.items()} for r in filled]).encode()


def decode_record(table: str, payload: bytes, path: str, commit: str) -> list[dict[str, Any]]:
    """Parse and validate record rows (every column present, typed as in the schema).

    Raises:
        ShardError: not JSON rows, unknown columns, wrong types or schema version.
    """
    schema = SCHEMAS[table]
    try:
        rows = json.loads(payload)
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError("expected a list of objects")
    except ValueError as exc:
        raise ShardError(path, commit, f"not a JSON record ({exc})") from None
    out = []
    for row in rows:
        _check_not_newer([row.get("schema_version")], path, commit)
        extra = set(row) - set(schema.names)
        if extra:
            raise ShardError(path, commit, f"unexpected columns {sorted(extra)}")
        if row.get("schema_version") not in range(1, SCHEMA_VERSION + 1):
            raise ShardError(path, commit, f"schema_version {row.get('schema_version')} but "
                             f"this autolab reads {SCHEMA_VERSION}")
        full = {}
        for field in schema:
            value = row.get(field.name)
            if value is not None and pa.types.is_timestamp(field.type):
                try:
                    value = datetime.fromisoformat(value)
                except (TypeError, ValueError):
                    raise ShardError(path, commit, f"{field.name} is not a timestamp") from None
                if value.utcoffset() is None:
                    # A naive time compares with nothing: it would crash every reaper.
                    raise ShardError(path, commit, f"{field.name} has no UTC offset")
            full[field.name] = value
        if not isinstance(full["event_id"], str):
            raise ShardError(path, commit, "rows without event_id")
        out.append(full)
    try:
        pa.Table.from_pylist(out, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
        raise ShardError(path, commit, f"does not match the {table} schema ({exc})") from None
    except UnicodeEncodeError:  # "\udcff" in the JSON: a lone surrogate, not text
        raise ShardError(path, commit, "a string is not UTF-8 text") from None
    return out


def with_seq(data: pa.Table, first_seq: int) -> pa.Table:
    """Return ``data`` with ``seq`` set to ``first_seq, first_seq + 1, ...``."""
    seqs = pa.array(range(first_seq, first_seq + data.num_rows), type=pa.int64())
    return data.set_column(data.schema.get_field_index("seq"), "seq", seqs)
