"""``Lab``: the write side of the protocol, shared by every transaction.

Two kinds of writes exist (DESIGN.md §4):

* **main commits** (:meth:`Lab.commit_main`) move the single register ``main`` by
  compare-and-swap. The caller's ``decide`` function runs against the exact parent
  the commit is built on and runs again after every lost race, so conditional
  operations (propose, promote, compact) always re-decide on fresh state. Every main
  commit also folds the pending record refs in, giving their rows sequence numbers.
* **record refs** (:meth:`Lab.create_record`) are create-only refs
  ``refs/autolab/<kind>/<experiment>/<attempt>``; exactly one writer wins each name,
  and different experiments never contend. Claims and attempt outcomes travel this
  way, so the hottest writes do not serialize on ``main``.

A record ref is deleted only after its rows have been on ``main`` for ``ref_grace``
seconds: a writer that read state before the record existed and creates the same
name afterwards would otherwise succeed on a deleted name. Writers that took longer
than that between read and write check again (see ``transactions``).
"""

from __future__ import annotations

import os
import random
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from autolab.protocol.errors import Conflict, Contended, GitTimeout, TransportError
from autolab.protocol.reader import LabView, read_view
from autolab.protocol.redact import redact
from autolab.protocol.schemas import TABLES
from autolab.protocol.shard_cache import read_table
from autolab.protocol.shards import encode, encode_record, new_shard_name, with_seq
from autolab.protocol.store import RECORD_PREFIX, FileChange, LabStore


def default_agent_id() -> str:
    """``$AUTOLAB_AGENT``, else ``<host>-<pid>``."""
    return os.environ.get("AUTOLAB_AGENT") or f"{socket.gethostname()}-{os.getpid()}"


def now() -> datetime:
    return datetime.now(UTC)


def new_event_id() -> str:
    return secrets.token_hex(12)


# How long an agent waits for its host's turn at main before it races regardless.
MAIN_TURN_WAIT = 10.0


@dataclass
class Backoff:
    """Jittered exponential backoff ("full jitter"), bounded by a deadline.

    ``attempts`` (None: no limit) bounds retries of things that fail on their own
    (transport errors). Lost compare-and-swap races are bounded by time alone: a
    writer that keeps losing under contention is making progress for the lab (someone
    else won each race), so a count of losses is no reason to give up.
    """

    attempts: int | None = None
    base: float = 0.02
    cap: float = 1.0
    deadline: float = 120.0  # seconds; give up after this whatever the count

    def delays(self) -> Any:
        start = time.monotonic()
        n = 0
        while self.attempts is None or n < self.attempts:
            if n and time.monotonic() - start > self.deadline:
                return
            yield n
            time.sleep(random.uniform(0, min(self.cap, self.base * 2 ** min(n, 20))))
            n += 1


@dataclass
class MainChange:
    """What a main commit adds: rows per table, files, an optional merge parent."""

    message: str
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    files: FileChange = field(default_factory=FileChange)
    merge_parent: str | None = None
    fold_records: bool = True
    result: Any = None  # returned to the caller of commit_main


class Lab:
    """A lab opened by one agent.

    Args:
        store: where the lab lives.
        agent: this agent's id (recorded with every row it writes).
        fold_threshold: fold record refs into ``main`` once this many are pending.
        ref_grace: seconds a folded record ref is kept before it is deleted.
    """

    def __init__(self, store: LabStore, agent: str | None = None, *, fold_threshold: int = 64,
                 ref_grace: float = float(os.environ.get("AUTOLAB_REF_GRACE", "120")),
                 backoff: Backoff | None = None) -> None:
        self.store = store
        self.agent = agent or default_agent_id()
        self.fold_threshold = fold_threshold
        self.ref_grace = ref_grace
        self.backoff = backoff or Backoff()
        self.stats = {"conflicts": 0, "main_commits": 0, "records": 0, "folds": 0}
        self._last: LabView | None = None
        self._folded: object = None
        self._seen_folded: dict[tuple[str, str], float] = {}

    @classmethod
    def open(cls, url: str, agent: str | None = None, **kwargs: Any) -> Lab:
        from autolab.protocol.gitstore import GitStore

        return cls(GitStore(url), agent, **kwargs)

    # -- reads -----------------------------------------------------------------------

    def read(self, *, since: float | None = None, max_age: float = 0.0) -> LabView:
        """Fetch and fold.

        Args:
            since: accept a fetch that started at or after this time (grouped fetch).
            max_age: return this agent's last view instead if it is younger than this
                many seconds. Only for decisions a create-only write re-checks anyway
                (claims): a long-lived agent then skips most fetches.
        """
        last = self._last
        if max_age > 0 and last is not None and (
            time.time() - last.snapshot.fetched_at < max_age
        ):
            return last
        snapshot = self.retry_transport(lambda: self.store.refresh(since=since))
        self._last = read_view(self.store, snapshot)
        return self._last

    def retry_transport(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn``, retrying transport failures (server restarts) with backoff.

        Bounded: no new attempt starts after 60 s, so this returns or raises within
        60 s plus one attempt (each git command of it at most ``$AUTOLAB_GIT_TIMEOUT``)
        plus one pause (at most 4 s). A git command that timed out is not retried: the
        server took the connection and then stalled for the whole timeout, so a stalled
        server costs one timeout, not several.
        """
        last: TransportError | None = None
        for _ in Backoff(attempts=8, base=0.25, cap=4.0, deadline=60).delays():
            try:
                return fn()
            except GitTimeout:
                raise
            except TransportError as exc:
                last = exc
        assert last is not None
        raise last

    # -- main commits ------------------------------------------------------------------

    def commit_main(self, decide: Callable[[LabView], MainChange | None],
                    view: LabView | None = None) -> tuple[LabView, str | None, Any]:
        """Compare-and-swap a commit onto ``main``, re-deciding after each lost race.

        Args:
            decide: called with the state the commit will be built on; returns the
                change, or None when there is nothing (left) to do.
            view: a fresh view to start from (saves one fetch).

        Returns:
            ``(view decided on, new main commit or None, change.result)``.
        """
        fresh = view is not None
        started, lost = time.monotonic(), 0
        for _ in self.backoff.delays():
            # Agents of this host take turns (they would only lose to each other).
            with self.store.main_turn(timeout=MAIN_TURN_WAIT):
                if not fresh or view is None:
                    view = self.read()
                fresh = False
                change = decide(view)
                if change is None:
                    return view, None, None
                commit = self.build_main_commit(view, change)
                try:
                    self.retry_transport(
                        lambda c=commit, v=view: self.store.cas_main(c, v.main))
                except Conflict:
                    # A push whose reply was lost and that is then retried reports a
                    # stale lease although it landed: main holding our commit means we won.
                    latest = self.read()
                    if not self.store.is_ancestor(commit, latest.main):
                        self.stats["conflicts"] += 1
                        lost += 1
                        view, fresh = latest, True
                        continue
            self.stats["main_commits"] += 1
            self._last = None  # our own write made the cached view stale
            return view, commit, change.result
        raise Contended(f"main of {redact(self.store.url)} kept moving: lost {lost} races in "
                        f"{time.monotonic() - started:.0f}s; nothing was written, try again")

    def build_main_commit(self, view: LabView, change: MainChange) -> str:
        """Build (not push) the commit for ``change`` on ``view.main``."""
        seq = view.max_seq
        add: dict[str, bytes] = dict(change.files.add)
        pending = view.pending if change.fold_records else []
        for table in TABLES:
            parts = [read_table(self.store, table, blob, name.path, r.commit)
                     for r in pending for name, blob in r.shards if name.table == table]
            new_rows = change.rows.get(table, [])
            if new_rows:
                parts.append(pa_table(table, [self._stamp_row(row) for row in new_rows]))
            parts = [p for p in parts if p.num_rows]
            if not parts:
                continue
            data = with_seq(concat(parts), seq + 1)
            seq += data.num_rows
            add[new_shard_name(table, self.agent, seq).path] = encode(table, data)
        files = FileChange(add=add, remove=change.files.remove, add_blobs=change.files.add_blobs)
        message = change.message
        if pending:
            message += f"\n\nFolds {len(pending)} record ref(s)."
        message += f"\n\nAutolab-Agent: {self.agent}\n"
        return self.store.make_commit(view.main, files, message,
                                      merge_parent=change.merge_parent, agent=self.agent)

    def _stamp_row(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"event_id": new_event_id(), "agent": self.agent, **row, "seq": None}

    # -- record refs -------------------------------------------------------------------

    def create_record(self, ref: str, rows: dict[str, list[dict[str, Any]]],
                      message: str) -> str:
        """Create the record ref ``ref`` holding ``rows``; raise Conflict if it exists."""
        add = {
            new_shard_name(table, self.agent, record=True).path: encode_record(
                table, [self._stamp_row(r) for r in table_rows]
            )
            for table, table_rows in rows.items() if table_rows
        }
        commit = self.store.make_commit(
            None, FileChange(add=add), f"{message}\n\nAutolab-Agent: {self.agent}\n",
            agent=self.agent,
        )
        try:
            self.retry_transport(lambda: self.store.create_ref(ref, commit))
        except Conflict:
            # A create whose reply was lost and that was retried finds its own ref: the
            # commit is unique to this call (fresh event ids), so holding it means we won.
            if self.store.fetch_ref(ref) != commit:
                raise
        self.stats["records"] += 1
        return commit

    def fold(self, view: LabView | None = None, *, always: bool = False) -> str | None:
        """Fold pending record refs into ``main`` and delete long-folded ones.

        Best effort: one attempt; losing the race is fine (the winner folded them).
        Returns the new main commit, or None if nothing was folded.
        """
        view = view or self.read()
        if view.snapshot is self._folded and not always:
            return None  # already acted on this snapshot (cached views are reused)
        self._folded = view.snapshot
        commit = None
        # Past the threshold every agent would try at once: one agent per host per
        # second does, and only a random quarter of hosts' agents that get there.
        due = (len(view.pending) >= self.fold_threshold and random.random() < 0.25
               and self.store.try_exclusive(1.0))
        if view.pending and (always or due):
            change = MainChange(message=f"fold {len(view.pending)} record(s)")
            candidate = self.build_main_commit(view, change)
            try:
                self.store.cas_main(candidate, view.main)
                commit = candidate
                self.stats["folds"] += 1
                self._last = None
            except (Conflict, TransportError):
                self.stats["conflicts"] += 1
        self.delete_folded(view)
        return commit

    def delete_folded(self, view: LabView) -> list[str]:
        """Delete record refs this agent has seen folded on ``main`` for ``ref_grace``.

        The grace is timed on this agent's own monotonic clock from when it first saw
        the rows on ``main`` (never from another host's clock), so a record is deleted
        at least ``ref_grace`` after it existed. Short-lived agents never delete.
        """
        moment = time.monotonic()
        live = {(r.ref, r.commit) for r in view.records}
        for key in [k for k in self._seen_folded if k not in live]:
            del self._seen_folded[key]  # gone: deleted by another agent
        for record in view.records:
            if record.on_main:
                self._seen_folded.setdefault((record.ref, record.commit), moment)
        old = {ref: commit for (ref, commit), seen in self._seen_folded.items()
               if moment - seen >= self.ref_grace}
        if not old:
            return []
        try:
            return self.store.delete_refs(old)
        except TransportError:
            return []


def record_ref(kind: str, experiment_id: str, attempt: int) -> str:
    return f"{RECORD_PREFIX}{kind}/{experiment_id}/{attempt}"


def pa_table(table: str, rows: list[dict[str, Any]]) -> pa.Table:
    from autolab.protocol.schemas import SCHEMA_VERSION, SCHEMAS

    return pa.Table.from_pylist(
        [{**r, "schema_version": SCHEMA_VERSION} for r in rows], schema=SCHEMAS[table]
    )


def concat(parts: list[pa.Table]) -> pa.Table:
    return parts[0] if len(parts) == 1 else pa.concat_tables(parts)
