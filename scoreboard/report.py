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
import html
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from autolab.protocol.lab import Backoff
from autolab.protocol.reader import LabView
from autolab.protocol.store import FileChange, LabStore
from autolab.scoreboard.report_data import (
    Run,
    failures,
    leaderboard_rows,
    queue_events,
    runs,
    spend_usd,
)

REPORT_REF = "refs/heads/autolab/report"
HTML_NAME = "index.html"
PROGRESS_PNG, GANTT_PNG, FAILURES_PNG = "progress.png", "gantt.png", "failures.png"
# The stages ``build`` reports through its ``step`` callback, in order.
STEPS = ("progress chart", "gantt chart", "failures chart", "page")
_MAX_FAILURE_BARS = 12
_MAX_FAILURE_ROWS = 30


@dataclass
class Report:
    """The rendered report: the page and its figures (file name -> PNG bytes)."""

    html: str
    figures: dict[str, bytes] = field(default_factory=dict)

    def files(self) -> dict[str, bytes]:
        """Every file of the report, by name."""
        return {HTML_NAME: self.html.encode(), **self.figures}


# -- rendering ---------------------------------------------------------------------------


def build(view: LabView, *, limit: int = 20,
          step: Callable[[str], None] = lambda name: None) -> Report:
    """Render the report of ``view``; ``step(name)`` is called as each stage starts."""
    from autolab.scoreboard import figures

    config = view.config
    queue = queue_events(view, ("proposed", "claimed", "expired", "failed"))
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
    from autolab.scoreboard.figures import gantt_crowded

    config, folded = view.config, view.folded()
    exps = folded.experiments
    minimize = config.direction == "min"
    gantt_caption = (
        "Too many runs for a bar each: each row is split, moment by moment, between the "
        "outcomes of the runs then, in proportion." if gantt_crowded(run_list)
        else "Each bar is one run, from start to finish, coloured by outcome.")
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
    from autolab.scoreboard.spend import llm_spend

    asked = llm_spend(view)
    if asked["proposals"]:
        usd = f", ${asked['usd']:,.4f}" if asked["usd"] is not None else ""
        spend_line += (f" · LLM proposals: {asked['proposals']} "
                       f"({', '.join(asked['models']) or 'no model named'}), "
                       f"{asked['prompt_tokens']:,} prompt + "
                       f"{asked['completion_tokens']:,} completion tokens{usd}")

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
{_figure(figures, GANTT_PNG, "runs per agent over time", gantt_caption)}
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
<h2>Review</h2>
{_review_html(view)}
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


def _review_html(view: LabView) -> str:
    """The review queue: the lab's mode, winners awaiting a reviewer, and rejections."""
    from autolab.scoreboard.review import review_queue

    queue = review_queue(view)
    exps = view.folded().experiments
    rejected = exps.filter(pc.fill_null(exps.column("rejected"), False)).select(
        ["experiment_id", "metric", "rejected_by", "rejection"]).to_pylist()
    head = (f'<p class="small">policy.review <code>{_e(queue["mode"])}</code> · '
            f'{queue["candidates"]} finished experiment(s) neither promoted nor rejected · '
            f'{len(queue["awaiting"])} awaiting review · {len(rejected)} rejected '
            "(<code>autolab review list</code>)</p>")
    awaiting = _table(
        [("awaiting review", ""), (view.config.metric, "num"), ("Δ best", "num"),
         ("why it waits", ""), ("hypothesis", "")],
        [[(_e(r["experiment_id"]), "id"), (_num(r["metric"]), "num"),
          (_num(r["delta_best"]), "num"), (_e(r["hold"]), ""), (_e(r["hypothesis"]), "hyp")]
         for r in queue["awaiting"]]) if queue["awaiting"] else ""
    rejections = _table(
        [("rejected", ""), (view.config.metric, "num"), ("by", ""), ("reason", "")],
        [[(_e(r["experiment_id"]), "id"), (_num(r["metric"]), "num"),
          (_e(r["rejected_by"]), ""), (_e(r["rejection"]), "hyp")]
         for r in rejected[-20:]]) if rejected else ""
    return head + awaiting + rejections


# -- publishing --------------------------------------------------------------------------


def publish(store: LabStore, files: dict[str, bytes], message: str, *,
            agent: str = "autolab", backoff: Backoff | None = None) -> str:
    """Commit ``files`` as the whole tree of ``autolab/report`` on top of its current
    head (so the branch keeps the reports' history) and push it by compare-and-swap.

    Returns the new commit. Raises Conflict if every race until ``backoff``'s deadline
    (30 s by default) was lost.
    """
    from autolab.protocol.errors import Conflict

    lost: Conflict | None = None
    for _ in (backoff or Backoff(deadline=30.0, base=0.05)).delays():
        old = store.fetch_ref(REPORT_REF)
        # Files of an older report that this one lacks (e.g. a failures chart) go.
        stale = [p for p in store.list_files(old) if p not in files] if old else []
        commit = store.make_commit(old, FileChange(add=files, remove=stale), message,
                                   agent=agent)
        try:
            store.push_ref(REPORT_REF, commit, old)
            return commit
        except Conflict as exc:
            lost = exc  # another reporter won: build again on its report
    assert lost is not None
    raise lost
