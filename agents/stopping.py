"""Stopping a long-lived agent cleanly: SIGTERM (and Ctrl-C) become :class:`Stopped`.

A stop may arrive at any instruction. Most of an agent's cycle can simply be
abandoned at that point (every write is one atomic ref update), but not all of it: a
worker that has finished a run holds a result that exists nowhere else until its
record ref is pushed. Such stretches run :meth:`StopSignal.shielded`: a stop that
arrives inside one is remembered and raised when the outermost shielded section ends,
so the result is recorded first. Shielded sections are short and bounded (a few
pushes, each under the transport's own timeouts); a second signal does not cut them
short, a SIGKILL does (the lease then brings the attempt back).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


class Stopped(BaseException):
    """Raised in an agent when it is asked to stop (SIGTERM or SIGINT)."""


class StopSignal:
    """Turns stop signals into :class:`Stopped`, deferred inside shielded sections."""

    def __init__(self) -> None:
        self._depth = 0
        self.pending = False
        # Set by every stop signal. Library code that a stop interrupts may turn the
        # Stopped into an error of its own (pyarrow, interrupted while it imports a
        # module, raises ArrowInvalid): such an error after a stop is the stop.
        self.requested = False

    def install(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        """Route ``signals`` to this object (main thread only, as Python requires)."""
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:  # noqa: ARG002
        self.requested = True
        if self._depth:
            self.pending = True
            return
        raise Stopped()

    def request(self) -> None:
        """Ask for a stop from inside the process, as a stop signal would: raised here
        and now, or where the current shielded section ends (main thread only)."""
        self._handle(signal.SIGTERM, None)

    @property
    def shielding(self) -> bool:
        return self._depth > 0

    def check(self) -> None:
        """Raise :class:`Stopped` if a stop arrived while shielded (outside any section)."""
        if self.pending and not self._depth:
            self.pending = False
            raise Stopped()

    @contextmanager
    def shielded(self) -> Iterator[None]:
        """Run the body to its end even if a stop arrives; raise it afterwards.

        An exception from the body propagates unchanged (the stop stays pending and is
        raised at the next :meth:`check` or section end).
        """
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            raise
        self._depth -= 1
        self.check()


# One per process: signal handlers are process-wide.
STOP = StopSignal()
