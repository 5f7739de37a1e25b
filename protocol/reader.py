"""Reading a lab: shards on ``main`` plus live record refs, folded into state.

Shards are decoded once per blob (:mod:`autolab.protocol.shard_cache`); the fold of
``main`` is continued from an earlier one where it can be
(:mod:`autolab.protocol.main_fold`), and cached on disk for new processes
(:mod:`autolab.protocol.fold_cache`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from autolab.protocol.config import CONFIG_FILE, LabConfig, parse_config
from autolab.protocol.errors import ConfigError, LabError, ShardError
from autolab.protocol.main_fold import MainFold, fold_main
from autolab.protocol.records import BadRecord, record_problem
from autolab.protocol.schemas import TABLES
from autolab.protocol.shard_cache import CACHE_SIZE, read_rows, read_table, row_dicts
from autolab.protocol.shards import STATE_DIR, ShardName, parse_shard_path
from autolab.protocol.state import LabState, StateTables, continue_tables, fold
from autolab.protocol.store import RECORD_PREFIX, LabStore, Snapshot

_configs: dict[str, LabConfig] = {}


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
    quarantined: list[BadRecord] = field(default_factory=list)  # records left unfolded

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
        # The fold orders main's rows without a seq (hand-made shards) before the others.
        unnumbered = pc.is_null(proposed.column("seq"))
        for part in (proposed.filter(unnumbered), proposed.filter(pc.invert(unnumbered))):
            for eid, patch in zip(part.column("experiment_id").to_pylist(),
                                  part.column("patch").to_pylist(), strict=True):
                found.setdefault(eid, patch or "")
        for row in self._pending_rows["queue"]:  # in fold order already
            if row["event"] == "proposed":
                found.setdefault(row["experiment_id"], row["patch"] or "")
        return [found.get(eid, "") for eid in experiment_ids]

    def table(self, name: str, *, lean: bool = False) -> pa.Table:
        """The whole table as arrow: ``main`` rows by ``seq``, then pending record rows;
        ``lean``: without patches (cheaper, where they are not needed)."""
        main = self._fold.main_table(self.store, name, lean=lean)
        parts = [read_table(self.store, name, blob, shard.path, record.commit, lean=lean)
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
        return {t: row_dicts(self._fold.main_table(self.store, t), order=True)
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
    if len(_records) > CACHE_SIZE:
        _records.clear()
    _records[commit] = tuple(sorted(shards, key=str))
    return _records[commit]


def decode_record_ref(store: LabStore, ref: str, commit: str
                      ) -> tuple[tuple[tuple[ShardName, str], ...],
                                 list[tuple[ShardName, list[dict[str, Any]]]]] | BadRecord:
    """A record ref's files and decoded rows, or why it must not be folded.

    Raises:
        ShardError: only for a record written by a newer autolab (this one must not
            guess what it means); anything else wrong is a :class:`BadRecord`.
    """
    try:
        shards = _record_files(store, ref, commit)
        rows = [(name, read_rows(store, name.table, blob, name.path, commit))
                for name, blob in shards]
    except ShardError as exc:
        if exc.newer:
            raise
        return BadRecord(ref, commit, exc.reason)
    why = record_problem(ref, rows)
    return BadRecord(ref, commit, why) if why else (shards, rows)


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
    main_fold = fold_main(store, main, main_shards, max_seq)

    listed, quarantined = [], []
    for ref, commit in snapshot.records.items():
        got = decode_record_ref(store, ref, commit)
        if isinstance(got, BadRecord):
            quarantined.append(got)
        else:
            listed.append((_causal_key(ref), ref, commit, *got))
    listed.sort(key=lambda item: item[:3])
    decoded = [[(name, rows) for name, rows in item[4]] for item in listed]
    on_main = main_fold.which_on_main([row["event_id"] for shards in decoded
                                       for _, rows in shards for row in rows])
    records: list[Record] = []
    pending: dict[str, list[dict[str, Any]]] = {t: [] for t in TABLES}
    for index, ((_, ref, commit, shards, _rows), shard_rows) in enumerate(
            zip(listed, decoded, strict=True)):
        ids: set[str] = set()
        fresh = False
        for name, rows in shard_rows:
            for i, row in enumerate(rows):
                ids.add(row["event_id"])
                if row["event_id"] not in on_main:
                    fresh = True
                    pending[name.table].append({**row, "_order": (1, index, i)})
        records.append(Record(ref, commit, shards, frozenset(ids), on_main=not fresh))
    return LabView(store, snapshot, main_shards, records, main_fold, pending, quarantined)
