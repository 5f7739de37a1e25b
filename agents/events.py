"""What long-lived agents report: one event per thing that happened, as a dated log
line or as one JSON object per line.

Agent code reports through a ``say`` callable. A plain one (``print``, a list's
``append``) gets the line of text; an :class:`AgentLog` (what the CLI hands its
agents) also gets the event's name and fields through :func:`emit`, and sends them
through :mod:`logging`: as ``2026-05-09 07:35:25 worker host-1: claimed 0007 ...``,
or with ``json_lines`` as ``{"event": "claimed", "experiment_id": "0007", ...}`` so
that scripts and coding agents can follow an agent without parsing prose.

Every JSON line holds ``event``, ``at`` (ISO 8601, UTC), ``level``, ``role``,
``agent`` and ``message`` (the text line), plus the event's own fields
(``experiment_id``, ``attempt``, ...). Names and fields are listed in README.md
("Following an agent").
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any

from autolab.protocol.errors import shown
from autolab.protocol.redact import redact

DEBUG, INFO, WARNING, ERROR = logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR
LOGGER = "autolab"


def emit(say: Callable[[str], None], event: str, message: str, *, level: int = INFO,
         **fields: Any) -> None:
    """Report ``event`` through ``say``: with its name, level and fields where ``say``
    takes them (an :class:`AgentLog`), else as the line ``message`` (debug events are
    then dropped: a plain ``say`` has no verbosity to raise)."""
    structured = getattr(say, "event", None)
    if structured is not None:
        structured(event, message, level=level, **fields)
    elif level > DEBUG:
        say(message)


class AgentLog:
    """The events of one agent process, through the ``autolab.<role>`` logger.

    Args:
        role: ``worker``, ``planner``, ``reporter``, ``swarm``, ``demo``.
        agent: the agent id (in every line).
        json_lines: one JSON object per event instead of text.
        verbosity: -1 only warnings and errors, 0 the usual events, 1 debug events too.
        stream: where lines go (standard output: the events are the command's output).
    """

    def __init__(self, role: str, agent: str | None = None, *, json_lines: bool = False,
                 verbosity: int = 0, stream: IO[str] | None = None) -> None:
        self.role, self.agent, self.json_lines = role, agent, json_lines
        self.logger = logging.getLogger(f"{LOGGER}.{role}")
        root = logging.getLogger(LOGGER)
        handler = _AgentStream(stream or sys.stdout)
        handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
        for old in list(root.handlers):  # one handler per process, whoever set it up
            root.removeHandler(old)
        root.addHandler(handler)
        root.setLevel(WARNING if verbosity < 0 else DEBUG if verbosity > 0 else INFO)
        root.propagate = False  # never twice through a handler someone put on the root
        # A log stream that breaks (a closed pipe) must never stop an agent mid-run, nor
        # print a traceback per event: lines are then dropped.
        logging.raiseExceptions = False

    def __call__(self, message: str) -> None:
        """A line without a name of its own: the event ``message``."""
        self.event("message", message)

    def event(self, name: str, message: str, *, level: int = INFO, **fields: Any) -> None:
        """Log event ``name`` with ``fields``; ``message`` is its text form."""
        self.logger.log(level, "%s", message, extra={
            "autolab_event": name, "autolab_fields": fields,
            "autolab_who": f"{self.role} {self.agent}" if self.agent else self.role,
            "autolab_role": self.role, "autolab_agent": self.agent})


class _AgentStream(logging.StreamHandler):
    """An agent's output. When its reader goes away (``autolab worker --json | head``:
    a broken pipe), the agent stops as on SIGTERM (a worker records a finished run
    first) instead of running on with nobody reading; later lines are dropped."""

    broken = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        error = sys.exc_info()[1]
        if not isinstance(error, BrokenPipeError) or self.broken:
            return  # any other failure to write a line: the line is lost, not the agent
        self.broken = True
        self.setStream(open(os.devnull, "w"))  # noqa: SIM115 (lives as long as the process)
        if threading.current_thread() is threading.main_thread():
            from autolab.agents.stopping import STOP

            STOP.request()


def _when(record: logging.LogRecord) -> datetime:
    return datetime.fromtimestamp(record.created, UTC)


class TextFormatter(logging.Formatter):
    """``2026-05-09 07:35:25 worker host-1: claimed 0007 ...`` (local time); warnings and
    errors say so. Every line is one printable line, whatever a hypothesis or a remote
    name holds."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created).strftime("%Y-%m-%d %H:%M:%S")
        who = getattr(record, "autolab_who", record.name)
        level = f"{record.levelname.lower()}: " if record.levelno >= WARNING else ""
        text = record.getMessage()
        if record.exc_info:
            text += " " + self.formatException(record.exc_info).replace("\n", " | ")
        return f"{when} {who}: {level}{shown(redact(text))}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record; a record not made by :class:`AgentLog` (a library's
    warning) is the event ``log``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "event": getattr(record, "autolab_event", "log"),
            "at": _when(record).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "role": getattr(record, "autolab_role", record.name),
            "agent": getattr(record, "autolab_agent", None),
            "message": record.getMessage(),
        }
        for key, value in getattr(record, "autolab_fields", {}).items():
            entry.setdefault(key, value)
        # Through JSON and back: plain values only, then every string redacted and
        # every NaN and infinity (JSON has neither) made null.
        return json.dumps(_clean(json.loads(json.dumps(entry, default=_plain))))


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if hasattr(value, "__dict__"):
        return vars(value)
    return str(value)


def _clean(value: Any) -> Any:
    """``value`` with every string redacted (a lab URL's credentials, tokens) and every
    NaN and infinity as ``None``."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value
