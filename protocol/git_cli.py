"""How autolab runs the git CLI: environment, credentials, and reading its answers.

Shared by the cache clone (:mod:`autolab.protocol.gitstore`): timeouts, an environment
that never prompts, a token handed to git for the lab's host only, and the words that
tell a lost race, a broken transport and a damaged local clone apart.

Every git process autolab starts goes through :func:`run_git`: it has a timeout
(``$AUTOLAB_GIT_TIMEOUT``, default 60 s), runs in a process group of its own that is
killed whole when the timeout passes (git's helpers, such as ``git-remote-https`` or
``ssh``, die with it instead of lingering), and its failures to start or finish are
errors with one line, never a ``TimeoutExpired`` or ``OSError`` traceback.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote

from autolab.protocol.errors import Conflict, GitTimeout, LabError, TransportError
from autolab.protocol.push_spool import INVALID
from autolab.protocol.redact import redact

DEFAULT_GIT_TIMEOUT = 60.0


def _timeout_from_env() -> float:
    """``$AUTOLAB_GIT_TIMEOUT`` in seconds; the default when unset, not a number, or
    not positive (a typo must not turn every command into a traceback)."""
    raw = os.environ.get("AUTOLAB_GIT_TIMEOUT", "")
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_GIT_TIMEOUT
    return value if 0 < value < float("inf") else DEFAULT_GIT_TIMEOUT


GIT_TIMEOUT = _timeout_from_env()
# An HTTP transfer that moves nothing at all (under 1 byte/s: a busy server still sends
# keep-alives) for this long is abandoned by git itself, with its own message.
LOW_SPEED_LIMIT = "1"
LOW_SPEED_TIME = str(max(1, int(min(30.0, GIT_TIMEOUT))))
# What git says when its transport gave up on a silent peer (curl's low-speed limit,
# ssh's keep-alives, a TCP connect timeout): a timeout, like the process timeout.
TIMED_OUT = ("Operation too slow", "Operation timed out", "Connection timed out",
             "Timeout, server", "timed out")
OID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # SHA-1 or SHA-256 object ids
# Rejections that mean "another writer won", as opposed to a broken transport.
LOST_RACE = ("stale info", "fetch first", "non-fast-forward", "already exists")
# What git says when the *local* cache clone is broken (not the remote or the network).
LOCAL_DAMAGE = ("not a git repository", "corrupt", "bad object", "unable to read",
                 "did not send all necessary objects", "invalid object", "packfile",
                 "bad config", "unknown repository format", "missing blob", "missing tree")


class CacheDamaged(TransportError):
    """The host's cache clone of a lab is deleted or corrupted (it gets rebuilt)."""


class GitNotStarted(TransportError):
    """Git could not be started at all (not installed, arguments too long for the OS,
    a working directory that is gone); ``errno`` says which."""

    def __init__(self, message: str, errno: int | None) -> None:
        super().__init__(message)
        self.errno = errno


def run_git(args: Sequence[str], *, timeout: float = GIT_TIMEOUT, cwd: Path | str | None = None,
            env: dict[str, str] | None = None, input: bytes | str | None = None,
            text: bool = True, what: str = "") -> subprocess.CompletedProcess:
    """Run ``git *args``, capturing its output, for at most ``timeout`` seconds.

    Git runs in a new session (its own process group). When the timeout passes, the
    whole group is killed, so a transport helper that git started cannot keep a pipe
    open or outlive the command; a ``KeyboardInterrupt`` kills the group too.

    Args:
        what: names the target in messages (a lab URL, redacted here, or a path).

    Raises:
        GitTimeout: the command did not finish in time.
        GitNotStarted: git could not be started (not installed, arguments too long
            for the OS, a working directory that is gone).
    """
    argv = ["git", *args]
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, text=text)
    except OSError as exc:
        where = f" on {redact(what)}" if what else ""
        raise GitNotStarted(f"cannot run git {verb(args)}{where}: {exc.strerror or exc}",
                            exc.errno) from None
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        where = f" on {redact(what)}" if what else ""
        raise GitTimeout(f"git {verb(args)} timed out after {timeout:g}s{where}") from None
    except BaseException:
        _kill_group(proc)
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``'s process group and reap ``proc`` (its pipes close with it)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(OSError, ValueError, subprocess.TimeoutExpired):
        proc.communicate(timeout=5)
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def verb(args: Sequence[str]) -> str:
    """The git subcommand in ``args`` (skipping ``-c k=v``, ``--git-dir X`` and the like)."""
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("-c", "-C", "--git-dir", "--work-tree"):
            skip = True
        elif not arg.startswith("-"):
            return arg
    return "command"


def cache_root() -> Path:
    """Directory holding the per-lab cache clones."""
    env = os.environ.get("AUTOLAB_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "autolab"


def normalize_url(url: str) -> str:
    """Absolute path for local labs, the URL unchanged otherwise."""
    if "://" in url or re.match(r"^[\w.-]+@[\w.-]+:", url):
        return url
    return str(Path(url).expanduser().resolve())


def split_credentials(url: str) -> tuple[str, str | None]:
    """``(url without credentials, "user:password" or None)`` for an ``http(s)`` URL.

    Credentials written into a lab URL never reach git's argv or a config file: the
    store keeps the bare URL (in its cache clone's config, its messages, the URLs it
    hands to jobs) and gives the credentials to git through its environment.
    """
    match = re.match(r"^(https?://)([^/@]+)@(.*)$", url)
    if match is None:
        return url, None
    return match[1] + match[3], match[2]


def git_env(url: str = "", userinfo: str | None = None) -> dict[str, str]:
    """The environment git runs with: never prompting, and with the lab host's
    credentials (``userinfo`` from the lab URL, else a token from the environment)."""
    env = dict(os.environ)
    env.update(GIT_TERMINAL_PROMPT="0", LC_ALL="C", LANG="C", GIT_ASKPASS="true")
    # A host that accepts and then stalls: ssh gives up on its own after about 45 s of
    # silence, curl (https) below its low-speed limit; the process timeout is the
    # backstop for every transport (git:// has no timeout of its own).
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes -o ConnectTimeout=20 "
                   "-o ServerAliveInterval=15 -o ServerAliveCountMax=3")
    env.setdefault("GIT_HTTP_LOW_SPEED_LIMIT", LOW_SPEED_LIMIT)
    env.setdefault("GIT_HTTP_LOW_SPEED_TIME", LOW_SPEED_TIME)
    env.update(_token_auth(url, userinfo))
    return env


def _token_auth(url: str, userinfo: str | None = None) -> dict[str, str]:
    """HTTP basic auth as git config in the environment: from the lab URL's own
    ``user:password``, else ``$AUTOLAB_GIT_TOKEN`` (or ``$HF_TOKEN`` for the Hub). A
    credential never has to be written into a lab URL, where it would show up in job
    specs and process lists."""
    if not url.startswith(("https://", "http://")) or re.match(r"https?://[^/@]+@", url):
        return {}
    if userinfo is not None:
        user, _, password = (unquote(part) for part in userinfo.partition(":"))
        basic_of = f"{user}:{password}"
    else:
        token = os.environ.get("AUTOLAB_GIT_TOKEN")
        if not token and re.match(r"https://(www\.)?huggingface\.co/", url):
            token = os.environ.get("HF_TOKEN")
        if not token or not url.startswith("https://"):
            return {}
        basic_of = f"autolab:{token}"
    import base64

    host = re.match(r"https?://[^/]+/", url + "/")
    assert host is not None
    basic = base64.b64encode(basic_of.encode()).decode()
    count = int(os.environ.get("GIT_CONFIG_COUNT", "0") or 0)
    # Scoped to the lab's host: the credential is never sent anywhere else.
    return {"GIT_CONFIG_COUNT": str(count + 1),
            f"GIT_CONFIG_KEY_{count}": f"http.{host.group(0)}.extraHeader",
            f"GIT_CONFIG_VALUE_{count}": f"Authorization: Basic {basic}"}


def transport_error(message: str, stderr: str) -> TransportError:
    """``TransportError(message)``, or :class:`GitTimeout` if git's ``stderr`` says its
    transport timed out (not worth retrying at once, as for the process timeout)."""
    local = "\n".join(ln for ln in stderr.splitlines() if not ln.startswith("remote:"))
    timed_out = any(word in local for word in TIMED_OUT)
    return GitTimeout(message) if timed_out else TransportError(message)


def raise_for_push(flag: str, summary: str, ref: str, url: str) -> None:
    """Turn a porcelain push status into Conflict (lost race), TransportError (worth
    retrying) or, for an update the spool refused to push, LabError (it never will be)."""
    if flag == INVALID:
        raise LabError(f"cannot push {ref}: {summary}")
    if flag != "!":
        return
    if "remote rejected" not in summary and any(word in summary for word in LOST_RACE):
        raise Conflict(ref, f"{ref}: {summary}")
    raise transport_error(f"push of {ref} to {redact(url)} failed: {summary}", summary)


def first_error(text: str) -> str:
    """The first line git marks as fatal/error (its last line is often a hint)."""
    for line in text.splitlines():
        if line.startswith(("fatal:", "error:")):
            return line.strip()
    return last_line(text)


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no message)"
