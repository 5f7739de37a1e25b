"""Encoding and decoding of immutable parquet shards.

A shard's name is ``<seq>-<agent>-<nonce>.parquet``: ``seq`` is the largest sequence
number of its rows (zero while the shard only lives in a record ref), and ``nonce`` is
random and identifies the shard across renames (folding a record onto ``main`` rewrites
the shard with its sequence numbers and a new ``seq`` in the name, keeping the nonce).
"""

from __future__ import annotations

import io
import re
import secrets
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from autolab.protocol.errors import ShardError
from autolab.protocol.schemas import SCHEMA_VERSION, SCHEMAS, TABLES

STATE_DIR = ".autolab"
_NAME = re.compile(r"^(?P<seq>\d{12})-(?P<agent>[A-Za-z0-9_.]+)-(?P<nonce>[0-9a-f]{16})\.parquet$")
_AGENT_CHARS = re.compile(r"[^A-Za-z0-9_.]+")


@dataclass(frozen=True)
class ShardName:
    """Parsed shard file name."""

    table: str
    seq: int
    agent: str
    nonce: str

    @property
    def path(self) -> str:
        return f"{STATE_DIR}/{self.table}/{self.seq:012d}-{self.agent}-{self.nonce}.parquet"

    def with_seq(self, seq: int) -> ShardName:
        return ShardName(self.table, seq, self.agent, self.nonce)


def new_shard_name(table: str, agent: str, seq: int = 0) -> ShardName:
    """A fresh, unique shard name for ``agent`` (agent id sanitized for file names)."""
    slug = _AGENT_CHARS.sub("_", agent)[:40] or "agent"
    return ShardName(table, seq, slug, secrets.token_hex(8))


def parse_shard_path(path: str) -> ShardName | None:
    """Parse ``.autolab/<table>/<name>``; None if ``path`` is not a shard path."""
    parts = path.split("/")
    if len(parts) != 3 or parts[0] != STATE_DIR or parts[1] not in TABLES:
        return None
    match = _NAME.match(parts[2])
    if not match:
        return None
    return ShardName(parts[1], int(match["seq"]), match["agent"], match["nonce"])


def encode(table: str, rows: list[dict[str, Any]] | pa.Table) -> bytes:
    """Serialize rows of ``table`` to parquet bytes, validated against its schema.

    Missing columns are filled with nulls; ``schema_version`` is set here.
    """
    schema = SCHEMAS[table]
    if isinstance(rows, pa.Table):
        data = rows.select(schema.names).cast(schema)
    else:
        filled = [{**row, "schema_version": SCHEMA_VERSION} for row in rows]
        data = pa.Table.from_pylist(filled, schema=schema)
    sink = io.BytesIO()
    pq.write_table(data, sink, compression="zstd")
    return sink.getvalue()


def decode(table: str, payload: bytes, path: str, commit: str) -> pa.Table:
    """Parse and validate a shard.

    Raises:
        ShardError: the bytes are not parquet, the schema differs from ``table``'s, or a
            row carries another ``schema_version``. The error names ``path`` and ``commit``.
    """
    schema = SCHEMAS[table]
    try:
        data = pq.ParquetFile(io.BytesIO(payload)).read()
    except Exception as exc:  # pyarrow raises several types for corrupt input
        raise ShardError(path, commit, f"not readable as parquet ({exc})") from None
    got = {f.name: f.type for f in data.schema}
    want = {f.name: f.type for f in schema}
    if got != want:
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        changed = sorted(n for n in set(want) & set(got) if want[n] != got[n])
        raise ShardError(
            path, commit,
            f"schema mismatch for table {table} (missing {missing}, unexpected {extra}, "
            f"wrong type {changed})",
        )
    versions = set(data.column("schema_version").to_pylist())
    if versions - {SCHEMA_VERSION}:
        raise ShardError(
            path, commit,
            f"schema_version {sorted(versions)} but this autolab reads {SCHEMA_VERSION}",
        )
    if data.column("event_id").null_count:
        raise ShardError(path, commit, "rows without event_id")
    return data.select(schema.names).cast(schema)


def with_seq(data: pa.Table, first_seq: int) -> pa.Table:
    """Return ``data`` with ``seq`` set to ``first_seq, first_seq + 1, ...``."""
    seqs = pa.array(range(first_seq, first_seq + data.num_rows), type=pa.int64())
    return data.set_column(data.schema.get_field_index("seq"), "seq", seqs)
