"""Agent verbs: ``worker``, ``planner``, ``reporter``, ``swarm``, ``demo``."""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from autolab.agents.cli.cmd_hf import FlavorOpt, ImageOpt, JobTimeoutOpt, NamespaceOpt
from autolab.agents.cli.common import AgentOpt, LabOpt, fmt, open_lab, resolve_lab

OnceOpt = Annotated[bool, typer.Option("--once", help="Do one unit of work and exit.")]
LoopOpt = Annotated[bool, typer.Option("--loop", help="Repeat until stopped (SIGTERM/Ctrl-C).")]
IntervalOpt = Annotated[float, typer.Option(help="Seconds between rounds with --loop.")]


def _say(role: str):  # noqa: ANN202
    def say(line: str) -> None:
        print(f"{datetime.now():%H:%M:%S} {role}: {line}", flush=True)

    return say


def _stop_on_sigterm() -> None:
    from autolab.agents.stopping import STOP

    STOP.install()


def _one_mode(once: bool, loop: bool) -> None:
    """--once and --loop ask for opposite things: a usage error (exit code 2)."""
    if once and loop:
        from autolab.protocol.errors import UsageError

        raise UsageError("give at most one of --once and --loop")


def _rounds(once: bool, loop: bool, interval: float, body) -> None:  # noqa: ANN001
    """Run ``body`` once, or forever with ``interval`` pauses; stop cleanly on SIGTERM."""
    from autolab.agents.stopping import Stopped

    _one_mode(once, loop)
    _stop_on_sigterm()
    try:
        while True:
            body()
            if not loop or once:
                return
            time.sleep(interval)
    except (Stopped, KeyboardInterrupt):
        return


def worker(
    lab: LabOpt = None, agent: AgentOpt = None, once: OnceOpt = False, loop: LoopOpt = False,
    max_: Annotated[int | None, typer.Option("--max", help="Stop after N experiments.")] = None,
    backend: Annotated[str, typer.Option(help="Compute backend: local (run here) or hf-jobs "
                                         "(launch each run as a Hugging Face Job).")] = "local",
    log_dir: Annotated[Path | None, typer.Option(help="Where run logs go.")] = None,
    interval: IntervalOpt = 2.0,
    detach: Annotated[bool, typer.Option(
        help="hf-jobs: launch and move on (default), or --no-detach to wait for each job."
    )] = True,
    flavor: FlavorOpt = None, image: ImageOpt = None, namespace: NamespaceOpt = None,
    job_timeout: JobTimeoutOpt = None,
    secret: Annotated[list[str] | None, typer.Option(
        help="hf-jobs: local env var sent as a job secret (repeatable; default "
        "[hf_jobs].secrets, else HF_TOKEN).", show_default=False)] = None,
    env: Annotated[list[str] | None, typer.Option(
        help="hf-jobs: KEY=VALUE for the job's environment (repeatable).",
        show_default=False)] = None,
    volume: Annotated[list[str] | None, typer.Option(
        help="hf-jobs: mount, e.g. hf://buckets/<ns>/<name>:/data (repeatable).",
        show_default=False)] = None,
    label: Annotated[list[str] | None, typer.Option(
        help="hf-jobs: extra KEY=VALUE job label (repeatable).", show_default=False)] = None,
) -> None:
    """Claim experiments, run them, record scores, promote winners.

    Without --loop, runs experiments until none is claimable (or --max), then exits;
    --once runs at most one; either way, exit code 3 if there was none to run. With
    --backend hf-jobs, each claim is launched as a Hugging Face Job running `autolab
    run`, and the worker moves on at once (--detach); flags override the lab's
    [hf_jobs] settings.

    Local runs are contained: $AUTOLAB_SANDBOX=auto (default) puts each in its own
    namespaces where Linux allows it, =namespaces requires that, =none only sweeps
    the run's process tree (docs/security.md).
    """
    from autolab.agents.backends.local import LocalBackend
    from autolab.agents.worker import Stopped, Worker
    from autolab.protocol.errors import NothingToDo, UsageError

    _one_mode(once, loop)
    if backend == "hf-jobs":
        from autolab.agents.cli.cmd_hf import _pairs, hf_worker

        overrides = {"flavor": flavor, "image": image, "namespace": namespace,
                     "timeout": job_timeout, "secrets": secret,
                     "env": _pairs(env, "--env"), "labels": _pairs(label, "--label"),
                     "volumes": tuple(volume) if volume else None}
        _stop_on_sigterm()
        hf_worker(lab, agent, once=once, loop=loop, max_=max_, detach=detach,
                  interval=interval, overrides=overrides)
        return
    if backend != "local":
        raise UsageError(f"unknown backend {backend!r}; available: local, hf-jobs")
    the_lab = open_lab(lab, agent)
    from autolab.agents.run_logs import default_log_dir

    logs = log_dir or default_log_dir(the_lab)
    work = Worker(the_lab, LocalBackend(), logs, say=_say(f"worker {the_lab.agent}"))
    _stop_on_sigterm()
    from autolab.agents.backends import sandbox

    sandbox.mode()  # fails now, not at the first run, if namespaces are required
    work.say(sandbox.describe())
    try:
        work.recover()
        if once:
            if work.run_once() is None:
                raise NothingToDo("nothing to claim")
            return
        ran = work.loop(max_experiments=max_, idle=interval, exit_when_idle=not loop)
    except (Stopped, KeyboardInterrupt):
        work.say("stopped")
        return
    if ran == 0 and max_ != 0:
        raise NothingToDo("nothing to claim")


def planner(
    lab: LabOpt = None, agent: AgentOpt = None, once: OnceOpt = False, loop: LoopOpt = False,
    depth: Annotated[int, typer.Option(help="Target number of queued experiments.")] = 4,
    interval: IntervalOpt = 2.0,
) -> None:
    """Keep the queue at --depth with one-knob proposals of the current best; reap leases."""
    from autolab.agents.planner import plan_once

    the_lab = open_lab(lab, agent)
    say = _say(f"planner {the_lab.agent}")
    _rounds(once, loop, interval, lambda: plan_once(the_lab, depth, say))


def reporter(
    lab: LabOpt = None, agent: AgentOpt = None, once: OnceOpt = False, loop: LoopOpt = False,
    interval: IntervalOpt = 5.0,
    trackio: Annotated[bool, typer.Option(help="Mirror finished experiments into Trackio "
                                          "($TRACKIO_DIR); off where the trackio extra is "
                                          "not installed.")] = True,
    project: Annotated[str | None, typer.Option(help="Trackio project (default: the lab's "
                                                "name).", show_default=False)] = None,
) -> None:
    """Reap expired leases (asking the Jobs API about HF jobs), fold record refs into main,
    compact shards, sync Trackio."""
    from autolab.agents.reporter import report_once

    the_lab = open_lab(lab, agent)
    say = _say(f"reporter {the_lab.agent}")
    if trackio:
        from autolab.extras import installed

        if not installed("trackio"):  # a coordinating agent: its other duties go on
            say("trackio mirror off: trackio is not installed (pip install 'autolab[trackio]')")
            trackio = False
    _rounds(once, loop, interval,
            lambda: report_once(the_lab, say, trackio=trackio, project=project))


def swarm(
    lab: LabOpt = None,
    workers: Annotated[int, typer.Option(help="Number of worker processes.")] = 2,
    duration: Annotated[str, typer.Option(help="How long: 90s, 10m, 2h.")] = "10m",
    depth: Annotated[int, typer.Option(help="Planner's queue depth.")] = 4,
    log_dir: Annotated[Path, typer.Option(help="Per-agent log files.")] = Path("autolab-logs"),
) -> None:
    """Run a planner, N workers and a reporter as local processes for --duration.

    Exits 1, naming the agent, its exit code and the end of its log, if an agent dies
    before --duration is over (the others are stopped first).
    """
    from autolab.agents.swarm import Swarm, parse_duration

    seconds = parse_duration(duration)
    crew = Swarm(resolve_lab(lab), workers=workers, depth=depth, log_dir=log_dir)
    print(f"swarm: {workers} worker(s), planner and reporter for {seconds:g}s; logs in "
          f"{log_dir}/", flush=True)
    try:
        crew.run(seconds, tick=1.0)
    except KeyboardInterrupt:
        crew.stop()
    print("swarm: stopped", flush=True)


def demo(
    workers: Annotated[int, typer.Option(help="Number of workers.")] = 2,
    minutes: Annotated[float, typer.Option(help="How long the swarm runs.")] = 3.0,
    dir_: Annotated[Path | None, typer.Option("--dir", help="Where the demo lab goes "
                                              "(default ./autolab-demo); must be new or "
                                              "empty, unless --reuse.")] = None,
    reuse: Annotated[bool, typer.Option(
        "--reuse", help="Continue the lab an earlier demo left in --dir.")] = False,
    budget: Annotated[float | None, typer.Option(help="Training seconds per run (default: "
                                                 "the template's).")] = None,
    live: Annotated[bool, typer.Option(help="Show the live view.")] = True,
) -> None:
    """Run a whole lab locally on tiny-lm: planner, workers, reporter, promotions.

    Exits 1, naming the agent, its exit code and the end of its log, if an agent dies
    before the demo ends.
    """
    from autolab.extras import installed, require

    require("autolab demo", "train", "torch")  # tiny-lm trains with it, in this environment
    from rich.console import Console
    from rich.table import Table

    from autolab.agents.demo import run_demo
    from autolab.protocol.lab import Lab
    from autolab.scoreboard.leaderboard import leaderboard

    console = Console()
    report = run_demo(workers=workers, minutes=minutes, directory=dir_, budget=budget,
                      live=live and sys.stdout.isatty(), reuse=reuse)
    view = Lab.open(str(report.lab), "demo").read()
    config, state = view.config, view.state
    table = Table("experiment", config.metric, "promoted", "hypothesis", title="leaderboard")
    for row in leaderboard(view):
        table.add_row(row["experiment_id"], fmt(row["metric"]), "yes" if row["promoted"] else "",
                      row["hypothesis"][:80])
    console.print(table)
    console.print(f"[bold]promotions[/] ({len(state.promotions)}):")
    for p in state.promotions:
        console.print(f"  {p['experiment_id']}: {config.metric} = {p['metric']:.4f}")
    best = state.best
    if best and config.floor is not None:
        gap = best["metric"] - config.floor
        console.print(f"best {config.metric} {best['metric']:.4f}; entropy floor "
                      f"{config.floor:.4f}; gap {gap:.4f} ({gap / config.floor:.1%} of the floor)")
    counts = {s: len(state.by_state(s)) for s in ("done", "failed", "cancelled")}
    console.print(f"experiments: {counts}")
    if report.overhead_mean is not None:
        console.print(f"protocol overhead per experiment: {report.overhead_mean:.2f}s "
                      f"({report.overhead_share:.1%} of worker time, {len(report.cycles)} runs)")
    hints = [f"autolab status --lab {report.lab}",
             f"autolab sql --lab {report.lab} \"SELECT experiment_id, state, metric, "
             f"hypothesis FROM experiments ORDER BY metric\"",
             f"git -C {report.lab} log --first-parent --oneline main"]
    if installed("matplotlib"):
        hints.append(f"autolab report --lab {report.lab} --out {report.dir / 'report'}")
    if installed("trackio"):
        hints.append(f"TRACKIO_DIR={report.dir / 'trackio'} autolab dashboard "
                     f"--lab {report.lab}")
    hints.append(f"logs: {report.dir / 'logs'}")
    # soft_wrap: a command cut at the terminal's width could not be pasted back
    console.print("\ninspect the lab:\n" + "\n".join(f"  {h}" for h in hints),
                  markup=False, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    for command in (worker, planner, reporter, swarm, demo):
        app.command()(command)
