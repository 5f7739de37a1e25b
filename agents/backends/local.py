"""The local backend: the experiment command as a subprocess of this machine.

The command runs in its own process group with a clean environment (only what the
lab config allows plus the basics a program needs), its output goes to a log file
capped in size, and on timeout the whole group is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import deque
from pathlib import Path

from autolab.agents.backends.base import Backend, RunRequest, RunResult
from autolab.agents.summary import classify, parse_summary

LOG_CAP_BYTES = 20 * 1024 * 1024
_TAIL_LINES = 400
# Variables a program needs to start at all; everything else must be granted by the
# lab's [run.env] table.
_PASSTHROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "USER",
                "AUTOLAB_DATA_DIR", "CUDA_VISIBLE_DEVICES")


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: os.environ[k] for k in _PASSTHROUGH if k in os.environ}
    env.setdefault("PATH", "/usr/bin:/bin")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class LocalBackend(Backend):
    """Run commands here, one at a time per worker."""

    name = "local"

    def run(self, request: RunRequest) -> RunResult:
        log_path = request.log_path or request.workdir / "run.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                request.command, shell=True, cwd=request.workdir, env=clean_env(request.env),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            )
        except OSError as exc:
            return RunResult("crash", None, {}, f"cannot start: {exc}", 0.0, log_path)
        tail: deque[bytes] = deque(maxlen=_TAIL_LINES)
        pump = threading.Thread(target=_pump, args=(proc, log_path, tail), daemon=True)
        pump.start()
        timed_out = False
        try:
            proc.wait(timeout=request.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(proc)
        except BaseException:
            kill_group(proc)  # the worker is being stopped: never leave the run behind
            raise
        pump.join(timeout=5)
        runtime = time.monotonic() - start
        text = b"".join(tail).decode(errors="replace")
        summary = parse_summary(text)
        if timed_out:
            return RunResult("timeout", None, summary.metrics,
                             f"exceeded the {request.timeout:g}s timeout", runtime, log_path,
                             proc.returncode)
        if proc.returncode != 0:
            last = next((ln for ln in reversed(text.splitlines()) if ln.strip()), "")
            return RunResult("crash", None, summary.metrics,
                             f"exit code {proc.returncode}: {last[-200:]}", runtime, log_path,
                             proc.returncode)
        status, metric, reason = classify(summary.metrics, request.metric, request.bounds)
        return RunResult(status, metric, summary.metrics, reason, runtime, log_path, 0)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, then SIGKILL it if it lingers."""
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _pump(proc: subprocess.Popen, log_path: Path, tail: deque[bytes]) -> None:
    """Copy output to the log (up to the cap) and keep the last lines for parsing."""
    written = 0
    assert proc.stdout is not None
    with open(log_path, "wb") as log:
        for line in proc.stdout:
            tail.append(line)
            if written < LOG_CAP_BYTES:
                log.write(line[: LOG_CAP_BYTES - written])
                written += len(line)
                if written >= LOG_CAP_BYTES:
                    log.write(b"\n[autolab: log capped here; the tail is kept below]\n")
        if written >= LOG_CAP_BYTES:
            log.writelines(tail)
