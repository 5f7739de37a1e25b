"""DuckDB views over a lab: ``queue``, ``experiments``, ``scores``, ``ideas``,
``promotions``.

``queue``, ``scores`` and ``ideas`` are the raw tables (rows on ``main`` by ``seq``,
then rows still in record refs, whose ``seq`` is null); ``experiments`` is the folded
state, one row per experiment; ``promotions`` the promotion events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

if TYPE_CHECKING:
    from autolab.protocol.reader import LabView

VIEWS = ("queue", "experiments", "scores", "ideas", "promotions")

_EXPERIMENTS = pa.schema([
    ("experiment_id", pa.string()), ("state", pa.string()), ("attempt", pa.int32()),
    ("hypothesis", pa.string()), ("priority", pa.float64()), ("patch_hash", pa.string()),
    ("parent_commit", pa.string()), ("proposed_by", pa.string()), ("agent", pa.string()),
    ("lease_until", pa.timestamp("us", tz="UTC")), ("claimed_at", pa.timestamp("us", tz="UTC")),
    ("backend", pa.string()), ("job_id", pa.string()), ("reason", pa.string()),
    ("status", pa.string()), ("metric", pa.float64()), ("promoted", pa.bool_()),
])
_PROMOTIONS = pa.schema([
    ("experiment_id", pa.string()), ("attempt", pa.int32()), ("metric", pa.float64()),
    ("source_commit", pa.string()), ("agent", pa.string()),
    ("at", pa.timestamp("us", tz="UTC")), ("seq", pa.int64()),
])


def experiments_table(view: LabView) -> pa.Table:
    rows = [e.to_dict() for e in view.state.experiments.values()]
    return pa.Table.from_pylist(rows, schema=_EXPERIMENTS)


def connect(view: LabView) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the lab's views registered."""
    con = duckdb.connect()
    scores = view.table("scores")
    # The fold decides lateness (a later outcome for an ended attempt); show its verdict.
    late = {(s["event_id"]): s["late"] for s in view.state.scores}
    if scores.num_rows:
        flags = pa.array([late.get(e, True) for e in scores.column("event_id").to_pylist()])
        scores = scores.set_column(scores.schema.get_field_index("late"), "late", flags)
    tables: dict[str, Any] = {
        "queue": view.table("queue"),
        "scores": scores,
        "ideas": view.table("ideas"),
        "experiments": experiments_table(view),
        "promotions": pa.Table.from_pylist(view.state.promotions, schema=_PROMOTIONS),
    }
    for name, table in tables.items():
        con.register(name, table)
    return con


def query(view: LabView, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run ``sql`` over the views; return column names and rows."""
    con = connect(view)
    try:
        result = con.execute(sql)
    except duckdb.Error as exc:
        from autolab.protocol.errors import AutoLabError

        raise AutoLabError(f"sql: {str(exc).splitlines()[0]}") from None
    columns = [d[0] for d in result.description] if result.description else []
    return columns, result.fetchall()
