"""Run one experiment command, and take its whole process group down with the worker.

Started by the local backend as ``python -I -S run_guard.py <worker pid> <command>`` at
the head of a new session (so its pid is the run's process group id). It runs
``/bin/sh -c <command>`` as its child and exits with the command's status.

Why it exists: the worker kills the run's group on timeout and after every run, but
a worker that is itself SIGKILLed (OOM killer, a crashed host agent, ``kill -9``)
cannot; the run would go on burning a GPU for hours. The guard notices the worker's
death (``PR_SET_PDEATHSIG`` on Linux, polling the parent pid elsewhere) and kills
the group.

This file is executed directly with ``-I -S`` (isolated: no site packages, and no
``PYTHONPATH`` from a lab's environment shadowing the standard library): it must only
use the standard library and stays tiny so a run starts in milliseconds.
"""

import os
import signal
import sys
import time

_PR_SET_PDEATHSIG = 1


def _take_down(signum: object = None, frame: object = None) -> None:
    """Kill the whole group (the guard included)."""
    os.killpg(0, signal.SIGKILL)


def _watch_parent_death(parent: int) -> bool:
    """Ask Linux to signal us when the worker dies; False where that is unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        # The signal comes when the *thread* that started us exits; the backend starts
        # runs from the thread that waits for them, so that is the right moment too.
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGHUP, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    return True


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code  # killed by signal N -> 128 + N, like a shell


def main() -> None:
    parent, command = int(sys.argv[1]), sys.argv[2]
    signal.signal(signal.SIGHUP, _take_down)
    notified = _watch_parent_death(parent)
    if os.getppid() != parent:  # the worker died before we could ask to be told
        _take_down()
    # The worker stops a run with SIGTERM to the group, then SIGKILL: the guard stays
    # to reap the command, and dies with the SIGKILL if it comes to that.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = os.fork()
    if child == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # ignored dispositions survive exec
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        try:
            os.execv("/bin/sh", ["/bin/sh", "-c", command])
        finally:
            os._exit(127)
    while True:
        pid, status = os.waitpid(child, 0 if notified else os.WNOHANG)
        if pid:
            sys.exit(_exit_code(status))
        if os.getppid() != parent:
            _take_down()
        time.sleep(0.1)


if __name__ == "__main__":
    main()
