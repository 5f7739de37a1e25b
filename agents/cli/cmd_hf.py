"""Hugging Face Jobs verbs: ``run`` (what a job executes) and ``schedule``; plus the
``hf-jobs`` side of ``autolab worker``."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any

import typer
import typer.core

from autolab.agents.cli.common import (
    DURATION_HELP,
    AgentOpt,
    JsonOpt,
    LabOpt,
    duration,
    open_lab,
    print_json,
    resolve_lab,
)


class Role(StrEnum):
    """The agent a scheduled job runs, once per tick."""

    planner = "planner"
    worker = "worker"
    reporter = "reporter"
    researcher = "researcher"


FlavorOpt = Annotated[str | None, typer.Option(
    help="Jobs hardware flavor, e.g. cpu-basic, l4x1, a100-large, h200 (default: "
    "[hf_jobs].flavor, else cpu-basic).", show_default=False)]
ImageOpt = Annotated[str | None, typer.Option(help="Docker image with autolab installed "
                                              "(or set [hf_jobs].install).", show_default=False)]
NamespaceOpt = Annotated[str | None, typer.Option(help="User or org that runs the jobs "
                                                  "(default: the token's user).",
                                                  show_default=False)]


def _job_timeout(text: str) -> float:
    """A job timeout: a duration of at least one second (the Jobs API counts seconds)."""
    seconds = duration(text)
    if seconds < 1:
        raise typer.BadParameter(f"{text!r}: a job needs at least 1s")
    return seconds


JobTimeoutOpt = Annotated[float | None, typer.Option(
    "--job-timeout", parser=_job_timeout, metavar="DURATION",
    help=f"Job timeout ({DURATION_HELP}; default: [hf_jobs].timeout, else the run timeout "
    "+ 10m).", show_default=False)]


def _pairs(items: list[str] | None, what: str) -> dict[str, str] | None:
    if not items:
        return None
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            from autolab.protocol.errors import UsageError

            raise UsageError(f"{what} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def run(
    experiment: Annotated[str, typer.Option("--experiment", help="Experiment id.")],
    attempt: Annotated[int, typer.Option("--attempt", help="The claimed attempt to run.")],
    lab: LabOpt = None, agent: AgentOpt = None, as_json: JsonOpt = False,
    backend: Annotated[str, typer.Option(help="Backend name recorded with the score.")] = (
        "hf-jobs"),
) -> None:
    """Run one claimed attempt to its score: what an HF job executes.

    Clones the lab, checks the attempt is still the current claim (exit 3 if not),
    runs it with the harness from main, pushes autolab/exp/<id>, submits the score
    (with flavor, running seconds, cost and log ref) and promotes when the policy
    allows.
    """
    from autolab.agents.job_run import run_attempt

    cycle = run_attempt(open_lab(lab, agent), experiment, attempt, backend=backend)
    if as_json:
        print_json(cycle.__dict__)


def hf_worker(the_lab: Any, log: Callable[[str], None], *, once: bool, loop: bool,
              max_: int | None, detach: bool, interval: float, overrides: dict[str, Any]
              ) -> None:
    """``autolab worker --backend hf-jobs``: claim, launch, record the job, move on.

    A stop (SIGTERM, Ctrl-C) ends the launching; launched jobs keep running.
    """
    from autolab.agents.backends.hf_jobs import JobSettings, Launcher

    config = the_lab.read().config
    settings = JobSettings.from_config(config.hf_jobs, config.timeout, **overrides)
    launcher = Launcher(the_lab, settings, say=log)
    launcher.loop(max_launches=1 if once else max_, forever=loop, wait=not detach,
                  idle=interval)


class _ScheduleGroup(typer.core.TyperGroup):
    """``autolab schedule``, also in its first spellings: ``schedule --role R --every
    10m`` (create) and group options before the subcommand (``schedule --lab L
    --namespace N list``), which are moved after it."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _subcommand_first(args, self.commands))


def _subcommand_first(args: list[str], commands: dict[str, Any]) -> list[str]:
    """``args`` with the subcommand first: options written before it move after it, and
    with no subcommand at all, ``create`` is meant."""
    if not args or args[0] in commands or args[0] in ("-h", "--help"):
        return args
    takes_value = {opt for param in commands["create"].params
                   if param.param_type_name == "option" and not param.is_flag
                   for opt in param.opts}
    i = 0
    while i < len(args):
        token = args[i]
        if token in commands:
            return [token, *args[:i], *args[i + 1:]]
        if token == "--":
            break
        i += 2 if token in takes_value else 1
    return ["create", *args]


schedule_app = typer.Typer(
    cls=_ScheduleGroup,
    help="HF scheduled jobs, each running one agent role once per tick: a swarm with no "
    "machine of yours awake (docs/hf-jobs.md).",
    no_args_is_help=True,
)
ScheduleLabOpt = Annotated[str | None, typer.Option(
    "--lab", help="The lab (default: $AUTOLAB_LAB, then this checkout's origin); list "
    "shows only its scheduled jobs, or all of the namespace's when there is none.",
    show_default=False)]
ScheduleNamespaceOpt = Annotated[str | None, typer.Option(
    "--namespace", help="User or org owning the scheduled jobs (default: the token's "
    "user).", show_default=False)]


def _every_to_schedule(every: str | None, cron: str | None) -> str:
    from autolab.protocol.errors import UsageError

    if (every is None) == (cron is None):
        raise UsageError("give one of --every (@hourly, @daily, 10m, 2h) or --cron "
                         "(\"*/10 * * * *\")")
    if cron is not None:
        if len(cron.split()) != 5:
            raise UsageError(f"--cron {cron!r}: expected 5 fields (min hour day month dow)")
        return cron
    assert every is not None
    if every.startswith("@"):
        if every not in _MACROS:
            raise UsageError(f"--every {every!r}: expected one of {', '.join(_MACROS)}, or a "
                             f"duration ({DURATION_HELP})")
        return every
    from autolab.protocol.durations import parse_duration

    try:
        seconds = parse_duration(every)
    except ValueError as exc:
        raise UsageError(f"--every: {exc}") from None
    if seconds != int(seconds) or seconds < 60 or seconds % 60 or (
            seconds < 3600 and 3600 % seconds) or (
            seconds >= 3600 and (seconds % 3600 or 86400 % seconds)):
        raise UsageError(f"--every {every!r}: use a divisor of an hour (e.g. 10m) or of a "
                         f"day (e.g. 2h), or give --cron")
    if seconds == 86400:
        return "@daily"
    if seconds < 3600:
        return f"*/{int(seconds) // 60} * * * *"
    return f"0 */{int(seconds) // 3600} * * *"


_MACROS = ("@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually")


@schedule_app.command("create")
def schedule_create(
    role: Annotated[Role, typer.Option(help="The agent each tick runs.", show_default=False)],
    lab: LabOpt = None,
    every: Annotated[str | None, typer.Option(
        metavar="DURATION|@MACRO",
        help="How often: @hourly, @daily, ..., or a duration that divides an hour or a day "
        "(10m, 2h).", show_default=False)] = None,
    cron: Annotated[str | None, typer.Option(help="A cron schedule, e.g. \"*/10 * * * *\".",
                                             show_default=False)] = None,
    flavor: FlavorOpt = None, image: ImageOpt = None, namespace: NamespaceOpt = None,
    job_timeout: JobTimeoutOpt = None, as_json: JsonOpt = False,
) -> None:
    """Create an HF scheduled job that runs `autolab ROLE --lab URL --once` each tick."""
    from autolab.agents.backends.hf_jobs import (
        JobSettings,
        check_lab_url,
        check_runnable,
        hf_api,
        lab_label,
        parse_volumes,
        price_per_second,
    )

    when = _every_to_schedule(every, cron)
    the_lab = open_lab(lab)
    config = the_lab.read().config
    settings = JobSettings.from_config(config.hf_jobs, config.timeout, flavor=flavor,
                                       image=image, namespace=namespace, timeout=job_timeout)
    check_runnable(settings)
    api = hf_api()
    url = settings.lab_url or the_lab.store.url
    check_lab_url(url)
    command = ["autolab", role.value, "--lab", url, "--once"]
    # A scheduled worker runs its experiment inside the job: it records what that cost.
    env = {**settings.env, "AUTOLAB_JOB_FLAVOR": settings.flavor}
    price = price_per_second(api, settings.flavor)
    if price is not None:
        env["AUTOLAB_JOB_PRICE_PER_S"] = repr(price)
    if settings.install:
        import shlex

        command = ["bash", "-c", f"{settings.install} && exec {shlex.join(command)}"]
    try:
        namespace_ = settings.namespace_for(api)
    except Exception as exc:
        from autolab.agents.backends.hf_jobs import hub_error

        raise hub_error("whoami", exc) from None
    job = api.create_scheduled_job(
        image=settings.image, command=command, schedule=when, env=env,
        secrets=settings.secrets or None, flavor=settings.flavor, timeout=settings.timeout,
        labels={**settings.labels, "autolab-lab": lab_label(the_lab.store.url),
                "autolab-role": role.value},
        volumes=parse_volumes(settings.volumes), namespace=namespace_,
    )
    if as_json:
        print_json({"id": job.id, "namespace": namespace_, "schedule": when,
                    "role": role.value, "command": command})
    else:
        typer.echo(f"scheduled {role.value} ({when}) as {job.id}: {' '.join(command)}")


def _api_and_namespace(namespace: str | None) -> tuple[Any, str]:
    from autolab.agents.backends.hf_jobs import hf_api, hub_error

    api = hf_api()
    if namespace:
        return api, namespace
    try:
        return api, api.whoami()["name"]
    except Exception as exc:
        raise hub_error("whoami", exc) from None


@schedule_app.command("list")
def schedule_list(lab: ScheduleLabOpt = None, namespace: ScheduleNamespaceOpt = None,
                  as_json: JsonOpt = False) -> None:
    """The lab's scheduled jobs (all of the namespace's when no lab is given or found)."""
    from autolab.agents.backends.hf_jobs import lab_label

    api, namespace_ = _api_and_namespace(namespace)
    labels = None
    if lab or _has_default_lab():
        labels = {"autolab-lab": lab_label(resolve_lab(lab))}
    jobs = api.list_scheduled_jobs(labels=labels, namespace=namespace_)
    rows = [{"id": j.id, "schedule": j.schedule, "suspended": bool(j.suspend),
             "role": (j.job_spec.labels or {}).get("autolab-role") if j.job_spec else None,
             "flavor": str(j.job_spec.flavor) if j.job_spec and j.job_spec.flavor else None,
             "next_run": (j.status.next_job_run_at
                          if j.status and not j.suspend else None),
             "command": list(j.job_spec.command or []) if j.job_spec else []}
            for j in jobs]
    if as_json:
        print_json(rows)
        return
    from autolab.protocol.errors import shown

    for row in rows:
        state = "suspended" if row["suspended"] else "active"
        typer.echo(shown(f"{row['id']}  {row['schedule']:<14} {state:<9} "
                         f"{row['role'] or '-':<8} {' '.join(row['command'])}"))
    typer.echo(f"{len(rows)} scheduled job(s)")


def _has_default_lab() -> bool:
    try:
        resolve_lab(None)
    except Exception:
        return False
    return True


def _manage(action: str, done: str):  # noqa: ANN202
    def command(job_id: Annotated[str, typer.Argument(
                    help="Scheduled job id (see `autolab schedule list`).")],
                namespace: ScheduleNamespaceOpt = None, as_json: JsonOpt = False) -> None:
        from autolab.agents.backends.hf_jobs import hub_error

        api, namespace_ = _api_and_namespace(namespace)
        try:
            getattr(api, f"{action}_scheduled_job")(scheduled_job_id=job_id,
                                                    namespace=namespace_)
        except Exception as exc:
            raise hub_error(f"{action}_scheduled_job", exc) from None
        if as_json:
            print_json({"id": job_id, "namespace": namespace_, "action": done})
        else:
            typer.echo(f"{done} {job_id}")

    command.__doc__ = f"{action.capitalize()} a scheduled job."
    return command


for _action, _done in (("suspend", "suspended"), ("resume", "resumed"),
                       ("delete", "deleted")):
    schedule_app.command(_action)(_manage(_action, _done))


def register(app: typer.Typer) -> None:
    app.command()(run)
    app.add_typer(schedule_app, name="schedule")
