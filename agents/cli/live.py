"""What ``autolab demo`` shows: the live ``rich`` view of its lab on a terminal,
progress lines elsewhere, and the summary at the end."""

from __future__ import annotations

import sys
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from autolab.agents.cli.common import fmt

if TYPE_CHECKING:
    from autolab.agents.demo import DemoReport
    from autolab.agents.events import AgentLog


def render(view, started: float, total: float) -> Panel:  # noqa: ANN001
    """Queue counts, running experiments and the best so far."""
    state, config = view.state, view.config
    counts = {s: len(state.by_state(s)) for s in ("queued", "claimed", "done", "failed")}
    elapsed = time.monotonic() - started
    best = state.best
    head = (f"[bold]{config.name}[/]  {elapsed:.0f}s / {total:.0f}s   queued {counts['queued']}"
            f"  running {counts['claimed']}  done {counts['done']}  failed {counts['failed']}"
            f"  promotions {len(state.promotions)}")
    if best:
        head += f"\nbest: {best['experiment_id']} {config.metric} = {best['metric']:.4f}"
        if config.floor is not None:
            head += f"  (entropy floor {config.floor:.4f}, gap {best['metric'] - config.floor:.4f})"
    running = Table("experiment", "agent", "for", "hypothesis", title="running", expand=True)
    moment = datetime.now(UTC)
    for exp in state.by_state("claimed"):
        age = (moment - exp.claimed_at).total_seconds() if exp.claimed_at else 0
        running.add_row(exp.id, escape(fmt(exp.agent)), f"{age:.0f}s", escape(exp.hypothesis[:70]))
    recent = Table("experiment", "status", config.metric, "hypothesis", title="recent results",
                   expand=True)
    for score in state.scores[-6:][::-1]:
        recent.add_row(score["experiment_id"], score["status"], fmt(score["metric"]),
                       escape(state.experiments[score["experiment_id"]].hypothesis[:70])
                       if score["experiment_id"] in state.experiments else "")
    return Panel(Group(head, running, recent), title="autolab demo")


class ProgressLines:
    """The demo's progress where no live view can be drawn (a log, a pipe, CI): one
    ``progress`` event at once, then one every ``every`` seconds from a thread, whatever
    the demo is busy with (creating the lab, running, stopping the agents).

    :meth:`update` (called with each fresh view of the lab) only stores what the next
    line says, so a slow read of the lab never delays a line.
    """

    def __init__(self, log: AgentLog, total: float, every: float = 5.0) -> None:
        self.log, self.total, self.every = log, total, every
        self._latest: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="demo-progress", daemon=True)
        self._started = time.monotonic()

    def update(self, view) -> None:  # noqa: ANN001
        state, config = view.state, view.config
        best = state.best
        self._latest = {
            "counts": {s: len(state.by_state(s)) for s in ("queued", "claimed", "done",
                                                            "failed")},
            "promotions": len(state.promotions), "metric": config.metric,
            "best": ({"experiment_id": best["experiment_id"], "metric": best["metric"]}
                     if best else None)}

    def __enter__(self) -> ProgressLines:
        self._started = time.monotonic()
        self._say()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._say()

    def _say(self) -> None:
        elapsed = time.monotonic() - self._started
        latest = self._latest
        if latest is None:
            phase, text = "starting", "creating the lab and starting the agents"
        elif elapsed < self.total:
            counts = latest["counts"]
            phase = "running"
            text = (f"queued {counts['queued']}, running {counts['claimed']}, done "
                    f"{counts['done']}, failed {counts['failed']}, promotions "
                    f"{latest['promotions']}")
            if latest["best"]:
                text += (f"; best {latest['best']['experiment_id']} {latest['metric']} "
                         f"{latest['best']['metric']:.4f}")
        else:
            phase, text = "closing", "stopping the agents, cancelling what did not run"
        self.log.event("progress", f"{elapsed:.0f}s of {self.total:.0f}s: {text}",
                       phase=phase, elapsed_s=round(elapsed, 1), total_s=self.total,
                       **(latest or {}))


def print_summary(report: DemoReport, log: AgentLog | None) -> None:
    """What the demo found and how to look inside its lab: text (the commands printed
    whole, one per line, for copying), or with ``log`` the JSON event ``finished``."""
    import shlex

    from autolab.protocol.lab import Lab
    from autolab.scoreboard.leaderboard import leaderboard

    view = Lab.open(str(report.lab), "demo").read()
    config, state = view.config, view.state
    best = state.best
    from autolab.extras import installed

    lab, q = str(report.lab), shlex.quote
    commands = [
        f"autolab status --lab {q(lab)}",
        f"autolab sql --lab {q(lab)} \"SELECT experiment_id, state, metric, hypothesis FROM "
        "experiments ORDER BY metric\"",
        f"git -C {q(lab)} log --first-parent --oneline main",
    ]
    if installed("matplotlib"):  # the commands of extras that are not installed would fail
        commands.append(f"autolab report --lab {q(lab)} --out {q(str(report.dir / 'report'))}")
    if installed("trackio"):
        commands.append(f"TRACKIO_DIR={q(str(report.dir / 'trackio'))} autolab dashboard "
                        f"--lab {q(lab)}")
    counts = {s: len(state.by_state(s)) for s in ("done", "failed", "cancelled")}
    rows = leaderboard(view)
    if log is not None:
        log.event("finished", f"{counts['done']} done, {len(state.promotions)} promotions",
                  lab=lab, dir=str(report.dir), logs=str(report.dir / "logs"),
                  seconds=round(report.seconds, 1), metric=config.metric, counts=counts,
                  leaderboard=rows, promotions=[
                      {"experiment_id": p["experiment_id"], "metric": p["metric"]}
                      for p in state.promotions],
                  best=({"experiment_id": best["experiment_id"], "metric": best["metric"]}
                        if best else None), floor=config.floor,
                  overhead_mean_s=report.overhead_mean, overhead_share=report.overhead_share,
                  runs=len(report.cycles), commands=commands)
        return
    from rich.console import Console
    from rich.markup import escape

    console = Console()
    table = Table("experiment", config.metric, "promoted", "hypothesis", title="leaderboard")
    for row in rows:
        table.add_row(row["experiment_id"], fmt(row["metric"]), "yes" if row["promoted"] else "",
                      escape(row["hypothesis"][:80]))
    console.print(table)
    console.print(f"[bold]promotions[/] ({len(state.promotions)}):")
    for p in state.promotions:
        console.print(f"  {p['experiment_id']}: {config.metric} = {p['metric']:.4f}")
    if best and config.floor is not None:
        gap = best["metric"] - config.floor
        console.print(f"best {config.metric} {best['metric']:.4f}; entropy floor "
                      f"{config.floor:.4f}; gap {gap:.4f} ({gap / config.floor:.1%} of the floor)")
    console.print(f"experiments: {counts}")
    if report.overhead_mean is not None:
        console.print(f"protocol overhead per experiment: {report.overhead_mean:.2f}s "
                      f"({report.overhead_share:.1%} of worker time, {len(report.cycles)} runs)")
    # Plain lines, never wrapped by rich: each command is copied whole.
    sys.stdout.flush()
    print("\ninspect the lab:")
    for command in commands:
        print(f"  {command}")
    print(f"  logs: {report.dir / 'logs'}", flush=True)
