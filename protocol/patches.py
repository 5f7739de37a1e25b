"""Unified diffs as experiment patches: a first textual look, path rules, and a
normalized hash."""

from __future__ import annotations

import fnmatch
import hashlib
import re
import unicodedata

from autolab.protocol.errors import PatchError, utf8_problem

MAX_PATCH_BYTES = 256 * 1024
_DIFF_GIT = re.compile(r"^diff --git a/(\S+) b/(\S+)")
_FILE_LINE = re.compile(r"^(?:---|\+\+\+) (?:[ab]/)?(\S+)")


# Lines git reads as naming a path, by the header that carries them.
_PATH_HEADERS = re.compile(
    r"^(?:diff --git (?P<pair>.*)|(?:---|\+\+\+) (?P<side>\S+)(?:\t.*)?"
    r"|(?:rename|copy) (?:from|to) (?P<move>.*))$"
)
_HUNK = re.compile(r"^@@ -\d+(?:,(?P<old>\d+))? \+\d+(?:,(?P<new>\d+))? @@")
_BINARY = re.compile(r"^(?:GIT binary patch|Binary files .* differ)$")


def header_paths(patch: str) -> list[str]:
    """Paths named by a diff's headers (``diff --git``, ``---``/``+++``, rename and copy
    lines), with a leading ``a/`` or ``b/`` dropped; empty for an empty patch.

    This is only a first, textual look: what a patch does is judged on the tree git
    makes of it (:func:`autolab.protocol.patch_judge.judge_patch`).

    Raises:
        PatchError: non-empty text that is not a diff.
    """
    paths: list[str] = []
    old = new = 0  # lines left in the current hunk: its body is content, not headers
    for line in patch.splitlines():
        if old > 0 or new > 0:
            if line.startswith(" ") or line == "":
                old, new = old - 1, new - 1
            elif line.startswith("-"):
                old -= 1
            elif line.startswith("+"):
                new -= 1
            elif not line.startswith("\\"):
                old = new = 0  # a short hunk: read the line as a header
            if old > 0 or new > 0 or line[:1] in (" ", "-", "+", "\\", ""):
                continue
        hunk = _HUNK.match(line)
        if hunk:
            old = int(hunk["old"]) if hunk["old"] is not None else 1
            new = int(hunk["new"]) if hunk["new"] is not None else 1
            continue
        match = _PATH_HEADERS.match(line)
        if not match:
            continue
        if match["pair"] is not None:
            paths.extend(match["pair"].split(" "))
        elif match["side"] is not None:
            paths.append(match["side"])
        else:
            paths.append(match["move"])
    paths = [p for p in paths if p and p != "/dev/null"]
    if patch.strip() and not paths:
        raise PatchError("patch is not a unified diff (no file headers found)")
    return list(dict.fromkeys(p[2:] if p[:2] in ("a/", "b/") else p for p in paths))


def precheck_patch(patch: str, *, allow_binary: bool = False) -> None:
    """Refuse, before git reads it, a patch that is too large, not a diff, binary (unless
    the lab allows it), or that names a path in a form tools read differently.

    Raises:
        PatchError: one line naming the rule (and the path, where there is one).
    """
    why = utf8_problem(patch)  # bytes that were not UTF-8 (surrogate-escaped)
    if why:
        raise PatchError(f"patch is {why}")
    size = len(patch.encode())
    if size > MAX_PATCH_BYTES:
        raise PatchError(f"patch is {size} bytes; the limit is {MAX_PATCH_BYTES}")
    if "\0" in patch:
        raise PatchError("patch contains NUL bytes")
    for path in header_paths(patch):
        why = noncanonical(path)
        if why:
            raise PatchError(f"patch names {path!r}: {why}")
    if not allow_binary and any(_BINARY.match(line) for line in patch.splitlines()):
        raise PatchError("patch is binary; this lab allows only text patches "
                         "(paths.binary = true allows them)")


def noncanonical(path: str) -> str | None:
    """Why ``path`` is not a canonical repository path (None: it is)."""
    if path.startswith('"'):
        return "quoted paths (special characters) are not accepted"
    if path.startswith("/"):
        return "absolute paths are not accepted"
    if "\\" in path:
        return "backslashes are not accepted in paths"
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        return "control characters are not accepted in paths"
    for part in path.split("/"):
        if part in ("", ".", ".."):
            return "empty, '.' and '..' path components are not accepted"
        if part != part.rstrip(". "):
            return "path components ending in a dot or a space are not accepted"
    return None


def fold_case(path: str) -> str:
    """``path`` as case-insensitive, normalizing file systems store it (macOS, Windows)."""
    return unicodedata.normalize("NFC", path).casefold()


def matches(path: str, patterns: tuple[str, ...] | list[str]) -> bool:
    """True if ``path`` equals, lies under, or glob-matches one of ``patterns``."""
    for pattern in patterns:
        if pattern.endswith("/**") and (path + "/").startswith(pattern[:-2]):
            return True
        if path == pattern or path.startswith(pattern.rstrip("/") + "/"):
            return True
        if fnmatch.fnmatchcase(path, pattern):
            return True
    return False


def matches_folded(path: str, patterns: tuple[str, ...] | list[str]) -> bool:
    """:func:`matches`, blind to case and Unicode normalization: a path a
    case-insensitive file system would store as a protected one counts as protected."""
    return matches(fold_case(path), [fold_case(p) for p in patterns])


def normalized_hash(patch: str) -> str:
    """Hash of what a patch changes, blind to context lines, offsets and whitespace.

    Two diffs that make the same edits to the same files hash the same even if they
    were made against different line numbers or with different context sizes.
    """
    digest = hashlib.sha256()
    old_path = ""
    for line in patch.splitlines():
        if line.startswith("diff --git"):
            continue
        if line.startswith("--- "):
            match = _FILE_LINE.match(line)
            old_path = match[1] if match else ""
        elif line.startswith("+++ "):
            match = _FILE_LINE.match(line)
            path = match[1] if match and match[1] != "/dev/null" else old_path
            digest.update(b"F " + path.encode() + b"\n")
        elif line.startswith(("+", "-")):
            body = " ".join(line[1:].split())
            if body:
                digest.update(line[0].encode() + body.encode() + b"\n")
    return digest.hexdigest()[:32]


OPEN_PREFIX = "open:"


def open_hash(hypothesis: str) -> str:
    """The ``patch_hash`` of an open experiment: a hypothesis proposed without a patch,
    whose claimant writes the change (two open proposals of the same hypothesis, blind
    to case and spacing, are one)."""
    text = " ".join(hypothesis.casefold().split())
    return OPEN_PREFIX + hashlib.sha256(text.encode()).hexdigest()[:40]


def is_open(patch_hash: str | None) -> bool:
    """True for an open experiment's ``patch_hash`` (:func:`open_hash`)."""
    return bool(patch_hash) and patch_hash.startswith(OPEN_PREFIX)  # type: ignore[union-attr]
