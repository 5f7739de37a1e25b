"""``autolab report``: an HTML page and PNG figures of a lab, optionally published."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from autolab.agents.cli.common import AgentOpt, JsonOpt, LabOpt, open_lab, print_json


@contextmanager
def _progress(total: int, quiet: bool) -> Iterator[Callable[[str], None]]:
    """A ``step(name)`` callback: a rich progress bar on a terminal, else one status line
    per step (logs and pipes get no control characters). With ``--json`` the lines go
    to stderr so stdout stays one JSON document."""
    if not quiet and sys.stdout.isatty():
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                      transient=True) as bar:
            task = bar.add_task("reading the lab", total=total)

            def step(name: str) -> None:
                bar.update(task, description=f"rendering {name}", advance=1)

            yield step
            bar.update(task, completed=total)
        return
    stream = sys.stderr if quiet else sys.stdout

    def say(name: str) -> None:
        print(f"report: {name}", file=stream, flush=True)

    say("reading the lab")
    yield lambda name: say(f"rendering {name}")


def report(
    lab: LabOpt = None,
    out: Annotated[Path, typer.Option("--out", help="Directory for index.html and the PNG "
                                      "figures (created).")] = Path("autolab-report"),
    publish: Annotated[bool, typer.Option(
        "--publish", help="Also commit the files to the lab's autolab/report branch "
        "(never main).")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Leaderboard rows.")] = 20,
    agent: AgentOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a self-contained HTML report of the lab: progress, runs per agent over
    time, leaderboard, promotions, failures and spend."""
    from autolab.extras import require

    require("autolab report", "report", "matplotlib", "numpy")
    from autolab.scoreboard import report as rep

    started = time.monotonic()
    opened = open_lab(lab, agent)
    with _progress(len(rep.STEPS) + 1, as_json) as step:
        view = opened.read()
        built = rep.build(view, limit=limit, step=step)
        paths = rep.write(built, out)
    elapsed = time.monotonic() - started
    commit = None
    if publish:
        message = (f"report of main {view.main[:12]}: {len(view.state.experiments)} "
                   f"experiments, {len(view.state.promotions)} promotions\n\n"
                   f"Autolab-Agent: {opened.agent}\n")
        commit = opened.retry_transport(
            lambda: rep.publish(opened.store, built.files(), message, agent=opened.agent))
    if as_json:
        print_json({"out": str(out), "files": [str(p) for p in paths], "main": view.main,
                    "seconds": round(elapsed, 3), "published": commit})
        return
    typer.echo(f"wrote {out / rep.HTML_NAME} and {len(paths) - 1} figure(s) in {elapsed:.1f}s")
    if commit:
        typer.echo(f"published {rep.REPORT_REF.removeprefix('refs/heads/')} at {commit[:12]}")


def register(app: typer.Typer) -> None:
    app.command()(report)
