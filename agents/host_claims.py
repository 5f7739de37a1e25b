"""Which process on this host holds a claim, so that a dead one's claims come back at once.

A lease is the protocol's only witness that a worker is gone, and it is slow by
design: it has to outlast the longest run. On the worker's own host there is a much
better witness: the process itself. Before a worker pushes a claim it writes a small
note next to the lab's cache clone naming the claim, its agent id and its process
(pid, the process's start time and the boot it started in, so a reused pid or a
reboot reads as gone). Any agent of the same user on the same host that reaps leases
also ends the attempts whose noted process is gone (:func:`dead_claims`).

Notes are local files, never part of the lab: a claim made on another host has no
note here and is left to its lease. A note is only trusted for the exact attempt and
agent id it names.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autolab.protocol.reader import LabView
    from autolab.protocol.state import Experiment
    from autolab.protocol.store import LabStore

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_identity(pid: int) -> str | None:
    """A string naming process ``pid`` for as long as it lives; None if there is none.

    On Linux it is the boot id and the process's start time (``/proc/<pid>/stat``), so a
    pid reused by a later process, or after a reboot, never matches. Elsewhere only the
    pid's existence is known (an empty identity).
    """
    if sys.platform.startswith("linux"):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        # Fields after the command name (which may hold spaces and parentheses):
        # state is field 3, starttime field 22.
        fields = stat[stat.rindex(")") + 2:].split()
        if fields and fields[0] in ("Z", "X"):
            return None  # a zombie has finished; only its exit status is left
        return f"{_boot_id()}:{fields[19]}"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # exists, owned by someone else
    return ""


class HostClaims:
    """The claim notes of one lab on this host (next to the lab's cache clone)."""

    def __init__(self, store: LabStore) -> None:
        base = getattr(store, "path", None)
        self.dir = Path(str(base) + ".holders") if base is not None else None

    def _file(self, experiment_id: str, attempt: int, pid: int) -> Path:
        # One file per process: two processes racing for one attempt keep both notes.
        assert self.dir is not None
        return self.dir / f"{_SAFE.sub('_', experiment_id)}.{attempt}.{pid}.json"

    def _notes(self, experiment_id: str, attempt: int) -> list[Path]:
        assert self.dir is not None
        return list(self.dir.glob(f"{_SAFE.sub('_', experiment_id)}.{attempt}.*.json"))

    def note(self, experiment_id: str, attempt: int, agent: str) -> None:
        """Record that this process is about to claim ``attempt`` as ``agent``."""
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        body = json.dumps({"experiment_id": experiment_id, "attempt": attempt,
                           "agent": agent, "pid": pid, "process": process_identity(pid)})
        target = self._file(experiment_id, attempt, pid)
        tmp = target.with_name(f".{target.name}")
        tmp.write_text(body)
        os.replace(tmp, target)

    def forget(self, experiment_id: str, attempt: int) -> None:
        if self.dir is not None:
            self._file(experiment_id, attempt, os.getpid()).unlink(missing_ok=True)

    def _read(self, path: Path) -> dict | None:
        try:
            note = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return note if isinstance(note, dict) else None

    def holder_alive(self, exp: Experiment) -> bool | None:
        """Whether the process that claimed ``exp``'s current attempt on this host lives.

        None when no note here names that attempt and agent (a claim made elsewhere,
        or before notes existed): only its lease can tell.
        """
        if self.dir is None or exp.state != "claimed":
            return None
        found = None
        for path in self._notes(exp.id, exp.attempt):
            note = self._read(path)
            if (note is None or note.get("experiment_id") != exp.id
                    or note.get("attempt") != exp.attempt or note.get("agent") != exp.agent
                    or not isinstance(note.get("pid"), int)):
                continue
            # Two processes under one agent id may both have tried: any live one holds it.
            alive = process_identity(note["pid"]) == note.get("process")
            found = alive or bool(found)
        return found

    def dead_claims(self, view: LabView) -> list[Experiment]:
        """Claimed experiments whose claim was made on this host by a process now gone.

        Also removes notes of attempts that are over and whose process is gone.
        """
        if self.dir is None or not self.dir.is_dir():
            return []
        claimed = {(e.id, e.attempt): e for e in view.state.by_state("claimed")}
        dead = []
        for exp in claimed.values():
            if self.holder_alive(exp) is False:
                dead.append(exp)
        for path in self.dir.glob("*.json"):
            note = self._read(path)
            if note is None or not self._over(note, view, path):
                continue
            pid = note.get("pid")
            if not isinstance(pid, int) or process_identity(pid) != note.get("process"):
                path.unlink(missing_ok=True)
        return dead

    @staticmethod
    def _over(note: dict, view: LabView, path: Path) -> bool:
        """Whether the attempt a note names has visibly ended in ``view``.

        A note is written before its claim is pushed, so a view that does not show the
        claim yet proves nothing (the push may land after the fetch): such a note is
        kept until it is a day old.
        """
        exp = view.state.experiments.get(note.get("experiment_id"))  # type: ignore[arg-type]
        attempt = note.get("attempt")
        if exp is not None and isinstance(attempt, int) and exp.attempt >= attempt:
            return exp.attempt > attempt or exp.state != "claimed"
        try:
            return time.time() - path.stat().st_mtime > 86400
        except OSError:
            return False
