"""The one duration syntax of every time flag and setting: ``30s``, ``10m``, ``2h``,
``1h30m``, ``1d``, or plain seconds (``90``, ``0.5``).

Kept free of any CLI library so agents, the CLI and configuration read durations
alike.
"""

from __future__ import annotations

import math
import re

UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
# The longest duration accepted: a year. Anything longer is a typo, and would overflow
# what ``time.sleep`` and deadlines built on ``time.monotonic()`` take.
LONGEST = 366 * 86400.0
SYNTAX = "30s, 10m, 2h, 1h30m or plain seconds"

_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
# Units largest first, each at most once: "1h30m", "2m30s"; never "30m1h" or "1h1h".
_PARTS = re.compile("".join(rf"(?:(?P<{u}>{_NUMBER}){u})?" for u in UNITS))


def parse_duration(text: str | float | int) -> float:
    """``text`` as a number of seconds.

    Accepts plain seconds (``90``, ``2.5``) or numbers with units, largest first, each
    unit at most once (``30s``, ``10m``, ``1.5h``, ``1h30m``, ``2d``); case and
    surrounding blanks do not matter. A number (not text) is taken as seconds.

    Raises:
        ValueError: anything else (empty, negative, ``nan``, ``inf``, an unknown unit,
            units out of order), or more than :data:`LONGEST`; the message quotes the
            text and shows the syntax.
    """
    if isinstance(text, bool):  # a bool is an int to Python, never a duration
        raise ValueError(f"{_quoted(text)} is not a duration ({SYNTAX})")
    seconds = float(text) if isinstance(text, (int, float)) else _parse_text(text)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{_quoted(text)} is not a duration ({SYNTAX})")
    if seconds > LONGEST:
        raise ValueError(f"{_quoted(text)} is longer than a year")
    return seconds


def _parse_text(text: str) -> float:
    cleaned = text.strip().lower()
    if re.fullmatch(_NUMBER, cleaned):
        return float(cleaned)
    found = _PARTS.fullmatch(cleaned) if cleaned else None
    if found is None or not any(found.groupdict().values()):
        raise ValueError(f"{_quoted(text)} is not a duration ({SYNTAX})")
    return sum(float(value) * UNITS[unit] for unit, value in found.groupdict().items()
               if value is not None)


def _quoted(value: object) -> str:
    """``value`` quoted for a one-line message, at most 40 characters of it."""
    text = repr(value)
    return text if len(text) <= 42 else text[:40] + "..."


def format_duration(seconds: float) -> str:
    """``seconds`` in the same syntax, shortest form: ``90`` -> ``1m30s``, ``0.5`` ->
    ``0.5s``; :func:`parse_duration` reads it back to the same value (to the
    millisecond)."""
    if seconds != int(seconds) or seconds == 0:
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    left, out = int(seconds), []
    for unit, size in UNITS.items():
        if left >= size:
            out.append(f"{left // size}{unit}")
            left %= size
    return "".join(out)
