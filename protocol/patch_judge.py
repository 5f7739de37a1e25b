"""Patches judged by git's own reading (DESIGN.md §4.8).

A patch is never judged by parsing its text alone: tools disagree on what a diff
means (``copy to`` and ``rename from`` headers, traditional diffs, ``a/../`` paths,
modes). Instead git applies it to the parent's tree in a private index, and every
path of the resulting tree that differs from the parent's, whatever the diff's text
said, must obey the lab's rules. The tree git made is then the experiment's commit,
so what was checked is exactly what runs and what may later be promoted.

The rules, each refused with one line naming the path and the rule:

* canonical paths only (no empty, ``.`` or ``..`` components, no trailing dots or
  spaces, no backslashes or control characters);
* never the lab's state (``.autolab/``) or git's own files (any ``.git*`` component);
* never a protected path, compared blind to case and Unicode normalization (a
  case-insensitive file system would write ``Prepare.py`` over ``prepare.py``);
* only editable paths;
* regular files only: no symlinks, no gitlinks (submodules), no mode but 644 and 755;
* no binary content unless the lab sets ``[paths] binary = true``.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from autolab.protocol.config import LabConfig
from autolab.protocol.errors import PatchError
from autolab.protocol.patches import (
    fold_case,
    header_paths,
    matches,
    matches_folded,
    noncanonical,
    precheck_patch,
)
from autolab.protocol.store import LabStore, TreeChange

_FILE_MODES = (0o100644, 0o100755)
_MODE_RULES = {0o120000: "symlinks are not accepted",
               0o160000: "submodules (gitlinks) are not accepted"}
_BINARY_SNIFF = 8000  # bytes git itself looks at to call a file binary


@dataclass(frozen=True)
class Judgement:
    """A patch that passed: the tree git made of ``parent`` + patch, and what changed."""

    parent: str
    tree: str
    changes: tuple[TreeChange, ...]

    @property
    def paths(self) -> list[str]:
        return [c.path for c in self.changes]


def path_rule(path: str, config: LabConfig) -> str | None:
    """The rule ``path`` breaks as a path an experiment may write (None: none)."""
    why = noncanonical(path)
    if why:
        return why
    parts = fold_case(path).split("/")
    if parts[0] == ".autolab":
        return "the lab's state (.autolab/) is never editable"
    if any(part.startswith(".git") for part in parts):
        return "git's own files (.git*) are never editable"
    if matches_folded(path, config.all_protected):
        return "protected path"
    if not matches(path, config.editable):
        return "not an editable path"
    return None


def promotable(path: str, config: LabConfig) -> bool:
    """True if promotion may carry ``path`` from an experiment onto ``main``."""
    return path_rule(path, config) is None


def check_changes(store: LabStore, changes: list[TreeChange] | tuple[TreeChange, ...],
                  config: LabConfig) -> None:
    """Apply the rules to every changed path of a tree.

    Raises:
        PatchError: ``patch refused: <path>: <rule>`` for the first path that breaks one.
    """
    for change in changes:
        why = path_rule(change.path, config)
        if why is None and change.new_mode and change.new_mode not in _FILE_MODES:
            why = _MODE_RULES.get(change.new_mode, f"mode {change.new_mode:o} is not accepted "
                                  "(regular files, 644 or 755, only)")
        if why is None and change.new_blob and not config.allow_binary:
            head = bytes(store.read_blob_buffer(change.new_blob)[:_BINARY_SNIFF])
            if b"\0" in head:
                why = "binary content (this lab accepts text only; paths.binary = true allows it)"
        if why:
            raise PatchError(f"patch refused: {change.path}: {why}")


# (store url, parent, patch digest) -> (tree, changes): git's part of a judgement, which
# does not depend on the config. Propose re-decides after lost races and workers judge
# again what planners judged: both are served from here within one process.
_applied: OrderedDict[tuple[str, str, str], tuple[str, tuple[TreeChange, ...]]] = OrderedDict()
_APPLIED_SIZE = 256


def judge_patch(store: LabStore, parent: str, patch: str, config: LabConfig) -> Judgement:
    """Apply ``patch`` to ``parent`` with git and check every path git changed.

    Raises:
        PatchError: one line: the patch is malformed, does not apply, or breaks a rule
            (naming the path and the rule).
    """
    precheck_patch(patch, allow_binary=config.allow_binary)
    for path in header_paths(patch):  # the diff's own words first: the clearest refusal
        why = path_rule(path, config)
        if why:
            raise PatchError(f"patch refused: {path}: {why}")
    key = (store.url, parent, hashlib.sha256(patch.encode()).hexdigest())
    hit = _applied.get(key)
    if hit is not None:
        try:
            check_changes(store, hit[1], config)
        except KeyError:  # its objects went with a rebuilt cache clone: apply again
            hit = None
        else:
            return Judgement(parent, *hit)
    tree = store.apply_patch(parent, patch)
    changes = tuple(store.tree_changes(store.tree_of(parent), tree))
    check_changes(store, changes, config)
    _applied[key] = (tree, changes)
    if len(_applied) > _APPLIED_SIZE:
        _applied.popitem(last=False)
    return Judgement(parent, tree, changes)


def result_commit_problem(store: LabStore, parent: str | None, patch: str, head: str,
                          config: LabConfig, *, open_change: bool = False) -> str | None:
    """Why ``head`` is not a commit of exactly ``parent`` + ``patch`` (None: it is).

    A result names the commit that was measured; promotion merges it. It must descend
    from the experiment's parent, be another commit than it, and hold the very tree
    git makes of parent + patch: nothing more, nothing else. For an open experiment
    (``open_change``: proposed as a hypothesis, its claimant wrote the change) there is
    no patch to compare with: every path ``head`` changes from ``parent`` must pass
    the rules a patch's paths do.
    """
    if not parent:
        return "the experiment records no parent commit"
    if head == parent:
        return "its commit is the experiment's parent itself"
    if not store.is_ancestor(parent, head):
        return f"commit {head[:12]} does not descend from the experiment's parent {parent[:12]}"
    if open_change:
        changes = store.tree_changes(store.tree_of(parent), store.tree_of(head))
        if not changes:
            return f"commit {head[:12]} changes nothing from the experiment's parent"
        try:
            check_changes(store, changes, config)
        except PatchError as exc:
            return str(exc)
        return None
    try:
        judged = judge_patch(store, parent, patch, config)
    except PatchError as exc:
        return str(exc)
    if store.tree_of(head) != judged.tree:
        return f"commit {head[:12]} is not the experiment's parent plus exactly its patch"
    return None
