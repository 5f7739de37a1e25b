"""How autolab runs the git CLI: environment, credentials, and reading its answers.

Shared by the cache clone (:mod:`autolab.protocol.gitstore`): timeouts, an environment
that never prompts, a token handed to git for the lab's host only, and the words that
tell a lost race, a broken transport and a damaged local clone apart.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from pathlib import Path
from urllib.parse import unquote

from autolab.protocol.errors import Conflict, LabError, TransportError
from autolab.protocol.push_spool import INVALID
from autolab.protocol.redact import redact

GIT_TIMEOUT = float(os.environ.get("AUTOLABGIT_TIMEOUT", "120"))
OID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # SHA-1 or SHA-256 object ids
# Rejections that mean "another writer won", as opposed to a broken transport.
LOST_RACE = ("stale info", "fetch first", "non-fast-forward", "already exists")
# The porcelain summaries receive-pack gives when its own ref transaction fails (as
# opposed to a hook or a policy declining the update): the reason is on stderr.
REF_UPDATE_FAILED = ("[remote rejected] (failed to update ref)",
                     "[remote rejected] (failed to delete)",
                     "[remote rejected] (cannot lock ref")
# Newer receive-packs (git 2.50 on) name the failure in the summary itself; these mean
# the ref moved (or appeared, or went) between the lease check and the update.
RACE_REJECTIONS = ("[remote rejected] (incorrect old value provided)",
                   "[remote rejected] (reference already exists)",
                   "[remote rejected] (reference does not exist)")
# Why receive-pack could not lock a ref, when that means another writer got there
# between our lease check and the update: the ref moved ("is at X but expected Y"), a
# ref we create appeared, or another push holds the ref's lock right now. Anything
# else (permission denied, a full disk) is not a race.
LOCK_LOST = ("but expected", "reference already exists", ".lock': File exists")
# What git says when the *local* cache clone is broken (not the remote or the network).
LOCAL_DAMAGE = ("not a git repository", "corrupt", "bad object", "unable to read",
                 "did not send all necessary objects", "invalid object", "packfile",
                 "bad config", "unknown repository format", "missing blob", "missing tree")


class CacheDamaged(TransportError):
    """The host's cache clone of a lab is deleted or corrupted (it gets rebuilt)."""


def cache_root() -> Path:
    """Directory holding the per-lab cache clones."""
    env = os.environ.get("AUTOLAB_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "autolab"


def is_scp_like(url: str) -> bool:
    """``[user@]host:path``, git's short form of an SSH URL: a colon with no slash
    before it (git's own rule; ``./a:b`` is a path)."""
    head, colon, _ = url.partition(":")
    return bool(colon) and bool(head) and "/" not in head and "://" not in url


def is_ssh_url(url: str) -> bool:
    return url.startswith(("ssh://", "git+ssh://", "ssh+git://")) or is_scp_like(url)


def normalize_url(url: str) -> str:
    """Absolute path for local labs, the URL unchanged otherwise."""
    if "://" in url or is_scp_like(url):
        return url
    return str(Path(url).expanduser().resolve())


def split_credentials(url: str) -> tuple[str, str | None]:
    """``(url without credentials, "user:password" or None)`` for an ``http(s)`` URL.

    Credentials written into a lab URL never reach git's argv or a config file: the
    store keeps the bare URL (in its cache clone's config, its messages, the URLs it
    hands to jobs) and gives the credentials to git through its environment.
    """
    match = re.match(r"^(https?://)([^/]*)(.*)$", url)
    if match is None or "@" not in match[2]:
        return url, None
    # Up to the authority's last "@": a password holding an unencoded "@" must not
    # leave a piece of itself in the URL that is kept and shown.
    userinfo, _, host = match[2].rpartition("@")
    return match[1] + host + match[3], userinfo


def git_env(url: str = "", userinfo: str | None = None) -> dict[str, str]:
    """The environment git runs with: never prompting, and with the lab host's
    credentials (``userinfo`` from the lab URL, else a token from the environment)."""
    env = dict(os.environ)
    env.update(GIT_TERMINAL_PROMPT="0", LC_ALL="C", LANG="C", GIT_ASKPASS="true")
    if is_ssh_url(url) and not _ssh_command_configured(env):
        # Never a passphrase or host-key prompt that would stall an agent; an ssh command
        # the user gave git (GIT_SSH_COMMAND, GIT_SSH, core.sshCommand) is kept as is.
        env["GIT_SSH_COMMAND"] = "ssh -o BatchMode=yes"
    env.update(_token_auth(url, userinfo))
    return env


def _ssh_command_configured(env: dict[str, str]) -> bool:
    if env.get("GIT_SSH_COMMAND") or env.get("GIT_SSH"):
        return True
    # core.sshCommand from the user's git config (a setting in the environment would
    # override it). What git reads depends on these variables only.
    key = tuple(sorted((k, v) for k, v in env.items()
                       if k.startswith("GIT_CONFIG") or k in ("HOME", "XDG_CONFIG_HOME")))
    return _core_ssh_command(key)


@functools.lru_cache(maxsize=8)
def _core_ssh_command(key: tuple[tuple[str, str], ...]) -> bool:
    """Whether git's configuration outside any repository sets ``core.sshCommand``."""
    try:
        proc = subprocess.run(["git", "config", "--get", "core.sshCommand"], cwd="/",
                              env={**os.environ, **dict(key)}, capture_output=True,
                              timeout=GIT_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and bool(proc.stdout.strip())


def credential_source(url: str, userinfo: str | None = None) -> str | None:
    """What credential autolab hands git for ``url`` (named for messages: never its
    value), or None when git gets none from autolab."""
    if not url.startswith(("https://", "http://")) or re.match(r"https?://[^/@]+@", url):
        return None
    if userinfo is not None:
        return "the user:token in the lab URL"
    if not url.startswith("https://"):
        return None
    if os.environ.get("AUTOLAB_GIT_TOKEN"):
        return "AUTOLAB_GIT_TOKEN"
    if re.match(r"https://(www\.)?huggingface\.co/", url) and os.environ.get("HF_TOKEN"):
        return "HF_TOKEN"
    return None


def _token_auth(url: str, userinfo: str | None = None) -> dict[str, str]:
    """HTTP basic auth as git config in the environment: from the lab URL's own
    ``user:password``, else ``$AUTOLAB_GIT_TOKEN`` (or ``$HF_TOKEN`` for the Hub). A
    credential never has to be written into a lab URL, where it would show up in job
    specs and process lists."""
    source = credential_source(url, userinfo)
    if source is None:
        return {}
    if userinfo is not None:
        user, _, password = (unquote(part) for part in userinfo.partition(":"))
        basic_of = f"{user}:{password}"
    else:
        basic_of = f"autolab:{os.environ[source]}"
    import base64

    host = re.match(r"https?://[^/]+/", url + "/")
    assert host is not None
    basic = base64.b64encode(basic_of.encode()).decode()
    count = int(os.environ.get("GIT_CONFIG_COUNT", "0") or 0)
    # Scoped to the lab's host: the credential is never sent anywhere else. git would
    # send an extra header on to wherever an initial redirect leads (the requests after
    # the redirect carry it), so with a credential redirects are not followed at all.
    return {"GIT_CONFIG_COUNT": str(count + 2),
            f"GIT_CONFIG_KEY_{count}": f"http.{host.group(0)}.extraHeader",
            f"GIT_CONFIG_VALUE_{count}": f"Authorization: Basic {basic}",
            f"GIT_CONFIG_KEY_{count + 1}": f"http.{host.group(0)}.followRedirects",
            f"GIT_CONFIG_VALUE_{count + 1}": "false"}


# What git (and ssh under it) says when the host wants credentials it did not get,
# refuses the ones it got, or cannot be authenticated itself.
_HTTP_AUTH = ("Authentication failed for", "could not read Username",
              "could not read Password", "returned error: 401", "returned error: 403")
_HTTP_REDIRECT = re.compile(r"returned error: 30[1278]\b")
# curl built with GnuTLS (Debian's git) or with OpenSSL.
_TLS_UNTRUSTED = re.compile(r"server certificate verification failed|SSL certificate problem: "
                            r"[^\n']*|certificate verify failed|no alternative certificate "
                            r"subject name matches[^\n']*")
_SSH_AUTH = re.compile(r"^(.*Permission denied \(.*\)\.?|Host key verification failed\.?)$",
                       re.MULTILINE)


def auth_failure(stderr: str, url: str, userinfo: str | None = None) -> str | None:
    """A one-line message saying what to set, when ``stderr`` of a failed git command
    against ``url`` is an authentication failure of either side (credentials refused
    or missing, an ssh host key or TLS certificate not trusted) or a redirect autolab
    refused to follow with a credential; None otherwise. None of these is worth a
    retry. The message names no credential value.
    """
    shown = redact(url)
    if url.startswith(("https://", "http://")):
        untrusted = _TLS_UNTRUSTED.search(stderr)
        if untrusted is not None:
            return (f"{shown}: git does not trust the host's TLS certificate "
                    f"({untrusted[0].rstrip('.')}): for a host with a private CA, set "
                    f"GIT_SSL_CAINFO to the CA's certificate file")
        source = credential_source(url, userinfo)
        if source is not None and _HTTP_REDIRECT.search(stderr):
            return (f"{shown} answers with a redirect; autolab sends {source} to the lab's "
                    f"own URL only and does not follow redirects: use the repository's "
                    f"current clone URL (ending in .git)")
        if not any(word in stderr for word in _HTTP_AUTH):
            return None
        if source is not None:
            return (f"{shown}: the host refused the credentials from {source} (status "
                    f"401/403): check that the token is valid and may read and push "
                    f"this repository")
        if url.startswith("http://") and os.environ.get("AUTOLAB_GIT_TOKEN"):
            return (f"{shown}: the host asks for credentials, and AUTOLAB_GIT_TOKEN is "
                    f"only sent over https://: use the https:// URL")
        return (f"{shown}: the host asks for credentials: set AUTOLAB_GIT_TOKEN to a "
                f"token that may read and push this repository")
    if url.startswith(("/", "file://", "git://")):
        return None
    match = _SSH_AUTH.search(stderr)
    if match is None:
        return None
    said = redact(match[1].strip()).rstrip(".")
    if "Host key verification failed" in said:
        return (f"{shown}: {said} (ssh does not know this host's key): add it to "
                f"~/.ssh/known_hosts (ssh-keyscan), or set GIT_SSH_COMMAND")
    return (f"{shown}: ssh refused: {said}: give ssh a key the host accepts (ssh-agent, "
            f"~/.ssh/config, or GIT_SSH_COMMAND='ssh -i KEY')")


def explain_rejections(status: dict[str, tuple[str, str]], stderr: str
                       ) -> dict[str, tuple[str, str]]:
    """``status`` ({ref: (flag, summary)} from ``git push --porcelain``) with each
    "failed to update ref" summary followed by receive-pack's reason for that ref.

    The porcelain line only says that the server's ref update failed; why is on stderr
    (``remote: error: cannot lock ref '<ref>': <why>``), and :func:`raise_for_push`
    needs it to tell a lost race from a broken server.
    """
    out = dict(status)
    for ref, (flag, summary) in status.items():
        if flag != "!" or summary.strip() not in REF_UPDATE_FAILED:
            continue
        marker = f"cannot lock ref '{ref}': "
        # The last such line: receive-pack's own, after anything a hook printed.
        for line in reversed(stderr.splitlines()):
            at = line.find(marker)
            if at >= 0 and line.startswith("remote:"):
                why = line[at + len(marker):].strip()[:300]
                out[ref] = (flag, f"{summary.strip()}: {marker}{why}")
                break
    return out


def lost_race(summary: str) -> bool:
    """Whether a rejected push's summary means another writer won (re-read, re-decide),
    rather than a transport or server failure."""
    if "remote rejected" in summary:
        # Only receive-pack's own failed ref update, for a reason that is contention; a
        # hook declining ("pre-receive hook declined") is never a race.
        if summary.startswith(RACE_REJECTIONS):
            return True
        return summary.startswith(REF_UPDATE_FAILED) and "cannot lock ref" in summary and \
            any(word in summary for word in LOCK_LOST)
    return any(word in summary for word in LOST_RACE)


def raise_for_push(flag: str, summary: str, ref: str, url: str) -> None:
    """Turn a porcelain push status into Conflict (lost race), TransportError (worth
    retrying) or, for an update the spool refused to push, LabError (it never will be)."""
    if flag == INVALID:
        raise LabError(f"cannot push {ref}: {summary}")
    if flag != "!":
        return
    if lost_race(summary):
        raise Conflict(ref, f"{ref}: {redact(summary)}")
    raise TransportError(f"push of {ref} to {redact(url)} failed: {redact(summary)}")


def first_error(text: str) -> str:
    """The first line git marks as fatal/error (its last line is often a hint)."""
    for line in text.splitlines():
        if line.startswith(("fatal:", "error:")):
            return line.strip()
    return last_line(text)


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no message)"
