"""What the adversarial tests share: patches made by real git, and proposals written
straight onto ``main`` the way an agent with push rights could (bypassing propose)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from autolab.protocol.lab import Lab, MainChange, now
from autolab.protocol.patches import normalized_hash

from .conftest import REPO

BLANK = REPO / "repo_template" / "blank"


def git_patch(tmp_path: Path, mutate: Callable[[Path], None], *flags: str,
              template: Path = BLANK) -> str:
    """The diff ``git diff`` prints for ``mutate`` applied to a copy of ``template``."""
    work = tmp_path / f"patch-{len(list(tmp_path.glob('patch-*')))}"
    shutil.copytree(template, work)

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=work, check=True, capture_output=True,
                              text=True).stdout

    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
    mutate(work)
    git("add", "-A")
    return git("diff", "--cached", *flags)


def forge_proposal(lab: Lab, patch: str, hypothesis: str = "forged") -> str:
    """Enqueue ``patch`` with no check at all, as a hostile agent writing its own shard
    onto ``main`` would; return the experiment id."""

    def decide(view):  # noqa: ANN001, ANN202
        eid = f"{len(view.state.experiments) + 1:04d}"
        row = {"experiment_id": eid, "event": "proposed", "at": now(),
               "parent_commit": view.main, "patch": patch,
               "patch_hash": normalized_hash(patch), "hypothesis": hypothesis,
               "priority": 1.0}
        return MainChange(message=f"forged proposal {eid}", rows={"queue": [row]},
                          result=eid)

    return lab.commit_main(decide)[2]


def all_objects_text(bare: Path) -> bytes:
    """Every object of a bare repository, concatenated (to look for leaked bytes)."""
    ids = subprocess.run(["git", "cat-file", "--batch-all-objects", "--batch-check=%(objectname)"],
                         cwd=bare, check=True, capture_output=True, text=True).stdout
    return subprocess.run(["git", "cat-file", "--batch"], cwd=bare, input=ids.encode(),
                          check=True, capture_output=True).stdout
