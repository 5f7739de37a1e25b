"""A local stand-in for the Hugging Face Jobs REST API, for tests.

``JobsServer`` speaks the Jobs contract the way the installed ``huggingface_hub`` client
does, so ``HfApi(endpoint=server.endpoint, token="hf_...")`` works against it unchanged.
Every created job REALLY runs: its ``command`` (plus ``arguments``) is started as a local
subprocess in its own process group, in a fresh working directory, with a minimal
environment plus the job's ``environment`` and ``secrets``; the docker image is ignored.
Its merged stdout/stderr become the job's logs, served as the Hub's server-sent events.

Routes (all JSON in camelCase, as the client parses it):

========  ===============================================  ============================
method    path                                             client method
========  ===============================================  ============================
GET       /api/whoami-v2                                   whoami (namespace default)
GET       /api/jobs/hardware                               list_jobs_hardware
POST      /api/jobs/{ns}                                   run_job
GET       /api/jobs/{ns}?label=k=v&stage=S&cursor=N         list_jobs (Link rel=next)
GET       /api/jobs/{ns}/{id}                              inspect_job, wait_for_job
GET       /api/jobs/{ns}/{id}/logs?tail=N                  fetch_job_logs (SSE)
POST      /api/jobs/{ns}/{id}/cancel                       cancel_job
POST      /api/jobs/{ns}/{id}/duplicate                    rerun_job
PUT       /api/jobs/{ns}/{id}/labels                       update_job_labels
POST      /api/scheduled-jobs/{ns}                         create_scheduled_job
GET       /api/scheduled-jobs/{ns}?label=k=v               list_scheduled_jobs
GET       /api/scheduled-jobs/{ns}/{id}                    inspect_scheduled_job
DELETE    /api/scheduled-jobs/{ns}/{id}                    delete_scheduled_job
POST      /api/scheduled-jobs/{ns}/{id}/suspend            suspend_scheduled_job
POST      /api/scheduled-jobs/{ns}/{id}/resume             resume_scheduled_job
POST      /api/scheduled-jobs/{ns}/{id}/schedule           update_scheduled_job_schedule
POST      /api/scheduled-jobs/{ns}/{id}/run                trigger_scheduled_job
PUT       /api/scheduled-jobs/{ns}/{id}/labels             update_scheduled_job_labels
========  ===============================================  ============================

Schedules never fire by themselves: a test calls ``trigger_scheduled`` to play one cron tick.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

TERMINAL_STAGES = frozenset({"COMPLETED", "CANCELED", "ERROR", "DELETED"})
REDACTED = "<redacted>"  # what responses show instead of a secret's value
DEFAULT_TIMEOUT_S = 30 * 60  # the Hub stops jobs without a timeout after 30 minutes
_BASE_PATH = ("/usr/local/bin", "/usr/bin", "/bin")
_LABEL_KEY = re.compile(r"[A-Za-z0-9_-]{1,100}")
_LABEL_VALUE = re.compile(r"[A-Za-z0-9_-]{0,100}")
_SCALAR = (str, int, float, bool)


# --- hardware -------------------------------------------------------------------------------


def _gpu(model: str, quantity: int, vram: str) -> dict[str, str]:
    return {"type": "gpu", "model": model, "quantity": str(quantity), "vram": vram,
            "manufacturer": "Nvidia"}


def hardware_flavor(name: str, pretty: str, cpu: str, ram: str, storage: str,
                    usd_per_hour: float, accelerator: dict[str, str] | None = None
                    ) -> dict[str, Any]:
    """One entry of ``GET /api/jobs/hardware``; the Hub prices flavors per minute."""
    micro = round(usd_per_hour * 1_000_000 / 60)
    return {"name": name, "prettyName": pretty, "cpu": cpu, "ram": ram,
            "ephemeralStorage": storage, "accelerator": accelerator,
            "unitCostMicroUSD": micro, "unitCostUSD": micro / 1_000_000, "unitLabel": "minute"}


DEFAULT_HARDWARE: tuple[dict[str, Any], ...] = (
    hardware_flavor("cpu-basic", "CPU Basic", "2 vCPU", "16 GB", "50 GB", 0.01),
    hardware_flavor("cpu-upgrade", "CPU Upgrade", "8 vCPU", "32 GB", "50 GB", 0.03),
    hardware_flavor("t4-small", "Nvidia T4 - small", "4 vCPU", "15 GB", "50 GB", 0.40,
                    _gpu("T4", 1, "16 GB")),
    hardware_flavor("l4x1", "1x Nvidia L4", "8 vCPU", "30 GB", "400 GB", 0.80,
                    _gpu("L4", 1, "24 GB")),
    hardware_flavor("a10g-small", "Nvidia A10G - small", "4 vCPU", "15 GB", "110 GB", 1.00,
                    _gpu("A10G", 1, "24 GB")),
    hardware_flavor("a100-large", "Nvidia A100 - large", "12 vCPU", "142 GB", "1000 GB", 2.50,
                    _gpu("A100", 1, "80 GB")),
    hardware_flavor("h200", "1x Nvidia H200", "23 vCPU", "256 GB", "3000 GB", 5.00,
                    _gpu("H200", 1, "141 GB")),
)


# --- small helpers --------------------------------------------------------------------------


class HttpError(Exception):
    """An error answer: status code and the message the client surfaces."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """The Hub's timestamp format (milliseconds, ``Z``), which ``parse_datetime`` expects."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _new_id() -> str:
    return uuid.uuid4().hex[:24]  # the Hub's ids are 24 hex digits


def _signal_group(pgid: int, sig: int) -> None:
    """Signal a job's process group; a group that is already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _exit_code(returncode: int) -> int:
    # A container reports death by signal N as 128 + N, so the Hub's message does too.
    return 128 - returncode if returncode < 0 else returncode


def _label_filters(values: Iterable[str]) -> list[tuple[str, str | None]]:
    """``label`` query values: ``key=value``, or a bare ``key`` meaning "has this key"."""
    out: list[tuple[str, str | None]] = []
    for raw in values:
        key, sep, value = raw.partition("=")
        out.append((key, value if sep else None))
    return out


def _labels_match(labels: Mapping[str, str], filters: list[tuple[str, str | None]]) -> bool:
    return all(key in labels and (value is None or labels[key] == value)
               for key, value in filters)


# --- validation -----------------------------------------------------------------------------

# Everything the installed client's ``_create_job_spec`` may send; anything else is a typo.
JOB_SPEC_FIELDS = frozenset({
    "command", "arguments", "environment", "secrets", "flavor", "timeoutSeconds", "attempts",
    "labels", "volumes", "expose", "ssh", "network", "resourceGroupId", "dockerImage", "spaceId",
})


def validate_labels(labels: Any) -> dict[str, str]:
    """Labels: keys 1-100 and values 0-100 characters of letters, digits, ``-``, ``_``."""
    if not isinstance(labels, dict):
        raise HttpError(400, "labels must be an object of string keys and string values")
    for key, value in labels.items():
        if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key):
            raise HttpError(400, f"Invalid label key {key!r}: keys must be 1-100 characters "
                                 "and contain only alphanumeric characters, dashes and underscores")
        if not isinstance(value, str) or not _LABEL_VALUE.fullmatch(value):
            raise HttpError(400, f"Invalid label value {value!r} for key {key!r}: values must be "
                                 "at most 100 characters and contain only alphanumeric "
                                 "characters, dashes and underscores")
    return dict(labels)


def _validate_env(name: str, env: Any) -> dict[str, str]:
    if not isinstance(env, dict):
        raise HttpError(400, f"{name} must be an object")
    out: dict[str, str] = {}
    for key, value in env.items():
        if not key or "=" in key or "\0" in key:
            raise HttpError(400, f"Invalid {name} variable name {key!r}")
        if not isinstance(value, _SCALAR):
            raise HttpError(400, f"{name} variable {key!r} must be a string")
        # JSON numbers/booleans become the text a shell would see.
        out[key] = json.dumps(value) if isinstance(value, bool) else str(value)
    return out


def _positive_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise HttpError(400, f"{name} must be an integer >= {minimum}")
    return value


def validate_job_spec(spec: Any, flavors: Iterable[str]) -> dict[str, Any]:
    """Check a job spec as the Hub does and return a normalised copy (raises ``HttpError``)."""
    if not isinstance(spec, dict):
        raise HttpError(400, "Expected a JSON object as the job spec")
    unknown = sorted(set(spec) - JOB_SPEC_FIELDS)
    if unknown:
        raise HttpError(400, f"Unknown job spec field(s): {', '.join(unknown)}")
    out = dict(spec)
    command = spec.get("command")
    if (not isinstance(command, list) or not command
            or not all(isinstance(part, str) for part in command)):
        raise HttpError(400, "command is required and must be a non-empty list of strings")
    arguments = spec.get("arguments", [])
    if not isinstance(arguments, list) or not all(isinstance(a, str) for a in arguments):
        raise HttpError(400, "arguments must be a list of strings")
    out["arguments"] = list(arguments)
    images = [key for key in ("dockerImage", "spaceId") if spec.get(key) is not None]
    if len(images) != 1 or not isinstance(spec[images[0]], str) or not spec[images[0]]:
        raise HttpError(400, "Exactly one of dockerImage or spaceId is required")
    known = list(flavors)
    flavor = spec.get("flavor")
    if flavor not in known:
        raise HttpError(400, f"Invalid flavor {flavor!r}; available flavors: {', '.join(known)}")
    out["environment"] = _validate_env("environment", spec.get("environment", {}))
    out["secrets"] = _validate_env("secrets", spec.get("secrets", {}))
    if "timeoutSeconds" in spec:
        out["timeoutSeconds"] = _positive_int("timeoutSeconds", spec["timeoutSeconds"], 1)
    if "attempts" in spec:
        out["attempts"] = _positive_int("attempts", spec["attempts"], 1)
    if "labels" in spec:
        out["labels"] = validate_labels(spec["labels"])
    return out


# --- cron -----------------------------------------------------------------------------------

_MACROS = {"@annually": "0 0 1 1 *", "@yearly": "0 0 1 1 *", "@monthly": "0 0 1 * *",
           "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
           "@hourly": "0 * * * *"}
_MONTHS = {m: i for i, m in enumerate(("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG",
                                       "SEP", "OCT", "NOV", "DEC"), start=1)}
_DAYS = {d: i for i, d in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))}
_FIELDS = ((0, 59, {}), (0, 23, {}), (1, 31, {}), (1, 12, _MONTHS), (0, 7, _DAYS))


def _cron_field(text: str, low: int, high: int, names: Mapping[str, int]) -> set[int]:
    def number(token: str) -> int:
        value = names.get(token.upper()) if token.isalpha() else int(token)
        if value is None or not low <= value <= high:
            raise ValueError(token)
        return value

    values: set[int] = set()
    for part in text.split(","):
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if step < 1:
            raise ValueError(part)
        if span == "*":
            first, last = low, high
        elif "-" in span:
            first, last = (number(t) for t in span.split("-", 1))
        else:
            first = number(span)
            last = high if step_text else first
        values.update(range(first, last + 1, step))
    return values


def next_cron_run(schedule: str, after: datetime) -> datetime:
    """The first minute strictly after ``after`` matching ``schedule`` (raises ValueError)."""
    fields = _MACROS.get(schedule.strip().lower(), schedule).split()
    if len(fields) != 5:
        raise ValueError(schedule)
    minutes, hours, mdays, months, wdays = (
        _cron_field(text, low, high, names) for text, (low, high, names) in zip(
            fields, _FIELDS, strict=True))
    wdays = {d % 7 for d in wdays}
    # Cron's rule: when both day fields are restricted, either one may match.
    either = fields[2] != "*" and fields[4] != "*"
    moment = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    limit = moment + timedelta(days=366 * 5)
    while moment < limit:
        day_ok = ((moment.day in mdays or (moment.isoweekday() % 7) in wdays) if either
                  else (moment.day in mdays and (moment.isoweekday() % 7) in wdays))
        if moment.month not in months or not day_ok:
            moment = (moment + timedelta(days=1)).replace(hour=0, minute=0)
        elif moment.hour not in hours:
            moment = (moment + timedelta(hours=1)).replace(minute=0)
        elif moment.minute not in minutes:
            moment += timedelta(minutes=1)
        else:
            return moment
    raise ValueError(f"{schedule} never fires")


# --- state ----------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """One HTTP request the server received (bodies as parsed JSON, secrets included)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class _Job:
    id: str
    namespace: str
    spec: dict[str, Any]
    initiator: dict[str, Any]
    created_at: datetime
    stage: str = "SCHEDULING"
    message: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    proc: subprocess.Popen[bytes] | None = None
    logs: list[tuple[datetime, str]] = field(default_factory=list)
    end_requested: str | None = None  # CANCELED or DELETED, asked for while the process runs
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def timeout_s(self) -> int:
        return int(self.spec.get("timeoutSeconds") or DEFAULT_TIMEOUT_S)


@dataclass
class _Scheduled:
    id: str
    namespace: str
    spec: dict[str, Any]
    schedule: str
    suspend: bool
    concurrency: bool
    created_at: datetime
    last_job: tuple[str, datetime] | None = None


@dataclass
class _Request:
    method: str
    query: dict[str, list[str]]
    body: Any
    handler: _Handler


Route = tuple[str, re.Pattern[str], str, bool]  # method, path pattern, method name, needs auth

_NS = r"(?P<ns>[^/]+)"
_ID = r"(?P<id>[^/]+)"
ROUTES: tuple[Route, ...] = tuple((m, re.compile(p), h, a) for m, p, h, a in (
    ("GET", r"/api/whoami-v2", "_whoami", True),
    ("GET", r"/api/jobs/hardware", "_hardware", False),
    ("POST", rf"/api/jobs/{_NS}", "_create_job", True),
    ("GET", rf"/api/jobs/{_NS}", "_list_jobs", True),
    ("GET", rf"/api/jobs/{_NS}/{_ID}", "_get_job", True),
    ("GET", rf"/api/jobs/{_NS}/{_ID}/logs", "_job_logs", True),
    ("POST", rf"/api/jobs/{_NS}/{_ID}/cancel", "_cancel_job", True),
    ("POST", rf"/api/jobs/{_NS}/{_ID}/duplicate", "_duplicate_job", True),
    ("PUT", rf"/api/jobs/{_NS}/{_ID}/labels", "_job_labels", True),
    ("POST", rf"/api/scheduled-jobs/{_NS}", "_create_scheduled", True),
    ("GET", rf"/api/scheduled-jobs/{_NS}", "_list_scheduled", True),
    ("GET", rf"/api/scheduled-jobs/{_NS}/{_ID}", "_get_scheduled", True),
    ("DELETE", rf"/api/scheduled-jobs/{_NS}/{_ID}", "_delete_scheduled", True),
    ("POST", rf"/api/scheduled-jobs/{_NS}/{_ID}/suspend", "_suspend_scheduled", True),
    ("POST", rf"/api/scheduled-jobs/{_NS}/{_ID}/resume", "_resume_scheduled", True),
    ("POST", rf"/api/scheduled-jobs/{_NS}/{_ID}/schedule", "_reschedule", True),
    ("POST", rf"/api/scheduled-jobs/{_NS}/{_ID}/run", "_run_scheduled_now", True),
    ("PUT", rf"/api/scheduled-jobs/{_NS}/{_ID}/labels", "_scheduled_labels", True),
))


# --- the server -----------------------------------------------------------------------------


class JobsServer:
    """A threaded local Hugging Face Jobs API that really runs each job as a subprocess.

    Args:
        user: the token owner's name, the default namespace (``whoami``).
        orgs: further namespaces the token may use.
        tokens: accepted bearer tokens; ``None`` accepts any token starting with ``hf_``.
        hardware: the flavor list (``DEFAULT_HARDWARE``); created jobs must use one of these.
        extra_env: variables added to every job's minimal environment.
        path_prefix: directories put before the system ``PATH`` of every job (e.g. a venv's
            ``bin`` so ``autolab`` resolves).
        workdir: where each job gets its fresh working directory (a temp dir by default).
        page_size: jobs per ``list_jobs`` page; more pages are linked with ``Link: rel=next``.
        kill_grace_s: between SIGTERM and SIGKILL on cancel / timeout, as ``docker stop``.
        keepalive_s: idle time before an SSE ``: keep-alive`` comment (the Hub uses 30 s).
    """

    def __init__(self, *, user: str = "autolab-test", orgs: Iterable[str] = (),
                 tokens: Iterable[str] | None = None,
                 hardware: Iterable[dict[str, Any]] = DEFAULT_HARDWARE,
                 extra_env: Mapping[str, str] | None = None,
                 path_prefix: Iterable[str | Path] = (), workdir: str | Path | None = None,
                 page_size: int = 100, kill_grace_s: float = 2.0,
                 keepalive_s: float = 30.0) -> None:
        self.user = user
        self.orgs = list(orgs)
        self.tokens = None if tokens is None else set(tokens)
        self.hardware = [dict(h) for h in hardware]
        self.extra_env = dict(extra_env or {})
        self.path_prefix = [str(p) for p in path_prefix]
        self.page_size = page_size
        self.kill_grace_s = kill_grace_s
        self.keepalive_s = keepalive_s
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="hf-jobs-"))
        self._cond = threading.Condition()
        self._jobs: dict[str, _Job] = {}
        self._scheduled: dict[str, _Scheduled] = {}
        self._requests: list[RecordedRequest] = []
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._httpd: _HTTPServer | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> JobsServer:
        """Listen on a free loopback port and serve in a background thread."""
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.app = self
        thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                  name="hf-jobs-server", daemon=True)
        thread.start()
        return self

    def stop(self) -> None:
        """Kill every job process, end open log streams, stop serving, drop the workdir."""
        with self._cond:
            self._closing = True
            procs = [j.proc for j in self._jobs.values() if j.proc and j.stage not in
                     TERMINAL_STAGES]
            self._cond.notify_all()
        for proc in procs:
            _signal_group(proc.pid, signal.SIGKILL)
        for thread in list(self._threads):
            thread.join(5)
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> JobsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """The base URL to pass as ``HfApi(endpoint=...)``."""
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # -- Python-side API for tests -----------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of every request received so far, oldest first."""
        with self._cond:
            return list(self._requests)

    def job(self, job_id: str) -> dict[str, Any]:
        """The job as ``GET /api/jobs/{ns}/{id}`` would return it."""
        with self._cond:
            return self._job_json(self._jobs[job_id])

    def pid(self, job_id: str) -> int | None:
        """The job's main process id (also its process group id), once started."""
        with self._cond:
            proc = self._jobs[job_id].proc
            return proc.pid if proc else None

    def logs(self, job_id: str) -> list[str]:
        """The job's captured output lines so far."""
        with self._cond:
            return [line for _, line in self._jobs[job_id].logs]

    def wait_job(self, job_id: str, timeout: float = 10.0) -> str:
        """Block until the job is in a terminal stage and return that stage."""
        job = self._jobs[job_id]
        if not job.done.wait(timeout):
            raise TimeoutError(f"job {job_id} still {job.stage} after {timeout}s")
        return job.stage

    def kill_process(self, job_id: str) -> None:
        """SIGKILL the job's process group behind the API's back: the job ends in ERROR."""
        with self._cond:
            proc = self._jobs[job_id].proc
        if proc is None:
            raise RuntimeError(f"job {job_id} has no process yet")
        _signal_group(proc.pid, signal.SIGKILL)

    def delete_job(self, job_id: str) -> None:
        """Delete a job as the Hub's UI would: kill it if running, stage DELETED."""
        self._end_job(self._jobs[job_id], "DELETED")

    def trigger_scheduled(self, scheduled_id: str) -> str | None:
        """Play one cron tick of a scheduled job; return the new job's id.

        Returns ``None`` where the Hub's scheduler would not start a run: the scheduled job
        is suspended, or it forbids concurrency and its previous run is still going.
        """
        with self._cond:
            sched = self._scheduled[scheduled_id]
            if sched.suspend or self._blocked_by_running_run(sched):
                return None
            job = self._start_scheduled_run(sched)
        return job.id

    # -- HTTP dispatch -----------------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._cond:
            self._requests.append(request)

    def _dispatch(self, handler: _Handler, method: str, path: str,
                  query: dict[str, list[str]], body: Any
                  ) -> tuple[int, Any, dict[str, str]] | None:
        """Route one request; ``None`` means the handler already streamed its answer."""
        allowed: list[str] = []
        for route_method, pattern, name, needs_auth in ROUTES:
            match = pattern.fullmatch(path)
            if not match:
                continue
            if route_method != method:
                allowed.append(route_method)
                continue
            if needs_auth:
                self._authenticate(handler.headers.get("Authorization"))
            params = match.groupdict()
            if "ns" in params:
                self._authorize(params["ns"])
            action: Callable[..., tuple[int, Any, dict[str, str]] | None] = getattr(self, name)
            return action(_Request(method, query, body, handler), **params)
        if allowed:
            raise HttpError(405, f"Method {method} not allowed; use {', '.join(allowed)}")
        raise HttpError(404, f"Not Found: {path}")

    def _authenticate(self, header: str | None) -> None:
        scheme, _, token = (header or "").partition(" ")
        valid = (token in self.tokens) if self.tokens is not None else token.startswith("hf_")
        if scheme.lower() != "bearer" or not valid:
            raise HttpError(401, "Invalid credentials in Authorization header")

    def _authorize(self, namespace: str) -> None:
        if namespace != self.user and namespace not in self.orgs:
            raise HttpError(403, f"You don't have access to namespace '{namespace}'")

    # -- JSON views --------------------------------------------------------------------------

    def _owner(self, namespace: str) -> dict[str, str]:
        kind = "user" if namespace == self.user else "org"
        return {"id": hashlib.sha1(namespace.encode()).hexdigest()[:24], "name": namespace,
                "type": kind}

    def _spec_json(self, spec: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in spec.items() if k != "secrets"}
        out["secrets"] = {key: REDACTED for key in spec.get("secrets", {})}
        return out

    def _job_json(self, job: _Job) -> dict[str, Any]:
        spec = self._spec_json(job.spec)
        end = job.finished_at or _now()
        out: dict[str, Any] = {
            "id": job.id,
            "createdAt": iso(job.created_at),
            "command": spec["command"],
            "arguments": spec["arguments"],
            "environment": spec["environment"],
            "secrets": spec["secrets"],
            "flavor": spec["flavor"],
            "timeoutSeconds": job.timeout_s,
            "status": {"stage": job.stage, "message": job.message},
            "durations": {
                "schedulingSecs": int(((job.started_at or end) - job.created_at).total_seconds()),
                "runningSecs": (int((end - job.started_at).total_seconds())
                                if job.started_at else None),
                "totalSecs": int((end - job.created_at).total_seconds()),
            },
            "owner": self._owner(job.namespace),
            "initiator": job.initiator,
        }
        for key in ("dockerImage", "spaceId", "labels", "volumes", "expose", "network"):
            if key in spec:
                out[key] = spec[key]
        if "attempts" in spec:
            out["retry"] = spec["attempts"] - 1
        if job.started_at:
            out["startedAt"] = iso(job.started_at)
        if job.finished_at:
            out["finishedAt"] = iso(job.finished_at)
        return out

    def _scheduled_json(self, sched: _Scheduled) -> dict[str, Any]:
        last = sched.last_job
        next_run = None if sched.suspend else next_cron_run(sched.schedule, _now())
        return {
            "id": sched.id,
            "createdAt": iso(sched.created_at),
            "jobSpec": self._spec_json(sched.spec),
            "schedule": sched.schedule,
            "suspend": sched.suspend,
            "concurrency": sched.concurrency,
            "status": {"lastJob": {"id": last[0], "at": iso(last[1])} if last else None,
                       "nextJobRunAt": iso(next_run) if next_run else None},
            "owner": self._owner(sched.namespace),
        }

    # -- lookups -----------------------------------------------------------------------------

    def _find_job(self, ns: str, job_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is None or job.namespace != ns:
            raise HttpError(404, f"Job {job_id} not found in namespace {ns}")
        return job

    def _find_scheduled(self, ns: str, sched_id: str) -> _Scheduled:
        sched = self._scheduled.get(sched_id)
        if sched is None or sched.namespace != ns:
            raise HttpError(404, f"Scheduled job {sched_id} not found in namespace {ns}")
        return sched

    def _flavors(self) -> list[str]:
        return [h["name"] for h in self.hardware]

    # -- job routes --------------------------------------------------------------------------

    def _whoami(self, req: _Request) -> tuple[int, Any, dict[str, str]]:
        orgs = [{"type": "org", "name": o, "id": self._owner(o)["id"]} for o in self.orgs]
        return 200, {"type": "user", "id": self._owner(self.user)["id"], "name": self.user,
                     "fullname": self.user, "orgs": orgs,
                     "auth": {"type": "access_token",
                              "accessToken": {"displayName": "tests", "role": "write"}}}, {}

    def _hardware(self, req: _Request) -> tuple[int, Any, dict[str, str]]:
        return 200, self.hardware, {}

    def _create_job(self, req: _Request, ns: str) -> tuple[int, Any, dict[str, str]]:
        spec = validate_job_spec(req.body, self._flavors())
        with self._cond:
            job = self._new_job(ns, spec, {"type": "user", **self._owner(self.user)})
            return 200, self._job_json(job), {}

    def _list_jobs(self, req: _Request, ns: str) -> tuple[int, Any, dict[str, str]]:
        filters = _label_filters(req.query.get("label", []))
        stages = {s.upper() for s in req.query.get("stage", [])}
        cursor = req.query.get("cursor", ["0"])[0]
        if not cursor.isdigit():
            raise HttpError(400, f"Invalid cursor {cursor!r}")
        offset = int(cursor)
        with self._cond:
            jobs = [self._job_json(j) for j in self._jobs.values() if j.namespace == ns
                    and _labels_match(j.spec.get("labels", {}), filters)
                    and (not stages or j.stage in stages)]
        page = jobs[offset:offset + self.page_size]
        headers: dict[str, str] = {}
        if offset + self.page_size < len(jobs):
            query = [(k, v) for k, vs in req.query.items() if k != "cursor" for v in vs]
            query.append(("cursor", str(offset + self.page_size)))
            url = f"{self.endpoint}/api/jobs/{ns}?{urlencode(query)}"
            headers["Link"] = f'<{url}>; rel="next"'
        return 200, page, headers

    def _get_job(self, req: _Request, ns: str, id: str) -> tuple[int, Any, dict[str, str]]:
        with self._cond:
            return 200, self._job_json(self._find_job(ns, id)), {}

    def _cancel_job(self, req: _Request, ns: str, id: str) -> tuple[int, Any, dict[str, str]]:
        with self._cond:
            job = self._find_job(ns, id)
        self._end_job(job, "CANCELED")  # a finished job stays as it was, like a no-op
        return 200, None, {}

    def _duplicate_job(self, req: _Request, ns: str, id: str
                       ) -> tuple[int, Any, dict[str, str]]:
        with self._cond:
            old = self._find_job(ns, id)
            job = self._new_job(ns, dict(old.spec), {"type": "duplicated-job", "id": old.id})
            return 200, self._job_json(job), {}

    def _job_labels(self, req: _Request, ns: str, id: str) -> tuple[int, Any, dict[str, str]]:
        labels = validate_labels((req.body or {}).get("labels") if isinstance(req.body, dict)
                                 else None)
        with self._cond:
            job = self._find_job(ns, id)
            job.spec["labels"] = labels
            return 200, self._job_json(job), {}

    def _job_logs(self, req: _Request, ns: str, id: str) -> None:
        with self._cond:
            job = self._find_job(ns, id)
        tail_text = req.query.get("tail", [None])[0]
        if tail_text is not None and not tail_text.isdigit():
            raise HttpError(400, f"Invalid tail {tail_text!r}")
        tail = int(tail_text) if tail_text is not None else None
        _stream_logs(self, req.handler, job, tail)
        return None

    # -- scheduled-job routes ----------------------------------------------------------------

    def _create_scheduled(self, req: _Request, ns: str) -> tuple[int, Any, dict[str, str]]:
        body = req.body
        if not isinstance(body, dict):
            raise HttpError(400, "Expected a JSON object")
        unknown = sorted(set(body) - {"jobSpec", "schedule", "suspend", "concurrency"})
        if unknown:
            raise HttpError(400, f"Unknown field(s): {', '.join(unknown)}")
        spec = validate_job_spec(body.get("jobSpec"), self._flavors())
        schedule = _validate_schedule(body.get("schedule"))
        flags = {k: body.get(k, False) for k in ("suspend", "concurrency")}
        if not all(isinstance(v, bool) for v in flags.values()):
            raise HttpError(400, "suspend and concurrency must be booleans")
        with self._cond:
            sched = _Scheduled(_new_id(), ns, spec, schedule, flags["suspend"],
                               flags["concurrency"], _now())
            self._scheduled[sched.id] = sched
            return 200, self._scheduled_json(sched), {}

    def _list_scheduled(self, req: _Request, ns: str) -> tuple[int, Any, dict[str, str]]:
        filters = _label_filters(req.query.get("label", []))
        with self._cond:
            return 200, [self._scheduled_json(s) for s in self._scheduled.values()
                         if s.namespace == ns
                         and _labels_match(s.spec.get("labels", {}), filters)], {}

    def _get_scheduled(self, req: _Request, ns: str, id: str
                       ) -> tuple[int, Any, dict[str, str]]:
        with self._cond:
            return 200, self._scheduled_json(self._find_scheduled(ns, id)), {}

    def _delete_scheduled(self, req: _Request, ns: str, id: str
                          ) -> tuple[int, Any, dict[str, str]]:
        with self._cond:
            del self._scheduled[self._find_scheduled(ns, id).id]
        return 200, None, {}

    def _set_suspend(self, ns: str, sched_id: str, suspend: bool
                     ) -> tuple[int, Any, dict[str, str]]:
        with self._cond:
            sched = self._find_scheduled(ns, sched_id)
            sched.suspend = suspend
            return 200, self._scheduled_json(sched), {}

    def _suspend_scheduled(self, req: _Request, ns: str, id: str
                           ) -> tuple[int, Any, dict[str, str]]:
        return self._set_suspend(ns, id, True)

    def _resume_scheduled(self, req: _Request, ns: str, id: str
                          ) -> tuple[int, Any, dict[str, str]]:
        return self._set_suspend(ns, id, False)

    def _reschedule(self, req: _Request, ns: str, id: str) -> tuple[int, Any, dict[str, str]]:
        body = req.body if isinstance(req.body, dict) else {}
        schedule = _validate_schedule(body.get("schedule"))
        with self._cond:
            sched = self._find_scheduled(ns, id)
            sched.schedule = schedule
            return 200, self._scheduled_json(sched), {}

    def _run_scheduled_now(self, req: _Request, ns: str, id: str
                           ) -> tuple[int, Any, dict[str, str]]:
        with self._cond:
            sched = self._find_scheduled(ns, id)
            if self._blocked_by_running_run(sched):
                raise HttpError(409, "A run of this scheduled job is already in progress and "
                                     "concurrency is disabled")
            return 200, self._job_json(self._start_scheduled_run(sched)), {}

    def _scheduled_labels(self, req: _Request, ns: str, id: str
                          ) -> tuple[int, Any, dict[str, str]]:
        labels = validate_labels((req.body or {}).get("labels") if isinstance(req.body, dict)
                                 else None)
        with self._cond:
            sched = self._find_scheduled(ns, id)
            sched.spec["labels"] = labels
            return 200, self._scheduled_json(sched), {}

    def _blocked_by_running_run(self, sched: _Scheduled) -> bool:
        return not sched.concurrency and any(
            j.initiator.get("id") == sched.id and j.initiator.get("type") == "scheduled-job"
            and j.stage not in TERMINAL_STAGES for j in self._jobs.values())

    def _start_scheduled_run(self, sched: _Scheduled) -> _Job:
        job = self._new_job(sched.namespace, dict(sched.spec),
                            {"type": "scheduled-job", "id": sched.id})
        sched.last_job = (job.id, job.created_at)
        return job

    # -- running jobs ------------------------------------------------------------------------

    def _new_job(self, ns: str, spec: dict[str, Any], initiator: dict[str, Any]) -> _Job:
        """Register a job and start its runner thread (call with the lock held)."""
        if self._closing:
            raise HttpError(503, "Server is shutting down")
        job = _Job(_new_id(), ns, spec, initiator, _now())
        self._jobs[job.id] = job
        thread = threading.Thread(target=self._run, args=(job,), name=f"job-{job.id}",
                                  daemon=True)
        self._threads.append(thread)
        thread.start()
        return job

    def _job_env(self, job: _Job, home: Path) -> dict[str, str]:
        env = {"PATH": os.pathsep.join([*self.path_prefix, *_BASE_PATH]), "HOME": str(home),
               "LANG": "C.UTF-8"}
        env.update(self.extra_env)
        env.update(job.spec["environment"])
        env.update(job.spec["secrets"])  # secrets win, as on the Hub
        return env

    def _run(self, job: _Job) -> None:
        """Runner thread: start the process, enforce the timeout, settle the final stage."""
        home = self.workdir / job.id
        home.mkdir(parents=True, exist_ok=True)
        argv = [*job.spec["command"], *job.spec["arguments"]]
        with self._cond:
            if job.stage != "SCHEDULING" or self._closing:
                return  # canceled or deleted before it could start
            try:
                proc = subprocess.Popen(argv, cwd=home, env=self._job_env(job, home),
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as exc:
                self._finish(job, "ERROR", f"Failed to start the job command: {exc}")
                return
            job.proc, job.stage, job.started_at = proc, "RUNNING", _now()
            self._cond.notify_all()
        assert proc.stdout is not None
        reader = threading.Thread(target=self._pump, args=(job, proc.stdout), daemon=True)
        reader.start()
        timed_out = False
        try:
            returncode = proc.wait(timeout=job.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            returncode = self._stop_group(proc)
        # A container dies with its main process: kill what it left behind, which also
        # closes the log pipe so the reader sees EOF.
        _signal_group(proc.pid, signal.SIGKILL)
        reader.join(5)
        with self._cond:
            if job.end_requested:
                self._finish(job, job.end_requested, None)
            elif timed_out:
                self._finish(job, "ERROR", f"Job timed out after {job.timeout_s} seconds")
            elif returncode == 0:
                self._finish(job, "COMPLETED", None)
            else:
                self._finish(job, "ERROR", f"Job failed with exit code: {_exit_code(returncode)}")

    def _stop_group(self, proc: subprocess.Popen[bytes]) -> int:
        """SIGTERM the group, then SIGKILL after the grace period; return the exit status."""
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(self.kill_grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            return proc.wait()

    def _pump(self, job: _Job, stream: Any) -> None:
        """Reader thread: one log event per output line, timestamped on arrival."""
        with stream:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                with self._cond:
                    job.logs.append((_now(), line))
                    self._cond.notify_all()

    def _finish(self, job: _Job, stage: str, message: str | None) -> None:
        """Settle a job's terminal stage (call with the lock held)."""
        job.stage, job.message = stage, message
        job.finished_at = job.finished_at or _now()
        job.done.set()
        self._cond.notify_all()

    def _end_job(self, job: _Job, stage: str) -> None:
        """Cancel or delete: stop the process group and wait until the stage is settled."""
        with self._cond:
            if job.stage in TERMINAL_STAGES:
                return
            if job.proc is None:
                self._finish(job, stage, None)
                return
            job.end_requested = stage
            proc = job.proc
        _signal_group(proc.pid, signal.SIGTERM)
        if not job.done.wait(self.kill_grace_s):
            _signal_group(proc.pid, signal.SIGKILL)
            job.done.wait(10)


def _validate_schedule(schedule: Any) -> str:
    if not isinstance(schedule, str):
        raise HttpError(400, "schedule is required")
    try:
        next_cron_run(schedule, _now())
    except ValueError:
        raise HttpError(400, f"Invalid schedule {schedule!r}: use @hourly, @daily, @weekly, "
                             "@monthly, @yearly or a 5-field CRON expression") from None
    return schedule


def _stream_logs(app: JobsServer, handler: _Handler, job: _Job, tail: int | None) -> None:
    """Serve ``/logs`` as the Hub does: SSE ``data: {"data", "timestamp"}`` events, replaying
    history and then following live output; the stream ends once the job has ended."""
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Cache-Control", "no-cache")
    handler.end_headers()

    def event(moment: datetime, text: str) -> bytes:
        payload = json.dumps({"data": text, "timestamp": iso(moment)})
        return f"data: {payload}\n\n".encode()

    sent = None  # log lines already sent; None until the banner/tail decision is made
    while True:
        with app._cond:
            while (not app._closing and job.stage not in TERMINAL_STAGES
                   and ((sent is None and job.started_at is None)
                        or (sent is not None and sent >= len(job.logs)))):
                if not app._cond.wait(app.keepalive_s):
                    break
            chunk: list[bytes] = []
            if sent is None and job.started_at is not None:
                # The Hub opens with a banner (which the client filters out); a tail skips it.
                if tail is None:
                    chunk.append(event(job.started_at,
                                       f"===== Job started at {iso(job.started_at)} ====="))
                sent = max(0, len(job.logs) - tail) if tail is not None else 0
            if sent is not None:
                chunk.extend(event(moment, text) for moment, text in job.logs[sent:])
                sent = len(job.logs)
            finished = job.stage in TERMINAL_STAGES or app._closing
        try:
            handler.wfile.write(b"".join(chunk) if chunk else
                                b"" if finished else b": keep-alive\n\n")
            handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return  # the client went away (e.g. it stopped iterating)
        if finished:
            return


def _error(status: int, message: str) -> tuple[int, Any, dict[str, str]]:
    # The client reads the JSON ``error`` and the ``X-Error-Message`` header (latin-1 only).
    header = message.encode("ascii", "replace").decode()
    return status, {"error": message}, {"X-Error-Message": header}


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # open log streams must not keep the test process alive
    app: JobsServer


class _Handler(BaseHTTPRequestHandler):
    """Parses each request, records it, and hands it to ``JobsServer._dispatch``."""

    server: _HTTPServer
    protocol_version = "HTTP/1.0"  # one request per connection; streams end by closing

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean; tests read ``JobsServer.requests`` instead

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        app = self.server.app
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        app._record(RecordedRequest(method, url.path, query, dict(self.headers.items()), body))
        try:
            if isinstance(body, str):
                raise HttpError(400, "Request body is not valid JSON")
            answer = app._dispatch(self, method, url.path, query, body)
        except HttpError as err:
            answer = _error(err.status, err.message)
        except (BrokenPipeError, ConnectionResetError):
            return
        except Exception as exc:  # a server bug: answer 500 so the test sees it, not a hang
            answer = _error(500, f"{type(exc).__name__}: {exc}")
        if answer is not None:
            self._send(*answer)

    def _send(self, status: int, payload: Any, headers: Mapping[str, str]) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
