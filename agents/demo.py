"""``autolab demo``: a whole lab on this machine, from the embedded ``tiny-lm``.

Creates a bare repository as the lab's remote, runs a planner, workers and a reporter
against it for a few minutes with a live view, then prints the leaderboard, the
promotions, the gap to the entropy floor, and the commands to look inside.

The demo writes where it is told: a directory that is not empty is refused, unless
it holds an earlier demo's lab and ``reuse`` asks to continue that lab.
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
from autolab.protocol.errors import AutoLabError

DEFAULT_DIR = Path("autolab-demo")
LAB_NAME = "lab.git"  # the demo lab's bare repository, inside the demo directory

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


def demo_dir(directory: Path, *, reuse: bool = False) -> Path:
    """The demo's directory, absolute: new, empty, or (``reuse``) an earlier demo's.

    Raises:
        AutoLabError: (exit code 2) ``directory`` is a file; is not empty and ``reuse``
            was not asked for; or ``reuse`` was asked for and it holds no demo lab.
    """
    root = directory.resolve()
    problem = None
    if root.exists() and not root.is_dir():
        problem = f"demo directory {root} is not a directory"
    elif root.is_dir() and any(root.iterdir()):
        if not reuse:
            problem = (f"demo directory {root} is not empty: remove it, choose another "
                       f"--dir, or pass --reuse to continue the demo lab in it")
        elif not (root / LAB_NAME / "HEAD").is_file():
            problem = f"--reuse: {root} holds no demo lab ({root / LAB_NAME} is missing)"
    if problem:
        err = AutoLabError(problem)
        err.exit_code = 2
        raise err
    return root


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
             live: bool = True, reuse: bool = False,
             on_view: Callable[[LabView], None] | None = None) -> DemoReport:
    """Create the lab (or, with ``reuse``, take up the one an earlier demo left in
    ``directory``), run the swarm for ``minutes``, and close the lab cleanly.

    ``on_view`` (without ``live``) gets a fresh view of the lab every few seconds.

    Raises:
        AutoLabError: the directory is refused (see :func:`demo_dir`); ``budget`` was
            given with ``reuse`` (the lab keeps its own settings).
        AgentDied: an agent exited on its own; the others were stopped.
    """
    from autolab.protocol import transactions as tx
    from autolab.protocol.lab import Lab

    root = demo_dir(directory or DEFAULT_DIR, reuse=reuse)
    lab_path = root / LAB_NAME
    if not (lab_path / "HEAD").is_file():
        root.mkdir(parents=True, exist_ok=True)
        timeout = None if budget is None else max(30.0, budget * 4 + 20)
        init_lab(lab_path, template, bare=True, edit=_set_budget(budget, timeout))
    elif budget is not None:
        err = AutoLabError(f"--budget sets up a new demo lab; {lab_path} keeps its own "
                           f"(edit its autolab.toml, or use a new --dir)")
        err.exit_code = 2
        raise err
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
