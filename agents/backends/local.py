"""The local backend: the experiment command as a subprocess of this machine.

The command runs under a guard (:mod:`autolab.agents.backends.run_guard`), in its own
process group and, where the machine allows, its own namespaces
(:mod:`autolab.agents.backends.sandbox`), with a clean environment (only what the
lab config allows plus the basics a program needs). Its output goes to a log file
capped in size, and everything it started is ended on timeout, after every run, and
when the worker itself dies.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from autolab.agents.backends.base import Backend, HostError, RunRequest, RunResult
from autolab.agents.backends.sandbox import GUARD, guard_options
from autolab.agents.summary import classify, parse_summary
from autolab.protocol.errors import AutoLabError
from autolab.protocol.redact import redact

LOG_CAP_BYTES = 20 * 1024 * 1024
# The guard gives a stopped run 3 s to exit, then ends the rest: wait a little longer.
_STOP_GRACE = 5.0
_TAIL_BYTES = 256 * 1024  # the end of the output, kept to parse the summary block
# Variables a program needs to start at all; everything else must be granted by the
# lab's [run.env] table.
_PASSTHROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "USER",
                "AUTOLAB_DATA_DIR", "CUDA_VISIBLE_DEVICES")


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The run's environment: the basics, this interpreter's ``bin`` first on ``PATH``
    (so ``python`` in a lab's command is the worker's own, with its packages), then the
    lab's ``[run.env]``."""
    env = {k: os.environ[k] for k in _PASSTHROUGH if k in os.environ}
    here = str(Path(sys.executable).parent)
    path = env.get("PATH", "/usr/bin:/bin")
    env["PATH"] = path if path.split(os.pathsep)[0] == here else f"{here}{os.pathsep}{path}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class LocalBackend(Backend):
    """Run commands here, one at a time per worker.

    Args:
        echo: also copy the run's output to this process's stdout (inside a remote
            job, so the job's own logs hold the summary block).
        name: the backend name recorded with scores.
    """

    name = "local"

    def __init__(self, *, echo: bool = False, name: str | None = None) -> None:
        self.echo = echo
        if name is not None:
            self.name = name

    def run(self, request: RunRequest) -> RunResult:
        log_path = request.log_path or request.workdir / "run.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            options = guard_options(request.workdir)
        except AutoLabError as exc:
            return RunResult("crash", None, {}, str(exc), 0.0, log_path)
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(GUARD), str(os.getpid()), request.command,
                 json.dumps(options)],
                cwd=request.workdir, env=clean_env(request.env), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            )
        except OSError as exc:
            return RunResult("crash", None, {}, f"cannot start: {exc}", 0.0, log_path)
        tail: deque[bytes] = deque()
        failed: list[OSError] = []
        pump = threading.Thread(target=_pump, args=(proc, log_path, tail, self.echo, failed),
                                daemon=True)
        pump.start()
        timed_out = False
        deadline = start + request.timeout
        try:
            # Waits in short steps: a log that cannot be written (a full disk) stops the
            # run at once instead of letting it block on its output until the timeout.
            while not failed:
                try:
                    proc.wait(timeout=max(0.0, min(0.25, deadline - time.monotonic())))
                    break
                except subprocess.TimeoutExpired:
                    if time.monotonic() >= deadline:
                        timed_out = True
                        break
        finally:
            # Always, even after a clean exit or when the worker is being stopped: no
            # process of the run (background children included) outlives it.
            kill_group(proc)
            pump.join(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()
        runtime = time.monotonic() - start
        if failed:
            # The log of a run given back is worth nothing; the space it took is what
            # recording the give-back needs on a full disk.
            with contextlib.suppress(OSError):
                log_path.unlink()
            raise HostError(f"cannot write the run's log {log_path}: "
                            f"{failed[0].strerror or failed[0]} (run stopped, log removed)")
        text = b"".join(tail).decode(errors="replace")
        summary = parse_summary(text)
        if timed_out:
            return RunResult("timeout", None, summary.metrics,
                             f"exceeded the {request.timeout:g}s timeout", runtime, log_path,
                             proc.returncode)
        if proc.returncode != 0:
            last = next((ln for ln in reversed(text.splitlines()) if ln.strip()), "")
            return RunResult("crash", None, summary.metrics,
                             f"exit code {proc.returncode}: {redact(last[-200:])}", runtime,
                             log_path,
                             proc.returncode)
        status, metric, reason = classify(summary.metrics, request.metric, request.bounds)
        return RunResult(status, metric, summary.metrics, reason, runtime, log_path, 0)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def kill_group(proc: subprocess.Popen) -> None:
    """End the run: SIGTERM to its group, time for the guard to end everything the run
    started (it sweeps, or its namespace ends), then SIGKILL whatever lingers."""
    if proc.poll() is None or _group_alive(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=_STOP_GRACE)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and _group_alive(proc.pid):
            time.sleep(0.05)
    if _group_alive(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _pump(proc: subprocess.Popen, log_path: Path, tail: deque[bytes],
          echo: bool = False, failed: list[OSError] | None = None) -> None:
    """Copy output to the log up to the cap, and keep its last bytes for parsing.

    Reads in chunks, so a run printing gigabytes (or one endless line) costs bounded
    memory; past the cap only the tail is kept, and written at the end. A log that
    cannot be written (``ENOSPC``, ``EIO``) is put in ``failed``; the output is then
    still drained so the run never blocks on a full pipe while it is being stopped.
    """
    assert proc.stdout is not None
    try:
        _copy(proc, log_path, tail, echo)
    except OSError as exc:
        if failed is not None:
            failed.append(exc)
        with contextlib.suppress(OSError, ValueError):
            while proc.stdout.read1(65536):  # type: ignore[attr-defined]
                pass


def _copy(proc: subprocess.Popen, log_path: Path, tail: deque[bytes], echo: bool) -> None:
    written = kept = total = 0
    assert proc.stdout is not None
    with open(log_path, "wb") as log:
        while True:
            chunk = proc.stdout.read1(65536)  # type: ignore[attr-defined]
            if not chunk:
                break
            tail.append(chunk)
            if echo:
                try:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.buffer.flush()
                except (OSError, ValueError):
                    echo = False  # nobody reads our output any more: keep draining the run
            kept += len(chunk)
            total += len(chunk)
            while kept - len(tail[0]) >= _TAIL_BYTES:
                kept -= len(tail.popleft())
            if written < LOG_CAP_BYTES:
                log.write(chunk[: LOG_CAP_BYTES - written])
                written += len(chunk)
        if total > written:
            log.write(b"\n[autolab: log capped here; its last bytes follow]\n")
            log.writelines(tail)
