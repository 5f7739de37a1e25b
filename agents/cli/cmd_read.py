"""Read verbs: ``status``, ``leaderboard``, ``lineage`` and ``sql``."""

from __future__ import annotations

import contextlib
import csv
import sys
from typing import Annotated, Any

import typer

from autolab.agents.cli.common import JsonOpt, LabOpt, fmt, open_lab, print_json


def _read(lab: str | None) -> Any:
    """Open the lab and read it, for a read command."""
    _prefer_jemalloc()
    return open_lab(lab).read()


def _prefer_jemalloc() -> None:
    """Reading a big lab goes through many short-lived arrow buffers, which jemalloc
    hands back to the system where mimalloc (pyarrow's default) keeps them: a cold
    ``status`` of 100,000 experiments peaks at 850 MB instead of 950, and is faster.
    Buffers allocated before keep their own pool."""
    import pyarrow as pa

    with contextlib.suppress(NotImplementedError, AttributeError):  # a build without it
        pa.set_memory_pool(pa.jemalloc_memory_pool())


def _console() -> Any:
    from rich.console import Console

    return Console()


def _delta(value: float | None) -> str:
    return "" if value is None else f"{value:+.4g}"


def status(lab: LabOpt = None, as_json: JsonOpt = False) -> None:
    """Queue depth, running experiments, recent results, the best and failures."""
    from autolab.scoreboard.status import status as build

    data = build(_read(lab))
    if as_json:
        print_json(data)
        return
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    counts = ", ".join(f"{k} {v}" for k, v in data["counts"].items())
    console.print(f"[bold]{data['name']}[/] {data['lab']} @ {data['main'][:12]}")
    console.print(f"queue depth {data['queue_depth']}; {data['experiments']} experiments "
                  f"({counts}); {data['promotions']} promotions; "
                  f"{data['pending_records']} records pending")
    if data["quarantined_records"]:

        for bad in data["quarantined_records"]:
            console.print(f"[red]invalid record[/] {escape(bad['ref'])} @ {bad['commit'][:12]}: "
                          f"{escape(bad['reason'])} (not folded; `autolab doctor --fix` "
                          "quarantines it)", highlight=False, soft_wrap=True)
    best = data["best"]
    if best:
        line = f"best: {best['experiment_id']} {data['metric']} = {fmt(best['metric'])}"
        if data["gap_to_floor"] is not None:
            line += f" (floor {fmt(data['floor'])}, gap {data['gap_to_floor']:.4g})"
        console.print(line)
    else:
        console.print("best: none promoted yet")
    review = data["review"]
    if review["mode"] != "none" or review["awaiting"] or review["rejected"]:
        console.print(f"review ({review['mode']}): {review['candidates']} candidate(s), "
                      f"{len(review['awaiting'])} awaiting review, {review['rejected']} "
                      "rejected", highlight=False)
        for r in review["awaiting"]:
            console.print(f"  awaiting-review {r['experiment_id']} {data['metric']} = "
                          f"{fmt(r['metric'])}: {escape(r['hold'] or '')} "
                          f"(`autolab review accept {r['experiment_id']}`)",
                          highlight=False, soft_wrap=True)
    if data["running"]:
        table = Table("experiment", "attempt", "agent", "backend", "lease left (s)",
                      "hypothesis", title="running")
        for r in data["running"]:
            table.add_row(r["experiment_id"], str(r["attempt"]), fmt(r["agent"]),
                          fmt(r["backend"]), fmt(r["lease_left_s"]), r["hypothesis"][:60])
        console.print(table)
    if data["recent"]:
        table = Table("experiment", "attempt", "status", data["metric"], "agent", "late",
                      title="recent results")
        for r in data["recent"]:
            table.add_row(r["experiment_id"], str(r["attempt"]), r["status"], fmt(r["metric"]),
                          fmt(r["agent"]), "late" if r["late"] else "")
        console.print(table)
    if data["failures"]:
        kinds = ", ".join(f"{k} {v}" for k, v in data["failures"].items())
        table = Table("kind", "count", "reason", title=f"failures ({kinds})")
        for r in data["failure_reasons"]:
            table.add_row(r["kind"], str(r["count"]), fmt(r["reason"])[:90])
        console.print(table)
    cost = data["spend"]
    if cost["priced_runs"] or cost["budget_usd"] is not None:
        budget = (f" of a ${cost['budget_usd']:.2f} budget (${cost['left_usd']:.4f} left)"
                  if cost["budget_usd"] is not None else "")
        console.print(f"spend: ${cost['total_usd']:.4f} over {cost['priced_runs']} priced "
                      f"runs{budget}")
        if cost["per_promotion"]:
            table = Table("promotion", data["metric"], "cost (USD)", "runs",
                          title="spend per promotion")
            for p in cost["per_promotion"]:
                table.add_row(p["experiment_id"], fmt(p["metric"]), f"{p['cost_usd']:.4f}",
                              str(p["runs"]))
            console.print(table)
        table = Table("experiment", "cost (USD)", "runs", "flavors",
                      title="spend per experiment (top 10)")
        for e in cost["per_experiment"][:10]:
            table.add_row(e["experiment_id"], f"{e['cost_usd']:.4f}", str(e["runs"]),
                          ", ".join(e["flavors"]))
        console.print(table)
    llm = data["llm"]
    if llm["proposals"]:
        usd = f", ${llm['usd']:.4f}" if llm["usd"] is not None else ""
        models = f" ({', '.join(llm['models'])})" if llm["models"] else ""
        console.print(f"LLM proposals: {llm['proposals']}{models}, {llm['prompt_tokens']} "
                      f"prompt + {llm['completion_tokens']} completion tokens{usd}; compute "
                      f"${cost['total_usd']:.4f}", highlight=False)


def leaderboard(
    lab: LabOpt = None, as_json: JsonOpt = False,
    limit: Annotated[int, typer.Option("--limit", min=0, help="How many rows.")] = 10,
) -> None:
    """The best ok results, with the change each made to the best it started from."""
    from autolab.scoreboard.leaderboard import leaderboard as build

    view = _read(lab)
    rows = build(view, limit)
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    metric = view.config.metric
    table = Table("#", "experiment", metric, "delta", "promoted", "agent", "runtime (s)",
                  "hypothesis", title=f"leaderboard ({view.config.direction} {metric})")
    for r in rows:
        table.add_row(str(r["rank"]), r["experiment_id"], fmt(r["metric"]), _delta(r["delta"]),
                      "yes" if r["promoted"] else "", fmt(r["agent"]), fmt(r["runtime_s"]),
                      r["hypothesis"][:70])
    _console().print(table)


def lineage(lab: LabOpt = None, as_json: JsonOpt = False) -> None:
    """The chain of promotions on main: what each one took, and how far it moved."""
    from autolab.scoreboard.lineage import lineage as build

    view = _read(lab)
    steps = build(view)
    if as_json:
        print_json(steps)
        return
    from rich.tree import Tree

    config = view.config
    tree = Tree(f"[bold]{config.name}[/] main {view.main[:12]}: {len(steps)} promotion(s) "
                f"({config.direction} {config.metric})")
    for step in steps:
        if step["experiment_id"] is None:
            tree.add(f"{step['commit'][:12]}  merge of {step['source_commit'][:12]} "
                     "(no promotion row)")
            continue
        node = tree.add(f"[bold]{step['experiment_id']}[/]  {config.metric} "
                        f"{fmt(step['metric'])} {_delta(step['delta'])}  "
                        f"commit {step['commit'][:12]}")
        node.add(step["hypothesis"] or "")
        node.add(f"by {fmt(step['agent'])} at {fmt(step['at'])}")
    _console().print(tree)


def sql(
    query: Annotated[str, typer.Argument(help="SQL over the views queue, experiments, "
                                         "scores, ideas, promotions, knobs.")],
    lab: LabOpt = None, as_json: JsonOpt = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
) -> None:
    """Run DuckDB SQL over the lab's tables."""
    from autolab.scoreboard.views import query as run

    columns, rows = run(_read(lab), query)
    if as_json:
        print_json([dict(zip(columns, row, strict=True)) for row in rows])
    elif as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
    else:
        from rich.table import Table

        table = Table(*columns)
        for row in rows:
            table.add_row(*(fmt(v) for v in row))
        _console().print(table)


def register(app: typer.Typer) -> None:
    for command in (status, leaderboard, lineage, sql):
        app.command()(command)
