"""``autolab demo``: a whole lab on this machine, from the embedded ``tiny-lm``.

Creates a bare repository as the lab's remote, runs a planner, workers and a reporter
against it for a few minutes with a live view, then prints the leaderboard, the
promotions, the gap to the entropy floor, and the commands to look inside.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autolab.agents.lab_init import init_lab
from autolab.agents.swarm import Swarm

if TYPE_CHECKING:
    from collections.abc import Callable

    from autolab.protocol.reader import LabView


@dataclass
class DemoReport:
    """What the demo leaves behind, for printing and for tests."""

    dir: Path
    lab: Path
    seconds: float
    cycles: list[dict[str, Any]] = field(default_factory=list)

    @property
    def overhead_mean(self) -> float | None:
        values = [c["overhead_s"] for c in self.cycles]
        return sum(values) / len(values) if values else None

    @property
    def overhead_share(self) -> float | None:
        total = sum(c["total_s"] for c in self.cycles)
        return sum(c["overhead_s"] for c in self.cycles) / total if total else None


def fresh_dir(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3``... whichever does not exist yet."""
    candidate, n = base, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _set_budget(seconds: float | None, timeout: float | None):  # noqa: ANN202
    def edit(work: Path) -> None:
        config = work / "autolab.toml"
        text = config.read_text()
        if seconds is not None:
            text = re.sub(r'(?m)^AUTOLAB_TRAIN_SECONDS\s*=.*$',
                          f'AUTOLAB_TRAIN_SECONDS = "{seconds:g}"', text)
        if timeout is not None:
            text = re.sub(r"(?m)^timeout\s*=.*$", f"timeout = {timeout:g}", text)
        config.write_text(text)

    return edit


def run_demo(*, workers: int = 2, minutes: float = 3.0, directory: Path | None = None,
             budget: float | None = None, template: str = "tiny-lm", depth: int | None = None,
             live: bool = True, on_view: Callable[[LabView], None] | None = None
             ) -> DemoReport:
    """Create the lab, run the swarm for ``minutes``, and close the lab cleanly.

    ``on_view`` (without ``live``) gets a fresh view of the lab every few seconds.
    """
    from autolab.protocol import transactions as tx
    from autolab.protocol.lab import Lab

    root = fresh_dir((directory or Path("autolab-demo")).resolve())
    root.mkdir(parents=True, exist_ok=True)
    lab_path = root / "lab.git"
    timeout = None if budget is None else max(30.0, budget * 4 + 20)
    init_lab(lab_path, template, bare=True, edit=_set_budget(budget, timeout))
    env = {"AUTOLAB_CACHE": str(root / "cache"), "AUTOLAB_DATA_DIR": str(root / "data"),
           "TRACKIO_DIR": str(root / "trackio"),
           "AUTOLAB_STATS": str(root / "cycles.jsonl")}
    os.environ.update({k: env[k] for k in ("AUTOLAB_CACHE",)})
    swarm = Swarm(str(lab_path), workers=workers, depth=depth or max(2, workers + 1),
                  log_dir=root / "logs", env=env)
    lab = Lab.open(str(lab_path), "demo")
    start = time.monotonic()
    view_ctx = None
    if live:
        from rich.live import Live

        from autolab.agents.cli.live import render

        view_ctx = Live(render(lab.read(), start, minutes * 60), refresh_per_second=2,
                        transient=False)
        view_ctx.__enter__()

    def tick() -> None:
        if view_ctx is not None:
            view_ctx.update(render(lab.read(), start, minutes * 60))
        elif on_view is not None:
            on_view(lab.read())

    try:
        swarm.run(minutes * 60, tick=2.0, on_tick=tick)
    finally:
        if view_ctx is not None:
            view_ctx.__exit__(None, None, None)
    view = lab.read()
    for exp in view.state.experiments.values():
        if not exp.terminal:
            tx.cancel(lab, exp.id, "the demo ended before it ran")
    lab.fold(always=True)
    report = DemoReport(root, lab_path, time.monotonic() - start)
    stats = root / "cycles.jsonl"
    if stats.exists():
        lines = [json.loads(line) for line in stats.read_text().splitlines() if line]
        report.cycles = [c for c in lines if c.get("event") == "cycle"]
    return report
