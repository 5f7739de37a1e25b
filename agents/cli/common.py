"""Options and helpers shared by the command modules."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

LabOpt = Annotated[
    str | None,
    typer.Option("--lab", help="Lab URL or path (default: $AUTOLAB_LAB, then this checkout's "
                 "origin).", show_default=False),
]
AgentOpt = Annotated[
    str | None,
    typer.Option("--agent", help="Agent id recorded with every row (default: $AUTOLAB_AGENT "
                 "or host-pid).", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
EventsJsonOpt = Annotated[bool, typer.Option(
    "--json", help="Print one JSON object per event, one per line (NDJSON), instead of "
    "log lines.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Also debug events.")]
DURATION_HELP = "30s, 10m, 2h, 1h30m or plain seconds"


def duration(text: str | float) -> float:
    """Parse a time flag (``--interval 10m``) for typer: the one duration syntax of
    :mod:`autolab.protocol.durations`; a bad one is a usage error naming the flag."""
    from autolab.protocol.durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def verbosity(quiet: bool, verbose: bool) -> int:
    """-1 with ``-q``, 1 with ``-v``, else 0; both at once is a usage error."""
    if quiet and verbose:
        from autolab.protocol.errors import UsageError

        raise UsageError("give at most one of -q/--quiet and -v/--verbose")
    return -1 if quiet else 1 if verbose else 0


def resolve_lab(lab: str | None) -> str:
    """``--lab``, else ``$AUTOLAB_LAB``, else the current checkout's ``origin`` URL."""
    if lab:
        return lab
    env = os.environ.get("AUTOLAB_LAB")
    if env:
        return env
    from autolab.protocol.errors import AutoLabError, TransportError
    from autolab.protocol.git_cli import run_git

    try:
        proc = run_git(["config", "--get", "remote.origin.url"], timeout=10)
    except TransportError as exc:  # git missing, or stuck (a hung network filesystem)
        raise AutoLabError(f"no lab given, and {exc}") from None
    if proc.returncode == 0 and proc.stdout.strip():
        return proc.stdout.strip()
    from autolab.protocol.errors import UsageError

    raise UsageError("no lab given: pass --lab URL, set AUTOLAB_LAB, or run in a clone of a lab")


def read_input(path: Path, option: str, *, limit: int, strict: bool = True,
               dash: bool = False) -> str:
    """The text of the file ``path`` given as ``option``.

    Args:
        dash: ``-`` means standard input.
        limit: read at most this many bytes; a longer input is refused (``/dev/zero``
            must not fill the memory).
        strict: refuse bytes that are not UTF-8 (else they read as U+FFFD).

    Raises:
        AutoLabError: one line naming the option and the file: missing, a directory,
            unreadable, over ``limit`` bytes, or not UTF-8 (exit code 1).
    """
    from autolab.protocol.errors import AutoLabError, shown, utf8_problem

    stdin = dash and str(path) == "-"
    where = f"{option} - (standard input)" if stdin else f"{option} {shown(str(path))}"
    try:
        if stdin:
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(path, "rb") as handle:
                data = handle.read(limit + 1)
    except FileNotFoundError:
        raise AutoLabError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise AutoLabError(f"{where}: is a directory, not a file") from None
    except PermissionError:
        raise AutoLabError(f"{where}: permission denied") from None
    except OSError as exc:
        raise AutoLabError(f"{where}: cannot read ({exc.strerror or type(exc).__name__})"
                           ) from None
    if len(data) > limit:
        raise AutoLabError(f"{where}: larger than {limit} bytes")
    text = data.decode("utf-8", "surrogateescape" if strict else "replace")
    why = utf8_problem(text) if strict else None
    if why:
        raise AutoLabError(f"{where}: {why}")
    return text


def open_lab(lab: str | None, agent: str | None = None) -> Any:
    from autolab.protocol.lab import Lab

    return Lab.open(resolve_lab(lab), agent)


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, default=_default, indent=None) + "\n")


def fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)
