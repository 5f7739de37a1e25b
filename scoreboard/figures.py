"""The report's figures, rendered with matplotlib's Agg canvas into PNG bytes.

matplotlib is imported inside these functions only (never by ``autolab --help`` or
the agents), and through ``matplotlib.figure.Figure`` rather than ``pyplot``: no
global state, no GUI backend to select, safe to call from any thread.

The two charts are ``WIDTH_IN`` inches wide at ``DPI``, so their PNGs are ``WIDTH_PX``
pixels wide and line up in the page; the failures chart is smaller. Heights depend on
the content (see the ``*_height_in`` functions).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autolab.scoreboard.report_data import Run

DPI = 100
WIDTH_IN = 11.0
WIDTH_PX = int(WIDTH_IN * DPI)
PROGRESS_HEIGHT_IN = 5.0
FAILURES_WIDTH_IN = 7.0  # a small chart: shown at its own size, beside nothing

# Outcome colours (Tableau-like, readable on white and for common colour blindness).
OUTCOME_COLOURS = {
    "ok": "#4C78A8",
    "promoted": "#2CA02C",
    "crash": "#D62728",
    "timeout": "#FF7F0E",
    "invalid": "#9467BD",
    "late": "#A0A0A0",
}
OUTCOMES = tuple(OUTCOME_COLOURS)
# Where bars overlap, the outcome drawn last shows: runs that did not count at the
# bottom, promotions on top.
_DRAW_ORDER = ("late", "ok", "invalid", "timeout", "crash", "promoted")
_GANTT_BINS = 900  # columns of a crowded Gantt row: about one per pixel of the plot
# Failures are runs (crash, timeout, invalid) and leases that ran out (expired).
FAILURE_COLOURS = {**OUTCOME_COLOURS, "expired": "#8C564B"}
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
_LEGEND_AGENTS = 12  # past this many agents the legend names only the key entries
_BEST = "#1B7F3B"
_FLOOR = "#555555"


def gantt_height_in(agents: int) -> float:
    """Height of the Gantt chart for ``agents`` rows: about 0.42 in per agent."""
    return round(min(1.6 + 0.42 * max(agents, 1), 40.0), 2)


def failures_height_in(reasons: int) -> float:
    """Height of the failures bar chart for ``reasons`` bars."""
    return round(1.1 + 0.32 * max(reasons, 1), 2)


def _plain(text: str) -> str:
    """Text for a matplotlib label: a ``$`` would start mathtext (and may fail to
    parse), a leading ``_`` hides a legend entry."""
    text = text.replace("$", r"\$")
    return " " + text if text.startswith("_") else text


def _figure(height_in: float, width_in: float = WIDTH_IN) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _rows_chart(height_in: float, width_in: float = WIDTH_IN) -> tuple[Any, Any]:
    """A figure with one styled axes whose rows are categories (no horizontal grid)."""
    fig = _figure(height_in, width_in)
    ax = fig.add_subplot()
    _style(ax)
    ax.grid(False, axis="y")
    return fig, ax


def _style(ax: Any) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(True, color="#E6E6E6", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.tick_params(labelsize=9)


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    return buffer.getvalue()


def _empty(ax: Any, message: str) -> None:
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center",
            fontsize=12, color="#777777")
    ax.set_xticks([])
    ax.set_yticks([])


def natural_key(text: str) -> list[str | int]:
    """Sort key putting ``agent-2`` before ``agent-10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def agent_styles(agents: Sequence[str]) -> dict[str, tuple[str, str]]:
    """A (colour, marker) per agent, stable in the order given."""
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(agents) <= 10 else "tab20"].colors
    return {a: (palette[i % len(palette)], _MARKERS[i % len(_MARKERS)])
            for i, a in enumerate(agents)}


def progress_png(runs: Sequence[Run], *, metric: str, direction: str,
                 floor: float | None) -> bytes:
    """Metric per finished run in order of finishing: one colour and marker per agent,
    promotions ringed and labelled, the running best as a step line, failed runs as
    red ticks on the x axis and the floor as a dashed line."""
    from matplotlib.patheffects import withStroke

    fig = _figure(PROGRESS_HEIGHT_IN)
    ax = fig.add_subplot()
    _style(ax)
    if not runs:
        _empty(ax, "no finished experiments yet")
        return _png(fig)
    scored = [(i, r) for i, r in enumerate(runs, 1)
              if r.metric is not None and math.isfinite(r.metric)]
    agents = sorted({r.agent for r in runs}, key=natural_key)  # an agent keeps its colour
    styles = agent_styles(agents)
    named = len(agents) <= _LEGEND_AGENTS
    if not named:
        ax.scatter([], [], s=26, color="#888888", label=f"runs of {len(agents)} agents")
    for agent in agents:
        points = [(i, r.metric) for i, r in scored if r.agent == agent and not r.late]
        if not points:
            continue
        colour, marker = styles[agent]
        ax.scatter(*zip(*points, strict=True), s=26, color=colour, marker=marker, alpha=0.8,
                   linewidths=0, label=_plain(agent) if named else None, zorder=3)
    late = [(i, r.metric) for i, r in scored if r.late]
    if late:
        # Beneath the runs that counted: where 10^5 points overlap, they should show.
        ax.scatter(*zip(*late, strict=True), s=26, facecolors="none", edgecolors="#999999",
                   label="late (not counted)", zorder=2.5)
    promoted = [(i, r) for i, r in scored if r.promoted]
    if promoted:
        ax.scatter([i for i, _ in promoted], [r.metric for _, r in promoted], s=120,
                   facecolors="none", edgecolors=_BEST, linewidths=2, label="promoted",
                   zorder=4)
        for i, r in _spaced(promoted, len(runs)):
            ax.annotate(_plain(r.experiment_id), (i, r.metric), xytext=(5, 5),
                        textcoords="offset points", fontsize=8, color=_BEST, zorder=5,
                        path_effects=[withStroke(linewidth=3, foreground="white")])
        steps_x, steps_y = _running_best(promoted, direction, len(runs))
        ax.step(steps_x, steps_y, where="post", color=_BEST, linewidth=2,
                label="running best", zorder=2)
    failed = [i for i, r in enumerate(runs, 1) if r.status != "ok"]
    if failed:
        # Failed runs have no metric: mark where they finished, on the x axis.
        ax.plot(failed, [0.0] * len(failed), "|", color=OUTCOME_COLOURS["crash"],
                markersize=12, markeredgewidth=1.5, transform=ax.get_xaxis_transform(),
                clip_on=False, label="failed run", zorder=3)
    if floor is not None:
        ax.axhline(floor, color=_FLOOR, linestyle="--", linewidth=1.2,
                   label=f"entropy floor {floor:.6g}", zorder=2)
    values = [r.metric for _, r in scored] + ([floor] if floor is not None else [])
    if values and min(values) > 0 and max(values) / min(values) > 100:
        ax.set_yscale("log")  # metrics spanning decades are unreadable on a linear axis
    ax.set_xlim(0, len(runs) + 1)
    ax.set_xlabel("experiment, in order of finishing")
    better = "lower" if direction == "min" else "higher"
    ax.set_ylabel(f"{_plain(metric)} ({better} is better)")
    ax.set_title(f"{len(runs)} runs finished, {len(promoted)} promoted", fontsize=11,
                 loc="left")
    fig.legend(loc="outside right upper", fontsize=8, frameon=False)
    return _png(fig)


def _spaced(promoted: Sequence[tuple[int, Run]], total: int) -> list[tuple[int, Run]]:
    """The promotions to label with their id: the latest first, then earlier ones at
    least 1/14 of the axis apart, so labels never pile up."""
    gap = max(total / 14, 1.0)
    chosen: list[tuple[int, Run]] = []
    for i, r in reversed(promoted):
        if not chosen or chosen[-1][0] - i >= gap:
            chosen.append((i, r))
    return chosen


def _running_best(promoted: Sequence[tuple[int, Run]], direction: str, end: int
                  ) -> tuple[list[float], list[float]]:
    """Step line of the best promoted metric so far, from the first promotion to ``end``."""
    xs: list[float] = []
    ys: list[float] = []
    best: float | None = None
    for i, r in promoted:
        assert r.metric is not None
        if best is None or (r.metric < best if direction == "min" else r.metric > best):
            best = r.metric
            xs.append(i)
            ys.append(best)
    xs.append(end + 0.5)
    ys.append(ys[-1])
    return xs, ys


def gantt_png(runs: Sequence[Run]) -> bytes:
    """One row per agent, one bar per run from start to finish, coloured by outcome."""
    from matplotlib import dates as mdates
    from matplotlib.patches import Patch

    timed = [r for r in runs if r.finished is not None]
    agents = sorted({r.agent for r in timed}, key=natural_key)
    fig, ax = _rows_chart(gantt_height_in(len(agents)))
    if not timed:
        _empty(ax, "no finished experiments yet")
        return _png(fig)
    first = min(_start(r) for r in timed)
    last = max(r.finished for r in timed if r.finished is not None)
    span = max((last - first).total_seconds(), 1.0)
    # A run shorter than 0.3 % of the span would be invisible: draw it at least that wide.
    min_width = span * 0.003 / 86400.0
    rows = {a: n for n, a in enumerate(reversed(agents))}
    # Matplotlib's date numbers (days) from POSIX seconds: date2num per datetime costs
    # about 30 us, which is seconds for 10^5 runs.
    day0 = mdates.date2num(datetime(1970, 1, 1, tzinfo=UTC))
    bars: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for r in timed:
        assert r.finished is not None
        start = _start(r).timestamp()
        width = max((r.finished.timestamp() - start) / 86400.0, min_width)
        bars.setdefault((r.outcome, r.agent), []).append((day0 + start / 86400.0, width))
    present = [o for o in OUTCOMES if any((o, a) in bars for a in agents)]
    if gantt_crowded(runs):
        # Too many runs per row for a bar each: at a few pixels apiece they overlap, and
        # whichever outcome is drawn last would paint over the rest.
        _gantt_density(ax, bars, rows, present, day0 + _start(min(
            timed, key=_start)).timestamp() / 86400.0, span / 86400.0)
    else:
        drawn = sorted(present, key=_DRAW_ORDER.index)
        # Bars closer than a fraction of a pixel look the same drawn as one.
        joint = span / 4000 / 86400.0
        for outcome in drawn:
            for agent in agents:
                if (outcome, agent) in bars:
                    ax.broken_barh(_joined(bars[(outcome, agent)], joint),
                                   (rows[agent] - 0.32, 0.64),
                                   facecolors=OUTCOME_COLOURS[outcome], edgecolor="white",
                                   linewidth=0.4)
    ax.set_yticks(list(rows.values()), [_plain(a) for a in rows])
    ax.set_ylim(-0.7, len(agents) - 0.3)
    pad = span * 0.01 / 86400.0
    ax.set_xlim(mdates.date2num(first) - pad, mdates.date2num(last) + pad)
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_xlabel("time (UTC)")
    ax.set_title(f"{len(timed)} runs by {len(agents)} agent(s)", fontsize=11, loc="left")
    fig.legend(handles=[Patch(color=OUTCOME_COLOURS[o], label=o) for o in present],
               loc="outside right upper", fontsize=8, frameon=False)
    return _png(fig)


def gantt_crowded(runs: Sequence[Run]) -> bool:
    """Whether the Gantt chart of ``runs`` is drawn as columns rather than a bar per run."""
    timed = [r for r in runs if r.finished is not None]
    agents = {r.agent for r in timed}
    return bool(timed) and len(timed) / len(agents) > _GANTT_BINS / 4


def _gantt_density(ax: Any, bars: dict[tuple[str, str], list[tuple[float, float]]],
                   rows: dict[str, int], outcomes: list[str], first: float, span: float
                   ) -> None:
    """Each agent's row as ``_GANTT_BINS`` columns (about a pixel each), every column
    split in height between the outcomes of the runs in it, in proportion to how many
    ran there: what a bar per run shows when runs are wider than pixels, without
    letting the outcome drawn last hide the others where they are not."""
    import numpy as np
    from matplotlib.collections import PolyCollection

    bins = _GANTT_BINS
    counts = np.zeros((len(rows), bins + 1, len(outcomes)))
    for (outcome, agent), spans in bars.items():
        if outcome not in outcomes:
            continue
        starts = np.array([a for a, _ in spans])
        ends = starts + np.array([w for _, w in spans])
        first_bin = np.clip(((starts - first) / span * bins).astype(int), 0, bins - 1)
        last_bin = np.clip(np.ceil((ends - first) / span * bins).astype(int), first_bin + 1,
                           bins)
        row, kind = rows[agent], outcomes.index(outcome)
        np.add.at(counts[row, :, kind], first_bin, 1)  # a run covers its bins [first, last)
        np.add.at(counts[row, :, kind], last_bin, -1)
    active = np.cumsum(counts, axis=1)[:, :bins, :]
    width = span / bins
    polygons, colours = [], []
    for row in range(len(rows)):
        column = active[row]
        total = column.sum(axis=1)
        b = 0
        while b < bins:
            if total[b] <= 0:
                b += 1
                continue
            end = b + 1  # columns alike are drawn as one
            while end < bins and np.array_equal(column[end], column[b]):
                end += 1
            x0, x1 = first + b * width, first + end * width
            y = row - 0.32
            for kind, outcome in enumerate(outcomes):
                height = 0.64 * column[b, kind] / total[b]
                if height > 0:
                    polygons.append([(x0, y), (x1, y), (x1, y + height), (x0, y + height)])
                    colours.append(OUTCOME_COLOURS[outcome])
                    y += height
            b = end
    ax.add_collection(PolyCollection(polygons, facecolors=colours, edgecolors="none"))


def _joined(bars: list[tuple[float, float]], gap: float) -> list[tuple[float, float]]:
    """``(start, width)`` bars, those that overlap or lie within ``gap`` of each other
    drawn as one."""
    out: list[list[float]] = []
    for start, width in sorted(bars):
        if out and start <= out[-1][0] + out[-1][1] + gap:
            out[-1][1] = max(out[-1][1], start + width - out[-1][0])
        else:
            out.append([start, width])
    return [(start, width) for start, width in out]


def _start(run: Run) -> datetime:
    start = run.started or run.finished
    assert start is not None
    return start


def failures_png(failures: Sequence[tuple[str, str, int]]) -> bytes:
    """Horizontal bars: how many runs failed for each ``(reason, status, count)``."""
    fig, ax = _rows_chart(failures_height_in(len(failures)), FAILURES_WIDTH_IN)
    if not failures:
        _empty(ax, "no failures")
        return _png(fig)
    labels = [_plain(_clip(reason, 48)) for reason, _, _ in failures]
    counts = [count for _, _, count in failures]
    colours = [FAILURE_COLOURS.get(status, "#777777") for _, status, _ in failures]
    ys = list(range(len(failures)))[::-1]
    ax.barh(ys, counts, color=colours, height=0.6)
    for y, count in zip(ys, counts, strict=True):
        ax.annotate(str(count), (count, y), xytext=(4, 0), textcoords="offset points",
                    va="center", fontsize=9)
    ax.set_yticks(ys, labels)
    ax.set_xlim(0, max(counts) * 1.12)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("count")
    ax.set_title(f"{sum(counts)} failures", fontsize=11, loc="left")
    return _png(fig)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
