"""The ``autolab`` command line (DESIGN.md §7).

Only argument parsing and printing live in ``autolab.agents.cli``; every verb calls
into the protocol, agents or scoreboard packages. Heavy libraries (pyarrow, duckdb,
pygit2, torch) are imported inside the commands that need them, so ``autolab
--help`` and cheap commands start fast.

Exit codes: 0 success, 1 error (one line on stderr), 2 usage error, 3 nothing to do.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

app = typer.Typer(
    name="autolab",
    help="AutoLab: a Git-native distributed research protocol. A lab is a Git repo whose "
    "main branch holds the research code, a protected evaluation harness, and the "
    "shared job queue and score table (parquet). Agents coordinate only through "
    "compare-and-swap pushes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        from autolab import __version__

        print(f"autolab {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print the version and exit.")] = False,
) -> None:
    """Options of ``autolab`` itself (before the command)."""


def _register() -> None:
    from autolab.agents.cli import (
        cmd_agents,
        cmd_hf,
        cmd_lab,
        cmd_queue,
        cmd_read,
        cmd_report,
        cmd_trackio,
    )

    for module in (cmd_lab, cmd_queue, cmd_read, cmd_agents, cmd_hf, cmd_report, cmd_trackio):
        module.register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning AutoLabError into a one-line message."""
    from autolab.protocol.errors import AutoLabError

    _register()
    try:
        # Standalone mode: click prints usage errors and exits 2, and typer.Exit(n) exits n.
        app(args=argv)
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if done.code is not None and not isinstance(done.code, int):
            print(done.code, file=sys.stderr)
        _exit(code)
    except Exception as exc:
        from autolab.protocol.redact import redact

        if not isinstance(exc, AutoLabError):
            if not type(exc).__module__.startswith(("huggingface_hub", "httpx")):
                raise
            # A Hub client failure (HTTP status, refused connection): one line too.
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            exc = AutoLabError(f"Hugging Face API: {first[:300]}")
        kind = "" if exc.exit_code == 3 else "error: "
        print(f"autolab: {kind}{redact(str(exc))}", file=sys.stderr)
        _exit(exc.exit_code)


def _exit(code: int) -> None:
    """Exit with ``code``; once pyarrow is loaded, without interpreter finalization.

    After some failed reads (a corrupt parquet file), pyarrow's C++ thread pool can
    abort the process during finalization ("terminate called without an active
    exception", exit -6), hiding the real exit code.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    if "pyarrow" in sys.modules:
        os._exit(code)
    sys.exit(code)
