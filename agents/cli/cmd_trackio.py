"""Trackio verbs: ``trackio-sync`` and ``dashboard`` (trackio is imported inside them)."""

from __future__ import annotations

import signal
import sys
import time
from typing import Annotated
from urllib.parse import quote

import typer

from autolab.agents.cli.common import JsonOpt, LabOpt, open_lab, print_json

ProjectOpt = Annotated[
    str | None,
    typer.Option("--project", help="Trackio project (default: the lab's name, else a slug of "
                 "its URL).", show_default=False),
]
HOST = "127.0.0.1"  # the dashboard can rename and delete runs: never serve it beyond loopback


def trackio_sync(lab: LabOpt = None, project: ProjectOpt = None,
                 as_json: JsonOpt = False) -> None:
    """Copy finished experiments, the running best and anomalies into Trackio ($TRACKIO_DIR).

    Exit code 3 when the project was already up to date (with --json, the document is
    printed all the same).
    """
    from autolab.extras import require
    from autolab.protocol.errors import NothingToDo

    require("autolab trackio-sync", "trackio", "trackio")
    from autolab.scoreboard.trackio_sync import sync

    report = sync(open_lab(lab).read(), project, say=(lambda _: None) if as_json else print)
    if as_json:
        print_json({"project": report.project, "directory": report.directory,
                    "changed": report.changed, "runs": list(report.runs),
                    "points": report.points, "alerts": list(report.alerts)})
    if not report.changed:
        raise NothingToDo(f"trackio: project {report.project} is up to date "
                          f"({report.directory})")


def dashboard(
    lab: LabOpt = None, project: ProjectOpt = None,
    port: Annotated[int | None, typer.Option(help="Port on 127.0.0.1 (default: the first "
                                             "free one from 7860).", show_default=False)] = None,
    browser: Annotated[bool, typer.Option(help="Open it in a web browser.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print where it serves as one JSON "
                                          "line.")] = False,
) -> None:
    """Sync the lab into Trackio, then serve Trackio's dashboard on 127.0.0.1 until stopped."""
    from autolab.extras import require

    require("autolab dashboard", "trackio", "trackio")
    from autolab.scoreboard.trackio_sync import quiet, sync

    report = sync(open_lab(lab).read(), project, say=(lambda _: None) if as_json else print)
    import trackio

    with quiet():  # trackio prints its own banner, including a write-token URL
        server, local_url, _, _ = trackio.show(
            project=report.project, host=HOST, server_port=port, share=False,
            mcp_server=False, open_browser=False, block_thread=False)
    url = f"{local_url.rstrip('/')}/?project={quote(report.project)}"
    if as_json:
        print_json({"event": "serving", "url": url, "project": report.project})
        sys.stdout.flush()
    else:
        print(f"dashboard: {url}  (Ctrl-C to stop)", flush=True)
    if browser:
        import webbrowser

        webbrowser.open(url)

    def stop(signum, frame):  # noqa: ANN001, ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        server.close()


def register(app: typer.Typer) -> None:
    app.command("trackio-sync")(trackio_sync)
    app.command()(dashboard)
