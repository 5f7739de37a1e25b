"""Exceptions raised by the protocol layer.

Every error carries a one-line message meant for humans and agents alike; the CLI
prints ``str(error)`` and exits with :attr:`AutoLabError.exit_code`.
"""

from __future__ import annotations


class AutoLabError(Exception):
    """Base class for errors with a one-line, user-facing message."""

    exit_code = 1


class ConfigError(AutoLabError):
    """``autolab.toml`` is missing, unreadable or does not match the contract."""


class LabError(AutoLabError):
    """The lab URL does not exist, cannot be reached, or is not a lab."""


class Conflict(AutoLabError):
    """A compare-and-swap write lost: the ref moved (or exists) since it was read.

    Attributes:
        ref: the ref whose expected value did not hold.
    """

    def __init__(self, ref: str, message: str = "") -> None:
        super().__init__(message or f"{ref} moved since it was read")
        self.ref = ref


class TransportError(AutoLabError):
    """A git command against the remote failed for a reason other than a lost race."""


class GitTimeout(TransportError):
    """A git command ran past its timeout (it and every process it started were
    killed), or git's transport gave up on a silent peer.

    Not retried by :meth:`autolab.protocol.lab.Lab.retry_transport`: the remote took the
    connection and then stalled for the whole timeout, and waiting that long again
    several times would turn one stalled server into minutes of silence.
    """


class ShardError(AutoLabError):
    """A shard on ``main`` (or in a record ref) does not parse or validate.

    The message always names the file and the commit, so nothing is skipped silently.
    """

    def __init__(self, path: str, commit: str, reason: str, *, newer: bool = False) -> None:
        super().__init__(f"bad shard {path} at commit {commit[:12]}: {reason}")
        self.path = path
        self.commit = commit
        self.reason = reason
        # Written by a newer autolab (a higher schema_version): not damage, so it must
        # never be quarantined; the reader has to upgrade.
        self.newer = newer


class PatchError(AutoLabError):
    """A patch is not a diff, touches a protected path, or is too large."""


class NothingToDo(AutoLabError):
    """Nothing to claim (or otherwise act on). The CLI exits with code 3."""

    exit_code = 3


class ResultMismatch(AutoLabError):
    """A different result was submitted for an attempt that already has one."""
