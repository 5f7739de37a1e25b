"""Reading a lab: shards on ``main`` plus live record refs, folded into state.

Decoded shards are cached in-process by blob id (blobs are immutable), so a
long-lived agent (``--loop``) only parses what is new since its last read.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import pyarrow as pa

from autolab.protocol.config import CONFIG_FILE, LabConfig, parse_config
from autolab.protocol.errors import ConfigError, LabError, ShardError
from autolab.protocol.schemas import SCHEMAS, TABLES
from autolab.protocol.shards import (
    STATE_DIR,
    ShardName,
    decode,
    decode_record,
    parse_shard_path,
)
from autolab.protocol.state import LabState, fold
from autolab.protocol.store import RECORD_PREFIX, LabStore, Snapshot

_CACHE_SIZE = 8192
_decoded: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
_tables: OrderedDict[str, pa.Table] = OrderedDict()
_configs: dict[str, LabConfig] = {}
# The fold of main's rows, by main commit: agents re-read the same main many times
# and only the record refs beside it change.
_main_states: dict[str, LabState] = {}


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
    payload = store.read_blob(blob)
    if path.endswith(".json"):
        return _remember(_decoded, blob, decode_record(table, payload, path, commit))
    data = _remember(_tables, blob, decode(table, payload, path, commit))
    return _remember(_decoded, blob, data.to_pylist())


def read_table(store: LabStore, table: str, blob: str, path: str, commit: str) -> pa.Table:
    """One shard as an arrow table (cached by blob id)."""
    hit = _tables.get(blob)
    if hit is not None:
        return hit
    rows = read_rows(store, table, blob, path, commit)
    if blob in _tables:
        return _tables[blob]
    clean = [{k: v for k, v in r.items() if k != "_order"} for r in rows]
    return _remember(_tables, blob, pa.Table.from_pylist(clean, schema=SCHEMAS[table]))


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
    """One consistent read of a lab: the snapshot, its config, records and state."""

    store: LabStore
    snapshot: Snapshot
    main_shards: dict[str, dict[str, str]]  # table -> path -> blob
    records: list[Record]
    state: LabState
    _rows: dict[str, list[dict[str, Any]]] = field(repr=False, default_factory=dict)

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

    def table(self, name: str) -> pa.Table:
        """The whole table as arrow: ``main`` rows by ``seq``, then pending record rows."""
        parts = [
            read_table(self.store, name, blob, path, self.main)
            for path, blob in sorted(self.main_shards[name].items())
        ]
        parts += [read_table(self.store, name, blob, shard.path, record.commit)
                  for record in self.pending for shard, blob in record.shards
                  if shard.table == name]
        if not parts:
            return SCHEMAS[name].empty_table()
        merged = pa.concat_tables(parts)
        return merged.sort_by([("seq", "ascending"), ("event_id", "ascending")])


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
    out: dict[str, dict[str, str]] = {}
    for table in TABLES:
        files = store.list_dir(commit, f"{STATE_DIR}/{table}")
        for path in files:
            name = parse_shard_path(path)
            if name is None or name.table != table or name.record:
                raise ShardError(path, commit, "not a shard name (<seq>-<agent>-<nonce>.parquet)")
        out[table] = files
    return out


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
    main_shards = list_main_shards(store, main)
    rows: dict[str, list[dict[str, Any]]] = {t: [] for t in TABLES}
    max_seq = 0
    on_main: set[str] = set()
    for table, files in main_shards.items():
        for path, blob in files.items():
            max_seq = max(max_seq, parse_shard_path(path).seq)  # type: ignore[union-attr]
            shard_rows = read_rows(store, table, blob, path, main)
            before = len(on_main)
            on_main.update(row["event_id"] for row in shard_rows)
            if len(on_main) - before != len(shard_rows):
                # Every event lands on main once; a copy (a botched manual merge, a
                # replayed shard) would count a claim or a score twice.
                raise ShardError(path, main, "duplicate rows (an event_id already on main): "
                                 "run `autolab doctor --fix`")
            rows[table].extend(shard_rows)
    for table in TABLES:
        for row in rows[table]:
            if "_order" not in row:
                row["_order"] = (0, row["seq"] if row["seq"] is not None else -1, row["event_id"])

    records: list[Record] = []
    listed = []
    for ref, commit in snapshot.records.items():
        listed.append((_causal_key(ref), ref, commit, _record_files(store, ref, commit)))
    listed.sort()
    for index, (_, ref, commit, shards) in enumerate(listed):
        ids: set[str] = set()
        fresh = False
        for name, blob in shards:
            for i, row in enumerate(read_rows(store, name.table, blob, name.path, commit)):
                ids.add(row["event_id"])
                if row["event_id"] not in on_main:
                    fresh = True
                    rows[name.table].append({**row, "_order": (1, index, i)})
        records.append(Record(ref, commit, shards, frozenset(ids), on_main=not fresh))
    base = _main_states.get(main)
    if base is None:
        main_rows = {t: [r for r in rows[t] if r["_order"][0] == 0] for t in TABLES}
        base = fold(main, max_seq, main_rows["queue"], main_rows["scores"], main_rows["ideas"])
        _main_states[main] = base
        while len(_main_states) > 4:
            _main_states.pop(next(iter(_main_states)))
    extra = {t: [r for r in rows[t] if r["_order"][0] == 1] for t in TABLES}
    state = fold(main, max_seq, extra["queue"], extra["scores"], extra["ideas"], base=base)
    return LabView(store, snapshot, main_shards, records, state, rows)
