"""Inspection verbs: ``show`` (one experiment in full) and ``logs`` (a run's log)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from autolab.agents.cli.common import JsonOpt, LabOpt, fmt, open_lab, print_json

_EXCERPT_LINES = 20


def show(
    experiment_id: Annotated[str, typer.Argument(help="The experiment, e.g. 0007.")],
    lab: LabOpt = None, as_json: JsonOpt = False,
    log_lines: Annotated[int, typer.Option(help="Lines of the last attempt's log to show "
                                           "(0: none).")] = _EXCERPT_LINES,
) -> None:
    """One experiment in full: hypothesis, diff, metrics, attempts, lineage, log excerpt."""
    the_lab = open_lab(lab)
    data = show_data(the_lab, the_lab.read(), experiment_id, log_lines)
    if as_json:
        print_json(data)
        return
    print_show(data)


def show_data(the_lab: Any, view: Any, experiment_id: str, log_lines: int) -> dict[str, Any]:
    """What ``show`` prints: the experiment described, with ``log`` its last attempt's
    last ``log_lines`` lines (None when 0)."""
    from autolab.agents.run_logs import find_log
    from autolab.protocol.errors import AutoLabError
    from autolab.scoreboard.experiment import describe

    data = describe(view, experiment_id)
    log = None
    if log_lines > 0 and data["attempt"]:
        try:
            where, raw = find_log(the_lab, experiment_id, data["attempt"])
            lines = raw.decode(errors="replace").splitlines()[-log_lines:]
            log = {"source": where, "attempt": data["attempt"], "tail": lines}
        except AutoLabError as exc:
            log = {"source": None, "attempt": data["attempt"], "tail": [], "missing": str(exc)}
    data["log"] = log
    return data


def print_show(data: dict[str, Any]) -> None:
    """``show``'s text form of :func:`show_data`'s document."""
    from rich.console import Console
    from rich.markup import escape

    out = Console(soft_wrap=True)
    log = data["log"]
    out.print(f"[bold]experiment {data['experiment_id']}[/] {data['state']}"
              + (" (promoted)" if data["promoted"] else ""))
    out.print(f"hypothesis: {escape(data['hypothesis'])}")
    out.print(f"proposed by {data['proposed_by']} at {fmt(data['proposed_at'])} on "
              f"{(data['parent_commit'] or '?')[:12]}")
    lineage = data["lineage"]
    if lineage["built_on"]:
        out.print(f"built on: the promotion of {lineage['built_on']['experiment_id']} "
                  f"({fmt(lineage['built_on']['metric'])})")
    if lineage["promoted"]:
        out.print(f"promoted with {fmt(lineage['promoted']['metric'])} at "
                  f"{fmt(lineage['promoted']['at'])}")
    if data.get("rejected"):
        out.print(f"rejected by {data['rejected_by']}: {escape(data['rejection'] or '')}")
    if data["metric"] is not None:
        metrics = ", ".join(f"{k}={fmt(v)}" for k, v in sorted(data["metrics"].items()))
        out.print(f"result: {data['status']} {fmt(data['metric'])} ({metrics})")
    elif data["reason"]:
        out.print(f"reason: {escape(data['reason'])}")
    for entry in data["attempts"]:
        events = "; ".join(f"{e['event']} by {e['agent']}" + (f" ({e['reason']})"
                                                              if e["reason"] else "")
                           for e in entry["events"])
        score = entry.get("score")
        shown = (f" -> {score['status']} {fmt(score['metric'])}"
                 + (" late" if score["late"] else "")) if score else ""
        out.print(f"attempt {entry['attempt']}: {escape(events)}{escape(shown)}")
    out.print("[bold]diff[/]")
    sys.stdout.flush()
    sys.stdout.write(data["patch"] if data["patch"].endswith("\n") else data["patch"] + "\n")
    if log is not None:
        if log["source"]:
            out.print(f"[bold]log[/] ({escape(log['source'])}, last {len(log['tail'])} lines)")
            sys.stdout.flush()
            sys.stdout.write("".join(line + "\n" for line in log["tail"]))
        else:
            out.print(f"log: {escape(log['missing'])}")


def logs(
    experiment_id: Annotated[str, typer.Argument(help="The experiment, e.g. 0007.")],
    lab: LabOpt = None,
    attempt: Annotated[int | None, typer.Option(help="Which attempt (default: the last "
                                                "claimed).", show_default=False)] = None,
    tail: Annotated[int | None, typer.Option(help="Only the last N lines.",
                                             show_default=False)] = None,
    log_dir: Annotated[Path | None, typer.Option(help="Where this host's workers keep "
                                                 "logs (default: beside the cache).",
                                                 show_default=False)] = None,
) -> None:
    """Print a run's log: this host's copy, else the one kept in the lab
    (refs/autolab-logs/<id>/<attempt>, written by runs in HF jobs)."""
    from autolab.agents.run_logs import find_log
    from autolab.protocol.errors import AutoLabError

    the_lab = open_lab(lab)
    exp = the_lab.read().state.experiments.get(experiment_id)
    if exp is None:
        raise AutoLabError(f"unknown experiment {experiment_id}")
    number = attempt if attempt is not None else exp.attempt
    if not 1 <= number <= max(exp.attempt, 0):
        raise AutoLabError(f"experiment {experiment_id} has no attempt {number} "
                           f"({exp.attempt} claimed so far)")
    where, raw = find_log(the_lab, experiment_id, number, log_dir)
    if tail is not None:
        lines = raw.splitlines(keepends=True)
        raw = b"".join(lines[-tail:]) if tail > 0 else b""
    print(f"# {where}", file=sys.stderr)
    sys.stdout.buffer.write(raw)
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    for command in (show, logs):
        app.command()(command)
