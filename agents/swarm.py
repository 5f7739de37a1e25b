"""``autolab swarm``: a planner, N workers and a reporter as local processes.

Each agent is a separate ``autolab`` process (exactly what one would start by hand or
from cron); the swarm only starts them, forwards their output to per-agent log files,
and stops them cleanly: SIGTERM first (a worker releases its claim and kills its
run), SIGKILL if one lingers. Every agent runs until the swarm stops it, so one that
exits before (a crash, a bad setting, the OOM killer) stops the swarm with
:class:`AgentDied`: its name, exit code and the last lines of its log.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from autolab.protocol.errors import AutoLabError

TAIL_LINES = 10  # lines of a dead agent's log shown
_TAIL_BYTES = 64 * 1024  # read from the end of the log to find them
_LINE_CHARS = 300


class AgentDied(AutoLabError):
    """An agent exited on its own while the swarm was running (exit code 1).

    Attributes:
        exits: agent name -> its exit code (negative: the signal that killed it).
    """

    def __init__(self, message: str, exits: dict[str, int]) -> None:
        super().__init__(message)
        self.exits = exits


def describe_exit(code: int) -> str:
    """``exited with code 1``; ``killed by SIGKILL`` for a negative return code."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def log_tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` non-blank lines of ``path``, printable: the log holds what the
    agent printed, hypotheses and run output included, so control characters (terminal
    escapes) are shown escaped and long lines are cut."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - _TAIL_BYTES))
            text = fh.read().decode(errors="replace")
    except OSError as exc:
        return [f"(cannot read {path}: {exc.strerror})"]
    kept = [ln for ln in text.splitlines() if ln.strip()][-lines:]
    return [_printable(ln)[:_LINE_CHARS] for ln in kept]


def _printable(line: str) -> str:
    return "".join(c if c == "\t" or unicodedata.category(c)[0] != "C"
                   else repr(c)[1:-1] for c in line)


@dataclass
class Swarm:
    """Local agent processes of one lab."""

    lab: str
    workers: int = 2
    depth: int = 4
    log_dir: Path = field(default_factory=lambda: Path("autolab-logs"))
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    args: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def agent_id(self, name: str) -> str:
        """The agent id of the swarm's agent ``name``: qualified by this host, since
        swarms on other hosts name their agents alike and an agent id must name one
        live process (a worker ends the claims its id held when it starts)."""
        return f"{socket.gethostname()}-{name}"

    def _spawn(self, name: str, *args: str, fresh_id: bool = False) -> None:
        self.args[name] = args
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 (owned by the child)
        # The lab through the environment, never argv: a URL may carry credentials,
        # and every process on the host can read every other's command line.
        env = {**os.environ, **self.env, "AUTOLAB_AGENT": self.agent_id(name),
               "AUTOLAB_LAB": self.lab}
        if fresh_id:
            del env["AUTOLAB_AGENT"]  # the default: <host>-<pid>
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "autolab.agents.cli", *args],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )

    def start(self) -> None:
        self._spawn("planner", "planner", "--loop", "--depth", str(self.depth))
        for n in range(1, self.workers + 1):
            self._spawn(f"worker-{n}", "worker", "--loop")
        self._spawn("reporter", "reporter", "--loop")

    def restart(self, name: str, *, fresh_id: bool = False) -> None:
        """Start agent ``name`` again with its arguments (after it died).

        Under the same agent id, a restarted worker ends the claims its dead
        predecessor still held; with ``fresh_id`` it gets the default id (as a worker
        started again by hand would), and the claims come back through any agent on
        the host that reaps (the dead process's notes, :mod:`host_claims`).
        """
        old = self.procs[name]
        if old.poll() is None:
            raise RuntimeError(f"agent {name} is still running")
        self._spawn(name, *self.args[name], fresh_id=fresh_id)

    def alive(self) -> list[str]:
        return [name for name, proc in self.procs.items() if proc.poll() is None]

    def check(self) -> None:
        """Raise :class:`AgentDied` if an agent has exited (it should be running).

        Raises:
            AgentDied: naming every agent that exited, with its exit code and the last
                lines of its log.
        """
        exits = {name: proc.returncode for name, proc in self.procs.items()
                 if proc.poll() is not None}
        if not exits:
            return
        blocks = []
        for name, code in exits.items():
            log = self.log_dir / f"{name}.log"
            tail = "\n".join(f"  | {line}" for line in log_tail(log)) or "  (empty)"
            blocks.append(f"agent {name} {describe_exit(code)} while the swarm was running; "
                          f"last lines of {log}:\n{tail}")
        raise AgentDied("\n".join(blocks), exits)

    def stop(self, grace: float = 20.0) -> dict[str, int | None]:
        """SIGTERM every agent, wait up to ``grace`` seconds, then SIGKILL."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return {name: proc.returncode for name, proc in self.procs.items()}

    def run(self, duration: float, tick: float = 1.0, on_tick=None) -> None:  # noqa: ANN001
        """Start, call ``on_tick()`` every ``tick`` seconds for ``duration``, stop.

        Raises:
            AgentDied: an agent exited before the end; the others are stopped first.
        """
        self.start()
        end = time.monotonic() + duration
        try:
            while time.monotonic() < end:
                self.check()
                if on_tick is not None:
                    on_tick()
                time.sleep(min(tick, max(0.0, end - time.monotonic())))
            self.check()  # one that died in the last tick died before it was stopped
        finally:
            self.stop()

