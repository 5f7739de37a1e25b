"""``autolab report``: one self-contained HTML page and its PNG figures.

The page holds the progress chart (metric per run in order of finishing, promotions
and the running best), a Gantt chart of runs per agent, the leaderboard, the
promotions, failures by reason and the spend. Figures are embedded as base64 data
URIs and also written as PNG files beside the page. The page loads nothing (a
Content-Security-Policy forbids it) and runs no JavaScript; every string taken from
the lab is HTML-escaped.

``publish`` commits the files to the lab's ``autolab/report`` branch (never ``main``).
"""

from __future__ import annotations

import base64
import bisect
import html
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from autolab.protocol.reader import LabView
from autolab.protocol.store import FileChange, LabStore

REPORT_REF = "refs/heads/autolab/report"
HTML_NAME = "index.html"
PROGRESS_PNG, GANTT_PNG, FAILURES_PNG = "progress.png", "gantt.png", "failures.png"
# The stages ``build`` reports through its ``step`` callback, in order.
STEPS = ("progress chart", "gantt chart", "failures chart", "page")
_MAX_FAILURE_BARS = 12
_MAX_FAILURE_ROWS = 30


@dataclass(frozen=True)
class Run:
    """One finished attempt (a score row), as the report shows it."""

    experiment_id: str
    attempt: int
    agent: str
    status: str  # ok | crash | timeout | invalid
    outcome: str  # ok | promoted | crash | timeout | invalid | late
    metric: float | None
    late: bool
    started: datetime | None
    finished: datetime | None
    runtime_s: float | None
    reason: str | None

    @property
    def promoted(self) -> bool:
        return self.outcome == "promoted"


@dataclass
class Report:
    """The rendered report: the page and its figures (file name -> PNG bytes)."""

    html: str
    figures: dict[str, bytes] = field(default_factory=dict)

    def files(self) -> dict[str, bytes]:
        """Every file of the report, by name."""
        return {HTML_NAME: self.html.encode(), **self.figures}


# -- data --------------------------------------------------------------------------------


def _queue_events(view: LabView, events: tuple[str, ...]) -> pa.Table:
    """Queue rows of the given events, a few columns only, as arrow."""
    table = view.table("queue", lean=True)
    mask = pc.is_in(table.column("event"), value_set=pa.array(events))
    columns = ["seq", "experiment_id", "event", "attempt", "at", "reason"]
    return table.filter(mask).select(columns)


def _rows_of(table: pa.Table, event: str) -> list[dict[str, Any]]:
    return table.filter(pc.equal(table.column("event"), event)).to_pylist()


def runs(view: LabView, queue: pa.Table | None = None) -> list[Run]:
    """Every score row as a :class:`Run`, in order of finishing.

    A run without ``started_at`` starts when its attempt was claimed, else
    ``runtime_s`` before it finished.
    """
    from autolab.protocol.shard_cache import values_of

    folded = view.folded()
    scores, exps = folded.scores, folded.experiments
    # The score row that finished each promoted experiment.
    promoted = set(exps.filter(exps.column("promoted")).column("result_event_id")
                   .drop_null().to_pylist())
    names = ["experiment_id", "attempt", "agent", "status", "metric", "late", "started_at",
             "finished_at", "runtime_s", "reason", "event_id"]
    columns = {name: values_of(scores.column(name)) for name in names}
    claimed: dict[tuple[str, int], datetime] = {}
    if any(s is None for s in columns["started_at"]):
        queue = _queue_events(view, ("claimed",)) if queue is None else queue
        for row in _rows_of(queue, "claimed"):
            if row["at"] is not None:
                claimed.setdefault((row["experiment_id"], row["attempt"]), row["at"])
    out: list[tuple[tuple[Any, ...], Run]] = []
    for index, values in enumerate(zip(*(columns[n] for n in names), strict=True)):
        (eid, attempt, agent, status, metric, late, started, finished, runtime, reason,
         event_id) = values
        started = started or claimed.get((eid, attempt))
        if started is None and finished is not None and runtime is not None:
            started = finished - timedelta(seconds=runtime)
        if late:
            outcome = "late"
        elif status != "ok":
            outcome = status
        elif event_id in promoted:
            outcome = "promoted"
        else:
            outcome = "ok"
        run = Run(eid, attempt, agent or "?", status, outcome,
                  metric if status == "ok" else None, bool(late), started, finished, runtime,
                  reason)
        # Hosts' clocks differ a little; finish times still order runs far better than
        # the order rows reached main. Rows without one keep their place at the end.
        key = (finished is None, finished.timestamp() if finished else 0.0, index)
        out.append((key, run))
    out.sort(key=lambda item: item[0])
    return [run for _, run in out]


def leaderboard_rows(view: LabView, queue: pa.Table | None = None,
                     limit: int = 20) -> list[dict[str, Any]]:
    """The leaderboard, each row with ``delta``: its metric minus the best on ``main``
    when it was proposed (the best its parent commit held; None before any promotion).

    A proposal's ``seq`` is after every row of its parent commit, so the promotions
    with a smaller ``seq`` are exactly those its parent contained.
    """
    from autolab.scoreboard.leaderboard import leaderboard

    queue = _queue_events(view, ("proposed",)) if queue is None else queue
    promotions = [p for p in view.folded().promotions.to_pylist() if p["seq"] is not None]
    seqs = [p["seq"] for p in promotions]
    rows = leaderboard(view, limit=limit)
    wanted = pa.array([row["experiment_id"] for row in rows], pa.string())
    shown = queue.filter(pc.and_(pc.equal(queue.column("event"), "proposed"),
                                 pc.is_in(queue.column("experiment_id"), value_set=wanted)))
    proposed: dict[str, int] = {}
    for eid, seq in zip(shown.column("experiment_id").to_pylist(),
                        shown.column("seq").to_pylist(), strict=True):
        if seq is not None:
            proposed.setdefault(eid, seq)
    for row in rows:
        seq = proposed.get(row["experiment_id"])
        before = bisect.bisect_left(seqs, seq) if seq is not None else 0
        parent_best = promotions[before - 1]["metric"] if before else None
        row["parent_best"] = parent_best
        row["delta"] = None if parent_best is None else row["metric"] - parent_best
    return rows


def failures(view: LabView, run_list: list[Run], queue: pa.Table | None = None
             ) -> list[tuple[str, str, int]]:
    """``(reason, status, count)`` of failed runs and expired leases, most common first."""
    queue = _queue_events(view, ("expired", "failed")) if queue is None else queue
    counts: Counter[tuple[str, str]] = Counter()
    for run in run_list:
        if run.status != "ok":
            reason = (run.reason or "").strip().splitlines()
            counts[(f"{run.status}: {reason[0]}" if reason else run.status, run.status)] += 1
    ended = queue.filter(pc.is_in(queue.column("event"), value_set=pa.array(
        ["expired", "failed"]))).select(["event", "reason"]).to_pylist()
    for row in ended:
        reason = (row["reason"] or "").strip()
        if row["event"] == "expired" or "lease" in reason:
            # Reap reasons name the attempt and the agent; one bucket reads better.
            counts[("lease expired", "expired")] += 1
        else:
            counts[(f"failed: {reason.splitlines()[0]}" if reason else "failed", "failed")] += 1
    return [(reason, status, n) for (reason, status), n in counts.most_common()]


def spend_usd(scores: pa.Table) -> float | None:
    """Total ``cost_usd`` of the score rows, or None while no row carries a cost."""
    if "cost_usd" not in scores.column_names:
        return None
    column = scores.column("cost_usd")
    if column.null_count == len(column):
        return None
    return float(pc.sum(column).as_py())


# -- rendering ---------------------------------------------------------------------------


def build(view: LabView, *, limit: int = 20,
          step: Callable[[str], None] = lambda name: None) -> Report:
    """Render the report of ``view``; ``step(name)`` is called as each stage starts."""
    from autolab.scoreboard import figures

    config = view.config
    queue = _queue_events(view, ("proposed", "claimed", "expired", "failed"))
    run_list = runs(view, queue)
    failed = failures(view, run_list, queue)
    report = Report(html="")
    step(STEPS[0])
    report.figures[PROGRESS_PNG] = figures.progress_png(
        run_list, metric=config.metric, direction=config.direction, floor=config.floor)
    step(STEPS[1])
    report.figures[GANTT_PNG] = figures.gantt_png(run_list)
    step(STEPS[2])
    shown = failed[:_MAX_FAILURE_BARS]
    if len(failed) > _MAX_FAILURE_BARS:
        rest = failed[_MAX_FAILURE_BARS - 1:]
        shown = [*failed[:_MAX_FAILURE_BARS - 1],
                 (f"{len(rest)} other reasons", "other", sum(n for _, _, n in rest))]
    if failed:
        report.figures[FAILURES_PNG] = figures.failures_png(shown)
    step(STEPS[3])
    report.html = _page(view, run_list, leaderboard_rows(view, queue, limit), failed,
                        report.figures)
    return report


def write(report: Report, out: Path) -> list[Path]:
    """Write the page and the PNGs into ``out`` (created); return the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in report.files().items():
        path = out / name
        path.write_bytes(data)
        written.append(path)
    return written


_CSS = """
:root { color-scheme: light; --ink: #1f2328; --muted: #656d76; --line: #d8dee4;
  --soft: #f6f8fa; --good: #1a7f37; --bad: #cf222e; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
    "Liberation Sans", "DejaVu Sans", sans-serif; }
main { max-width: 1140px; margin: 0 auto; padding: 28px 20px 48px; }
header { border-bottom: 1px solid var(--line); padding-bottom: 14px; margin-bottom: 20px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 34px 0 10px; padding-bottom: 6px;
  border-bottom: 1px solid var(--line); }
p { margin: 6px 0; }
.muted { color: var(--muted); }
.small { font-size: 13px; }
code, .id { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas,
  "Liberation Mono", "DejaVu Sans Mono", monospace; font-size: 13px; }
.tiles { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr));
  gap: 12px; margin: 16px 0 10px; }
.tile { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px;
  background: var(--soft); }
.tile .k { font-size: 12px; text-transform: uppercase; letter-spacing: .04em;
  color: var(--muted); }
.tile .v { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; }
.tile .s { font-size: 12px; color: var(--muted); }
figure { margin: 8px 0 0; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line);
  border-radius: 6px; }
figcaption { font-size: 13px; color: var(--muted); margin-top: 6px; }
table { border-collapse: collapse; width: 100%; font-size: 14px; margin-top: 6px; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { background: var(--soft); font-weight: 600; white-space: nowrap; }
tbody tr:nth-child(even) { background: #fbfcfd; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.hyp { max-width: 430px; overflow-wrap: anywhere; }
.good { color: var(--good); }
.bad { color: var(--bad); }
.badge { display: inline-block; padding: 0 7px; border-radius: 10px; font-size: 12px;
  background: #dafbe1; color: var(--good); font-weight: 600; }
footer { margin-top: 40px; font-size: 12px; color: var(--muted);
  border-top: 1px solid var(--line); padding-top: 10px; }
"""

# No script, no style sheet, font or image from anywhere: the page is one file.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _e(value: Any) -> str:
    """HTML-escaped text of ``value`` (every string from the lab goes through here)."""
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.6g}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _when(moment: datetime | None) -> str:
    return "—" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _tile(key: str, value: str, sub: str = "") -> str:
    sub_html = f'<div class="s">{sub}</div>' if sub else ""
    return (f'<div class="tile"><div class="k">{key}</div><div class="v">{value}</div>'
            f"{sub_html}</div>")


def _figure(figures: dict[str, bytes], name: str, alt: str, caption: str) -> str:
    data = figures[name]
    width, height = _png_size(data)
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return (f'<figure><img src="{uri}" alt="{_e(alt)}" width="{width}" height="{height}">'
            f"<figcaption>{caption} <code>{_e(name)}</code></figcaption></figure>")


def _png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _table(headers: list[tuple[str, str]], rows: list[list[tuple[str, str]]]) -> str:
    """An HTML table; cells are (already escaped html, css class)."""
    head = "".join(f'<th class="{cls}">{text}</th>' for text, cls in headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="{cls}">{text}</td>' for text, cls in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _page(view: LabView, run_list: list[Run], board: list[dict[str, Any]],
          failed: list[tuple[str, str, int]], figures: dict[str, bytes]) -> str:
    from autolab.protocol.redact import redact

    config, folded = view.config, view.folded()
    exps = folded.experiments
    minimize = config.direction == "min"
    counts = Counter(exps.column("state").to_pylist())
    agents = {r.agent for r in run_list} | set(exps.column("agent").drop_null().to_pylist())
    promotions = folded.promotions.to_pylist()
    best = promotions[-1] if promotions else None
    outcomes = Counter(r.outcome for r in run_list)
    n_failed = sum(outcomes[o] for o in ("crash", "timeout", "invalid"))
    compute = sum(r.runtime_s or 0.0 for r in run_list)
    spend = spend_usd(folded.scores)

    tiles = [
        _tile(f"best {_e(config.metric)}", _num(best["metric"]) if best else "—",
              f'experiment <span class="id">{_e(best["experiment_id"])}</span>' if best
              else "no promotion yet"),
    ]
    if config.floor is not None:
        gap = best["metric"] - config.floor if best else None
        tiles.append(_tile("gap to floor", _num(gap), f"floor {_num(config.floor)}"))
    tiles += [
        _tile("experiments", str(exps.num_rows),
              " · ".join(f"{counts.get(k, 0)} {label}" for k, label in (
                  ("done", "done"), ("failed", "failed"), ("queued", "queued"),
                  ("claimed", "running"), ("cancelled", "cancelled")) if counts.get(k))),
        _tile("runs", str(len(run_list)),
              f"{outcomes['ok'] + outcomes['promoted']} ok · {n_failed} failed · "
              f"{outcomes['late']} late"),
        _tile("promotions", str(len(promotions))),
        _tile("agents", str(len(agents))),
    ]
    spend_line = (f"spend: ${spend:,.2f}" if spend is not None
                  else "spend: unknown (no run reports a cost)")

    board_rows = []
    for rank, row in enumerate(board, 1):
        delta = row["delta"]
        cls = "" if delta is None or delta == 0 else (
            "good" if (delta < 0) == minimize else "bad")
        badge = '<span class="badge">promoted</span>' if row["promoted"] else ""
        board_rows.append([
            (str(rank), "num"), (f'<span class="id">{_e(row["experiment_id"])}</span>', ""),
            (_e(row["hypothesis"]), "hyp"), (_num(row["metric"]), "num"),
            ("—" if delta is None else f"{delta:+.4g}", f"num {cls}"),
            (_e(row["agent"]), ""), (_duration(row["runtime_s"]), "num"), (badge, ""),
        ])
    board_html = _table(
        [("#", "num"), ("experiment", ""), ("hypothesis", ""), (_e(config.metric), "num"),
         ("Δ vs parent's best", "num"), ("agent", ""), ("runtime", "num"), ("", "")],
        board_rows,
    ) if board_rows else '<p class="muted">No successful run yet.</p>'

    promo_rows = []
    previous: float | None = None
    promoted_ids = pa.array([p["experiment_id"] for p in promotions], pa.string())
    shown = exps.filter(pc.is_in(exps.column("experiment_id"), value_set=promoted_ids))
    hypotheses = dict(zip(shown.column("experiment_id").to_pylist(),
                          shown.column("hypothesis").to_pylist(), strict=True))
    for n, p in enumerate(promotions, 1):
        gain = None if previous is None else p["metric"] - previous
        previous = p["metric"]
        hypothesis = hypotheses.get(p["experiment_id"], "")
        promo_rows.append([
            (str(n), "num"), (f'<span class="id">{_e(p["experiment_id"])}</span>', ""),
            (_e(hypothesis), "hyp"), (_num(p["metric"]), "num"),
            ("—" if gain is None else f"{gain:+.4g}", "num good" if gain else "num"),
            (_e(p["agent"]), ""), (_when(p["at"]), "num"),
        ])
    promo_html = _table(
        [("#", "num"), ("experiment", ""), ("hypothesis", ""), (_e(config.metric), "num"),
         ("change", "num"), ("promoted by", ""), ("at (UTC)", "num")],
        promo_rows,
    ) if promo_rows else '<p class="muted">No promotion yet.</p>'

    total_failed = sum(n for _, _, n in failed)
    listed = failed[:_MAX_FAILURE_ROWS]
    if len(failed) > _MAX_FAILURE_ROWS:
        rest = failed[_MAX_FAILURE_ROWS - 1:]
        listed = [*failed[:_MAX_FAILURE_ROWS - 1],
                  (f"{len(rest)} other reasons", "", sum(n for _, _, n in rest))]
    fail_html = _table(
        [("reason", ""), ("kind", ""), ("count", "num"), ("share", "num")],
        [[(_e(reason), "hyp"), (_e(status), ""), (str(n), "num"),
          (f"{100 * n / total_failed:.0f}%", "num")] for reason, status, n in listed],
    ) if failed else '<p class="muted">No failed run and no expired lease.</p>'
    if FAILURES_PNG in figures:
        fail_html = _figure(figures, FAILURES_PNG, "failed runs by reason",
                            "Failed runs and expired leases by reason.") + fail_html

    floor_note = (f" The dashed line is the entropy floor ({_num(config.floor)}), the limit "
                  "no model can beat." if config.floor is not None else "")
    direction = "lower" if minimize else "higher"
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    description = f'<p>{_e(config.description)}</p>' if config.description else ""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>AutoLab report: {_e(config.name)}</title>
<style>{_CSS}</style>
</head>
<body>
<main>
<header>
<h1>AutoLab report: {_e(config.name)}</h1>
{description}
<p class="muted small">lab <code>{_e(redact(view.store.url))}</code> · main
<code>{_e(view.main[:12])}</code> · metric <code>{_e(config.metric)}</code>
({direction} is better) · generated {generated}</p>
</header>
<section>
<div class="tiles">{''.join(tiles)}</div>
<p class="small">compute: {_duration(compute)} of runs · {_e(spend_line)}</p>
</section>
<section>
<h2>Progress</h2>
{_figure(figures, PROGRESS_PNG, f"{config.metric} per experiment in order of finishing",
         "Each point is a finished run (colour and marker: its agent); ringed points were "
         "promoted to main, the step line is the running best, red ticks on the x axis "
         "are failed runs." + floor_note)}
</section>
<section>
<h2>Runs per agent</h2>
{_figure(figures, GANTT_PNG, "runs per agent over time",
         "Each bar is one run, from start to finish, coloured by outcome.")}
</section>
<section>
<h2>Leaderboard</h2>
<p class="muted small">Best successful results; Δ is the metric minus the best on main
when the experiment was proposed (its parent's best).</p>
{board_html}
</section>
<section>
<h2>Promotions</h2>
{promo_html}
</section>
<section>
<h2>Failures</h2>
{fail_html}
</section>
<footer>Generated by <code>autolab report</code> from main
<code>{_e(view.main)}</code>. Self-contained: figures are embedded; the PNG files beside
this page are the same figures.</footer>
</main>
</body>
</html>
"""


# -- publishing --------------------------------------------------------------------------


def publish(store: LabStore, files: dict[str, bytes], message: str, *,
            agent: str = "autolab", attempts: int = 6) -> str:
    """Commit ``files`` as the whole tree of ``autolab/report`` on top of its current
    head (so the branch keeps the reports' history) and push it by compare-and-swap.

    Returns the new commit. Raises Conflict if every attempt lost a race.
    """
    from autolab.protocol.errors import Conflict

    for n in range(attempts):
        old = store.fetch_ref(REPORT_REF)
        # Files of an older report that this one lacks (e.g. a failures chart) go.
        stale = [p for p in store.list_files(old) if p not in files] if old else []
        commit = store.make_commit(old, FileChange(add=files, remove=stale), message,
                                   agent=agent)
        try:
            store.push_ref(REPORT_REF, commit, old)
            return commit
        except Conflict:
            if n == attempts - 1:
                raise
            time.sleep(random.uniform(0, min(1.0, 0.05 * 2**n)))  # another reporter won
    raise AssertionError("unreachable")
