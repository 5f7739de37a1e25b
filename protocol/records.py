"""Record refs validated before they count (DESIGN.md §4.12).

A record ref (``refs/autolab/<kind>/<experiment>/<attempt>``) can be created by any
agent with push rights, so nothing in one is trusted for its name alone. A record
counts only if it holds exactly one row, of the table and event its kind carries, for
the very experiment and attempt its name gives, with finite metrics and timestamps
that carry a UTC offset (checked when the row is decoded). Any other record is left
out of the fold, reported by ``status`` and ``doctor``, and moved aside to
``refs/autolab-quarantine/`` by ``doctor --fix`` or a reporter.

A result's commit is *not* checked here (that needs git to apply the patch, on every
read): promotion checks it, on the exact parent, before anything reaches ``main``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from autolab.protocol.schemas import SCORE_STATUSES
from autolab.protocol.shards import ShardName
from autolab.protocol.store import RECORD_PREFIX

# kind -> table -> the events a row of that table may carry (None: a score row)
KINDS: dict[str, dict[str, tuple[str, ...] | None]] = {
    "claims": {"queue": ("claimed",)},
    "launches": {"queue": ("launched",)},
    "results": {"scores": None, "queue": ("released", "expired", "failed")},
}
_REF = re.compile(rf"^{re.escape(RECORD_PREFIX)}(?P<kind>[a-z]+)/(?P<experiment>[^/]+)/"
                  r"(?P<attempt>[1-9][0-9]{0,8})$")


@dataclass(frozen=True)
class BadRecord:
    """A record ref left out of the fold: its name, commit and what is wrong with it."""

    ref: str
    commit: str
    reason: str

    def __str__(self) -> str:
        return f"{self.ref} @ {self.commit[:12]}: {self.reason}"


def parse_record_ref(ref: str) -> tuple[str, str, int] | None:
    """``(kind, experiment, attempt)`` of a well-formed record ref name, else None."""
    match = _REF.match(ref)
    if match is None or match["kind"] not in KINDS:
        return None
    return match["kind"], match["experiment"], int(match["attempt"])


def record_problem(ref: str, shards: list[tuple[ShardName, list[dict[str, Any]]]]
                   ) -> str | None:
    """Why the decoded record ``ref`` must not be folded (None: it may be).

    Args:
        ref: the record's full ref name.
        shards: its files, decoded: ``(shard name, rows)`` pairs.
    """
    parsed = parse_record_ref(ref)
    if parsed is None:
        return (f"not a record name (refs/autolab/<{'|'.join(KINDS)}>/<experiment>/"
                "<attempt>)")
    kind, experiment, attempt = parsed
    if any(not name.record for name, _ in shards):
        return "a record holds JSON rows only"
    rows = [(name.table, row) for name, table_rows in shards for row in table_rows]
    if len(rows) != 1:
        return f"holds {len(rows)} rows; a record holds exactly one"
    table, row = rows[0]
    allowed = KINDS[kind]
    if table not in allowed:
        return f"a {table} row in a {kind} record"
    events = allowed[table]
    if events is not None and row.get("event") not in events:
        return f"a {row.get('event')!r} row in a {kind} record"
    if row.get("experiment_id") != experiment or row.get("attempt") != attempt:
        return (f"its row is for experiment {row.get('experiment_id')!r} attempt "
                f"{row.get('attempt')!r}, not {experiment} attempt {attempt}")
    if kind == "claims" and (row.get("lease_until") is None or row.get("at") is None):
        return "a claim without its time or lease"
    if table == "scores":
        return _score_problem(row)
    return None


def _score_problem(row: dict[str, Any]) -> str | None:
    status, metric = row.get("status"), row.get("metric")
    if status not in SCORE_STATUSES:
        return f"status {status!r} is not one of {', '.join(SCORE_STATUSES)}"
    if metric is not None and not math.isfinite(metric):
        return f"metric is {metric}"
    if status == "ok" and metric is None:
        return "status ok without a metric"
    metrics = row.get("metrics") or {}
    items = metrics.items() if isinstance(metrics, dict) else metrics
    for name, value in items:
        if value is not None and not math.isfinite(value):
            return f"metrics.{name} is {value}"
    return None
