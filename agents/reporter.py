"""The reporter: quarantines invalid record refs, reaps leases (asking the Jobs API
about remote runs), folds record refs, compacts shards, and mirrors finished
experiments into Trackio."""

from __future__ import annotations

from collections.abc import Callable

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
            say(f"quarantined record {line}")
    reap(lab, view, say)
    if lab.fold(view, always=True):
        say(f"folded {len(view.pending)} record(s) into main")
    if max(len(files) for files in view.main_shards.values()) >= COMPACT_AT:
        report = tx.compact(lab)
        if report.commit:
            say(f"compacted {sum(report.shards_before.values())} shards")
    if trackio:
        _sync_trackio(view, project, say)


def _sync_trackio(view: LabView, project: str | None, say: Callable[[str], None]) -> None:
    try:
        from autolab.scoreboard.trackio_sync import sync

        sync(view, project, say=say)
    except Exception as exc:  # trackio's own errors too (sqlite locked...): never fatal
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        say(f"trackio sync skipped: {first[:200]}")
