"""The evaluation harness: the lab's protected files on ``main`` and their hash.

Every score records the hash of the harness it ran with; a score whose hash differs
from the harness on ``main`` is never promoted (DESIGN.md §4.8).
"""

from __future__ import annotations

import hashlib

from autolab.protocol.config import LabConfig
from autolab.protocol.patches import matches
from autolab.protocol.shards import STATE_DIR
from autolab.protocol.store import LabStore


def harness_files(store: LabStore, commit: str, config: LabConfig) -> dict[str, str]:
    """Protected files at ``commit`` (path -> blob id), the lab's state excluded."""
    return {p: b for p, b in store.list_files(commit).items()
            if matches(p, config.all_protected) and not p.startswith(STATE_DIR + "/")}


def harness_hash(files: dict[str, str]) -> str:
    """Identity of the evaluation harness: a hash over its paths and blob ids."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(f"{path}\0{files[path]}\n".encode())
    return digest.hexdigest()[:32]
