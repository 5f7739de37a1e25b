"""``autolab doctor``: check a lab's schemas and invariants without stopping at the
first problem. Every finding names the file (or ref) and the commit.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field

from autolab.protocol.config import CONFIG_FILE, parse_config
from autolab.protocol.errors import AutoLabError, ShardError, shown, utf8_problem
from autolab.protocol.reader import decode_record_ref, list_main_shards, read_view
from autolab.protocol.records import BadRecord
from autolab.protocol.shard_cache import read_rows
from autolab.protocol.shards import STATE_DIR, parse_shard_path
from autolab.protocol.store import FileChange, LabStore, Snapshot


@dataclass
class Finding:
    level: str  # error | warning
    where: str
    commit: str
    message: str

    def __post_init__(self) -> None:
        # A path or ref from the remote: printable, one line, whatever bytes it holds.
        self.where = shown(self.where)
        self.message = shown(self.message)

    def __str__(self) -> str:
        return f"{self.level}: {self.where} @ {self.commit[:12]}: {self.message}"


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    shards: int = 0
    rows: int = 0
    records: int = 0

    @property
    def ok(self) -> bool:
        return not any(f.level == "error" for f in self.findings)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "shards": self.shards, "rows": self.rows,
                "records": self.records,
                "findings": [f.__dict__ for f in self.findings]}


def check(store: LabStore, snapshot: Snapshot) -> Report:
    """Check every shard, record ref and fold invariant of ``snapshot``."""
    report = Report()
    main = snapshot.main

    def err(where: str, message: str, commit: str = main, level: str = "error") -> None:
        report.findings.append(Finding(level, where, commit, message))

    raw = store.read_file(main, CONFIG_FILE)
    if raw is None:
        err(CONFIG_FILE, "missing: not a lab")
    else:
        try:
            parse_config(raw.decode(errors="replace"))
        except AutoLabError as exc:
            err(CONFIG_FILE, str(exc))

    seen: Counter[str] = Counter()
    seqs: Counter[int] = Counter()
    for table in ("queue", "scores", "ideas"):
        for path, blob in store.list_dir(main, f"{STATE_DIR}/{table}").items():
            report.shards += 1
            name = parse_shard_path(path)
            if name is None or name.record:
                err(path, "not a shard name (<seq>-<agent>-<nonce>.parquet)")
                continue
            try:
                rows = read_rows(store, table, blob, path, main)
            except ShardError as exc:
                err(path, exc.reason)
                continue
            report.rows += len(rows)
            row_seqs = [r["seq"] for r in rows]
            if None in row_seqs:
                err(path, "rows without seq on main")
            elif row_seqs and max(row_seqs) != name.seq:
                err(path, f"file name says seq {name.seq}, rows end at {max(row_seqs)}")
            for row in rows:
                seen[row["event_id"]] += 1
                if row["seq"] is not None:
                    seqs[row["seq"]] += 1
    for event_id, count in seen.items():
        if count > 1:
            err(STATE_DIR, f"event {event_id} appears {count} times (duplicate rows)")
    dup_seq = [s for s, c in seqs.items() if c > 1]
    if dup_seq:
        err(STATE_DIR, f"{len(dup_seq)} seq numbers used twice (first: {min(dup_seq)})")

    for table in ("queue", "scores", "ideas"):
        held = store.list_dir(main, f"{QUARANTINE_DIR}/{table}")
        if held:
            err(f"{QUARANTINE_DIR}/{table}", f"{len(held)} quarantined files (kept, not read)",
                level="warning")

    for ref, commit in snapshot.records.items():
        report.records += 1
        try:
            got = decode_record_ref(store, ref, commit)
        except ShardError as exc:
            err(ref, exc.reason, commit)
            continue
        if isinstance(got, BadRecord):
            err(ref, f"{got.reason} (not folded; `autolab doctor --fix` quarantines it)",
                commit)

    if report.ok:
        try:
            list_main_shards(store, main)
            view = read_view(store, snapshot)
        except AutoLabError as exc:
            err(STATE_DIR, str(exc))
        else:
            for line in view.state.anomalies:
                err("fold", line, level="warning")
    return report


# -- repair ----------------------------------------------------------------------------

QUARANTINE_DIR = f"{STATE_DIR}/quarantine"
QUARANTINE_REFS = "refs/autolab-quarantine/"


@dataclass
class Repair:
    """What ``autolab doctor --fix`` did, and what it refused to touch."""

    commit: str | None = None
    quarantined: list[str] = field(default_factory=list)
    deduplicated: dict[str, int] = field(default_factory=dict)
    moved_refs: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.commit or self.moved_refs)

    def to_dict(self) -> dict:
        return {**self.__dict__,
                "deduplicated": {shown(p): n for p, n in self.deduplicated.items()}}


@dataclass
class _Plan:
    quarantine: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # path: blob, to, why
    rewrite: dict[str, tuple[str, bytes | None, int]] = field(default_factory=dict)
    bad_refs: dict[str, tuple[str, str]] = field(default_factory=dict)  # ref: commit, why
    refused: list[str] = field(default_factory=list)


def quarantine_records(store: LabStore, bad: dict[str, tuple[str, str]]) -> list[str]:
    """Move record refs (ref -> (commit, why)) to ``refs/autolab-quarantine/``, each
    only while it still holds that commit; return one line per ref moved.

    The ref is freed, so the attempt it blocked can be claimed or ended validly.
    """
    from autolab.protocol.errors import Conflict

    moved = []
    for ref, (commit, why) in bad.items():
        target = QUARANTINE_REFS + _plain_name(ref.removeprefix("refs/"), safe="/")
        with contextlib.suppress(Conflict):  # already quarantined by another doctor
            store.create_ref(target, commit)
        if store.delete_refs({ref: commit}):
            moved.append(f"{shown(ref)} -> {shown(target)}: {shown(why)}")
    return moved


def repair(store: LabStore, *, attempts: int = 8) -> Repair:
    """Repair what can be repaired without losing a row, in one compare-and-swap commit.

    * An unreadable shard on ``main`` (not parquet, truncated, wrong schema, not a shard
      name) moves, bytes unchanged, to ``.autolab/quarantine/<table>/``; the commit
      message says which and why.
    * Rows that appear twice (same ``event_id``, same content) keep their first copy;
      the shards holding later copies are rewritten without them.
    * A record ref that cannot be read, or is not valid (:mod:`autolab.protocol.records`),
      moves to ``refs/autolab-quarantine/...``.

    Refused (reported, left alone): an invalid ``autolab.toml``, a shard written by a
    newer autolab, two *different* rows with one ``event_id``. A rewritten ``main``
    is handled by ``--accept-rewrite``, never here.
    """
    from autolab.protocol.errors import Conflict

    result = Repair()
    for _ in range(attempts):
        snapshot = store.refresh()
        plan = _plan(store, snapshot)
        result.refused = plan.refused
        result.moved_refs.extend(quarantine_records(store, plan.bad_refs))
        if not plan.quarantine and not plan.rewrite:
            return result
        remove: list[str] = []
        add: dict[str, bytes] = {}
        add_blobs: dict[str, str] = {}
        lines = []
        for path, (blob, target, why) in sorted(plan.quarantine.items()):
            remove.append(path)
            add_blobs[target] = blob
            lines.append(f"- quarantine {shown(path)} -> {target}: {shown(why)}")
        for path, (new_path, data, dropped) in sorted(plan.rewrite.items()):
            remove.append(path)
            if data is not None:
                add[new_path] = data
            lines.append(f"- drop {dropped} duplicate rows from {shown(path)}"
                         + (f" (now {new_path})" if data is not None and new_path != path
                            else " (no rows left)" if data is None else ""))
        summary = (f"doctor --fix: quarantine {len(plan.quarantine)} shards, "
                   f"rewrite {len(plan.rewrite)} with duplicate rows")
        change = FileChange(add=add, remove=remove, add_blobs=add_blobs)
        commit = store.make_commit(snapshot.main, change, summary + "\n\n" + "\n".join(lines)
                                   + "\n", agent="doctor")
        try:
            store.cas_main(commit, snapshot.main)
        except Conflict:
            continue
        result.commit = commit
        result.quarantined = [line[len("- quarantine "):] for line in lines
                              if line.startswith("- quarantine")]
        result.deduplicated = {p: d for p, (_, _, d) in plan.rewrite.items()}
        return result
    raise AutoLabError("doctor --fix: main kept moving; try again")


def _plain_name(name: str, safe: str = "") -> str:
    """``name`` for a file in the quarantine: unchanged if it is printable UTF-8, else
    with each byte that is not printable ASCII written ``%XX`` (a name that is not UTF-8
    would fail every tool that prints the tree)."""
    if name.isprintable() and utf8_problem(name) is None:
        return name
    from urllib.parse import quote

    return quote(name.encode("utf-8", "surrogateescape"), safe=safe)


def _plan(store: LabStore, snapshot: Snapshot) -> _Plan:
    from autolab.protocol.shard_cache import read_table
    from autolab.protocol.shards import encode

    plan = _Plan()
    main = snapshot.main
    raw = store.read_file(main, CONFIG_FILE)
    if raw is None:
        plan.refused.append(f"{CONFIG_FILE}: missing, not a lab")
    else:
        try:
            parse_config(raw.decode(errors="replace"))
        except AutoLabError as exc:
            plan.refused.append(f"{CONFIG_FILE}: {exc} (edit it by hand)")

    taken = set(store.list_files(main))
    # event_id -> (seq, path, row without seq) of the first copy seen (lowest seq first).
    first: dict[str, tuple[int, str, dict]] = {}
    readable: list[tuple[str, str, str, list[dict]]] = []
    for table in ("queue", "scores", "ideas"):
        for path, blob in store.list_dir(main, f"{STATE_DIR}/{table}").items():
            name = parse_shard_path(path)
            why = None
            if name is None or name.record or name.table != table:
                why = "not a shard name"
            else:
                try:
                    rows = read_rows(store, table, blob, path, main)
                except ShardError as exc:
                    if exc.newer:
                        plan.refused.append(f"{shown(path)}: {exc.reason}")
                        continue
                    why = exc.reason
            if why is not None:
                base = f"{QUARANTINE_DIR}/{table}/{_plain_name(path.rsplit('/', 1)[1])}"
                target, n = base, 0
                # Taken on main, or by another file of this repair (a name that is not
                # UTF-8 and its %-spelling map to one): never overwrite a kept file.
                while target in taken:
                    n += 1
                    target = f"{base}.{blob[:8]}" + (f".{n}" if n > 1 else "")
                taken.add(target)
                plan.quarantine[path] = (blob, target, why)
                continue
            readable.append((table, path, blob, rows))
    # Every row of every readable shard in the lab's order; the first copy of an event
    # is kept, later exact copies are dropped by position (two copies may share a seq).
    ordered = [(row["seq"] or 0, path, position, row)
               for _table, path, _, rows in readable for position, row in enumerate(rows)]
    ordered.sort(key=lambda item: item[:3])
    drop: dict[str, set[int]] = {}
    for _seq, path, position, row in ordered:
        body = {k: v for k, v in row.items() if k not in ("seq", "_order")}
        seen = first.get(row["event_id"])
        if seen is None:
            first[row["event_id"]] = (row["seq"] or 0, path, body)
        elif seen[2] == body:
            drop.setdefault(path, set()).add(position)
        else:
            plan.refused.append(f"{shown(path)}: event {row['event_id']} differs from its copy "
                                f"in {shown(seen[1])} (pick one by hand)")
    for table, path, blob, _rows in readable:
        gone = drop.get(path)
        if not gone:
            continue
        data = read_table(store, table, blob, path, main)
        keep = [i not in gone for i in range(data.num_rows)]
        kept = data.filter(keep)
        dropped = data.num_rows - kept.num_rows
        if kept.num_rows == 0:
            plan.rewrite[path] = (path, None, dropped)
            continue
        name = parse_shard_path(path)
        assert name is not None
        top = max(s for s in kept.column("seq").to_pylist() if s is not None)
        new_path = type(name)(table, top, name.agent, name.nonce).path
        plan.rewrite[path] = (new_path, encode(table, kept), dropped)

    for ref, commit in snapshot.records.items():
        try:
            got = decode_record_ref(store, ref, commit)
        except ShardError as exc:
            plan.refused.append(f"{shown(ref)}: {exc.reason}")
            continue
        if isinstance(got, BadRecord):
            plan.bad_refs[ref] = (commit, got.reason)
    return plan
