"""Unified diffs as experiment patches: the paths they touch and a normalized hash."""

from __future__ import annotations

import fnmatch
import hashlib
import re

from autolab.protocol.errors import PatchError

MAX_PATCH_BYTES = 256 * 1024
_DIFF_GIT = re.compile(r"^diff --git a/(\S+) b/(\S+)")
_FILE_LINE = re.compile(r"^(?:---|\+\+\+) (?:[ab]/)?(\S+)")


def touched_paths(patch: str) -> list[str]:
    """Paths a unified diff touches (both sides of renames); empty for an empty patch.

    Raises:
        PatchError: non-empty text that is not a unified diff.
    """
    paths: list[str] = []
    for line in patch.splitlines():
        match = _DIFF_GIT.match(line)
        if match:
            paths.extend(match.groups())
            continue
        match = _FILE_LINE.match(line)
        if match and match[1] != "/dev/null":
            paths.append(match[1])
    if patch.strip() and not paths:
        raise PatchError("patch is not a unified diff (no file headers found)")
    return list(dict.fromkeys(paths))


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


def check_patch(patch: str, editable: tuple[str, ...], protected: tuple[str, ...]) -> list[str]:
    """Validate a patch against the lab's paths; return the paths it touches.

    Raises:
        PatchError: oversized, not a diff, touching a protected or non-editable path.
    """
    if len(patch.encode()) > MAX_PATCH_BYTES:
        raise PatchError(f"patch is {len(patch.encode())} bytes; the limit is {MAX_PATCH_BYTES}")
    paths = touched_paths(patch)
    for path in paths:
        if matches(path, protected):
            raise PatchError(f"patch touches protected path {path}")
        if not matches(path, editable):
            raise PatchError(f"patch touches {path}, which is not an editable path")
    return paths


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
