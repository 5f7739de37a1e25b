"""Exceptions raised by the protocol layer.

Every error carries a one-line message meant for humans and agents alike; the CLI
prints ``str(error)`` and exits with :attr:`AutoLabError.exit_code`.
"""

from __future__ import annotations

import re

# Characters that would break a one-line message or a terminal: C0 and C1 controls,
# DEL, and the Unicode line and paragraph separators.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def shown(text: str) -> str:
    """``text`` (a path, a ref name: anything a remote or an argv may hold) as printable
    one-line text.

    Bytes that were not UTF-8 arrive as lone surrogates (Python's ``surrogateescape``,
    as argv, the environment and pygit2 hand them over): they are written ``\\xNN``, as
    are control characters, so a hostile name can neither break the one-line contract
    of a message nor fail the encoding of the stream it is printed on.
    """
    if text.isascii() and text.isprintable():
        return text  # the usual case, in one pass
    out = []
    for char in text:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF or _UNPRINTABLE.match(char):
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def utf8_problem(text: str) -> str | None:
    """Why ``text`` is not valid UTF-8 text (None if it is): the first byte that is not,
    and its offset, for a message."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = ord(text[exc.start])
        what = (f"byte 0x{char - 0xDC00:02x}" if 0xDC80 <= char <= 0xDCFF
                else f"surrogate U+{char:04X}")
        offset = len(text[:exc.start].encode("utf-8"))
        return f"not UTF-8 text ({what} at offset {offset})"
    return None


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


class Contended(AutoLabError):
    """A compare-and-swap write kept losing to other writers until its deadline.

    Not a transport failure: the remote answered every time, and every lost race was
    another agent's write landing.
    """


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
        super().__init__(f"bad shard {shown(path)} at commit {commit[:12]}: {reason}")
        self.path = path
        self.commit = commit
        self.reason = reason
        # Written by a newer autolab (a higher schema_version): not damage, so it must
        # never be quarantined; the reader has to upgrade.
        self.newer = newer


class PatchError(AutoLabError):
    """A patch is not a diff, touches a protected path, or is too large."""


class UsageError(AutoLabError):
    """A command called wrongly: a bad option value or choice, options missing or in
    conflict, no lab given. The CLI exits with code 2, as for an unknown flag."""

    exit_code = 2


class NothingToDo(AutoLabError):
    """Nothing to claim (or otherwise act on). The CLI exits with code 3."""

    exit_code = 3


class ResultMismatch(AutoLabError):
    """A different result was submitted for an attempt that already has one."""
