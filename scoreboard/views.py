"""DuckDB views over a lab: ``queue``, ``experiments``, ``scores``, ``ideas``,
``promotions``, ``knobs``.

``queue`` and ``ideas`` are the raw tables (rows on ``main`` by ``seq``, then rows
still in record refs, whose ``seq`` is null). ``scores`` holds every score row, with
``late`` as the fold decided it. ``experiments`` is the folded state, one row per
experiment; ``promotions`` the promotion events; ``knobs`` each experiment's value of
every knob of the lab's config (see :mod:`autolab.scoreboard.knobs`).

Only the views a query names are built, so a query over ``experiments`` never reads
the raw queue.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

if TYPE_CHECKING:
    from autolab.protocol.reader import LabView

VIEWS = ("queue", "experiments", "scores", "ideas", "promotions", "knobs")

EXPERIMENT_COLUMNS = (
    "experiment_id", "state", "attempt", "hypothesis", "priority", "patch_hash",
    "parent_commit", "proposed_by", "agent", "lease_until", "claimed_at", "backend", "job_id",
    "reason", "status", "metric", "promoted", "rejected", "rejection", "rejected_by",
)


def experiments_table(view: LabView) -> pa.Table:
    """The ``experiments`` view: one row per experiment, in proposal order."""
    return view.folded().experiments.select(list(EXPERIMENT_COLUMNS))


def view_table(view: LabView, name: str) -> pa.Table:
    """The arrow table behind view ``name``."""
    if name == "experiments":
        return experiments_table(view)
    if name == "scores":
        return view.folded().scores
    if name == "promotions":
        return view.folded().promotions
    if name == "knobs":
        from autolab.scoreboard.knobs import knobs_table

        return knobs_table(view)
    if name in ("queue", "ideas"):
        return view.table(name)
    raise KeyError(name)


def named_views(sql: str) -> list[str]:
    """The views ``sql`` may use: every view whose name appears in it as a word."""
    words = set(re.findall(r"[a-z_][a-z0-9_]*", sql.lower()))
    return [name for name in VIEWS if name in words]


def connect(view: LabView, names: list[str] | tuple[str, ...] = VIEWS
            ) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the views ``names`` registered."""
    con = duckdb.connect()
    for name in names:
        con.register(name, view_table(view, name))
    return con


def query(view: LabView, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run ``sql`` over the views; return column names and rows."""
    con = connect(view, named_views(sql))
    try:
        result = con.execute(sql)
    except duckdb.Error as exc:
        from autolab.protocol.errors import AutoLabError

        raise AutoLabError(f"sql: {str(exc).splitlines()[0]}") from None
    columns = [d[0] for d in result.description] if result.description else []
    return columns, result.fetchall()
