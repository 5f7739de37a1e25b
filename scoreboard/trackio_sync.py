"""Mirror a lab into Trackio (a local-first experiment tracker): runs, the best, alerts.

One Trackio project per lab. Each finished (``done``) experiment becomes one run named
``exp-<id>`` whose config is the hypothesis, the knobs its patch sets, its parent
commit, agent, backend, attempt and status, and whose one logged step holds the
score's metrics. The run ``running-best`` logs the best-so-far lab metric at each
finished experiment's step, so the metric's plot shows the best line through the
experiments' points (only ``ok`` results scored with main's harness count, as for
promotion). Anomalies (crash loops, suspicious gains, duplicate work, expired
leases, harness mismatches) become Trackio alerts on the run ``anomalies``.

Syncing is idempotent and keeps no state of its own: what is already there is read
back from Trackio's storage (each run's step, the running best's steps, alert titles).
New runs get steps after the stored ones, so a run keeps its step even if a later sync
sees the lab's rows folded in another order; a sync killed half-way is completed by
the next one.

``trackio`` is imported inside :func:`sync` only: it costs half a second to import.
"""

from __future__ import annotations

import contextlib
import io
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autolab.protocol.config import LabConfig
from autolab.protocol.errors import AutoLabError
from autolab.protocol.reader import LabView
from autolab.protocol.state import Experiment, LabState

RUN_PREFIX = "exp-"
BEST_RUN = "running-best"
ANOMALY_RUN = "anomalies"
CRASHES = ("crash", "timeout")
AGENT_STREAK = 3  # consecutive crashed runs of one agent that make a crash loop
GAIN_FACTOR = 5.0  # a new best this many times the median earlier improvement is suspicious
MIN_GAINS = 2  # earlier improvements needed before a gain can look suspicious
PROGRESS_AT = 20  # runs to write before a progress bar is worth showing
LOCK_TIMEOUT = 60.0
# Keys trackio renames (with a warning) when logged as metrics.
_RESERVED = frozenset({"project", "run", "timestamp", "step", "time", "metrics"})
_harness_cache: dict[str, str] = {}  # main commit -> harness hash (commits are immutable)


@dataclass(frozen=True)
class Anomaly:
    """Something a human should look at. ``title`` is its identity (alerts are keyed by it)."""

    title: str
    text: str
    level: str = "warn"  # info | warn | error (trackio's alert levels)


@dataclass
class SyncReport:
    """What one :func:`sync` wrote: runs, alert titles, running-best points (none: no news)."""

    project: str
    directory: str
    runs: list[str] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)
    points: int = 0  # running-best points written

    @property
    def changed(self) -> bool:
        return bool(self.runs or self.alerts or self.points)


def project_name(view: LabView) -> str:
    """The lab's ``[lab] name``, else a slug of its URL (``lab`` is the unnamed default)."""
    name = view.config.name
    if not name or name == "lab":
        tail = view.store.url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
        name = tail.removesuffix(".git") or "lab"
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "lab"


def run_name(experiment_id: str) -> str:
    return f"{RUN_PREFIX}{experiment_id}"


def finished(state: LabState) -> list[Experiment]:
    """Experiments that are ``done``, in the order their deciding scores were folded."""
    out = []
    for row in state.scores:
        exp = state.experiments.get(row["experiment_id"])
        if (exp is not None and exp.state == "done" and exp.result is not None
                and not row["late"] and row["attempt"] == exp.result["attempt"]):
            out.append(exp)
    return out


def knobs_of(patch: str, config: LabConfig) -> dict[str, Any]:
    """Knob values the patch assigns (``+NAME = value`` lines in the knob's file)."""
    from autolab.protocol.knobs import read_knob

    added: dict[str, list[str]] = defaultdict(list)
    path = None
    for line in patch.splitlines():
        if line.startswith("+++ "):
            path = line[4:].strip().removeprefix("b/")
        elif line.startswith("+") and path is not None:
            added[path].append(line[1:])
    out: dict[str, Any] = {}
    for name, knob in config.knobs.items():
        text = read_knob("\n".join(added.get(knob.file, ())), name)
        if text is not None:
            out[name] = _literal(text)
    return out


def _literal(text: str) -> Any:
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _metrics_map(value: Any) -> dict[str, float]:
    # Parquet rows give a map column as (key, value) pairs; JSON records as a dict.
    if not value:
        return {}
    items = value.items() if isinstance(value, dict) else value
    return {str(k): float(v) for k, v in items if v is not None}


def run_config(exp: Experiment, config: LabConfig) -> dict[str, Any]:
    """The Trackio config of an experiment's run."""
    result = exp.result or {}
    out: dict[str, Any] = {
        "experiment": exp.id, "hypothesis": exp.hypothesis,
        "parent_commit": exp.parent_commit, "agent": result.get("agent") or exp.agent,
        "backend": result.get("backend") or exp.backend, "flavor": result.get("flavor"),
        "attempt": result.get("attempt"),
        "status": result.get("status"), "reason": result.get("reason"),
        "patch_hash": exp.patch_hash,
    }  # no "promoted": a promotion may land after the run is synced, and runs are final
    out.update({f"knob.{k}": v for k, v in knobs_of(exp.patch, config).items()})
    return out


def run_metrics(exp: Experiment, config: LabConfig) -> dict[str, float]:
    """What an experiment's run logs: the summary block, the lab metric, time, cost, attempts."""
    result = exp.result or {}
    metrics = _metrics_map(result.get("metrics"))
    if result.get("metric") is not None:
        metrics[config.metric] = float(result["metric"])
    for key in ("runtime_s", "job_seconds", "cost_usd"):  # the last two: hf-jobs runs
        if result.get(key) is not None:
            metrics[key] = float(result[key])
    metrics["attempts"] = float(exp.attempt)
    return {metric_key(k): v for k, v in metrics.items()}


def metric_key(name: str) -> str:
    """``name`` as logged: trackio would rename (and warn about) its reserved keys."""
    return f"{name}_" if name in _RESERVED or name.startswith("__") else name


def main_harness(view: LabView) -> str | None:
    """The harness hash of ``main`` (None when no score records one: nothing to compare)."""
    if not any(s.get("harness_hash") for s in view.state.scores):
        return None
    hit = _harness_cache.get(view.main)
    if hit is None:
        from autolab.protocol.harness import harness_files, harness_hash

        hit = harness_hash(harness_files(view.store, view.main, view.config))
        if len(_harness_cache) > 64:  # a long-lived reporter sees many mains
            _harness_cache.clear()
        _harness_cache[view.main] = hit
    return hit


def _counts(result: dict[str, Any] | None, harness: str | None) -> bool:
    """Whether a result may stand as a best: ok, a metric, and main's harness."""
    if not result or result["status"] != "ok" or result["metric"] is None:
        return False
    own = result.get("harness_hash")
    return not (own and harness and own != harness)


def find_anomalies(state: LabState, config: LabConfig, harness: str | None
                   ) -> list[Anomaly]:
    """Every anomaly in the lab, in a stable order (a pure function of the state)."""
    found: list[Anomaly] = []
    crashed: dict[str, set[int]] = defaultdict(set)
    streaks: dict[str, list[str]] = defaultdict(list)
    for row in state.scores:
        agent = row.get("agent")
        if row["status"] in CRASHES:
            crashed[row["experiment_id"]].add(row["attempt"])
            if agent:
                streaks[agent].append(row["experiment_id"])
                if len(streaks[agent]) == AGENT_STREAK:
                    runs = ", ".join(run_name(e) for e in streaks[agent])
                    found.append(Anomaly(
                        f"crash loop: agent {agent} from {run_name(streaks[agent][0])}",
                        f"{AGENT_STREAK} consecutive crashed or timed-out runs: {runs}",
                        "error"))
        elif agent:
            streaks[agent] = []
        own = row.get("harness_hash")
        if own and harness and own != harness:
            found.append(Anomaly(
                f"harness mismatch: {run_name(row['experiment_id'])} attempt {row['attempt']}",
                f"scored with harness {own[:12]}; main's harness is {harness[:12]}", "error"))
    for eid, attempts in crashed.items():
        if len(attempts) >= 2:
            found.append(Anomaly(
                f"crash loop: {run_name(eid)}",
                f"{len(attempts)} attempts crashed or timed out "
                f"({', '.join(map(str, sorted(attempts)))})", "error"))
    found += _suspicious_gains(finished(state), config, harness)
    first: dict[str, str] = {}
    for exp in state.experiments.values():
        for attempt, outcome in sorted(exp.outcomes.items()):
            if outcome in ("expired", "failed"):  # reap writes "failed" for the last expiry
                found.append(Anomaly(
                    f"expired lease: {run_name(exp.id)} attempt {attempt}",
                    f"the lease ran out before a result ({outcome})", "info"))
        if not exp.patch_hash:
            continue
        if exp.patch_hash in first:
            found.append(Anomaly(
                f"duplicate work: {run_name(exp.id)}",
                f"same patch as {run_name(first[exp.patch_hash])} "
                f"(patch hash {exp.patch_hash[:12]})", "warn"))
        else:
            first[exp.patch_hash] = exp.id
    return found


def _suspicious_gains(done: list[Experiment], config: LabConfig, harness: str | None
                      ) -> list[Anomaly]:
    out = []
    best: float | None = None
    gains: list[float] = []
    sign = 1.0 if config.direction == "min" else -1.0
    for exp in done:
        if not _counts(exp.result, harness):
            continue
        value = float(exp.result["metric"])  # type: ignore[index]
        why = []
        if config.floor is not None and sign * (config.floor - value) > 0:
            why.append(f"{config.metric} {value:.6g} is beyond the floor {config.floor:.6g}")
        if best is not None and sign * (best - value) > 0:
            gain = abs(best - value)
            if len(gains) >= MIN_GAINS and gain > GAIN_FACTOR * statistics.median(gains):
                why.append(f"improves the best {best:.6g} by {gain:.6g}, over "
                           f"{GAIN_FACTOR:g}x the median earlier improvement "
                           f"{statistics.median(gains):.6g}")
            gains.append(gain)
        if best is None or sign * (best - value) > 0:
            best = value
        if why:
            out.append(Anomaly(f"suspicious gain: {run_name(exp.id)}", "; ".join(why), "warn"))
    return out


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Swallow trackio's chatter on stdout (warnings still reach stderr)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


@dataclass
class _Stored:
    """What the Trackio project already holds."""

    steps: dict[str, int]  # run name -> its first step
    best: set[int]  # steps the running best has a point at
    alerts: set[str]  # alert titles


def _stored(trackio: Any, project: str) -> _Stored:
    """Read back the project from Trackio's storage (empty if it does not exist)."""
    from trackio.sqlite_storage import SQLiteStorage

    if not SQLiteStorage.get_project_db_path(project).exists():
        return _Stored({}, set(), set())
    try:  # the read-only SQL that `trackio query project` runs
        rows = SQLiteStorage.query_project(project, "SELECT run_name, step FROM metrics",
                                           max_rows=10**9)["rows"]
    except ValueError:  # no metrics table yet
        rows = []
    steps: dict[str, int] = {}
    best: set[int] = set()
    for row in rows:
        name, step = row["run_name"], int(row["step"])
        steps[name] = min(step, steps.get(name, step))
        if name == BEST_RUN:
            best.add(step)
    return _Stored(steps, best, {a["title"] for a in trackio.Api().alerts(project)})


@dataclass
class _Plan:
    """What a sync must write."""

    runs: list[tuple[Experiment, int]]  # new runs and their steps
    points: list[tuple[int, float]]  # running-best points missing
    alerts: list[Anomaly]

    def __bool__(self) -> bool:
        return bool(self.runs or self.points or self.alerts)


def _plan(done: list[Experiment], anomalies: list[Anomaly], stored: _Stored,
          config: LabConfig, harness: str | None) -> _Plan:
    """Compare the lab with the project. New runs get steps after every stored run's, so a
    run never changes its step; the running best is recomputed over all runs' steps, so a
    point lost to a killed sync is written by the next one."""
    by_id = {e.id: e for e in done}
    steps = {e.id: stored.steps[run_name(e.id)] for e in done if run_name(e.id) in stored.steps}
    nxt = 1 + max((v for k, v in stored.steps.items() if k.startswith(RUN_PREFIX)), default=-1)
    runs = []
    for exp in done:
        if exp.id not in steps:
            steps[exp.id] = nxt
            runs.append((exp, nxt))
            nxt += 1
    points = []
    best: float | None = None
    for eid, step in sorted(steps.items(), key=lambda item: item[1]):
        result = by_id[eid].result
        if _counts(result, harness):
            value = float(result["metric"])  # type: ignore[index]
            if best is None or (value < best if config.direction == "min" else value > best):
                best = value
        if best is not None and step not in stored.best:
            points.append((step, best))
    return _Plan(runs, points, [a for a in anomalies if a.title not in stored.alerts])


def sync(view: LabView, project: str | None = None, *,
         say: Callable[[str], None] = print) -> SyncReport:
    """Bring the Trackio project of the lab up to date with ``view``; return what was added.

    Cheap when nothing is new: one SQL read and one alert read of Trackio's storage and
    an in-memory scan of the state, no writes. Writers of one project take turns (a
    lock file in Trackio's directory), so a reporter and a ``dashboard`` never both
    write a run.

    Raises:
        AutoLabError: trackio refused the project name, another sync held the lock for
            over a minute, or trackio did not store what was written.
    """
    import trackio
    from trackio.sqlite_storage import SQLiteStorage
    from trackio.utils import TRACKIO_DIR, canonical_project_name

    name = project or project_name(view)
    try:
        SQLiteStorage.validate_project_name(name)
    except ValueError as exc:
        raise AutoLabError(f"trackio project {name!r}: {exc}") from None
    report = SyncReport(name, str(TRACKIO_DIR))
    config = view.config
    harness = main_harness(view)
    done = finished(view.state)
    anomalies = find_anomalies(view.state, config, harness)
    if not _plan(done, anomalies, _stored(trackio, name), config, harness):
        return report

    from filelock import FileLock, Timeout

    Path(TRACKIO_DIR).mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(Path(TRACKIO_DIR) / f"{canonical_project_name(name)}.autolab.lock"))
    try:
        lock.acquire(timeout=LOCK_TIMEOUT)
    except Timeout:
        raise AutoLabError(f"another sync of trackio project {name} holds {lock.lock_file}"
                           ) from None
    try:
        stored = _stored(trackio, name)  # again: the lock's previous holder may have written
        _write(trackio, name, config, _plan(done, anomalies, stored, config, harness),
               len(stored.alerts), report)
    finally:
        lock.release()
    if _plan(done, anomalies, _stored(trackio, name), config, harness):
        # trackio reports its write failures as warnings only
        raise AutoLabError(f"trackio did not store all of the sync of project {name} "
                           f"({TRACKIO_DIR})")
    say(f"trackio: {len(report.runs)} run(s), {report.points} running-best point(s), "
        f"{len(report.alerts)} alert(s) added to project {name} in {TRACKIO_DIR}")
    return report


def _write(trackio: Any, project: str, config: LabConfig, plan: _Plan, n_alerts: int,
           report: SyncReport) -> None:
    """Write the plan: the new runs, then the running best's points, then the alerts."""
    from rich.console import Console
    from rich.progress import Progress

    plain = {"embed": False, "auto_log_cpu": False, "auto_log_gpu": False}
    console = Console(file=sys.stdout)  # bound before quiet() swaps sys.stdout
    with Progress(console=console, transient=True, redirect_stdout=False,
                  redirect_stderr=False,
                  disable=len(plan.runs) < PROGRESS_AT or not console.is_terminal) as bar:
        task = bar.add_task(f"trackio {project}: runs", total=len(plan.runs))
        for exp, step in plan.runs:
            with quiet():
                trackio.init(project=project, name=run_name(exp.id), group="experiments",
                             config=run_config(exp, config), resume="never", **plain)
                trackio.log(run_metrics(exp, config), step=step)
                trackio.finish()
            report.runs.append(run_name(exp.id))
            bar.advance(task)
    with quiet():
        if plan.points:
            trackio.init(project=project, name=BEST_RUN, group="lab", resume="allow",
                         config={"metric": config.metric, "direction": config.direction},
                         **plain)
            for step, value in plan.points:
                trackio.log({metric_key(config.metric): value}, step=step)
            trackio.finish()
            report.points = len(plan.points)
        if plan.alerts:
            total = n_alerts + len(plan.alerts)
            run = trackio.init(project=project, name=ANOMALY_RUN, group="lab",
                               resume="allow", **plain)
            for anomaly in plan.alerts:
                run.alert(anomaly.title, anomaly.text,
                          level=trackio.AlertLevel(anomaly.level), step=total)
                report.alerts.append(anomaly.title)
            trackio.log({"anomalies": float(total)}, step=total)
            trackio.finish()
