"""``autolab swarm``: a planner, N workers and a reporter as local processes.

Each agent is a separate ``autolab`` process (exactly what one would start by hand or
from cron); the swarm only starts them, forwards their output to per-agent log files,
and stops them cleanly: SIGTERM first (a worker releases its claim and kills its
run), SIGKILL if one lingers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


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
        """Start, call ``on_tick()`` every ``tick`` seconds for ``duration``, stop."""
        self.start()
        end = time.monotonic() + duration
        try:
            while time.monotonic() < end:
                if on_tick is not None:
                    on_tick()
                time.sleep(min(tick, max(0.0, end - time.monotonic())))
        finally:
            self.stop()

