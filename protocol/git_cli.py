"""How autolab runs the git CLI: environment, credentials, and reading its answers.

Shared by the cache clone (:mod:`autolab.protocol.gitstore`): timeouts, an environment
that never prompts, a token handed to git for the lab's host only, and the words that
tell a lost race, a broken transport and a damaged local clone apart.
"""

from __future__ import annotations

import os
import re
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
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
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
