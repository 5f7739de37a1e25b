"""How this machine contains the runs it starts (DESIGN.md §4.11; docs/security.md).

``$AUTOLAB_SANDBOX`` chooses:

* ``auto`` (default): ``namespaces`` where this machine allows them, else ``none``;
* ``namespaces``: always, and a run fails (reason given) where they are unavailable;
* ``none``: the process-tree sweep only.

What a sandboxed run cannot see is decided here: the host's cache clones (objects,
push spool, git config), every other experiment's worktree, and the usual credential
files and directories of the user. The mechanism
lives in :mod:`autolab.agents.backends.run_guard`.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

GUARD = Path(__file__).with_name("run_guard.py")
MODES = ("auto", "namespaces", "none")
# Credentials of the usual tools, relative to $HOME: files the run sees empty and
# directories it sees empty.
_CREDENTIAL_FILES = (".git-credentials", ".config/git/credentials", ".netrc",
                     ".cache/huggingface/token", ".huggingface/token")
_CREDENTIAL_DIRS = (".ssh", ".config/gh", ".aws", ".docker", ".config/huggingface")


def requested() -> str:
    """The mode ``$AUTOLAB_SANDBOX`` asks for (``auto`` when unset).

    Raises:
        AutoLabError: not one of :data:`MODES`.
    """
    mode = os.environ.get("AUTOLAB_SANDBOX", "auto").strip().lower() or "auto"
    if mode not in MODES:
        from autolab.protocol.errors import AutoLabError

        raise AutoLabError(f"AUTOLAB_SANDBOX={mode!r}: expected one of {', '.join(MODES)}")
    return mode


@functools.cache
def namespaces_problem() -> str | None:
    """Why runs cannot be put in namespaces here (None: they can). Probed once per
    process, by the guard itself, so the answer is the guard's own."""
    if not sys.platform.startswith("linux"):
        return f"not Linux ({sys.platform})"
    try:
        proc = subprocess.run([sys.executable, "-I", "-S", str(GUARD), "--probe"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"probe failed: {exc}"
    if proc.returncode == 0:
        return None
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else f"probe exited {proc.returncode}"


def mode() -> str:
    """The mode runs get here: ``namespaces`` or ``none``.

    Raises:
        AutoLabError: namespaces were required and are unavailable.
    """
    wanted = requested()
    if wanted == "none":
        return "none"
    problem = namespaces_problem()
    if problem is None:
        return "namespaces"
    if wanted == "namespaces":
        from autolab.protocol.errors import AutoLabError

        raise AutoLabError(f"AUTOLAB_SANDBOX=namespaces, but this machine cannot create "
                           f"them: {problem}")
    return "none"


def describe() -> str:
    """One line for an agent's start: how its runs are contained."""
    try:
        current = mode()
    except Exception as exc:  # reported, not raised: the first run says it again
        return f"runs: cannot be contained as asked ({exc})"
    if current == "namespaces":
        return ("runs: contained in user, mount and pid namespaces (no process outlives "
                "a run; worker, cache, other worktrees and credential files not visible)")
    why = namespaces_problem() if requested() == "auto" else "AUTOLAB_SANDBOX=none"
    return (f"runs: contained by a process-tree sweep only ({why}); see docs/security.md "
            "for what that leaves open")


def guard_options(workdir: Path) -> dict[str, Any]:
    """The guard's options for one run in ``workdir``.

    Raises:
        AutoLabError: namespaces were required and are unavailable.
    """
    from autolab.agents.worktree import work_root
    from autolab.protocol.git_cli import cache_root

    current = mode()
    if current == "none":
        return {"sandbox": "none"}
    home = Path.home()
    hide = [cache_root(), work_root(), *(home / d for d in _CREDENTIAL_DIRS)]
    mask = [home / f for f in _CREDENTIAL_FILES]
    hf_home = os.environ.get("HF_HOME")
    if hf_home:
        mask.append(Path(hf_home) / "token")
    real = os.path.realpath
    # Never hide what the run needs to start (an unusual $AUTOLAB_CACHE could hold it).
    needed = [real(p) for p in (sys.prefix, sys.executable, home)]
    hide = [p for p in {real(p) for p in hide}
            if not any(n == p or n.startswith(p.rstrip("/") + "/") for n in needed)]
    return {"sandbox": current, "workdir": real(workdir), "hide": sorted(hide),
            "mask": sorted({real(p) for p in mask})}
