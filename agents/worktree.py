"""Experiment worktrees: the experiment's commit exported, with the harness (protected
files) from ``main`` laid over it.

Worktrees live under one directory per user (:func:`work_root`), which a sandboxed run
sees empty but for its own worktree (:mod:`autolab.agents.backends.sandbox`). Nothing
is ever read back from a worktree: the experiment's commit is built in Git before the
run starts, so what a run writes never becomes part of its branch.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from autolab.protocol.shards import STATE_DIR
from autolab.protocol.store import LabStore


def work_root() -> Path:
    """The directory holding this user's experiment worktrees (created 0700)."""
    root = Path(os.environ.get("AUTOLAB_WORK") or
                Path(tempfile.gettempdir()) / f"autolab-work-{os.getuid()}")
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return root


class Worktree:
    """A temporary directory holding one experiment's files; removed on exit."""

    def __init__(self, root: Path | None = None) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="exp-", dir=root or work_root()))

    def __enter__(self) -> Worktree:
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def populate(self, store: LabStore, commit: str, harness: dict[str, str]) -> None:
        """Export ``commit``, drop the lab's state, then write ``harness`` (path -> blob
        id, the protected files of ``main``) over it."""
        self.fill(self.path, store, commit, harness)

    @staticmethod
    def fill(directory: Path, store: LabStore, commit: str, harness: dict[str, str]) -> None:
        """:meth:`populate` into any (empty) ``directory``."""
        store.export(commit, str(directory))
        shutil.rmtree(directory / STATE_DIR, ignore_errors=True)
        for path, blob in harness.items():
            target = directory / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)
            target.write_bytes(store.read_blob(blob))
