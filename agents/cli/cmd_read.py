"""Read verbs: ``status`` and ``sql``."""

from __future__ import annotations

import csv
import sys
from typing import Annotated

import typer

from autolab.agents.cli.common import JsonOpt, LabOpt, fmt, open_lab, print_json


def status(lab: LabOpt = None, as_json: JsonOpt = False) -> None:
    """Queue depth, running experiments, recent results and the current best."""
    from autolab.scoreboard.status import status as build

    data = build(open_lab(lab).read())
    if as_json:
        print_json(data)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    counts = ", ".join(f"{k} {v}" for k, v in data["counts"].items())
    console.print(f"[bold]{data['lab']}[/] @ {data['main'][:12]}  ({counts})")
    best = data["best"]
    if best:
        gap = f", gap to floor {data['gap_to_floor']:.4g}" if data["gap_to_floor"] else ""
        console.print(f"best: {best['experiment_id']} {data['metric']}={fmt(best['metric'])}{gap}")
    if data["running"]:
        table = Table("experiment", "attempt", "agent", "lease left (s)", "backend",
                      title="running")
        for r in data["running"]:
            table.add_row(r["experiment_id"], str(r["attempt"]), fmt(r["agent"]),
                          fmt(r["lease_left_s"]), fmt(r["backend"]))
        console.print(table)
    if data["recent"]:
        table = Table("experiment", "attempt", "status", data["metric"], "agent", "late",
                      title="recent results")
        for r in data["recent"]:
            table.add_row(r["experiment_id"], str(r["attempt"]), r["status"], fmt(r["metric"]),
                          fmt(r["agent"]), "late" if r["late"] else "")
        console.print(table)


def sql(
    query: Annotated[str, typer.Argument(help="SQL over the views queue, experiments, "
                                         "scores, ideas, promotions.")],
    lab: LabOpt = None, as_json: JsonOpt = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
) -> None:
    """Run DuckDB SQL over the lab's tables."""
    from autolab.scoreboard.views import query as run

    columns, rows = run(open_lab(lab).read(), query)
    if as_json:
        print_json([dict(zip(columns, row, strict=True)) for row in rows])
    elif as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(*columns)
        for row in rows:
            table.add_row(*(fmt(v) for v in row))
        Console().print(table)


def register(app: typer.Typer) -> None:
    app.command()(status)
    app.command()(sql)
