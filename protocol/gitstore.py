"""``GitStore``: a lab on any Git remote, through a local cache clone.

Reads use pygit2 on a bare cache clone (``$AUTOLAB_CACHE``, default
``~/.cache/autolab``), one per lab URL, shared by every agent on the host. Writes
build commits in memory with pygit2 and push them with the ``git`` CLI, because
libgit2 pushing to a filesystem path writes the remote ref without checking its old
value. Every push carries an explicit ``--force-with-lease`` expectation, so the
receiving side compares and swaps under its ref lock: ``main`` only moves from the
commit we read, and record refs are only created where absent.

Agents on one host share the cache and *group* their round trips:

* fetches are serialized by a ``filelock``, and an agent that asked for state at time
  ``t`` is served by any fetch that started after ``t``;
* record-ref creations and branch pushes go through a push spool
  (:mod:`autolab.protocol.push_spool`): one ``git push`` carries every pending update
  of the host, each with its own lease.

So N agents on a host cost far fewer than N fetches and N pushes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pygit2
from filelock import FileLock, Timeout

from autolab.protocol.errors import (
    Conflict,
    LabError,
    PatchError,
    TransportError,
    shown,
    utf8_problem,
)
from autolab.protocol.git_cli import (
    GIT_TIMEOUT,
    LOCAL_DAMAGE,
    OID,
    CacheDamaged,
    GitNotStarted,
    GitTimeout,
    auth_failure,
    cache_root,
    explain_rejections,
    first_error,
    git_env,
    last_line,
    normalize_url,
    raise_for_push,
    run_git,
    split_credentials,
    transport_error,
)
from autolab.protocol.push_spool import PushSpool, write_atomic
from autolab.protocol.redact import redact
from autolab.protocol.store import (
    MAIN,
    RECORD_PREFIX,
    FileChange,
    LabStore,
    Snapshot,
    TreeChange,
)

_TRACK = "refs/remotes/origin/"
# From this many live record refs on, a fetch over git:// speaks protocol v2 (see
# ``_fetch_options``) and the cache's refs are kept packed.
MANY_REFS = 500
# Deleting refs with ``git push``: git's client (2.39) matches every refspec and every
# lease against every ref the server advertises, six formatted names per match, so one
# push costs (refs deleted) x (refs advertised): measured about 2.4 us per pair on a
# loaded 2-core machine, so 1,000 deletions among 20,000 refs take ~50 s. A push
# carries at most this many pairs (~10 s there), never more than ``_DELETE_MAX`` refs
# or ``_ARGV_BYTES`` of arguments (the OS refuses argument lists of a few MB: E2BIG),
# and one ``delete_refs`` call starts no new push after ``GIT_TIMEOUT`` seconds; the
# rest waits for the next call.
_DELETE_PAIRS = 4_000_000
_DELETE_MAX = 1000
_ARGV_BYTES = 128 * 1024
# ``git update-ref --stdin`` transaction size for a lab on this filesystem.
_LOCAL_DELETE_CHUNK = 2000


class GitStore(LabStore):
    """A lab behind a Git URL: a filesystem path, ``file://``, ``git://``, ``ssh://``
    or ``https://``.

    Example:
        >>> store = GitStore("/srv/labs/tiny.git")      # doctest: +SKIP
        >>> snap = store.refresh()
        >>> store.read_file(snap.main, "autolab.toml")
    """

    def __init__(self, url: str, cache_dir: Path | None = None) -> None:
        # Credentials in the URL go to git through its environment only (git_cli).
        self.url, self._userinfo = split_credentials(normalize_url(url))
        digest = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        slug = re.sub(r"[^A-Za-z0-9]+", "-", self.url.rstrip("/").split("/")[-1])[:40]
        self.path = (cache_dir or cache_root()) / f"{slug}-{digest}.git"
        # Short poll intervals: waiters of a contended lock otherwise starve for 50 ms
        # slices, which is most of a claim's latency.
        self._lock = FileLock(str(self.path) + ".lock", poll_interval=0.005)
        self._stamp = Path(str(self.path) + ".fetched")
        self._seen_main = Path(str(self.path) + ".main")
        self._ref_count = Path(str(self.path) + ".refs")  # record refs at the last fetch
        self._packed_at = Path(str(self.path) + ".packed")
        self._spool = PushSpool(Path(str(self.path) + ".spool"), self._push, GIT_TIMEOUT,
                                check=self._pushable)
        self._fold_lock = FileLock(str(self.path) + ".fold.lock")
        self._main_lock = FileLock(str(self.path) + ".main.lock", poll_interval=0.005)
        self._repo: pygit2.Repository | None = None
        # A lab on this filesystem is read in place (refs directly, objects through the
        # cache's alternates): no fetch at all. Pushes still go through git.
        local = self.url.removeprefix("file://")
        bare = local.startswith("/") and (Path(local) / "objects").is_dir() and (
            Path(local) / "HEAD").is_file()
        self._local_path: str | None = local if bare else None
        self._remote_repo: pygit2.Repository | None = None

    # -- cache clone ---------------------------------------------------------------

    @property
    def repo(self) -> pygit2.Repository:
        if self._repo is None:
            with self._lock:
                self._ensure_cache()
            self._repo = pygit2.Repository(str(self.path))
        return self._repo

    def _ensure_repo(self) -> pygit2.Repository:
        """The cache clone, created first if it does not exist yet."""
        return self.repo

    def _ensure_cache(self) -> None:
        """Create the bare cache clone, or rebuild it if it is damaged (lock held)."""
        if self.path.exists():
            if self._cache_sane():
                self._link_objects(self.path)
                return
            self._discard_cache()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        self._git("init", "--bare", "--quiet", str(tmp), cwd=None)
        for key, value in (
            ("remote.origin.url", self.url),
            ("gc.auto", "0"),  # gc of a shared cache must not race with readers
            ("fetch.writeCommitGraph", "false"),
            ("core.logAllRefUpdates", "false"),
        ):
            self._git("config", key, value, cwd=tmp)
        self._link_objects(tmp)
        os.replace(tmp, self.path)

    def _cache_sane(self) -> bool:
        """Cheap structural check: a bare repository right here, pointing at our lab."""
        try:
            repo = pygit2.Repository(str(self.path), pygit2.enums.RepositoryOpenFlag.NO_SEARCH)
            return (repo.is_bare and Path(repo.path).resolve() == self.path.resolve()
                    and repo.config["remote.origin.url"] == self.url)
        except (pygit2.GitError, KeyError, ValueError, OSError):
            return False

    def _cache_broken(self) -> bool:
        """Confirm damage before discarding a shared cache: git's words alone could come
        from the network or the server.

        Raises:
            GitTimeout: fsck did not finish in time (a hung disk?): nothing confirmed.
        """
        try:
            proc = run_git(["--git-dir", str(self.path), "fsck", "--connectivity-only",
                            "--no-dangling", "--no-progress"], env=git_env(),
                           what=str(self.path))
        except GitTimeout:
            raise
        except TransportError:
            return False  # git could not even start: confirms nothing
        return proc.returncode != 0

    def _discard_cache(self) -> None:
        """Move a damaged cache aside and delete it (lock held).

        Renaming first means another agent of this host that still has files of the old
        cache open keeps reading them, while every new open gets the rebuilt one.
        """
        aside = self.path.with_name(f"{self.path.name}.damaged{os.getpid()}")
        shutil.rmtree(aside, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.path, aside)
        shutil.rmtree(aside, ignore_errors=True)
        self._stamp.unlink(missing_ok=True)
        self._repo = None

    def _rebuild(self) -> pygit2.Repository:
        """Replace a cache found damaged while in use (lock held); return it reopened."""
        self._discard_cache()
        self._ensure_cache()
        self._repo = pygit2.Repository(str(self.path))
        return self._repo

    def _link_objects(self, cache: Path) -> None:
        """Let the cache see a local lab's objects (git alternates)."""
        if self._local_path is None:
            return
        objects = Path(self._local_path) / "objects"
        if not objects.is_dir():
            return  # not a bare repository: reads fall back to fetching
        alternates = cache / "objects" / "info" / "alternates"
        if not alternates.exists() or alternates.read_text().strip() != str(objects):
            alternates.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(alternates, f"{objects}\n")

    def _git(self, *args: str, cwd: Path | None | str = "", check: bool = True,
             timeout: float = GIT_TIMEOUT, input: str | None = None,
             options: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        """Run git on the cache clone (or in ``cwd``) for this lab, within ``timeout``.

        Raises:
            GitTimeout: it ran past ``timeout`` (killed with every process it started).
            CacheDamaged: the cache clone (or ``cwd``) is gone.
            TransportError: with ``check``, git failed (its last line, redacted).
        """
        where = self.path if cwd == "" else cwd
        # Name the cache explicitly: git would otherwise search upwards from a damaged
        # (emptied) cache and could act on an enclosing repository.
        scope = ("--git-dir", str(where)) if where == self.path else ()
        if scope and not (self.path / "objects").is_dir():
            raise CacheDamaged(f"cache clone {where} is gone")
        try:
            proc = run_git([*scope, *options, *args], cwd=where, timeout=timeout, input=input,
                           env=git_env(self.url, self._userinfo), what=self.url)
        except GitNotStarted:
            if where is not None and not Path(where).is_dir():
                raise CacheDamaged(f"cache clone {where} is gone") from None
            raise
        if check and proc.returncode != 0:
            raise TransportError(
                f"git {args[0]} failed on {redact(self.url)}: {redact(last_line(proc.stderr))}"
            )
        return proc

    # -- reads -----------------------------------------------------------------------

    def refresh(self, *, since: float | None = None) -> Snapshot:
        requested = time.time() if since is None else since
        repo = self.repo
        if self._remote is not None:
            snapshot = self._read_local_remote(time.time())
            with self._lock:
                return self._checked(snapshot)
        with self._lock:
            started = _read_stamp(self._stamp)
            if started is None or started < requested or not self.path.is_dir():
                started = time.time()
                try:
                    snapshot = self._fetch_snapshot(repo, started)
                except CacheDamaged:
                    # Deleted or corrupted under us (disk trouble, a stray rm): the cache
                    # only ever holds copies of the lab's objects, so start it afresh.
                    repo = self._rebuild()
                    snapshot = self._fetch_snapshot(repo, started)
                self._stamp.write_text(repr(started))
                self._after_fetch(len(snapshot.records))
                return self._checked(snapshot)
            return self._checked(self._read_snapshot(repo, started))

    def _after_fetch(self, records: int) -> None:
        """Note how many record refs the lab has (it picks the fetch protocol), and keep
        the cache's refs packed once they are many (lock held).

        A fetch writes each new ref as a file; with thousands of them, every later fetch
        and read opens thousands of files. ``git pack-refs`` folds them into one sorted
        file, at most once a minute; failing to is harmless (it is only slower).
        """
        with contextlib.suppress(OSError):
            if _read_stamp(self._ref_count) != records:
                write_atomic(self._ref_count, repr(float(records)))
        if records < MANY_REFS:
            return
        last = _read_stamp(self._packed_at)
        if last is not None and 0 <= time.time() - last < 60:
            return
        with contextlib.suppress(TransportError, OSError):
            self._git("pack-refs", "--all", "--prune", check=False)
            self._packed_at.write_text(repr(time.time()))

    def _fetch_options(self) -> tuple[str, ...]:
        """``-c`` options for a fetch from this lab.

        Over git:// on a fast network, protocol v2's extra request/response turn stalls
        on TCP delayed ACKs (measured: ls-remote 50 ms with v2, 5 ms with v0 on
        loopback), so small labs are fetched with v0. But v0 advertises every ref, and
        the client then tells the server, 16 at a time, that it has each record commit
        it already holds: with thousands of live record refs that is seconds of round
        trips (20,000: about 17 s per fetch that brings anything). Past ``MANY_REFS``,
        v2 (git's default elsewhere) sends those in few, growing batches.
        """
        if not self.url.startswith("git://"):
            return ()
        known = _read_stamp(self._ref_count) or 0
        return ("-c", f"protocol.version={2 if known >= MANY_REFS else 0}")

    def _fetch_snapshot(self, repo: pygit2.Repository, started: float) -> Snapshot:
        if not self.path.is_dir():
            raise CacheDamaged("cache directory is gone")
        self._fetch_state()
        snapshot = self._read_snapshot(repo, started)
        for commit in (snapshot.main, *snapshot.records.values()):
            try:
                repo[commit].peel(pygit2.Tree)
            except (KeyError, ValueError, pygit2.GitError) as exc:
                raise CacheDamaged(f"commit {commit[:12]} unreadable: {exc}") from None
        return snapshot

    def _checked(self, snapshot: Snapshot) -> Snapshot:
        """Refuse to follow a ``main`` that no longer contains the last one seen here.

        ``main`` only ever moves forward; a rewrite (a force-push) could drop rows
        and promotions, so it is reported instead of followed, until someone looks at
        it and runs ``autolab doctor --accept-rewrite``.

        The host records the newest ``main`` seen (``<cache>.main``: the commit and the
        time the read that saw it had finished). Checked and updated under the cache's
        lock, so agents of the host agree on it, and it only ever moves forward. A
        snapshot *older* than the record (an ancestor of it) is not a rewrite when its
        read started before the recorded one finished: the two reads overlapped, and
        ``main`` simply moved in between (agents reading a lab on this filesystem do so
        without the lock). An ancestor read after that is ``main`` moved back: a rewrite.
        """
        main = snapshot.main
        if _read_seen(self._seen_main)[0] == main:
            return snapshot  # nothing to decide or write (the record is replaced whole)
        with self._lock:  # reentrant: refresh of a network lab already holds it
            seen, seen_at = _read_seen(self._seen_main)
            if seen == main:
                return snapshot
            if not seen or self.is_ancestor(seen, main):
                write_atomic(self._seen_main, f"{main} {time.time()!r}")
                return snapshot
            if snapshot.fetched_at <= seen_at and self.is_ancestor(main, seen):
                return snapshot  # an older read that finished late: not a rewrite
        raise LabError(
            f"main of {redact(self.url)} was rewritten: {main[:12]} does not "
            f"contain {seen[:12]}, the main seen before (force-push?); inspect it, then "
            f"run `autolab doctor --accept-rewrite` to follow the new main"
        )

    def accept_rewrite(self) -> str:
        """Follow the remote's current ``main`` even if it rewrote history."""
        with self._lock:
            self._seen_main.unlink(missing_ok=True)
        return self.refresh().main

    def _read_local_remote(self, started: float) -> Snapshot:
        """Read a lab on this filesystem directly: its refs, and its objects through the
        cache's alternates. Writes still go through ``git push``."""
        remote = self._remote
        assert remote is not None
        try:
            # Records first, then main (as a fetch's advertisement lists them): a record
            # missing here was deleted after it was folded, so main read next has it.
            records = _refs_under(remote, RECORD_PREFIX, RECORD_PREFIX)
            main = remote.references.get(MAIN)
        except (pygit2.GitError, KeyError, OSError) as exc:
            raise TransportError(f"cannot read {redact(self.url)}: {exc}") from None
        if main is None:
            raise LabError(f"{redact(self.url)} has no main branch: not a lab")
        return Snapshot(main=str(main.target), records=records, fetched_at=started)

    @property
    def _remote(self) -> pygit2.Repository | None:
        """The lab's repository when it is a local path (None for network remotes)."""
        if self._local_path is None:
            return None
        if self._remote_repo is None:
            try:
                self._remote_repo = pygit2.Repository(self._local_path)
            except pygit2.GitError:
                raise LabError(f"{redact(self.url)}: no such lab") from None
        return self._remote_repo

    def _fetch_state(self) -> None:
        proc = self._fetch(f"+{MAIN}:{_TRACK}main", f"+{RECORD_PREFIX}*:{_TRACK}autolab/*",
                           prune=True)
        if proc.returncode != 0:
            full = proc.stderr
            err = redact(first_error(full))
            refused = auth_failure(full, self.url, self._userinfo)
            if refused is not None:
                raise LabError(refused)  # not worth retrying: nothing changes by itself
            if "couldn't find remote ref" in full:
                raise LabError(f"{redact(self.url)} has no main branch: not a lab")
            if any(s in full for s in ("does not appear to be a git repository",
                                       "not found", "No such file", "repository not exported",
                                       "no such repository")):
                raise LabError(f"{redact(self.url)}: no such lab ({err})")
            local = "\n".join(ln for ln in full.splitlines() if not ln.startswith("remote:"))
            if any(s in local for s in LOCAL_DAMAGE):
                try:
                    broken = self._cache_broken()
                except GitTimeout as exc:
                    raise GitTimeout(f"cannot fetch {redact(self.url)}: {err} (and checking "
                                     f"the cache clone failed: {exc})") from None
                if broken:
                    raise CacheDamaged(err)
            raise transport_error(f"cannot fetch {redact(self.url)}: {err}", full)

    def _negotiation_tip(self) -> tuple[str, ...]:
        """``--negotiation-tip`` naming the cache's copy of ``main``, if it has one.

        Only main's history is worth telling the server about: record commits have no
        parents and share nothing with what a fetch brings, so listing them as "have"s
        (git's default: every local ref) is thousands of lines for nothing. Only the ref
        is looked at, never its objects (libgit2 can loop forever on a truncated pack);
        a fetch that fails with the option is tried again without it.
        """
        try:
            if self.repo.references.get(f"{_TRACK}main") is not None:
                return (f"--negotiation-tip={_TRACK}main",)
        except (pygit2.GitError, ValueError, KeyError, OSError):
            pass
        return ()

    def _fetch(self, *refspecs: str, prune: bool) -> subprocess.CompletedProcess[str]:
        """``git fetch`` of ``refspecs`` from the lab into the cache (lock held)."""
        tip = self._negotiation_tip()
        for attempt in (tip, ()) if tip else ((),):
            proc = self._git("fetch", *(("--prune",) if prune else ()), "--no-write-fetch-head",
                             "--quiet", "--no-tags", *attempt, "origin", *refspecs,
                             check=False, options=self._fetch_options())
            damage = f"{_TRACK}main" in proc.stderr or any(
                word in proc.stderr for word in LOCAL_DAMAGE)
            if proc.returncode == 0 or not damage:
                break  # only a damaged cache can make the tip itself the trouble
        return proc

    def _read_snapshot(self, repo: pygit2.Repository, started: float) -> Snapshot:
        main = repo.references.get(f"{_TRACK}main")
        if main is None:
            raise LabError(f"{redact(self.url)} has no main branch: not a lab")
        records = _refs_under(repo, f"{_TRACK}autolab/", RECORD_PREFIX)
        return Snapshot(main=str(main.target), records=records, fetched_at=started)

    def _tree(self, commit: str) -> pygit2.Tree:
        try:
            return self.repo[commit].peel(pygit2.Tree)
        except (KeyError, ValueError):
            raise LabError(f"commit {commit[:12]} is not in the cache of "
                           f"{redact(self.url)}") from None

    def is_ancestor(self, ancestor: str, commit: str) -> bool:
        try:
            return ancestor == commit or self.repo.descendant_of(commit, ancestor)
        except (KeyError, ValueError, pygit2.GitError):
            return False

    def list_dir(self, commit: str, path: str) -> dict[str, str]:
        tree = self._tree(commit)
        try:
            sub = tree[path] if path else tree
        except KeyError:
            return {}
        if sub.type_str != "tree":
            return {}
        return {f"{path}/{e.name}": str(e.id) for e in self.repo[sub.id] if e.type_str == "blob"}

    def list_files(self, commit: str) -> dict[str, str]:
        out: dict[str, str] = {}

        def walk(tree: pygit2.Tree, prefix: str) -> None:
            for entry in tree:
                if entry.type_str == "tree":
                    walk(self.repo[entry.id], f"{prefix}{entry.name}/")
                elif entry.type_str == "blob":
                    out[prefix + entry.name] = str(entry.id)

        walk(self._tree(commit), "")
        return out

    def read_blob(self, blob_id: str) -> bytes:
        return self.repo[blob_id].data

    def read_blob_buffer(self, blob_id: str) -> memoryview:
        # The blob's own buffer: a compacted shard is tens of MB, and copying it into
        # ``bytes`` costs as much as inflating it.
        return memoryview(self.repo[blob_id])

    def read_file(self, commit: str, path: str) -> bytes | None:
        try:
            entry = self._tree(commit)[path]
        except KeyError:
            return None
        return self.repo[entry.id].data if entry.type_str == "blob" else None

    def export(self, commit: str, dest: str) -> None:
        import io
        import tarfile

        try:
            proc = run_git(["--git-dir", str(self.path), "archive", "--format=tar", commit],
                           cwd=self.path, text=False, env=git_env(), what=str(self.path))
        except TransportError as exc:  # a local command: not worth retrying as transport
            raise LabError(f"cannot export {commit[:12]}: {exc}") from None
        if proc.returncode != 0:
            raise TransportError(f"cannot export {commit[:12]}: {proc.stderr.decode()[-200:]}")
        with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as archive:
            archive.extractall(dest, filter="data")

    def has_commit(self, commit: str) -> bool:
        try:
            return self.repo.get(commit) is not None
        except (ValueError, pygit2.GitError):
            return False

    def apply_patch(self, parent: str, patch: str) -> str:
        tree = self._tree(parent)
        if not patch.strip():
            return str(tree.id)
        with tempfile.TemporaryDirectory(prefix="autolab-apply-") as tmp:
            # A private index holding the parent's tree: git applies the patch to it
            # exactly as it would to a checkout, and the result is read back as a tree.
            index_path = os.path.join(tmp, "index")
            index = pygit2.Index(index_path)
            index.read_tree(tree)
            index.write()
            try:
                proc = run_git(
                    ["--git-dir", str(self.path), "apply", "--cached", "--whitespace=nowarn",
                     "-"], input=patch.encode(), text=False,
                    env={**git_env(), "GIT_INDEX_FILE": index_path}, what=str(self.path),
                )
            except GitTimeout:
                raise PatchError("patch does not apply: git apply timed out") from None
            except TransportError as exc:  # git could not be started at all
                raise LabError(str(exc)) from None
            if proc.returncode != 0:
                why = first_error(proc.stderr.decode(errors="replace"))
                raise PatchError(f"patch does not apply: {why.removeprefix('error: ')}")
            applied = pygit2.Index(index_path)
            applied.read(True)
            return str(applied.write_tree(self.repo))

    def tree_changes(self, old: str, new: str) -> list[TreeChange]:
        repo = self.repo
        try:
            a, b = repo[old].peel(pygit2.Tree), repo[new].peel(pygit2.Tree)
        except (KeyError, ValueError):
            raise LabError(f"{old[:12]} or {new[:12]} is not in the cache of "
                           f"{redact(self.url)}") from None
        out = []
        for delta in a.diff_to_tree(b).deltas:
            added = delta.status == pygit2.enums.DeltaStatus.ADDED
            deleted = delta.status == pygit2.enums.DeltaStatus.DELETED
            for path in dict.fromkeys((delta.old_file.path, delta.new_file.path)):
                out.append(TreeChange(
                    path,
                    0 if added else int(delta.old_file.mode),
                    0 if deleted else int(delta.new_file.mode),
                    None if added else str(delta.old_file.id),
                    None if deleted else str(delta.new_file.id)))
        return out

    def tree_of(self, commit: str) -> str:
        return str(self._tree(commit).id)

    def commit_tree(self, parent: str, tree: str, message: str, *,
                    agent: str = "autolab") -> str:
        who = pygit2.Signature(f"autolab {agent}"[:80], "autolab@localhost")
        return str(self.repo.create_commit(None, who, who, message, pygit2.Oid(hex=tree),
                                           [parent]))

    # -- writes ----------------------------------------------------------------------

    def make_commit(self, parent: str | None, change: FileChange, message: str, *,
                    merge_parent: str | None = None, agent: str = "autolab") -> str:
        repo = self.repo
        index = pygit2.Index()
        if parent is not None:
            index.read_tree(self._tree(parent))
        for path in change.remove:
            if path in index:
                index.remove(path)
        for path, data in change.add.items():
            index.add(pygit2.IndexEntry(path, repo.create_blob(data), pygit2.GIT_FILEMODE_BLOB))
        for path, blob in change.add_blobs.items():
            index.add(pygit2.IndexEntry(path, pygit2.Oid(hex=blob), pygit2.GIT_FILEMODE_BLOB))
        tree = index.write_tree(repo)
        who = pygit2.Signature(f"autolab {agent}"[:80], "autolab@localhost")
        parents = [p for p in (parent, merge_parent) if p is not None]
        return str(repo.create_commit(None, who, who, message, tree, parents))

    def _push(self, *specs: str) -> dict[str, tuple[str, str]]:
        """Push refspecs; return {dst ref: (flag, summary)} from ``--porcelain``."""
        proc = self._git("push", "--porcelain", "origin", *specs, check=False)
        result: dict[str, tuple[str, str]] = {}
        for line in proc.stdout.splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and ":" in parts[1]:
                result[parts[1].split(":", 1)[1]] = (parts[0], parts[2])
        result = explain_rejections(result, proc.stderr)
        if proc.returncode != 0 and not result:
            refused = auth_failure(proc.stderr, self.url, self._userinfo)
            if refused is not None:
                # Still a TransportError: the push spool and the fold answer those.
                raise TransportError(refused)
            raise transport_error(
                f"cannot push to {redact(self.url)}: {redact(last_line(proc.stderr))}",
                proc.stderr)
        return result

    def _pushable(self, ref: str, commit: str, expected: str | None) -> str | None:
        """Why git would refuse a push of ``commit`` to ``ref`` outright (None: it may
        go), checked locally so one bad update in a spool batch does not sink the rest."""
        if (not ref.startswith("refs/") or utf8_problem(ref)
                or not pygit2.reference_is_valid_name(ref)):
            return f"invalid ref name {shown(ref)!r}"
        for name, value in (("commit", commit), ("expected", expected)):
            if value is not None and not OID.fullmatch(value):
                return f"{name} {value[:50]!r} is not an object id"
        if not self._has_object(commit):
            return f"commit {commit[:12]} is not in the local cache (rebuilt meanwhile?)"
        return None

    def _has_object(self, oid: str) -> bool:
        try:
            if oid in self.repo:
                return True
        except (ValueError, pygit2.GitError):
            pass
        # Another process may have just written it into a pack this handle has not seen.
        return self._git("cat-file", "-e", oid, check=False).returncode == 0

    def _push_one(self, ref: str, commit: str, expected: str | None) -> None:
        lease = f"--force-with-lease={ref}:{expected or ''}"
        try:
            flag, summary = self._push(lease, f"{commit}:{ref}").get(ref, ("!", "no status"))
        except TransportError:
            self._check_not_lost(ref, commit)
            raise
        if flag == "!":
            self._check_not_lost(ref, commit)
        raise_for_push(flag, summary, ref, self.url)

    def _check_not_lost(self, ref: str, commit: str) -> None:
        """After a failed push: if ``commit`` is no longer in the cache clone, another
        agent of this host rebuilt the clone after the commit was built in it (git then
        reports an unpacker error or a missing object). That is a lost race: raise
        Conflict, and the caller builds the commit again on a fresh read."""
        if self._git("cat-file", "-e", commit, check=False).returncode != 0:
            raise Conflict(ref, f"{ref}: commit {commit[:12]} went with a rebuilt cache clone")

    def cas_main(self, new: str, expected: str) -> None:
        self._push_one(MAIN, new, expected)

    def create_ref(self, ref: str, commit: str) -> None:
        self._spooled(ref, commit, None)

    def _spooled(self, ref: str, commit: str, expected: str | None) -> None:
        flag, summary = self._spool.push(ref, commit, expected)
        raise_for_push(flag, summary, ref, self.url)

    def try_exclusive(self, seconds: float) -> bool:
        """True for at most one caller per host per ``seconds`` (e.g. who folds now)."""
        stamp = Path(str(self.path) + ".fold")
        try:
            with self._fold_lock.acquire(blocking=False):
                last = _read_stamp(stamp)
                if last is not None and time.time() - last < seconds:
                    return False
                stamp.write_text(repr(time.time()))
                return True
        except Timeout:
            return False

    @contextlib.contextmanager
    def main_turn(self, timeout: float) -> Iterator[object]:
        try:
            self._main_lock.acquire(timeout=timeout)
        except Timeout:
            yield None  # a stalled holder: go ahead and race
            return
        try:
            yield self._main_lock
        finally:
            self._main_lock.release()

    def push_ref(self, ref: str, commit: str, expected: str | None) -> None:
        self._spooled(ref, commit, expected)

    def delete_refs(self, refs: Mapping[str, str]) -> list[str]:
        """Delete each ref that still holds its expected commit; return those deleted.

        Any number of refs: a lab on this filesystem deletes them with ``git update-ref
        --stdin`` (no argument list to overflow, linear cost); any other lab with
        ``git push``es of bounded size, until ``GIT_TIMEOUT`` seconds have gone (see
        ``_DELETE_PAIRS``). Refs not deleted by this call are simply still there.
        """
        wanted = {ref: old for ref, old in refs.items()
                  if ref.startswith("refs/") and _valid_ref_name(ref)
                  and OID.fullmatch(old)}  # names and ids from a remote: never trusted
        if not wanted:
            return []
        if self._remote is not None:
            return self._delete_local(wanted)
        return self._delete_pushed(wanted)

    def _delete_local(self, refs: Mapping[str, str]) -> list[str]:
        """Delete refs of a lab on this filesystem in ``update-ref`` transactions.

        A transaction is all or nothing, and fails if any ref moved since it was read
        (another reporter deleted it first): the chunk is then read again and retried
        without the refs that moved, a few times at most.
        """
        remote = self._remote
        assert remote is not None and self._local_path is not None
        deleted: list[str] = []
        items = list(refs.items())
        deadline = time.monotonic() + GIT_TIMEOUT
        for start in range(0, len(items), _LOCAL_DELETE_CHUNK):
            if deleted and time.monotonic() > deadline:
                break
            chunk = items[start:start + _LOCAL_DELETE_CHUNK]
            for _ in range(3):
                live = [(ref, old) for ref, old in chunk if _target(remote, ref) == old]
                if not live:
                    break
                try:
                    proc = run_git(["--git-dir", self._local_path, "update-ref", "--stdin"],
                                   input="".join(f"delete {ref} {old}\n" for ref, old in live),
                                   env=git_env(), what=self.url)
                except TransportError:
                    if deleted:
                        return deleted  # report what is done; the rest is still there
                    raise
                if proc.returncode == 0:
                    deleted += [ref for ref, _ in live]
                    break
        return deleted

    def _delete_pushed(self, refs: Mapping[str, str]) -> list[str]:
        """Delete refs of a remote lab with pushes of bounded size and cost."""
        self._ensure_repo()  # pushes run in the cache clone
        advertised = int(_read_stamp(self._ref_count) or 0) + 1
        per_push = max(32, min(_DELETE_MAX, _DELETE_PAIRS // advertised))
        deleted: list[str] = []
        deadline = time.monotonic() + GIT_TIMEOUT
        for chunk in _chunks(list(refs.items()), per_push, _ARGV_BYTES):
            if deleted and time.monotonic() > deadline:
                break
            specs = [f"--force-with-lease={ref}:{old}" for ref, old in chunk]
            try:
                status = self._push(*specs, *(f":{ref}" for ref, _ in chunk))
            except TransportError:
                if deleted:
                    break  # report what is done; the rest is still there
                raise
            deleted += [ref for ref, _ in chunk if status.get(ref, ("!", ""))[0] == "-"]
        return deleted

    def fetch_ref(self, ref: str) -> str | None:
        repo = self.repo
        if self._remote is not None:
            found = self._remote.references.get(ref)
            return str(found.target) if found else None
        local = f"refs/autolab-fetched/{ref.removeprefix('refs/')}"
        with self._lock:  # fetches write refs of the shared cache
            proc = self._fetch(f"+{ref}:{local}", prune=False)
        if proc.returncode != 0:
            if "couldn't find remote ref" in proc.stderr:
                return None
            refused = auth_failure(proc.stderr, self.url, self._userinfo)
            if refused is not None:
                raise LabError(refused)
            raise transport_error(
                f"cannot fetch {ref} from {redact(self.url)}: {redact(last_line(proc.stderr))}",
                proc.stderr)
        found = repo.references.get(local)
        return str(found.target) if found else None


def _read_stamp(path: Path) -> float | None:
    try:
        return float(path.read_text())
    except (OSError, ValueError):
        return None


def _target(repo: pygit2.Repository, ref: str) -> str | None:
    """The commit ``ref`` holds in ``repo`` now (None if absent or unreadable)."""
    try:
        found = repo.references.get(ref)
        return None if found is None else str(found.resolve().target)
    except (KeyError, ValueError, pygit2.GitError):
        return None


def _chunks(items: list[tuple[str, str]], most: int, argv_bytes: int
            ) -> list[list[tuple[str, str]]]:
    """``(ref, old)`` pairs cut into runs of at most ``most`` pairs whose push arguments
    (a lease and a deletion per ref) stay under ``argv_bytes``."""
    out: list[list[tuple[str, str]]] = []
    run: list[tuple[str, str]] = []
    size = 0
    for ref, old in items:
        cost = 2 * len(ref) + len(old) + 24  # "--force-with-lease=R:O" and ":R", with NULs
        if run and (len(run) >= most or size + cost > argv_bytes):
            out.append(run)
            run, size = [], 0
        run.append((ref, old))
        size += cost
    if run:
        out.append(run)
    return out


def _read_seen(path: Path) -> tuple[str, float]:
    """The newest ``main`` this host saw and when the read that saw it had finished
    (``("", 0.0)`` if unknown or unreadable: the record starts again)."""
    try:
        text = path.read_text()
        mtime = path.stat().st_mtime
    except OSError:
        return "", 0.0
    parts = text.split()
    if not parts or not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", parts[0]):
        return "", 0.0
    try:
        return parts[0], float(parts[1])
    except (IndexError, ValueError):
        # Written by an older autolab (the commit alone): the file's time, with a margin
        # for filesystems that keep whole seconds.
        return parts[0], mtime + 2.0


def _refs_under(repo: pygit2.Repository, prefix: str, rename: str) -> dict[str, str]:
    """``{rename + rest: commit}`` for every ref ``prefix + rest`` of ``repo``.

    One pass of the reference iterator: looking each name up again costs a second
    read per ref, which at 20,000 refs is most of a refresh. A symbolic ref is read
    as its target's commit (as a fetch would copy it); a dangling one is skipped.
    """
    out: dict[str, str] = {}
    for ref in repo.references.iterator():
        name = ref.name
        if not name.startswith(prefix):
            continue
        if ref.type != pygit2.enums.ReferenceType.DIRECT:
            try:
                ref = ref.resolve()
            except (KeyError, pygit2.GitError):
                continue
        out[rename + name[len(prefix):]] = str(ref.target)
    return out


_BAD_IN_REF = re.compile(rb"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|/\.|\.lock(/|$)|[/.]$")


def _valid_ref_name(ref: str) -> bool:
    """git's rules for a ref name (``git check-ref-format``), also for names holding
    bytes that are not UTF-8 (surrogate-escaped, as git's output is read): those are
    legal to git, and a quarantine must be able to delete them."""
    try:
        return pygit2.reference_is_valid_name(ref)
    except UnicodeEncodeError:
        raw = ref.encode("utf-8", "surrogateescape")
        return raw.startswith(b"refs/") and not _BAD_IN_REF.search(raw)
