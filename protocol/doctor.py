"""``autolab doctor``: check a lab's schemas and invariants without stopping at the
first problem. Every finding names the file (or ref) and the commit.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from autolab.protocol.config import CONFIG_FILE, parse_config
from autolab.protocol.errors import AutoLabError, ShardError
from autolab.protocol.reader import list_main_shards, read_rows, read_view
from autolab.protocol.shards import STATE_DIR, parse_shard_path
from autolab.protocol.store import LabStore, Snapshot


@dataclass
class Finding:
    level: str  # error | warning
    where: str
    commit: str
    message: str

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

    for ref, commit in snapshot.records.items():
        report.records += 1
        for path, blob in store.list_files(commit).items():
            name = parse_shard_path(path)
            if name is None:
                err(ref, f"record holds a non-shard file {path}", commit)
                continue
            try:
                read_rows(store, name.table, blob, path, commit)
            except ShardError as exc:
                err(f"{ref}:{path}", exc.reason, commit)

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
