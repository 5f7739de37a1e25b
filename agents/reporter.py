"""The reporter (minimal): reaps expired leases, folds record refs, compacts shards."""

from __future__ import annotations

from collections.abc import Callable

from autolab.agents.reaping import reap
from autolab.protocol import transactions as tx
from autolab.protocol.lab import Lab

COMPACT_AT = 32  # shards in one table on main


def report_once(lab: Lab, say: Callable[[str], None] = print) -> None:
    view = lab.read()
    reap(lab, view, say)
    if lab.fold(view, always=True):
        say(f"folded {len(view.pending)} record(s) into main")
    if max(len(files) for files in view.main_shards.values()) >= COMPACT_AT:
        report = tx.compact(lab)
        if report.commit:
            say(f"compacted {sum(report.shards_before.values())} shards")
