"""Hugging Face Jobs verbs: ``run`` (what a job executes) and ``schedule``; plus the
``hf-jobs`` side of ``autolab worker``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from autolab.agents.cli.common import AgentOpt, JsonOpt, LabOpt, open_lab, print_json, resolve_lab

ROLES = ("planner", "worker", "reporter")
FlavorOpt = Annotated[str | None, typer.Option(
    help="Jobs hardware flavor, e.g. cpu-basic, l4x1, a100-large, h200 (default: "
    "[hf_jobs].flavor, else cpu-basic).", show_default=False)]
ImageOpt = Annotated[str | None, typer.Option(help="Docker image with autolab installed "
                                              "(or set [hf_jobs].install).", show_default=False)]
NamespaceOpt = Annotated[str | None, typer.Option(help="User or org that runs the jobs "
                                                  "(default: the token's user).",
                                                  show_default=False)]
JobTimeoutOpt = Annotated[float | None, typer.Option(
    "--job-timeout", help="Job timeout in seconds (default: [hf_jobs].timeout, else the "
    "run timeout + 600).", show_default=False)]


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


def hf_worker(lab: str | None, agent: str | None, *, once: bool, loop: bool,
              max_: int | None, detach: bool, interval: float, overrides: dict[str, Any]
              ) -> None:
    """``autolab worker --backend hf-jobs``: claim, launch, record the job, move on."""
    from autolab.agents.backends.hf_jobs import JobSettings, Launcher
    from autolab.agents.cli.cmd_agents import _say
    from autolab.agents.stopping import Stopped

    the_lab = open_lab(lab, agent)
    config = the_lab.read().config
    settings = JobSettings.from_config(config.hf_jobs, config.timeout, **overrides)
    launcher = Launcher(the_lab, settings, say=_say(f"worker {the_lab.agent}"))
    try:
        launcher.loop(max_launches=1 if once else max_, forever=loop, wait=not detach,
                      idle=interval)
    except (Stopped, KeyboardInterrupt):
        launcher.say("stopped (launched jobs keep running)")


schedule_app = typer.Typer(
    help="HF scheduled jobs running one agent role once per tick (a swarm with no "
    "machine of yours awake). Without a subcommand: create one.",
    no_args_is_help=False, invoke_without_command=True,
)


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
        return every
    from autolab.agents.swarm import parse_duration

    seconds = int(parse_duration(every))
    if seconds < 60 or (seconds < 3600 and 3600 % seconds) or (
            seconds >= 3600 and (seconds % 3600 or 86400 % seconds)):
        raise UsageError(f"--every {every!r}: use a divisor of an hour (e.g. 10m) or of a "
                         f"day (e.g. 2h), or give --cron")
    if seconds < 3600:
        return f"*/{seconds // 60} * * * *"
    return f"0 */{seconds // 3600} * * *"


@schedule_app.callback()
def schedule(
    ctx: typer.Context, lab: LabOpt = None,
    role: Annotated[str | None, typer.Option(help="planner | worker | reporter.",
                                             show_default=False)] = None,
    every: Annotated[str | None, typer.Option(help="@hourly, @daily, 10m, 2h ...",
                                              show_default=False)] = None,
    cron: Annotated[str | None, typer.Option(help="A cron schedule, e.g. \"*/10 * * * *\".",
                                             show_default=False)] = None,
    flavor: FlavorOpt = None, image: ImageOpt = None, namespace: NamespaceOpt = None,
    job_timeout: JobTimeoutOpt = None, as_json: JsonOpt = False,
) -> None:
    """Create an HF scheduled job that runs `autolab ROLE --lab URL --once` each tick."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"lab": lab, "namespace": namespace, "json": as_json}
        return
    from autolab.agents.backends.hf_jobs import (
        JobSettings,
        check_lab_url,
        check_runnable,
        hf_api,
        lab_label,
        parse_volumes,
        price_per_second,
    )
    from autolab.protocol.errors import UsageError

    if role not in ROLES:
        raise UsageError(f"--role must be one of {', '.join(ROLES)}")
    when = _every_to_schedule(every, cron)
    the_lab = open_lab(lab)
    config = the_lab.read().config
    settings = JobSettings.from_config(config.hf_jobs, config.timeout, flavor=flavor,
                                       image=image, namespace=namespace, timeout=job_timeout)
    check_runnable(settings)
    api = hf_api()
    url = settings.lab_url or the_lab.store.url
    check_lab_url(url)
    command = ["autolab", role, "--lab", url, "--once"]
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
                "autolab-role": role},
        volumes=parse_volumes(settings.volumes), namespace=namespace_,
    )
    if as_json:
        print_json({"id": job.id, "schedule": when, "role": role, "command": command})
    else:
        typer.echo(f"scheduled {role} ({when}) as {job.id}: {' '.join(command)}")


def _api_and_namespace(ctx: typer.Context) -> tuple[Any, str]:
    from autolab.agents.backends.hf_jobs import hf_api

    api = hf_api()
    return api, ctx.obj.get("namespace") or api.whoami()["name"]


@schedule_app.command("list")
def schedule_list(ctx: typer.Context) -> None:
    """The lab's scheduled jobs (all of the namespace's with no --lab)."""
    from autolab.agents.backends.hf_jobs import lab_label

    api, namespace = _api_and_namespace(ctx)
    labels = None
    lab = ctx.obj.get("lab")
    if lab or _has_default_lab():
        labels = {"autolab-lab": lab_label(resolve_lab(lab))}
    jobs = api.list_scheduled_jobs(labels=labels, namespace=namespace)
    rows = [{"id": j.id, "schedule": j.schedule, "suspended": bool(j.suspend),
             "role": (j.job_spec.labels or {}).get("autolab-role") if j.job_spec else None,
             "command": list(j.job_spec.command or []) if j.job_spec else []}
            for j in jobs]
    if ctx.obj.get("json"):
        print_json(rows)
        return
    for row in rows:
        state = "suspended" if row["suspended"] else "active"
        typer.echo(f"{row['id']}  {row['schedule']:<14} {state:<9} {row['role'] or '-':<8} "
                   f"{' '.join(row['command'])}")
    typer.echo(f"{len(rows)} scheduled job(s)")


def _has_default_lab() -> bool:
    try:
        resolve_lab(None)
    except Exception:
        return False
    return True


def _manage(action: str):  # noqa: ANN202
    def command(ctx: typer.Context, job_id: Annotated[str, typer.Argument(
            help="Scheduled job id (see `autolab schedule list`).")]) -> None:
        api, namespace = _api_and_namespace(ctx)
        getattr(api, f"{action}_scheduled_job")(scheduled_job_id=job_id, namespace=namespace)
        typer.echo(f"{action}d {job_id}" if action != "suspend" else f"suspended {job_id}")

    command.__doc__ = f"{action.capitalize()} a scheduled job."
    return command


for _action in ("suspend", "resume", "delete"):
    schedule_app.command(_action)(_manage(_action))


def register(app: typer.Typer) -> None:
    app.command()(run)
    app.add_typer(schedule_app, name="schedule")
