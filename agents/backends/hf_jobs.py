"""The ``hf-jobs`` backend: experiments run as Hugging Face Jobs.

A worker with this backend does not run anything itself. It claims an attempt,
launches a job whose command is ``autolab run --lab URL --experiment ID --attempt N``
(:mod:`autolab.agents.job_run`), records the job id in the queue (a create-only
``launches`` record, so an attempt is launched at most once) and moves on: the job
clones the lab, runs the experiment with the harness from ``main``, pushes the branch,
submits the score and promotes. The laptop that launched it may close its lid.

Liveness comes from the Jobs API (:func:`check_jobs`, called wherever leases are
reaped): a job still scheduling or running keeps its lease; one that ended without a
score has its logs fetched (``fetch_job_logs``) and kept under
``refs/autolab-logs/<experiment>/<attempt>``, its metric recovered from them if the
summary block was printed, or else its attempt is requeued (failed at
``max_attempts``) with the job's status message as the reason.

Every Jobs API call goes through ``huggingface_hub``; the namespace is always passed
explicitly. Imported only by commands that use this backend.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from autolab.agents.events import WARNING, emit
from autolab.agents.run_logs import LOG_REFS
from autolab.protocol import compute
from autolab.protocol import transactions as tx
from autolab.protocol.errors import AutoLabError
from autolab.protocol.lab import Lab, now

if TYPE_CHECKING:
    from huggingface_hub import HfApi, JobInfo

    from autolab.protocol.config import HfJobsConfig
    from autolab.protocol.reader import LabView
    from autolab.protocol.state import Experiment

BACKEND = "hf-jobs"
LOG_CAP_BYTES = 4 * 1024 * 1024  # the end of a job's log is what matters
_LABEL_BAD = re.compile(r"[^A-Za-z0-9_-]+")
_TERMINAL = ("COMPLETED", "CANCELED", "ERROR", "DELETED")


def label_value(text: str, limit: int = 100) -> str:
    """``text`` as a Hub label value: letters, digits, ``-`` and ``_`` only."""
    return _LABEL_BAD.sub("-", text).strip("-")[:limit] or "x"


def lab_label(url: str) -> str:
    """A stable label value for a lab URL: a readable slug plus a short hash.

    The Hub refuses ``/``, ``:`` and ``.`` in labels, so the URL itself cannot be one;
    the hash keeps two labs named alike apart. Credentials in the URL are ignored.
    """
    from autolab.protocol.gitstore import normalize_url

    clean = re.sub(r"//[^/@]*@", "//", normalize_url(url)).rstrip("/")
    name = clean.rsplit("/", 1)[-1].removesuffix(".git")
    digest = hashlib.sha256(clean.encode()).hexdigest()[:10]
    return f"{label_value(name)[:40]}-{digest}"


def hub_error(what: str, exc: BaseException) -> AutoLabError:
    """A Hub failure (HTTP error, refused connection...) as one redacted line."""
    from autolab.protocol.redact import redact

    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return AutoLabError(f"HF Jobs API: {what}: {redact(first)[:300]}")


def hf_api(token: str | None = None) -> HfApi:
    """A client for ``$HF_ENDPOINT`` (default: the Hub)."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)


@dataclass(frozen=True)
class JobSettings:
    """Resolved ``[hf_jobs]`` settings (config, then flags)."""

    flavor: str
    image: str
    namespace: str | None
    timeout: int
    secrets: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    volumes: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    install: str = ""
    lab_url: str | None = None

    @classmethod
    def from_config(cls, cfg: HfJobsConfig, run_timeout: float, **overrides: Any) -> JobSettings:
        """Settings from the lab's ``[hf_jobs]``; ``overrides`` that are not None win.

        Secrets are the *values* of the named local environment variables (``HF_TOKEN``
        falls back to the token saved by ``hf auth login``); missing ones are skipped.
        """
        names = overrides.pop("secrets", None) or cfg.secrets
        secrets = {}
        for name in names:
            value = os.environ.get(name)
            if value is None and name == "HF_TOKEN":
                from huggingface_hub import get_token

                value = get_token()
            if value:
                secrets[name] = value
        timeout = cfg.timeout if cfg.timeout is not None else run_timeout + 600
        settings = cls(
            flavor=cfg.flavor, image=cfg.image, namespace=cfg.namespace,
            timeout=int(timeout), secrets=secrets, env=dict(cfg.env),
            volumes=tuple(cfg.volumes), labels=dict(cfg.labels), install=cfg.install,
            lab_url=cfg.lab_url,
        )
        given = {k: v for k, v in overrides.items() if v is not None}
        if "timeout" in given:
            given["timeout"] = int(given["timeout"])
        for key in ("env", "labels"):
            if key in given:
                given[key] = {**getattr(settings, key), **given[key]}
        return replace(settings, **given)

    def namespace_for(self, api: HfApi) -> str:
        return self.namespace or api.whoami()["name"]


def parse_volumes(specs: tuple[str, ...]) -> list[Any] | None:
    """``hf://buckets/<ns>/<name>:/data[:ro]`` and friends, as ``huggingface_hub`` volumes."""
    if not specs:
        return None
    from huggingface_hub import Volume
    from huggingface_hub.utils import parse_hf_mount

    volumes = []
    for spec in specs:
        try:
            mount = parse_hf_mount(spec)
        except Exception as exc:  # the Hub's own parser raises its own error types
            raise AutoLabError(f"hf_jobs.volumes: {spec!r}: {exc}") from None
        volumes.append(Volume(type=mount.source.type, source=mount.source.id,
                              mount_path=mount.mount_path, read_only=mount.read_only,
                              path=mount.source.path_in_repo or None,
                              revision=mount.source.revision or None))
    return volumes


def price_per_second(api: HfApi, flavor: str) -> float | None:
    """The flavor's price in USD per second, from ``list_jobs_hardware()``."""
    per = {"second": 1.0, "minute": 60.0, "hour": 3600.0}
    for hardware in api.list_jobs_hardware():
        if hardware.name == flavor:
            unit = per.get((hardware.unit_label or "minute").lower().rstrip("s"), 60.0)
            return float(hardware.unit_cost_usd) / unit
    return None


DEFAULT_IMAGE = "ghcr.io/astral-sh/uv:python3.12-bookworm"


def check_lab_url(url: str) -> None:
    """A lab URL handed to a job must not carry credentials: job specs are visible to
    the namespace. Jobs authenticate from secrets (``AUTOLAB_GIT_TOKEN``)."""
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://[^/@\s]+@", url) and not url.startswith("ssh://"):
        raise AutoLabError("the lab URL carries credentials, which a job spec would show: "
                           "pass it without them and add AUTOLAB_GIT_TOKEN to "
                           "[hf_jobs].secrets")


def check_runnable(settings: JobSettings) -> None:
    """A job needs autolab: an image that has it, or an ``install`` command."""
    if settings.image == DEFAULT_IMAGE and not settings.install:
        raise AutoLabError(
            "hf_jobs: the default image has no autolab; set [hf_jobs].install (e.g. "
            "\"pip install 'autolab[train] @ git+https://github.com/<org>/autolab'\" for "
            "runs that train with torch) or --image to an image with autolab installed")


def job_command(settings: JobSettings, lab_url: str, experiment_id: str,
                attempt: int) -> list[str]:
    """What a job runs: ``autolab run ...``, after ``install`` if the lab sets one."""
    run = ["autolab", "run", "--lab", lab_url, "--experiment", experiment_id,
           "--attempt", str(attempt)]
    if settings.install:
        return ["bash", "-c", f"{settings.install} && exec {shlex.join(run)}"]
    return run


# -- launching ---------------------------------------------------------------------------


class Launcher:
    """Claims attempts and launches them as jobs (``autolab worker --backend hf-jobs``)."""

    name = BACKEND

    def __init__(self, lab: Lab, settings: JobSettings, api: HfApi | None = None,
                 say: Callable[[str], None] = print) -> None:
        check_runnable(settings)
        self.lab, self.settings, self.say = lab, settings, say
        self.api = api or hf_api()
        try:
            self.namespace = settings.namespace_for(self.api)
        except Exception as exc:  # the client raises HTTP and transport errors alike
            raise hub_error("whoami", exc) from None
        self.lab_url = settings.lab_url or lab.store.url
        check_lab_url(self.lab_url)
        self._price: float | None = None

    def price(self) -> float | None:
        if self._price is None:
            try:
                self._price = price_per_second(self.api, self.settings.flavor)
            except Exception as exc:
                raise hub_error("list_jobs_hardware", exc) from None
            if self._price is None:
                raise AutoLabError(f"unknown Jobs flavor {self.settings.flavor!r}; see "
                                   f"`hf jobs hardware` for the flavors")
        return self._price

    def launch_next(self) -> JobInfo:
        """Claim one experiment and launch it; NothingToDo when none is claimable or the
        lab's budget is spent."""
        view = self.lab.read()
        compute.check_budget(view)
        price = self.price()
        lease = self.settings.timeout + view.config.policy.lease_margin
        claim = tx.claim(self.lab, backend=BACKEND, lease_seconds=lease)
        try:
            job = self.launch(claim, price)
        except BaseException as exc:
            error = exc if isinstance(exc, AutoLabError) else hub_error("run_job", exc)
            tx.release(self.lab, claim.experiment_id, claim.attempt,
                       f"launch failed: {str(error)[:200]}")
            if isinstance(exc, Exception) and error is not exc:
                raise error from None
            raise
        return job

    def launch(self, claim: tx.Claim, price: float | None) -> JobInfo:
        settings = self.settings
        labels = {**settings.labels, "autolab-lab": lab_label(self.lab.store.url),
                  "autolab-experiment": label_value(claim.experiment_id),
                  "autolab-attempt": str(claim.attempt),
                  "autolab-agent": label_value(self.lab.agent)}
        env = {**settings.env, "AUTOLAB_AGENT": f"{self.lab.agent}-job",
               "AUTOLAB_JOB_FLAVOR": settings.flavor}
        if price is not None:
            env["AUTOLAB_JOB_PRICE_PER_S"] = repr(price)
        job = self.api.run_job(
            image=settings.image,
            command=job_command(settings, self.lab_url, claim.experiment_id, claim.attempt),
            env=env, secrets=settings.secrets or None, flavor=settings.flavor,
            timeout=settings.timeout, labels=labels, volumes=parse_volumes(settings.volumes),
            namespace=self.namespace,
            # One run per attempt: the protocol, not the platform, decides about retries
            # (a re-run would race the requeued attempt's own job).
            attempts=1,
        )
        # "<namespace>/<id>": whoever checks on the job later needs both.
        compute.launched(self.lab, claim.experiment_id, claim.attempt,
                    job_id=f"{self.namespace}/{job.id}", backend=BACKEND)
        emit(self.say, "launched", f"launched {claim.experiment_id} attempt {claim.attempt} "
             f"as job {job.id} ({settings.flavor}): {claim.hypothesis}",
             experiment_id=claim.experiment_id, attempt=claim.attempt,
             job_id=f"{self.namespace}/{job.id}", flavor=settings.flavor,
             hypothesis=claim.hypothesis)
        return job

    def loop(self, *, max_launches: int | None = None, forever: bool = False,
             wait: bool = False, idle: float = 2.0) -> int:
        """Launch until nothing is claimable (or forever, pausing ``idle`` seconds when
        nothing is), at most ``max_launches``; with ``wait``, each job to its end first.
        Returns how many were launched.

        Raises:
            NothingToDo: not ``forever`` and nothing was launched at all.
        """
        from autolab.protocol.errors import NothingToDo

        launched = 0
        while max_launches is None or launched < max_launches:
            try:
                job = self.launch_next()
            except NothingToDo as exc:
                if not forever and not launched:
                    raise  # exit code 3: this run launched nothing
                if not forever:
                    emit(self.say, "nothing_to_do", f"stopping: {exc}", reason=str(exc))
                    break
                time.sleep(idle)
                continue
            launched += 1
            if wait:
                stage = self.wait(job)
                emit(self.say, "job_ended", f"job {job.id} ended: {stage}",
                     job_id=f"{self.namespace}/{job.id}", stage=stage)
        return launched

    def wait(self, job: JobInfo, poll: float = 5.0) -> str:
        """Block until ``job`` ends; return its stage.

        Bounded: the job's timeout plus the lab's lease margin (the platform ends it by
        then), and :data:`INSPECTION_LIMIT` inspections failing in a row.

        Raises:
            AutoLabError: the job did not end in time, or cannot be inspected.
        """
        margin = self.lab.read(max_age=60.0).config.policy.lease_margin
        deadline = time.monotonic() + self.settings.timeout + margin
        failures = 0
        while True:
            try:
                info = self.api.inspect_job(job_id=job.id, namespace=self.namespace)
            except Exception as exc:  # the client raises HTTP and transport errors alike
                failures += 1
                if failures >= INSPECTION_LIMIT:
                    raise hub_error("inspect_job", exc) from None
            else:
                failures = 0
                if str(info.status.stage) in _TERMINAL:
                    return str(info.status.stage)
            if time.monotonic() >= deadline:
                raise AutoLabError(f"job {job.id} has not ended {self.settings.timeout:g}s "
                                   f"after its launch (+{margin:g}s margin); stopped waiting")
            time.sleep(min(poll, max(0.0, deadline - time.monotonic())) or 0.01)


# -- liveness ------------------------------------------------------------------------------


@dataclass
class JobCheck:
    """What :func:`check_jobs` found: experiments whose job is alive, and what it did
    about jobs that ended without a score."""

    alive: set[str] = field(default_factory=set)
    settled: list[str] = field(default_factory=list)
    # Attempts this check ended: without a score, or with one recovered from the logs.
    ended: list[tx.Reaped] = field(default_factory=list)


def check_jobs(lab: Lab, view: LabView, api: HfApi, namespace: str,
               say: Callable[[str], None] = print, *, at: datetime | None = None) -> JobCheck:
    """Look up the job of every attempt claimed for ``hf-jobs`` and settle ended ones.

    A launched attempt's job is read with ``inspect_job`` (its id is in the queue); one
    whose launch was never recorded (the launcher died in between) is found by its
    labels with ``list_jobs``. Calls scale with the attempts in flight, not with the
    lab's history.
    """
    from huggingface_hub.errors import HfHubHTTPError

    check = JobCheck()
    launched = compute.launches(view)
    moment = at or now()
    for exp in view.state.by_state("claimed"):
        if exp.backend != BACKEND:
            continue
        launch = launched.get((exp.id, exp.attempt))
        job = None
        try:
            if launch is not None:
                job_ns, _, job_id = launch["job_id"].rpartition("/")
                try:
                    job = api.inspect_job(job_id=job_id, namespace=job_ns or namespace)
                except HfHubHTTPError as exc:
                    if getattr(exc.response, "status_code", None) != 404:
                        raise
                    if exp.lease_until is not None and exp.lease_until > moment:
                        check.alive.add(exp.id)  # not found (yet?): trust the lease
                        continue
                    outcome = _settle(lab, exp, None, launch["job_id"], "DELETED",
                                      "the job no longer exists", api, job_ns or namespace,
                                      check)
                    if outcome:
                        check.settled.append(outcome)
                        _said_settled(say, outcome, exp, check)
                    continue
            else:
                labels = {"autolab-lab": lab_label(lab.store.url),
                          "autolab-experiment": label_value(exp.id),
                          "autolab-attempt": str(exp.attempt)}
                found = list(api.list_jobs(labels=labels, namespace=namespace))
                job = found[-1] if found else None
        except Exception as exc:  # one job's trouble must not expire the others' leases
            error = hub_error("inspect_job", exc)
            if _give_up_inspecting(exp, moment):
                event = tx.abandon(
                    lab, exp, f"its job cannot be inspected ({error}), "
                    f"{INSPECTION_LIMIT} times or a whole lease past its lease",
                    view.config.policy.max_attempts)
                if event:
                    check.settled.append(f"{exp.id} attempt {exp.attempt}: {event}")
                    check.ended.append(tx.Reaped(exp.id, exp.attempt, event))
                    emit(say, event, f"{event} {exp.id} attempt {exp.attempt}: its job cannot "
                         f"be inspected ({error})", experiment_id=exp.id, attempt=exp.attempt,
                         reason=f"its job cannot be inspected ({error})")
                continue
            emit(say, "job_unchecked", f"cannot check the job of {exp.id} attempt "
                 f"{exp.attempt} ({error}); keeping its lease", level=WARNING,
                 experiment_id=exp.id, attempt=exp.attempt, reason=str(error))
            check.alive.add(exp.id)
            continue
        if job is None:
            continue  # not launched (yet): the lease decides
        stage = str(job.status.stage)
        if stage not in _TERMINAL:
            check.alive.add(exp.id)
            continue
        job_ns = launch["job_id"].rpartition("/")[0] if launch else ""
        outcome = _settle(lab, exp, job, f"{job_ns or namespace}/{job.id}", stage,
                          job.status.message or "", api, job_ns or namespace, check)
        if outcome:
            check.settled.append(outcome)
            _said_settled(say, outcome, exp, check)
    return check


def _said_settled(say: Callable[[str], None], outcome: str, exp: Experiment,
                  check: JobCheck) -> None:
    """Report how an ended job's attempt was settled: the event :func:`_settle` ended it
    with (``recovered``, ``expired``, ``failed``)."""
    ended = [r.event for r in check.ended if (r.experiment_id, r.attempt) == (exp.id,
                                                                             exp.attempt)]
    emit(say, ended[-1] if ended else "settled", outcome, experiment_id=exp.id,
         attempt=exp.attempt, reason=outcome)


# Failed inspections of one attempt's job after its lease ran out, in this process.
INSPECTION_LIMIT = 3
_failed_inspections: dict[tuple[str, int], int] = {}


def _give_up_inspecting(exp: Experiment, moment: Any) -> bool:
    """Whether an attempt whose job cannot be inspected should end.

    Within its lease it keeps running on trust. Past it, a long-lived reaper gives
    up after :data:`INSPECTION_LIMIT` failed inspections; any reaper (a cron round is
    one inspection per process) gives up once a whole lease more has passed: the job's
    own timeout has then ended it on the platform anyway.
    """
    if exp.lease_until is None or exp.lease_until > moment:
        return False
    key = (exp.id, exp.attempt)
    _failed_inspections[key] = _failed_inspections.get(key, 0) + 1
    lease = (exp.lease_until - exp.claimed_at) if exp.claimed_at else None
    return (_failed_inspections[key] >= INSPECTION_LIMIT
            or (lease is not None and moment >= exp.lease_until + lease))


def _settle(lab: Lab, exp: Experiment, job: Any, job_id: str, stage: str, message: str,
            api: HfApi, namespace: str, check: JobCheck) -> str:
    """A job ended and the attempt is still open: recover its metric from the logs, or
    give the attempt up. Returns what was done ("" if the job's own submit landed)."""
    current = lab.read().state.experiments[exp.id]
    if current.state != "claimed" or current.attempt != exp.attempt:
        return ""  # its score (or another reaper) got there first
    view = lab.read()
    text = ""
    if stage != "DELETED":
        try:
            text = "\n".join(api.fetch_job_logs(job_id=job_id.rpartition("/")[2],
                                                namespace=namespace))
        except Exception:  # logs are best effort: a deleted job may have none
            text = ""
    log_ref = None
    if text:
        try:
            log_ref = store_log(lab, exp.id, exp.attempt, text.encode())
        except (AutoLabError, OSError):
            log_ref = None  # the log is a convenience; settling the attempt is not
    what = f"job {job_id} {stage}" + (f": {message}" if message else "")
    from autolab.agents.summary import classify, parse_summary
    from autolab.protocol.harness import harness_files, harness_hash

    summary = parse_summary(text)
    status, metric, _ = classify(summary.metrics, view.config.metric, view.config.bounds)
    seconds = _running_seconds(job)
    try:
        price = price_per_second(api, job.flavor) if job is not None and job.flavor else None
    except Exception:  # pricing is best effort here: the attempt must still be settled
        price = None
    cost = seconds * price if seconds is not None and price is not None else None
    if status == "ok":
        score = tx.make_score(
            exp.id, exp.attempt, status="ok", metric=metric, metrics=summary.metrics,
            reason=f"recovered from the logs of {what}", backend=BACKEND, job_id=job_id,
            harness_hash=harness_hash(harness_files(lab.store, view.main, view.config)),
            patch_hash=exp.patch_hash, agent=lab.agent, log_ref=log_ref,
            flavor=str(job.flavor) if job is not None and job.flavor else None,
            job_seconds=seconds, cost_usd=cost,
        )
        result = tx.submit(lab, score)
        if result.outcome in ("recorded", "late"):
            check.ended.append(tx.Reaped(exp.id, exp.attempt, "recovered"))
        return (f"{exp.id} attempt {exp.attempt}: {view.config.metric}={metric:.6g} recovered "
                f"from the logs of {what} ({result.outcome})")
    event = tx.abandon(lab, exp, what + (f" (log: {log_ref})" if log_ref else ""),
                       view.config.policy.max_attempts, cost_usd=cost)
    if event:
        check.ended.append(tx.Reaped(exp.id, exp.attempt, event))
    return f"{exp.id} attempt {exp.attempt}: {event} ({what})" if event else ""


def _running_seconds(job: Any) -> float | None:
    durations = getattr(job, "durations", None)
    seconds = getattr(durations, "running_secs", None) if durations else None
    return float(seconds) if seconds is not None else None


def store_log(lab: Lab, experiment_id: str, attempt: int, data: bytes) -> str:
    """Keep a run's log (its last ``LOG_CAP_BYTES``) under ``refs/autolab-logs/``.

    Outside ``refs/autolab/`` on purpose: agents never fetch logs unless asked
    (``git fetch origin refs/autolab-logs/<id>/<attempt>``).
    """
    from autolab.protocol.redact import redact
    from autolab.protocol.store import FileChange

    ref = f"{LOG_REFS}{experiment_id}/{attempt}"
    text = redact(data[-LOG_CAP_BYTES:].decode(errors="replace")).encode()
    commit = lab.store.make_commit(None, FileChange(add={"run.log": text}),
                                   f"log of {experiment_id} attempt {attempt}",
                                   agent=lab.agent)
    current = lab.store.fetch_ref(ref)
    lab.retry_transport(lambda: lab.store.push_ref(ref, commit, current))
    return ref


_users: dict[tuple[str, str | None], str] = {}


def _whoami(api: HfApi) -> str:
    """The token's user, asked once per process (planners call this every round)."""
    key = (api.endpoint, api.token if isinstance(api.token, str) else None)
    if key not in _users:
        _users[key] = api.whoami()["name"]
    return _users[key]


def liveness(lab: Lab, view: LabView, say: Callable[[str], None] = print, *,
             at: datetime | None = None) -> JobCheck:
    """Experiments whose HF job is alive (to keep their lease); settles ended jobs.

    Without a reachable Jobs API (no token, no network) nothing is vouched for and
    leases expire by time alone.
    """
    if not any(e.backend == BACKEND for e in view.state.by_state("claimed")):
        return JobCheck()
    try:
        api = hf_api()
        namespace = view.config.hf_jobs.namespace or _whoami(api)
        return check_jobs(lab, view, api, namespace, say, at=at)
    except AutoLabError:
        raise
    except Exception as exc:  # HTTP and transport errors of the client alike
        emit(say, "jobs_unchecked", f"cannot check HF jobs ({hub_error('liveness', exc)}); "
             "leases decide", level=WARNING)
        return JobCheck()
