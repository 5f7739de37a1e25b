"""The summary block an experiment prints at the end of its output.

Format (the last block wins)::

    ---
    val_bpb: 2.123456
    train_seconds: 15.0

Non-numeric values are kept as strings in ``extra`` and left out of ``metrics``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

_LINE = re.compile(r"^\s*([A-Za-z_][\w.-]*)\s*:\s*(\S.*?)\s*$")


@dataclass
class Summary:
    metrics: dict[str, float] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)
    found: bool = False


def parse_summary(text: str) -> Summary:
    """Parse the last ``---`` block of ``text`` (missing block: ``found`` is False)."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "---"]
    if not starts:
        return Summary()
    out = Summary(found=True)
    for line in lines[starts[-1] + 1:]:
        match = _LINE.match(line)
        if not match:
            continue
        key, raw = match.groups()
        try:
            out.metrics[key] = float(raw)
        except ValueError:
            out.extra[key] = raw
    return out


def read_metrics_file(path: Path) -> dict[str, float]:
    """A JSON object of metrics, or a file holding a summary block."""
    return parse_metrics(path.read_text(), str(path))


def parse_metrics(text: str, name: str) -> dict[str, float]:
    """Metrics from ``text``: a JSON object of metrics, or a summary block.

    Raises:
        ValueError: JSON that is not an object (the message names ``name``).
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return parse_summary(text if "---" in text else "---\n" + text).metrics
    if not isinstance(data, dict):
        raise ValueError(f"{name}: expected a JSON object of metrics")
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float))}


def classify(metrics: dict[str, float], metric: str,
             bounds: tuple[float, float] | None = None) -> tuple[str, float | None, str | None]:
    """(status, primary metric, reason) for a run that exited normally."""
    if metric not in metrics:
        return "invalid", None, f"no {metric} in the output's summary block"
    value = metrics[metric]
    if not math.isfinite(value):
        return "invalid", None, f"{metric} is {value}"
    if bounds and not bounds[0] <= value <= bounds[1]:
        return "invalid", None, f"{metric} {value} outside the lab's bounds {list(bounds)}"
    return "ok", value, None
