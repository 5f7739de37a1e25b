"""The ``autolab`` command line (DESIGN.md §7).

Only argument parsing and printing live in ``autolab.agents.cli``; every verb calls
into the protocol, agents or scoreboard packages. Heavy libraries (pyarrow, duckdb,
pygit2, torch) are imported inside the commands that need them, so ``autolab
--help`` and cheap commands start fast.

Exit codes: 0 success, 1 error (one line on stderr), 2 usage error (one line on stderr
too, for click's own errors as well: an unknown flag, a bad choice or duration), 3
nothing to do (README.md, "Exit codes", lists which command exits 3 when).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Annotated

import typer
import typer.main

app = typer.Typer(
    name="autolab",
    help="AutoLab: a Git-native distributed research protocol. A lab is a Git repo whose "
    "main branch holds the research code, a protected evaluation harness, and the "
    "shared job queue and score table (parquet). Agents coordinate only through "
    "compare-and-swap pushes.",
    epilog="Exit codes: 0 success, 1 error, 2 usage error, 3 nothing to do (README.md, "
    "Exit codes).",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
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
        cmd_inspect,
        cmd_lab,
        cmd_queue,
        cmd_read,
        cmd_report,
        cmd_research,
        cmd_review,
        cmd_skill,
        cmd_trackio,
    )

    for module in (cmd_lab, cmd_queue, cmd_read, cmd_inspect, cmd_agents, cmd_research, cmd_hf,
                   cmd_report, cmd_review, cmd_trackio, cmd_skill):
        module.register(app)


# The environment variables an option falls back to: their text lands in rows,
# messages and URLs as the option's would.
_TEXT_ENV = {"agent": "AUTOLAB_AGENT", "lab": "AUTOLAB_LAB"}


def _text_only(command: typer.main.TyperCommand | typer.main.TyperGroup) -> None:
    """Make ``command`` (and its subcommands) refuse text options and arguments that
    are not valid UTF-8, with a usage error naming the option, before it runs.

    Bytes that are not UTF-8 reach Python as lone surrogates; a hypothesis, an agent id
    or a query holding one would fail deep inside (encoding a row, a commit message)
    with a traceback. Path options take any bytes the filesystem does.
    """
    for sub in getattr(command, "commands", {}).values():
        _text_only(sub)
    # Typer carries its own copy of click: types are told apart by class name.
    texts = {p.name: (p.opts[0] if p.param_type_name == "option" else p.name.upper())
             for p in command.params if type(p.type).__name__ == "StringParamType"}
    inner = command.callback
    if inner is None:
        return

    def checked(*args: object, **kwargs: object) -> object:
        from autolab.protocol.errors import UsageError, utf8_problem

        for name, value in kwargs.items():
            if name not in texts:
                continue
            for item in value if isinstance(value, (list, tuple)) else [value]:
                why = utf8_problem(item) if isinstance(item, str) else None
                if why:
                    raise UsageError(f"{texts[name]}: {why}")
        for name, var in _TEXT_ENV.items():
            why = utf8_problem(os.environ.get(var, "")) if kwargs.get(name, 0) is None else None
            if why:
                raise UsageError(f"${var}: {why}")
        return inner(*args, **kwargs)

    command.callback = checked


def _click_error() -> type[Exception]:
    """The base class of click's errors, in whichever click typer uses (its own copy
    since typer 0.20): ``typer.BadParameter`` derives from it."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _usage_line(exc: Exception) -> str:
    """Click's error (an unknown flag, a bad choice, a missing option) as one line, with
    where to find the command's help."""
    from autolab.protocol.errors import shown

    message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
    ctx = getattr(exc, "ctx", None)
    hint = f" (see `{ctx.command_path} -h`)" if ctx is not None else ""
    return shown(message) + hint


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning AutoLabError and click's usage errors into a
    one-line message on stderr."""
    from autolab.agents.stopping import Stopped
    from autolab.protocol.errors import AutoLabError

    _register()
    click_error = _click_error()
    try:
        command = typer.main.get_command(app)
        _text_only(command)
        # Not standalone: click's errors come here to be printed as one line; a
        # typer.Exit(n) (and --help: 0) comes back as the code.
        code = command.main(args=argv, prog_name="autolab", standalone_mode=False)
        _exit(code if isinstance(code, int) else 0)
    except click_error as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: its help
            exc.show()  # type: ignore[attr-defined]
        else:
            print(f"autolab: error: {_usage_line(exc)}", file=sys.stderr)
        _exit(exc.exit_code)  # type: ignore[attr-defined]
    except typer.Abort:
        print("autolab: aborted", file=sys.stderr)
        _exit(1)
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if done.code is not None and not isinstance(done.code, int):
            print(done.code, file=sys.stderr)
        _exit(code)
    except Stopped:
        # A stop that came before (or after) an agent's own handling of it, e.g. while
        # it was starting: nothing was held, so this is a clean stop.
        _exit(0)
    except Exception as exc:
        from autolab.agents.stopping import STOP
        from autolab.protocol.redact import redact

        if STOP.requested:
            # The stop interrupted library code, which reported it as an error of its
            # own: the agent was asked to stop, and it stopped.
            print("autolab: stopped", file=sys.stderr)
            _exit(0)

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
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # closed, or its reader went away (a broken pipe)
            # Nothing more can reach it: point the descriptor at /dev/null so that the
            # interpreter's own flush at exit does not fail again, with a traceback.
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    if "pyarrow" in sys.modules:
        os._exit(code)
    sys.exit(code)
