"""The manual flow: a person or an outside agent runs a claimed experiment by hand.

``autolab claim --worktree DIR`` claims an experiment and prepares ``DIR`` exactly as
a worker prepares a run (the experiment's commit, built by git from its parent and
its patch, with ``main``'s harness over it) and leaves a claim file there.
``autolab submit --worktree DIR --log run.log`` then pushes the experiment's branch
and records the score as that claim's agent: nobody has to know the branch layout or
carry the agent id by hand.

What is measured is what is committed: the worktree's editable files must still be
the experiment's when it is submitted (a different change is a different experiment:
propose it). An open experiment (``propose --open``: a hypothesis without a patch) is
the exception: its worktree holds the parent, the claimant edits the editable files,
and ``submit`` commits what they hold, judged by the rules every patch is.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from autolab.agents.worktree import Worktree
from autolab.protocol import transactions as tx
from autolab.protocol.errors import AutoLabError, PatchError, UsageError
from autolab.protocol.harness import harness_files, harness_hash
from autolab.protocol.lab import Lab
from autolab.protocol.patch_judge import check_changes, judge_patch
from autolab.protocol.patches import matches
from autolab.protocol.store import FileChange

CLAIM_FILE = ".autolab-claim.json"
MAX_EDIT_BYTES = 64 << 20  # what an open experiment's editable files may hold in all


@dataclass(frozen=True)
class ManualClaim:
    """What ``claim --worktree`` left in the worktree's claim file."""

    lab: str
    agent: str
    experiment_id: str
    attempt: int
    commit: str  # the experiment's commit: parent + patch (an open one's: the parent)
    harness_hash: str
    open: bool = False  # the claimant writes the change


def prepare(lab: Lab, claim: tx.Claim, directory: Path) -> ManualClaim:
    """Fill ``directory`` (absent or empty) with the experiment of ``claim``.

    Raises:
        UsageError: ``directory`` exists and is not empty.
        PatchError: the experiment's patch is refused on ``main``'s rules (the claim is
            then released by the caller).
    """
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise UsageError(f"--worktree {directory}: exists and is not empty")
    view = lab.read(max_age=5.0)
    config, store = view.config, lab.store
    parent = claim.parent_commit or view.main
    if claim.open:
        commit = parent  # the claimant's edits make the experiment's commit at submit
    else:
        judged = judge_patch(store, parent, claim.patch, config)
        commit = store.commit_tree(parent, judged.tree,
                                   f"experiment {claim.experiment_id}: {claim.hypothesis}",
                                   agent=lab.agent)
    harness = harness_files(store, view.main, config)
    directory.mkdir(parents=True, exist_ok=True)
    Worktree.fill(directory, store, commit, harness)
    record = ManualClaim(store.url, lab.agent, claim.experiment_id, claim.attempt, commit,
                         harness_hash(harness), open=claim.open)
    (directory / CLAIM_FILE).write_text(json.dumps(record.__dict__, indent=1) + "\n")
    return record


def load(directory: Path) -> ManualClaim:
    """The claim file of a worktree made by ``claim --worktree``."""
    path = directory / CLAIM_FILE
    try:
        data = json.loads(path.read_text())
        return ManualClaim(**{k: data[k] for k in ManualClaim.__dataclass_fields__
                              if k in data or k != "open"})
    except FileNotFoundError:
        raise UsageError(f"--worktree {directory}: no {CLAIM_FILE} (make it with "
                         "`autolab claim --worktree DIR`)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AutoLabError(f"{path}: not a claim file ({exc})") from None


def check_unchanged(lab: Lab, record: ManualClaim, directory: Path) -> None:
    """The worktree's editable files must be the experiment's commit's, byte for byte.

    Raises:
        AutoLabError: naming the first file that differs, is missing or was added.
    """
    store, config = lab.store, lab.read(max_age=5.0).config
    committed = {p: b for p, b in store.list_files(record.commit).items()
                 if matches(p, config.editable)}
    present = _editable_files(directory, config.editable)
    for rel in sorted(set(committed) | set(present)):
        if rel not in present:
            raise AutoLabError(f"{rel} was removed from the worktree: what is submitted must "
                               "be the experiment as proposed (propose a change as a new "
                               "experiment)")
        data = Path(present[rel]).read_bytes()
        if rel not in committed or store.read_blob(committed[rel]) != data:
            raise AutoLabError(f"{rel} differs from experiment {record.experiment_id}'s patch: "
                               "what is submitted must be the experiment as proposed "
                               "(propose a change as a new experiment)")


def _editable_files(directory: Path, editable: tuple[str, ...]) -> dict[str, str]:
    """The editable files in ``directory`` (relative path -> absolute path), ``.git``
    directories left out."""
    present = {}
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if d != ".git"]
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), directory).replace(os.sep, "/")
            if rel != CLAIM_FILE and matches(rel, editable):
                present[rel] = os.path.join(root, name)
    return present


def commit_edits(lab: Lab, record: ManualClaim, directory: Path) -> str:
    """An open experiment's commit: its parent with the editable files as ``directory``
    holds them now (added, changed or removed), judged by the rules every patch is.

    Only editable paths are read: whatever else the worktree holds (the harness from
    ``main``, outputs of the run) is not part of the change.

    Raises:
        PatchError: a file breaks a rule (a symlink, binary content where the lab
            accepts text only).
        AutoLabError: nothing was changed.
    """
    store, config = lab.store, lab.read(max_age=5.0).config
    parent = record.commit
    before = {p: b for p, b in store.list_files(parent).items() if matches(p, config.editable)}
    present = _editable_files(directory, config.editable)
    add: dict[str, bytes] = {}
    total = 0
    for rel, path in present.items():
        if os.path.islink(path):
            raise PatchError(f"patch refused: {rel}: symlinks are not accepted")
        total += os.path.getsize(path)
        if total > MAX_EDIT_BYTES:
            raise PatchError(f"patch refused: the editable files hold more than "
                             f"{MAX_EDIT_BYTES >> 20} MiB")
        data = Path(path).read_bytes()
        if rel not in before or store.read_blob(before[rel]) != data:
            add[rel] = data
    removed = [rel for rel in before if rel not in present]
    if not add and not removed:
        raise AutoLabError(f"the worktree's editable files are experiment "
                           f"{record.experiment_id}'s parent unchanged: an open experiment "
                           "needs your change to its editable files")
    head = store.make_commit(parent, FileChange(add=add, remove=removed),
                             f"experiment {record.experiment_id} (written by {lab.agent})",
                             agent=lab.agent)
    check_changes(store, store.tree_changes(store.tree_of(parent), store.tree_of(head)),
                  config)
    return head


def push_branch(lab: Lab, record: ManualClaim, summary: str, commit: str | None = None
                ) -> str:
    """Push ``autolab/exp/<id>``: the experiment's commit (``commit``, default the
    claim's), then a result commit.

    Returns the result commit (the score's ``branch_commit``).
    """
    store = lab.store
    head = store.make_commit(commit or record.commit, FileChange(),
                             f"result {record.experiment_id} attempt {record.attempt}: "
                             f"{summary}\n", agent=lab.agent)
    ref = f"refs/heads/{tx.branch_name(record.experiment_id)}"
    current = store.fetch_ref(ref)
    lab.retry_transport(lambda: store.push_ref(ref, head, current))
    return head
