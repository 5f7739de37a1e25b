"""Run one experiment command contained: nothing it starts outlives it, and (where
Linux namespaces are available) it sees neither the worker's processes nor the paths
it must not touch.

Started by the local backend as ``python -I -S run_guard.py <worker pid> <command>
<options JSON>`` at the head of a new session (so its pid is the run's process group
id), and exits with the command's status. Options: ``sandbox`` (``"namespaces"`` or
``"none"``), ``workdir`` (the run's own worktree), ``hide`` (directories the run sees
empty) and ``mask`` (files the run sees empty). ``--probe`` instead checks whether
namespaces work here (exit 0) and exits.

**namespaces** (Linux with user namespaces): the guard enters new user, mount and pid
namespaces and forks an init (pid 1 there), which mounts a fresh ``/proc`` (the
worker and its ancestors, their environ and cmdline, are not in it), lays an empty
tmpfs over every hidden directory and ``/dev/null`` over every masked file, mounts the
run's own worktree back in place, and runs the command as an unprivileged user of the
namespace (it cannot undo those mounts). When the command exits, or the run is
stopped, init ends and the kernel kills every process left in the namespace, however
it detached (``setsid``, double forks, daemons).

**none**: the guard makes itself a child subreaper, so every orphaned descendant of
the command (detached or not) is re-parented to it, and kills them all when the
command exits or the run is stopped. A run that kills its own guard escapes this;
the namespaces mode has no such gap (see docs/security.md).

Both modes: the guard notices the worker's death (``PR_SET_PDEATHSIG``; polling the
parent pid elsewhere) and takes the run down with it.

This file is executed directly with ``-I -S`` (isolated: no site packages, and no
``PYTHONPATH`` from a lab's environment shadowing the standard library): it must only
use the standard library and stays small so a run starts in milliseconds.
"""

import json
import os
import signal
import sys
import time

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38
_CLONE_NEWNS, _CLONE_NEWUSER, _CLONE_NEWPID = 0x00020000, 0x10000000, 0x20000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_BIND, _MS_REC, _MS_PRIVATE = 4096, 16384, 1 << 18
_GRACE = 3.0  # seconds a stopped run has to exit on SIGTERM before SIGKILL
_SANDBOX_UID = 1000  # who the run is inside the namespace when the worker is root

_libc = None


def _c():
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(result, what):
    if result != 0:
        import ctypes

        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _prctl(option, value):
    _check(_c().prctl(option, value, 0, 0, 0), f"prctl({option})")


def _mount(source, target, fstype, flags, data=None):
    enc = [None if v is None else v.encode() for v in (source, target, fstype, data)]
    _check(_c().mount(enc[0], enc[1], enc[2], flags, enc[3]), f"mount {target}")


def _take_down(signum=None, frame=None):
    """Kill the whole group (the guard included)."""
    os.killpg(0, signal.SIGKILL)


def _watch_parent_death(parent):
    """Ask Linux to signal us when the worker dies; False where that is unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        # The signal comes when the *thread* that started us exits; the backend starts
        # runs from the thread that waits for them, so that is the right moment too.
        _prctl(_PR_SET_PDEATHSIG, signal.SIGHUP)
    except (OSError, AttributeError):
        return False
    return True


def _exit_code(status):
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code  # killed by signal N -> 128 + N, like a shell


def _exec_command(command):
    """In a forked child: the command, with default signal dispositions."""
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)  # ignored dispositions survive exec
        os.execv("/bin/sh", ["/bin/sh", "-c", command])
    finally:
        os._exit(127)


# -- namespaces ------------------------------------------------------------------------


def _enter_namespaces():
    """Enter new user, mount and pid namespaces (children are born in the pid one).

    Inside, the run is an ordinary user (``_SANDBOX_UID``, or the worker's own uid
    when it is not root), mapped to the worker's uid outside: it owns the worktree,
    and loses every capability when the command is exec'd.
    """
    uid, gid = os.geteuid(), os.getegid()
    _check(_c().unshare(_CLONE_NEWUSER | _CLONE_NEWNS | _CLONE_NEWPID), "unshare")
    inner = uid or _SANDBOX_UID
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{inner} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid or _SANDBOX_UID} {gid} 1")


def _under(path, root):
    return path == root or path.startswith(root.rstrip("/") + "/")


def _lay_mounts(workdir, hide, mask):
    """In the new mount namespace: private mounts, a fresh /proc, hidden paths, and
    the run's own worktree mounted back where it was."""
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    own = os.open(workdir, os.O_PATH | os.O_DIRECTORY)  # the worktree, before it is hidden
    hidden = []
    for path in sorted(set(hide), key=len):
        if os.path.isdir(path) and not any(_under(path, h) for h in hidden):
            _mount("tmpfs", path, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755,size=1m")
            hidden.append(path)
    for path in mask:
        if os.path.isfile(path) and not any(_under(path, h) for h in hidden):
            _mount("/dev/null", path, None, _MS_BIND)
    if any(_under(workdir, h) for h in hidden):
        os.makedirs(workdir, exist_ok=True)
        _mount(f"/proc/self/fd/{own}", workdir, None, _MS_BIND | _MS_REC)
    os.close(own)


def _init(command, options):
    """pid 1 of the run's namespace: set up the mounts, run the command, and when it
    ends (or we are told to stop) end everything else in the namespace."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # the guard gone: the namespace goes too
    try:
        _lay_mounts(options["workdir"], options.get("hide", []), options.get("mask", []))
        os.chdir(options["workdir"])
        _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    except OSError as exc:
        sys.stderr.write(f"autolab: cannot set up the run's sandbox: {exc}\n")
        os._exit(126)
    signal.signal(signal.SIGTERM, _raise_stop)
    code = child = None
    try:
        child = os.fork()
        if child == 0:
            _exec_command(command)
        code = _wait_for(child)
    except _Stop:
        _kill_all(signal.SIGTERM)
        code = _wait_for(child, _GRACE)
    _kill_all(signal.SIGKILL)
    os._exit(143 if code is None else code)


class _Stop(Exception):
    """Raised in the waiting process when the worker stops the run (SIGTERM)."""


def _raise_stop(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once is enough
    raise _Stop


def _wait_for(child, grace=None):
    """Reap children until ``child`` exits; return its exit code. With ``grace``, give
    up after that many seconds (None back)."""
    deadline = None if grace is None else time.monotonic() + grace
    while True:
        try:
            pid, status = os.waitpid(-1, 0 if deadline is None else os.WNOHANG)
        except ChildProcessError:
            return None
        if pid == child:
            return _exit_code(status)
        if pid == 0:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)


def _kill_all(sig):
    _signal(-1, sig)  # from pid 1: every other process of the namespace


def _run_namespaced(command, options):
    child = os.fork()
    if child == 0:
        _init(command, options)
    # The guard, outside: relay a stop to init, and exit with what the run exited with.
    signal.signal(signal.SIGTERM, lambda s, f: _signal(child, signal.SIGTERM))
    signal.signal(signal.SIGHUP, lambda s, f: _signal(child, signal.SIGKILL) or _take_down())
    while True:
        try:
            _, status = os.waitpid(child, 0)
        except InterruptedError:
            continue
        sys.exit(_exit_code(status))


def _signal(pid, sig):
    try:  # noqa: SIM105 (contextlib is one more import on every run's start)
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# -- process-tree sweep (no namespaces) --------------------------------------------------


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        pass
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def _sweep(grace):
    """Kill every descendant (orphans come to us as the subreaper): SIGTERM, up to
    ``grace`` seconds, then SIGKILL until none is left."""
    me = os.getpid()
    deadline = time.monotonic() + grace
    sig = signal.SIGTERM if grace > 0 else signal.SIGKILL
    while True:
        while True:  # reap whatever has exited
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if pid == 0:
                break
        kids = _children(me) if sys.platform.startswith("linux") else []
        if not kids:
            return
        if sig == signal.SIGTERM and time.monotonic() > deadline:
            sig = signal.SIGKILL
        for kid in kids:
            _signal(kid, sig)
        time.sleep(0.02)


def _run_swept(parent, command, notified):
    subreaper = False
    if sys.platform.startswith("linux"):
        try:
            _prctl(_PR_SET_CHILD_SUBREAPER, 1)
            subreaper = True
        except OSError:
            pass
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGHUP, _raise_gone)
    code, grace = None, 0.0
    try:
        child = os.fork()
        if child == 0:
            _exec_command(command)
        while code is None:
            pid, status = os.waitpid(child, 0 if notified else os.WNOHANG)
            if pid:
                code = _exit_code(status)
            elif os.getppid() != parent:
                raise _Gone
            else:
                time.sleep(0.1)
    except _Gone:  # the worker died: no grace
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except _Stop:
        grace = _GRACE
    if subreaper:
        _sweep(grace)
    if code is None:
        _take_down()  # stopped: whatever is left of the group goes, the guard with it
    sys.exit(code)


class _Gone(Exception):
    """Raised in the guard when the worker died (SIGHUP from the parent-death signal)."""


def _raise_gone(signum, frame):
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    raise _Gone


def _probe():
    """Exit 0 if this machine lets us build the namespaces sandbox (else 1, reason)."""
    try:
        _enter_namespaces()
        child = os.fork()
        if child == 0:
            try:
                _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
                _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
                _mount("tmpfs", "/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m")
            except OSError as exc:
                sys.stderr.write(f"{exc}\n")
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(child, 0)
        sys.exit(_exit_code(status))
    except (OSError, AttributeError) as exc:
        sys.stderr.write(f"{exc}\n")
        sys.exit(1)


def main():
    if sys.argv[1:] == ["--probe"]:
        _probe()
    parent, command = int(sys.argv[1]), sys.argv[2]
    options = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    signal.signal(signal.SIGHUP, _take_down)
    notified = _watch_parent_death(parent)
    if os.getppid() != parent:  # the worker died before we could ask to be told
        _take_down()
    if options.get("sandbox") == "namespaces":
        try:
            _enter_namespaces()
        except OSError as exc:
            sys.stderr.write(f"autolab: cannot create the run's namespaces: {exc}\n")
            sys.exit(126)
        _run_namespaced(command, options)
    _run_swept(parent, command, notified)


if __name__ == "__main__":
    main()
