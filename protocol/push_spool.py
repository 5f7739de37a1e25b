"""Group commit of ref updates for agents sharing one host's cache clone.

An agent writes its ref update (ref, new commit, expected old value) as a request
file in the spool; whichever agent holds the push lock pushes every pending request
in one ``git push``, with one lease per ref, and writes each requester's result. The
outcome per ref is exactly what a lone push would give; N agents cost one round trip.

A leader that dies mid-push leaves its requests for the next one; pushing them again
is harmless (each commit is unique to its writer, so "up to date" means that writer
won). Requests older than twice the git timeout belong to agents that gave up or
died, and are dropped rather than pushed late in their name. A request that cannot be
pushed at all (not a request, a bad ref name, a commit missing from the cache) would
make git refuse the whole push: it is answered with its own error and left out, so it
fails alone.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from autolab.protocol.errors import GitTimeout, TransportError

# push(*refspecs_and_leases) -> {ref: (porcelain flag, summary)}
PushFn = Callable[..., dict[str, tuple[str, str]]]
# check(ref, commit, expected) -> why the update cannot be pushed, or None
CheckFn = Callable[[str, str, "str | None"], "str | None"]
# The flag of an update that was never pushed because it cannot be (git's are " +-*=!").
INVALID = "x"


class PushSpool:
    """A directory of pending ref updates and the lock that elects who pushes them."""

    def __init__(self, path: Path, push: PushFn, timeout: float,
                 check: CheckFn | None = None) -> None:
        self.path = path
        self._push = push
        self._timeout = timeout
        self._check = check

    def push(self, ref: str, commit: str, expected: str | None) -> tuple[str, str]:
        """Move ``ref`` from ``expected`` (None: absent) to ``commit``; (flag, summary)."""
        self.path.mkdir(parents=True, exist_ok=True)
        nonce = f"{time.time_ns():020d}-{secrets.token_hex(6)}"
        request, result = self.path / f"{nonce}.req", self.path / f"{nonce}.res"
        write_atomic(request, json.dumps([ref, commit, expected]))
        # Waiters poll for their answer rather than queueing on the lock: a blocking
        # lock would hand it to every served waiter in turn, a convoy that costs more
        # than the push itself.
        deadline = time.monotonic() + 2 * self._timeout
        pause = 0.002  # grows while we wait: a push round takes tens of milliseconds
        with open(str(self.path) + ".lock", "a") as handle:
            while not result.exists():
                if time.monotonic() > deadline:
                    request.unlink(missing_ok=True)
                    raise GitTimeout(f"push of {ref} timed out in the spool")
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    time.sleep(pause)
                    pause = min(0.02, pause * 1.5)
                    continue
                try:
                    if not result.exists():
                        self._lead()
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
        answer = json.loads(result.read_text())
        result.unlink(missing_ok=True)
        return answer[0], answer[1]

    def _lead(self) -> None:
        """Push every pending request (lock held); one request per ref per round."""
        batch: dict[str, tuple[Path, str, str | None]] = {}
        stale = time.time() - 2 * self._timeout
        for leftover in self.path.glob("*.res"):
            if _made_at(leftover) < stale:  # its requester gave up long ago
                leftover.unlink(missing_ok=True)
        for request in sorted(self.path.glob("*.req")):
            if _made_at(request) < stale:  # its requester died: do not act for it
                request.unlink(missing_ok=True)
                continue
            try:
                text = request.read_text()
            except OSError:
                continue  # gone: served meanwhile
            problem = _malformed(text)
            if problem is None:
                ref, commit, expected = json.loads(text)
                problem = self._check(ref, commit, expected) if self._check else None
            if problem is not None:
                _answer(request, INVALID, problem)
                continue
            batch.setdefault(ref, (request, commit, expected))
        if not batch:
            return
        specs = [f"--force-with-lease={ref}:{expected or ''}"
                 for ref, (_, _, expected) in batch.items()]
        specs += [f"{commit}:{ref}" for ref, (_, commit, _) in batch.items()]
        try:
            status = self._push(*specs)
        except TransportError as exc:
            status = {ref: ("!", f"transport: {exc}") for ref in batch}
        for ref, (request, _, _) in batch.items():
            _answer(request, *status.get(ref, ("!", "no status from git push")))


def _answer(request: Path, flag: str, summary: str) -> None:
    write_atomic(request.with_suffix(".res"), json.dumps([flag, summary]))
    request.unlink(missing_ok=True)


def _malformed(text: str) -> str | None:
    """Why ``text`` is not a request ``[ref, commit, expected or null]``, or None."""
    try:
        value = json.loads(text)
    except ValueError:
        return "malformed spool request (not JSON)"
    if not (isinstance(value, list) and len(value) == 3 and isinstance(value[0], str)
            and isinstance(value[1], str) and (value[2] is None or isinstance(value[2], str))):
        return "malformed spool request (expected [ref, commit, expected])"
    return None


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see all of it or nothing."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _made_at(path: Path) -> float:
    """Wall-clock time a spool request was made (its name starts with time_ns)."""
    try:
        return int(path.name.split("-", 1)[0]) / 1e9
    except ValueError:
        return 0.0
