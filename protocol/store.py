"""The lab store interface: where a lab's commits and refs live (DESIGN.md §5).

Contract (every implementation passes ``tests/test_conformance.py``):

* ``main`` is a single register moved only by :meth:`LabStore.cas_main`, which
  succeeds only if ``main`` still holds the expected old commit, and raises
  :class:`~autolab.protocol.errors.Conflict` otherwise. Nothing ever force-moves it.
* Record refs (``refs/autolab/<kind>/<experiment>/<attempt>``) are created only if
  absent (:meth:`LabStore.create_ref`), never moved, and deleted only with their
  expected value (:meth:`LabStore.delete_refs`).
* Objects are immutable; reads at a commit (:meth:`LabStore.list_dir`,
  :meth:`LabStore.read_blob`) never need a checkout and never change.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

RECORD_PREFIX = "refs/autolab/"
MAIN = "refs/heads/main"


@dataclass(frozen=True)
class Snapshot:
    """What the remote held at one fetch.

    Attributes:
        main: commit id of ``main``.
        records: live record refs (full ref name -> commit id).
        fetched_at: wall-clock time (``time.time()``) when the fetch started.
    """

    main: str
    records: Mapping[str, str] = field(default_factory=dict)
    fetched_at: float = 0.0


@dataclass(frozen=True)
class TreeChange:
    """One path that differs between two trees, as git records it (mode 0: absent)."""

    path: str
    old_mode: int
    new_mode: int
    old_blob: str | None
    new_blob: str | None


@dataclass(frozen=True)
class FileChange:
    """Files to add (path -> bytes) and remove (paths) in a new commit."""

    add: Mapping[str, bytes] = field(default_factory=dict)
    remove: Iterable[str] = ()
    # path -> blob id of a blob already in the store (added without rewriting it)
    add_blobs: Mapping[str, str] = field(default_factory=dict)


class LabStore(ABC):
    """Reads snapshots of a lab and writes to it by compare-and-swap."""

    url: str

    @abstractmethod
    def refresh(self, *, since: float | None = None) -> Snapshot:
        """Fetch ``main`` and the record refs; return the snapshot.

        Args:
            since: a caller that only needs state at least as fresh as this wall-clock
                time may be served by a concurrent fetch that started after it.
        """

    @abstractmethod
    def list_dir(self, commit: str, path: str) -> dict[str, str]:
        """Files directly under ``path`` at ``commit`` (file path -> blob id)."""

    @abstractmethod
    def read_blob(self, blob_id: str) -> bytes:
        """Bytes of one blob."""

    def read_blob_buffer(self, blob_id: str) -> bytes | memoryview:
        """One blob's bytes, without a copy where the store can (read-only)."""
        return self.read_blob(blob_id)

    @abstractmethod
    def read_file(self, commit: str, path: str) -> bytes | None:
        """Bytes of ``path`` at ``commit``, or None if absent."""

    @abstractmethod
    def list_files(self, commit: str) -> dict[str, str]:
        """Every file at ``commit`` (path -> blob id)."""

    @abstractmethod
    def make_commit(
        self,
        parent: str | None,
        change: FileChange,
        message: str,
        *,
        merge_parent: str | None = None,
        agent: str = "autolab",
    ) -> str:
        """Build a commit in the store's object database without touching any ref."""

    @abstractmethod
    def apply_patch(self, parent: str, patch: str) -> str:
        """The tree ``git apply --cached`` makes of ``parent``'s tree and ``patch``.

        This is git's own reading of the patch: whatever paths, modes and contents git
        would write are what the returned tree holds, and what the patch is judged by.

        Raises:
            PatchError: git refuses the patch (one line: git's first error).
        """

    @abstractmethod
    def tree_changes(self, old: str, new: str) -> list[TreeChange]:
        """Every path (blobs, links and gitlinks) that differs between two trees or
        commits, without rename detection: a rename is a deletion and an addition."""

    @abstractmethod
    def commit_tree(self, parent: str, tree: str, message: str, *,
                    agent: str = "autolab") -> str:
        """Build a commit of ``tree`` on ``parent`` without touching any ref."""

    @abstractmethod
    def tree_of(self, commit: str) -> str:
        """The tree id of ``commit``."""

    @abstractmethod
    def cas_main(self, new: str, expected: str) -> None:
        """Move ``main`` from ``expected`` to ``new``; raise Conflict if it moved."""

    @abstractmethod
    def create_ref(self, ref: str, commit: str) -> None:
        """Create ``ref`` at ``commit``; raise Conflict if ``ref`` already exists."""

    @abstractmethod
    def delete_refs(self, refs: Mapping[str, str]) -> list[str]:
        """Delete each ref that still holds its expected commit; return those deleted."""

    @abstractmethod
    def fetch_ref(self, ref: str) -> str | None:
        """Fetch one ref (e.g. an experiment branch); its commit id or None if absent."""

    @abstractmethod
    def export(self, commit: str, dest: str) -> None:
        """Write the files of ``commit`` into the directory ``dest`` (no checkout)."""

    def is_ancestor(self, ancestor: str, commit: str) -> bool:
        """True if ``ancestor`` is ``commit`` or one of its ancestors."""
        return ancestor == commit

    def has_commit(self, commit: str) -> bool:
        """True if ``commit``'s objects are in the local store already."""
        return False

    def try_exclusive(self, seconds: float) -> bool:
        """Host-local rate limit for optional chores (folding); default: always yes."""
        return True

    def main_turn(self, timeout: float) -> AbstractContextManager[object]:
        """Take this host's turn at writing ``main`` (default: no turns).

        Agents of one host that write ``main`` at once would only lose races to each
        other; taking turns leaves them only the races against other hosts. Waiting is
        bounded by ``timeout``, after which the writer goes ahead without its turn (a
        stalled holder must never stop the others).
        """
        return nullcontext()

    @abstractmethod
    def push_ref(self, ref: str, commit: str, expected: str | None) -> None:
        """Move ``ref`` to ``commit`` if it holds ``expected`` (None: must not exist)."""
