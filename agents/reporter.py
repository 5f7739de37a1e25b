"""The reporter: quarantines invalid record refs, reaps leases (asking the Jobs API
about remote runs), folds record refs, compacts shards, and mirrors finished
experiments into Trackio."""

from __future__ import annotations

from collections.abc import Callable

from autolab.agents.events import WARNING, emit
from autolab.agents.reaping import reap
from autolab.protocol import transactions as tx
from autolab.protocol.lab import Lab
from autolab.protocol.reader import LabView

COMPACT_AT = 32  # shards in one table on main


def report_once(lab: Lab, say: Callable[[str], None] = print, *, trackio: bool = True,
                project: str | None = None) -> None:
    """One round. A Trackio failure is reported, never allowed to stop the round."""
    view = lab.read()
    if view.quarantined:
        from autolab.protocol.doctor import quarantine_records

        bad = {b.ref: (b.commit, b.reason) for b in view.quarantined}
        for line in quarantine_records(lab.store, bad):
            emit(say, "quarantined", f"quarantined record {line}", level=WARNING, record=line)
    reap(lab, view, say)
    folded = lab.fold(view, always=True)
    if folded:
        emit(say, "folded", f"folded {len(view.pending)} record(s) into main",
             records=len(view.pending), commit=folded)
    if max(len(files) for files in view.main_shards.values()) >= COMPACT_AT:
        report = tx.compact(lab)
        if report.commit:
            shards = sum(report.shards_before.values())
            emit(say, "compacted", f"compacted {shards} shards", shards=shards,
                 commit=report.commit)
    if trackio:
        _sync_trackio(view, project, say)


def _sync_trackio(view: LabView, project: str | None, say: Callable[[str], None]) -> None:
    try:
        from autolab.scoreboard.trackio_sync import sync

        sync(view, project, say=lambda line: emit(say, "trackio_synced", line))
    except Exception as exc:  # trackio's own errors too (sqlite locked...): never fatal
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        emit(say, "trackio_skipped", f"trackio sync skipped: {first[:200]}", level=WARNING,
             reason=first[:200])
