"""Experiment worktrees: the parent commit's files, the patch applied, and the
harness (protected files) taken from ``main``."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from autolab.protocol.config import LabConfig
from autolab.protocol.errors import PatchError
from autolab.protocol.harness import harness_files
from autolab.protocol.patches import check_patch
from autolab.protocol.shards import STATE_DIR
from autolab.protocol.store import LabStore


class Worktree:
    """A temporary directory holding one experiment's files; removed on exit."""

    def __init__(self, root: Path | None = None) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="autolab-exp-", dir=root))

    def __enter__(self) -> Worktree:
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def prepare(self, store: LabStore, parent: str, patch: str, main: str,
                config: LabConfig) -> list[str]:
        """Export ``parent``, apply ``patch``, then restore the harness from ``main``.

        Returns the paths the patch touched. Raises PatchError if the patch touches a
        protected path or does not apply.
        """
        touched = check_patch(patch, config.editable, config.all_protected)
        store.export(parent, str(self.path))
        shutil.rmtree(self.path / STATE_DIR, ignore_errors=True)
        if patch.strip():
            self._apply(patch)
        for path, blob in harness_files(store, main, config).items():
            target = self.path / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(store.read_blob(blob))
        return touched

    def _apply(self, patch: str) -> None:
        env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(self.path.parent)}
        for args in (["--check"], []):
            proc = subprocess.run(["git", "apply", "--whitespace=nowarn", *args, "-"],
                                  cwd=self.path, input=patch, text=True, capture_output=True,
                                  env=env)
            if proc.returncode != 0:
                lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
                raise PatchError(f"patch does not apply: {lines[0] if lines else 'git apply'}")

    def read(self, path: str) -> bytes | None:
        target = self.path / path
        return target.read_bytes() if target.is_file() else None
