"""Agent verbs: ``worker``, ``planner``, ``reporter``, ``swarm``, ``demo``."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from autolab.agents.cli.cmd_hf import FlavorOpt, ImageOpt, JobTimeoutOpt, NamespaceOpt
from autolab.agents.cli.common import (
    DURATION_HELP,
    AgentOpt,
    EventsJsonOpt,
    LabOpt,
    QuietOpt,
    VerboseOpt,
    duration,
    open_lab,
    resolve_lab,
    verbosity,
)

if TYPE_CHECKING:
    from autolab.agents.events import AgentLog

OnceOpt = Annotated[bool, typer.Option("--once", help="Do one unit of work and exit.")]
LoopOpt = Annotated[bool, typer.Option("--loop", help="Repeat until stopped (SIGTERM/Ctrl-C).")]
IntervalOpt = Annotated[float, typer.Option(
    parser=duration, metavar="DURATION",
    help=f"Pause between rounds with --loop ({DURATION_HELP}).")]


class ProposerKind(StrEnum):
    """What a planner proposes with."""

    space = "space"
    llm = "llm"
    agent = "agent"


class Backend(StrEnum):
    """Where a worker's runs happen."""

    local = "local"
    hf_jobs = "hf-jobs"


def _stop_on_sigterm() -> None:
    from autolab.agents.stopping import STOP

    STOP.install()


def _one_mode(once: bool, loop: bool) -> None:
    """--once and --loop ask for opposite things: a usage error (exit code 2)."""
    if once and loop:
        from autolab.protocol.errors import UsageError

        raise UsageError("give at most one of --once and --loop")


def agent_log(role: str, agent: str | None, as_json: bool, quiet: bool,
              verbose: bool) -> AgentLog:
    """Where a long-lived agent's events go (dated log lines, or NDJSON with --json)."""
    from autolab.agents.events import AgentLog

    return AgentLog(role, agent, json_lines=as_json, verbosity=verbosity(quiet, verbose))


@contextmanager
def lifetime(log: AgentLog, stopped: str = "stopped", **fields: Any) -> Iterator[None]:
    """An agent's life as events: ``started``, then ``stopped`` (SIGTERM, Ctrl-C: exit
    code 0) or ``done``; with --json also ``nothing_to_do`` (exit code 3) or ``error``
    (the line that goes to stderr), so a follower of the stream sees how it ended."""
    from autolab.agents.events import ERROR, INFO
    from autolab.agents.stopping import Stopped
    from autolab.protocol.errors import AutoLabError
    from autolab.protocol.redact import redact

    once, loop = fields.pop("once", False), fields.pop("loop", False)
    mode = "once" if once else "loop" if loop else "until idle"
    log.event("started", f"started ({mode})", pid=os.getpid(), mode=mode, **fields)
    try:
        yield
    except (Stopped, KeyboardInterrupt):
        log.event("stopped", stopped)
        return
    except AutoLabError as exc:
        if log.json_lines:
            name = "nothing_to_do" if exc.exit_code == 3 else "error"
            log.event(name, redact(str(exc)), level=ERROR if name == "error" else INFO,
                      exit_code=exc.exit_code)
        raise
    except Exception as exc:  # a Hub client's error: main() prints it as one line too
        if log.json_lines:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            log.event("error", redact(first), level=ERROR, exit_code=1)
        raise
    log.event("done", "done")


def _rounds(once: bool, loop: bool, interval: float, body: Callable[[], None]) -> None:
    """Run ``body`` once, or forever with ``interval`` pauses; a stop ends it (raised)."""
    _stop_on_sigterm()
    while True:
        body()
        if not loop or once:
            return
        time.sleep(interval)


def worker(
    lab: LabOpt = None, agent: AgentOpt = None, once: OnceOpt = False, loop: LoopOpt = False,
    max_: Annotated[int | None, typer.Option("--max", help="Stop after N experiments.")] = None,
    backend: Annotated[Backend, typer.Option(help="Compute backend: local (run here) or "
                                             "hf-jobs (launch each run as a Hugging Face "
                                             "Job).")] = Backend.local,
    log_dir: Annotated[Path | None, typer.Option(help="Where run logs go.")] = None,
    interval: IntervalOpt = "2s",  # type: ignore[assignment]  # parsed by `duration`
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
    as_json: EventsJsonOpt = False, quiet: QuietOpt = False, verbose: VerboseOpt = False,
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

    Logs one dated line per event (-q: warnings only, -v: debug too); --json prints
    the events as JSON lines instead (README.md, "Following an agent").
    """
    from autolab.agents.events import emit
    from autolab.protocol.errors import NothingToDo

    _one_mode(once, loop)
    verbosity(quiet, verbose)
    if backend is Backend.hf_jobs:
        from autolab.agents.cli.cmd_hf import _pairs, hf_worker

        overrides = {"flavor": flavor, "image": image, "namespace": namespace,
                     "timeout": job_timeout, "secrets": secret,
                     "env": _pairs(env, "--env"), "labels": _pairs(label, "--label"),
                     "volumes": tuple(volume) if volume else None}
        the_lab = open_lab(lab, agent)
        log = agent_log("worker", the_lab.agent, as_json, quiet, verbose)
        _stop_on_sigterm()
        with lifetime(log, "stopped (launched jobs keep running)", once=once, loop=loop,
                      backend=backend.value, lab=the_lab.store.url, interval_s=interval,
                      job_timeout_s=job_timeout):
            hf_worker(the_lab, log, once=once, loop=loop, max_=max_, detach=detach,
                      interval=interval, overrides=overrides)
        return
    from autolab.agents.backends.local import LocalBackend
    from autolab.agents.worker import Worker

    the_lab = open_lab(lab, agent)
    from autolab.agents.run_logs import default_log_dir

    logs = log_dir or default_log_dir(the_lab)
    log = agent_log("worker", the_lab.agent, as_json, quiet, verbose)
    work = Worker(the_lab, LocalBackend(), logs, say=log)
    _stop_on_sigterm()
    from autolab.agents.backends import sandbox

    with lifetime(log, once=once, loop=loop, backend=backend.value, lab=the_lab.store.url,
                  log_dir=str(logs), interval_s=interval):
        sandbox.mode()  # fails now, not at the first run, if namespaces are required
        emit(log, "sandbox", sandbox.describe())
        work.recover()
        if once:
            if work.run_once() is None:
                raise NothingToDo("nothing to claim")
            return
        ran = work.loop(max_experiments=max_, idle=interval, exit_when_idle=not loop)
        if ran == 0 and max_ != 0:
            raise NothingToDo("nothing to claim")


def planner(
    lab: LabOpt = None, agent: AgentOpt = None, once: OnceOpt = False, loop: LoopOpt = False,
    depth: Annotated[int, typer.Option(help="Target number of queued experiments.")] = 4,
    interval: IntervalOpt = "2s",  # type: ignore[assignment]
    proposer: Annotated[ProposerKind, typer.Option(
        help="space: one-knob mutations of [knobs]; llm: a chat model ([llm]); agent: a "
        "coding agent's edits ([agent]).")] = ProposerKind.space,
    model: Annotated[str | None, typer.Option(
        help="llm: model id (default [llm].model).", show_default=False)] = None,
    base_url: Annotated[str | None, typer.Option(
        help="llm: an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (default "
        "[llm].base_url).", show_default=False)] = None,
    provider: Annotated[str | None, typer.Option(
        help="llm: a Hugging Face inference provider, when no base URL (default "
        "[llm].provider).", show_default=False)] = None,
    agent_command: Annotated[str | None, typer.Option(
        help="agent: the coding agent's command line, with {prompt}, {prompt_file} or "
        "{workdir} (default [agent].command).", show_default=False)] = None,
    as_json: EventsJsonOpt = False, quiet: QuietOpt = False, verbose: VerboseOpt = False,
) -> None:
    """Keep the queue at --depth with proposals of the current best; reap leases.

    --proposer llm asks a chat model for a hypothesis and a diff (docs/agents.md); a
    refused answer goes back to the model, then is recorded as a failed proposal.
    --proposer agent runs a coding agent in a worktree of main; its edits become the
    patch. Logs one dated line per event (-q, -v); --json prints JSON lines instead.
    """
    from autolab.agents.planner import plan_once

    _one_mode(once, loop)
    verbosity(quiet, verbose)
    the_lab = open_lab(lab, agent)
    log = agent_log("planner", the_lab.agent, as_json, quiet, verbose)
    chosen = _proposer(the_lab, proposer, log, model=model, base_url=base_url,
                       provider=provider, agent_command=agent_command)

    def round_() -> None:
        from autolab.agents.proposers.llm import LlmUnavailable

        try:
            plan_once(the_lab, depth, log, proposer=chosen)
        except LlmUnavailable as exc:
            if not loop:
                raise
            from autolab.agents.events import WARNING, emit

            emit(log, "llm_unavailable", f"{exc}: trying again next round", level=WARNING,
                 reason=str(exc))

    with lifetime(log, once=once, loop=loop, lab=the_lab.store.url, depth=depth,
                  interval_s=interval, proposer=proposer.value):
        _rounds(once, loop, interval, round_)


def _proposer(the_lab: Any, kind: ProposerKind, log: AgentLog, **flags: str | None) -> Any:
    """The proposer ``kind`` names, configured by the lab's ``autolab.toml`` and ``flags``
    (None for the built-in knob search)."""
    import dataclasses

    if kind is ProposerKind.space:
        return None
    config = the_lab.read().config
    if kind is ProposerKind.llm:
        from autolab.agents.proposers.llm import LlmProposer

        given = {k: v for k, v in flags.items() if k in ("model", "base_url", "provider")
                 and v is not None}
        if given.get("base_url") and not given["base_url"].startswith(("http://", "https://")):
            from autolab.protocol.errors import UsageError

            raise UsageError(f"--base-url {given['base_url']!r}: expected an http:// or "
                             "https:// URL")
        return LlmProposer(dataclasses.replace(config.llm, **given), say=log)
    from autolab.agents.proposers.coding_agent import AgentProposer

    command = flags.get("agent_command")
    settings = config.agent if command is None else dataclasses.replace(config.agent,
                                                                       command=command)
    return AgentProposer(settings, say=log)


def reporter(
    lab: LabOpt = None, agent: AgentOpt = None, once: OnceOpt = False, loop: LoopOpt = False,
    interval: IntervalOpt = "5s",  # type: ignore[assignment]
    trackio: Annotated[bool, typer.Option(help="Mirror finished experiments into Trackio "
                                          "($TRACKIO_DIR); off where the trackio extra is "
                                          "not installed.")] = True,
    project: Annotated[str | None, typer.Option(help="Trackio project (default: the lab's "
                                                "name).", show_default=False)] = None,
    as_json: EventsJsonOpt = False, quiet: QuietOpt = False, verbose: VerboseOpt = False,
) -> None:
    """Reap expired leases (asking the Jobs API about HF jobs), fold record refs into main,
    compact shards, sync Trackio.

    Logs one dated line per event (-q, -v); --json prints JSON lines instead.
    """
    from autolab.agents.events import WARNING, emit
    from autolab.agents.reporter import report_once

    _one_mode(once, loop)
    verbosity(quiet, verbose)
    the_lab = open_lab(lab, agent)
    log = agent_log("reporter", the_lab.agent, as_json, quiet, verbose)
    with lifetime(log, once=once, loop=loop, lab=the_lab.store.url, interval_s=interval):
        if trackio:
            from autolab.extras import installed

            if not installed("trackio"):  # a coordinating agent: its other duties go on
                emit(log, "trackio_off", "trackio mirror off: trackio is not installed "
                     "(pip install 'autolab[trackio]')", level=WARNING)
                trackio = False
        _rounds(once, loop, interval,
                lambda: report_once(the_lab, log, trackio=trackio, project=project))


def swarm(
    lab: LabOpt = None,
    workers: Annotated[int, typer.Option(help="Number of worker processes.")] = 2,
    duration_: Annotated[float, typer.Option(
        "--duration", parser=duration, metavar="DURATION",
        help=f"How long ({DURATION_HELP}).")] = "10m",  # type: ignore[assignment]
    depth: Annotated[int, typer.Option(help="Planner's queue depth.")] = 4,
    log_dir: Annotated[Path, typer.Option(help="Per-agent log files.")] = Path("autolab-logs"),
    as_json: EventsJsonOpt = False, quiet: QuietOpt = False, verbose: VerboseOpt = False,
) -> None:
    """Run a planner, N workers and a reporter as local processes for --duration.

    Exits 1, naming the agent, its exit code and the end of its log, if an agent dies
    before --duration is over (the others are stopped first).

    The agents log to --log-dir; the swarm itself logs when it starts and stops
    (--json: as JSON lines).
    """
    from autolab.agents.events import ERROR
    from autolab.agents.swarm import AgentDied, Swarm
    from autolab.protocol.durations import format_duration
    from autolab.protocol.redact import redact

    log = agent_log("swarm", None, as_json, quiet, verbose)
    crew = Swarm(resolve_lab(lab), workers=workers, depth=depth, log_dir=log_dir)
    log.event("started", f"{workers} worker(s), planner and reporter for "
              f"{format_duration(duration_)}; logs in {log_dir}/", pid=os.getpid(), workers=workers,
              depth=depth, duration_s=duration_, log_dir=str(log_dir))
    try:
        crew.run(duration_, tick=1.0)
    except KeyboardInterrupt:
        crew.stop()
    except AgentDied as died:
        if log.json_lines:
            log.event("error", redact(str(died)), level=ERROR, exit_code=died.exit_code,
                      exit_codes=died.exits)
        raise
    codes = {name: proc.returncode for name, proc in crew.procs.items()}
    log.event("stopped", "stopped", exit_codes=codes)


def _demo_minutes(text: str) -> float:
    """``--minutes``, the old spelling of ``--duration``: a plain number is minutes,
    anything else the duration syntax; returns seconds."""
    import re

    if re.fullmatch(r"\s*(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*", text):
        return duration(float(text) * 60)
    return duration(text)


def demo(
    workers: Annotated[int, typer.Option(help="Number of workers.")] = 2,
    duration_: Annotated[float | None, typer.Option(
        "--duration", parser=duration, metavar="DURATION",
        help=f"How long the swarm runs ({DURATION_HELP}; default 3m).",
        show_default=False)] = None,
    minutes: Annotated[float | None, typer.Option(
        parser=_demo_minutes, metavar="MINUTES", hidden=True,
        help="The old --duration: a plain number is minutes.")] = None,
    dir_: Annotated[Path | None, typer.Option("--dir", help="Where the demo lab goes "
                                              "(default ./autolab-demo); must be new or "
                                              "empty, unless --reuse.")] = None,
    reuse: Annotated[bool, typer.Option(
        "--reuse", help="Continue the lab an earlier demo left in --dir.")] = False,
    budget: Annotated[float | None, typer.Option(
        parser=duration, metavar="DURATION",
        help=f"Training time per run ({DURATION_HELP}; default: the template's).",
        show_default=False)] = None,
    live: Annotated[bool, typer.Option(help="Show the live view (on a terminal; "
                                       "elsewhere a progress line every few seconds).")
                    ] = True,
    as_json: EventsJsonOpt = False,
) -> None:
    """Run a whole lab locally on tiny-lm: planner, workers, reporter, promotions.

    Exits 1, naming the agent, its exit code and the end of its log, if an agent dies
    before the demo ends.

    On a terminal, a live view; elsewhere (a log, a pipe, CI) a progress line every
    few seconds. --json prints progress events and the final summary as JSON lines.
    """
    from autolab.extras import require
    from autolab.protocol.errors import AutoLabError, UsageError

    if duration_ is not None and minutes is not None:
        raise UsageError("give at most one of --duration and --minutes (its old name)")
    seconds = duration_ if duration_ is not None else minutes if minutes is not None else 180.0
    if seconds <= 0:
        raise UsageError("--duration: the demo needs a duration above 0s")
    require("autolab demo", "train", "torch")  # tiny-lm trains with it, in this environment
    from autolab.agents.cli.live import ProgressLines
    from autolab.agents.demo import run_demo

    log = agent_log("demo", None, as_json, False, False)
    on_terminal = live and not as_json and sys.stdout.isatty()
    progress = None if on_terminal else ProgressLines(log, seconds)
    try:
        with progress or nullcontext():
            report = run_demo(workers=workers, minutes=seconds / 60, directory=dir_,
                              budget=budget, live=on_terminal, reuse=reuse,
                              on_view=progress.update if progress else None)
    except AutoLabError as exc:  # a refused --dir, an agent that died
        if as_json:
            from autolab.agents.events import ERROR
            from autolab.protocol.redact import redact

            log.event("error", redact(str(exc)), level=ERROR, exit_code=exc.exit_code)
        raise
    from autolab.agents.cli.live import print_summary

    print_summary(report, log if as_json else None)


def register(app: typer.Typer) -> None:
    for command in (worker, planner, reporter, swarm, demo):
        app.command()(command)
