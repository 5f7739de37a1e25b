"""Knob edits: ``NAME = value`` constants in the editable files, turned into patches."""

from __future__ import annotations

import difflib
import math
import re
from typing import Any

from autolab.protocol.config import Knob, LabConfig
from autolab.protocol.errors import AutoLabError


def _assignment(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"^(?P<head>{re.escape(name)}\s*=\s*)(?P<value>[^#\n]*?)(?P<tail>\s*(#.*)?)$",
        re.MULTILINE,
    )


def parse_value(knob: Knob, text: str) -> Any:
    """Parse and range-check a value given on the command line for ``knob``."""
    try:
        if knob.type == "int":
            value: Any = int(text)
        elif knob.type == "float":
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
        else:
            value = next((c for c in knob.choices if str(c) == text), None)
            if value is None:
                raise AutoLabError(
                    f"knob {knob.name}: {text!r} is not one of {list(knob.choices)}"
                )
            return value
    except ValueError:
        raise AutoLabError(f"knob {knob.name}: expected {knob.type}, got {text!r}") from None
    assert knob.low is not None and knob.high is not None
    if not knob.low <= value <= knob.high:
        raise AutoLabError(f"knob {knob.name}: {value} is outside [{knob.low}, {knob.high}]")
    return value


def format_value(value: Any) -> str:
    if isinstance(value, str):
        return repr(value).replace("'", '"')
    if isinstance(value, float):
        return repr(float(f"{value:.4g}"))
    return repr(value)


def read_knob(source: str, name: str) -> str | None:
    """The literal text of ``name``'s value in ``source`` (None if not assigned)."""
    match = _assignment(name).search(source)
    return match["value"].strip() if match else None


def set_knobs(source: str, values: dict[str, Any]) -> str:
    """Return ``source`` with each ``NAME = ...`` line set to the new value."""
    for name, value in values.items():
        pattern = _assignment(name)
        if not pattern.search(source):
            raise AutoLabError(f"knob {name}: no line '{name} = ...' to edit")
        source = pattern.sub(lambda m, v=value: f"{m['head']}{format_value(v)}{m['tail']}",
                             source, count=1)
    return source


def unified_diff(path: str, before: str, after: str) -> str:
    """A ``git apply``-able diff of one file."""
    lines = difflib.unified_diff(before.splitlines(keepends=True),
                                 after.splitlines(keepends=True),
                                 fromfile=f"a/{path}", tofile=f"b/{path}", n=3)
    body = "".join(lines)
    return f"diff --git a/{path} b/{path}\n{body}" if body else ""


def knob_patch(config: LabConfig, files: dict[str, str], assignments: list[str]) -> str:
    """Build the patch for ``NAME=VALUE`` assignments against ``files`` (path -> text)."""
    by_file: dict[str, dict[str, Any]] = {}
    for item in assignments:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep:
            raise AutoLabError(f"--set expects NAME=VALUE, got {item!r}")
        knob = config.knobs.get(name)
        if knob is None:
            raise AutoLabError(f"unknown knob {name}; the lab has {', '.join(config.knobs)}")
        by_file.setdefault(knob.file, {})[name] = parse_value(knob, text.strip())
    patches = []
    for path, values in by_file.items():
        if path not in files:
            raise AutoLabError(f"knob file {path} is not on main")
        patches.append(unified_diff(path, files[path], set_knobs(files[path], values)))
    patch = "".join(patches)
    if not patch:
        raise AutoLabError("the knobs already have these values on main: nothing to propose")
    return patch
