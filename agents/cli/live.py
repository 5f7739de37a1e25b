"""The live ``rich`` view of a lab, shown by ``autolab demo``."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from rich.console import Group
from rich.panel import Panel
from rich.table import Table

from autolab.agents.cli.common import fmt


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
        running.add_row(exp.id, fmt(exp.agent), f"{age:.0f}s", exp.hypothesis[:70])
    recent = Table("experiment", "status", config.metric, "hypothesis", title="recent results",
                   expand=True)
    for score in state.scores[-6:][::-1]:
        recent.add_row(score["experiment_id"], score["status"], fmt(score["metric"]),
                       state.experiments[score["experiment_id"]].hypothesis[:70]
                       if score["experiment_id"] in state.experiments else "")
    return Panel(Group(head, running, recent), title="autolab demo")
