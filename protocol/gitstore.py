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
    auth_failure,
    cache_root,
    explain_rejections,
    first_error,
    git_env,
    last_line,
    normalize_url,
    raise_for_push,
    split_credentials,
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
        self._spool = PushSpool(Path(str(self.path) + ".spool"), self._push, GIT_TIMEOUT,
                                check=self._pushable)
        self._fold_lock = FileLock(str(self.path) + ".fold.lock")
        self._main_lock = FileLock(str(self.path) + ".main.lock", poll_interval=0.005)
        self._repo: pygit2.Repository | None = None
        # Over git://, protocol v2's extra request/response turn stalls on TCP delayed
        # ACKs (measured: ls-remote 50 ms with v2, 5 ms with v0 on loopback).
        self._options = ("-c", "protocol.version=0") if self.url.startswith("git://") else ()
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
        from the network or the server."""
        proc = subprocess.run(["git", "--git-dir", str(self.path), "fsck", "--connectivity-only",
                               "--no-dangling", "--no-progress"], capture_output=True,
                              env=git_env(), timeout=GIT_TIMEOUT)
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
             timeout: float = GIT_TIMEOUT) -> subprocess.CompletedProcess[str]:
        where = self.path if cwd == "" else cwd
        # Name the cache explicitly: git would otherwise search upwards from a damaged
        # (emptied) cache and could act on an enclosing repository.
        scope = ("--git-dir", str(where)) if where == self.path else ()
        if scope and not (self.path / "objects").is_dir():
            raise CacheDamaged(f"cache clone {where} is gone")
        try:
            proc = subprocess.run(
                ["git", *scope, *self._options, *args], cwd=where,
                env=git_env(self.url, self._userinfo),
                # Ref names and paths git prints may hold any bytes: they come back as
                # the same surrogate-escaped text pygit2 and argv use.
                capture_output=True, text=True, errors="surrogateescape", timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise TransportError(
                f"git {args[0]} timed out after {timeout:.0f}s on {redact(self.url)}"
            ) from None
        except (FileNotFoundError, NotADirectoryError):
            raise CacheDamaged(f"cache clone {where} is gone") from None
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
            return self._checked(self._read_local_remote(time.time()))
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
                return self._checked(snapshot)
            return self._checked(self._read_snapshot(repo, started))

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
        """
        seen = self._seen_main.read_text().strip() if self._seen_main.exists() else ""
        if not re.fullmatch(r"[0-9a-f]{40}", seen):
            seen = ""  # unreadable record of the last main: start it again
        if seen and seen != snapshot.main and not self.is_ancestor(seen, snapshot.main):
            raise LabError(
                f"main of {redact(self.url)} was rewritten: {snapshot.main[:12]} does not "
                f"contain {seen[:12]}, the main seen before (force-push?); inspect it, then "
                f"run `autolab doctor --accept-rewrite` to follow the new main"
            )
        if seen != snapshot.main:
            write_atomic(self._seen_main, snapshot.main)
        return snapshot

    def accept_rewrite(self) -> str:
        """Follow the remote's current ``main`` even if it rewrote history."""
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
            records = {name: str(remote.references[name].target)
                       for name in remote.references if name.startswith(RECORD_PREFIX)}
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
        proc = self._git(
            "fetch", "--prune", "--no-write-fetch-head", "--quiet", "--no-tags", "origin",
            f"+{MAIN}:{_TRACK}main", f"+{RECORD_PREFIX}*:{_TRACK}autolab/*", check=False,
        )
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
            if any(s in local for s in LOCAL_DAMAGE) and self._cache_broken():
                raise CacheDamaged(err)
            raise TransportError(f"cannot fetch {redact(self.url)}: {err}")

    def _read_snapshot(self, repo: pygit2.Repository, started: float) -> Snapshot:
        main = repo.references.get(f"{_TRACK}main")
        if main is None:
            raise LabError(f"{redact(self.url)} has no main branch: not a lab")
        prefix = f"{_TRACK}autolab/"
        records = {
            RECORD_PREFIX + name[len(prefix):]: str(repo.references[name].target)
            for name in repo.references
            if name.startswith(prefix)
        }
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

        proc = subprocess.run(["git", "--git-dir", str(self.path), "archive", "--format=tar",
                               commit], cwd=self.path, capture_output=True,
                              timeout=GIT_TIMEOUT)
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
                proc = subprocess.run(
                    ["git", "--git-dir", str(self.path), "apply", "--cached",
                     "--whitespace=nowarn", "-"],
                    input=patch.encode(), capture_output=True, timeout=GIT_TIMEOUT,
                    env={**git_env(), "GIT_INDEX_FILE": index_path},
                )
            except subprocess.TimeoutExpired:
                raise PatchError("patch does not apply: git apply timed out") from None
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
            # Still a TransportError: the push spool and the fold answer those.
            raise TransportError(
                auth_failure(proc.stderr, self.url, self._userinfo)
                or f"cannot push to {redact(self.url)}: {redact(last_line(proc.stderr))}"
            )
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
        if not refs:
            return []
        specs = [f"--force-with-lease={ref}:{old}" for ref, old in refs.items()]
        status = self._push(*specs, *(f":{ref}" for ref in refs))
        return [ref for ref in refs if status.get(ref, ("!", ""))[0] == "-"]

    def fetch_ref(self, ref: str) -> str | None:
        repo = self.repo
        if self._remote is not None:
            found = self._remote.references.get(ref)
            return str(found.target) if found else None
        local = f"refs/autolab-fetched/{ref.removeprefix('refs/')}"
        with self._lock:  # fetches write refs of the shared cache
            proc = self._git("fetch", "--no-write-fetch-head", "--quiet", "--no-tags",
                             "origin", f"+{ref}:{local}", check=False)
        if proc.returncode != 0:
            if "couldn't find remote ref" in proc.stderr:
                return None
            refused = auth_failure(proc.stderr, self.url, self._userinfo)
            if refused is not None:
                raise LabError(refused)
            raise TransportError(
                f"cannot fetch {ref} from {redact(self.url)}: {redact(last_line(proc.stderr))}"
            )
        found = repo.references.get(local)
        return str(found.target) if found else None


def _read_stamp(path: Path) -> float | None:
    try:
        return float(path.read_text())
    except (OSError, ValueError):
        return None
