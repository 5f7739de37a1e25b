"""The LabStore contract, run against every kind of remote (DESIGN.md §5)."""

from __future__ import annotations

import pytest

from autolab.protocol.errors import Conflict, LabError
from autolab.protocol.gitstore import GitStore
from autolab.protocol.store import FileChange


def test_refresh_reads_main_without_checkout(any_remote):
    store = GitStore(any_remote.url)
    snap = store.refresh()
    assert snap.main == any_remote.main()
    assert snap.records == {}
    assert b"[metric]" in store.read_file(snap.main, "autolab.toml")
    assert store.read_file(snap.main, "missing.txt") is None
    assert "experiment.py" in store.list_files(snap.main)


def test_cas_main_moves_only_from_expected(any_remote):
    store = GitStore(any_remote.url)
    base = store.refresh().main
    first = store.make_commit(base, FileChange(add={"notes/a.txt": b"a"}), "a")
    second = store.make_commit(base, FileChange(add={"notes/b.txt": b"b"}), "b")
    store.cas_main(first, base)
    with pytest.raises(Conflict):
        store.cas_main(second, base)  # main moved: the second writer loses
    assert any_remote.main() == first
    assert store.refresh().main == first
    assert store.read_file(first, "notes/a.txt") == b"a"


def test_create_ref_is_create_only(any_remote):
    store = GitStore(any_remote.url)
    one = store.make_commit(None, FileChange(add={"r/x": b"1"}), "one")
    two = store.make_commit(None, FileChange(add={"r/x": b"2"}), "two")
    store.create_ref("refs/autolab/claims/0001/1", one)
    with pytest.raises(Conflict):
        store.create_ref("refs/autolab/claims/0001/1", two)
    assert any_remote.git("rev-parse", "refs/autolab/claims/0001/1") == one
    assert store.refresh().records == {"refs/autolab/claims/0001/1": one}


def test_delete_refs_checks_expected_value(any_remote):
    store = GitStore(any_remote.url)
    one = store.make_commit(None, FileChange(add={"r/x": b"1"}), "one")
    two = store.make_commit(None, FileChange(add={"r/x": b"2"}), "two")
    store.create_ref("refs/autolab/claims/a/1", one)
    store.create_ref("refs/autolab/claims/b/1", two)
    deleted = store.delete_refs({"refs/autolab/claims/a/1": one,
                                 "refs/autolab/claims/b/1": one})  # b holds two: kept
    assert deleted == ["refs/autolab/claims/a/1"]
    assert set(store.refresh().records) == {"refs/autolab/claims/b/1"}


def test_push_and_fetch_branch(any_remote):
    store = GitStore(any_remote.url)
    base = store.refresh().main
    head = store.make_commit(base, FileChange(add={"experiment.py": b"X = 1\n"}), "exp")
    store.push_ref("refs/heads/autolab/exp/0001", head, None)
    with pytest.raises(Conflict):
        store.push_ref("refs/heads/autolab/exp/0001", base, None)
    other = GitStore(any_remote.url, cache_dir=store.path.parent / "other")
    assert other.fetch_ref("refs/heads/autolab/exp/0001") == head
    assert other.read_file(head, "experiment.py") == b"X = 1\n"
    assert other.fetch_ref("refs/heads/autolab/exp/none") is None


def test_cache_is_rebuilt_when_damaged(any_remote):
    store = GitStore(any_remote.url)
    store.refresh()
    (store.path / "HEAD").unlink()  # damage the cache clone between two commands
    again = GitStore(any_remote.url)
    assert again.refresh().main == any_remote.main()


def test_missing_lab_is_a_clear_error(tmp_path):
    with pytest.raises(LabError, match="no such lab"):
        GitStore(str(tmp_path / "nowhere.git")).refresh()


def test_a_refusing_server_is_an_error_not_a_lost_race(any_remote):
    from autolab.protocol.errors import TransportError

    store = GitStore(any_remote.url)
    base = store.refresh().main
    hook = any_remote.bare / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'refused by policy' >&2\nexit 1\n")
    hook.chmod(0o755)
    record = store.make_commit(None, FileChange(add={"r/x": b"1"}), "one")
    with pytest.raises(TransportError, match="declined|rejected"):
        store.create_ref("refs/autolab/claims/0001/1", record)
    new = store.make_commit(base, FileChange(add={"a.txt": b"a"}), "a")
    with pytest.raises(TransportError):
        store.cas_main(new, base)
    hook.unlink()
