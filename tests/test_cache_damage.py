"""Local cache damage: a cache clone deleted or corrupted between two commands is
rebuilt, and agents on one host sharing a cache never corrupt it (real processes,
real ``git daemon``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autolab.protocol.lab import Lab

from .conftest import knob_patch_text, run_cli
from .helpers import propose_x


def _cache(env_cache: Path) -> Path:
    [repo] = [p for p in env_cache.iterdir() if p.suffix == ".git"]
    return repo


def _truncate_objects(cache: Path) -> None:
    for path in (cache / "objects").rglob("*"):
        if path.is_file() and path.parent.name != "info":
            os.chmod(path, 0o644)
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])


def _garbage_head(cache: Path) -> None:
    (cache / "HEAD").write_text("garbage\n")


def _empty_dir(cache: Path) -> None:
    shutil.rmtree(cache)
    cache.mkdir()


def _drop_packs(cache: Path) -> None:
    for path in (cache / "objects").rglob("*"):
        if path.is_file() and path.parent.name != "info":
            path.unlink()


def _garbage_seen_main(cache: Path) -> None:
    Path(str(cache) + ".main").write_text("not a commit\n")


DAMAGE = {
    "deleted": shutil.rmtree,
    "empty": _empty_dir,
    "garbage-head": _garbage_head,
    "truncated-objects": _truncate_objects,
    "objects-deleted": _drop_packs,
    "garbage-seen-main": _garbage_seen_main,
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_cache_is_rebuilt_between_commands(daemon_remote, tmp_path, damage):
    lab = daemon_remote.url
    patch = tmp_path / "x.diff"
    patch.write_text(knob_patch_text(1.5))
    run_cli("propose", "--lab", lab, "--patch", str(patch), "--hypothesis", "X to 1.5", check=True)
    before = json.loads(run_cli("status", "--lab", lab, "--json", check=True).stdout)

    DAMAGE[damage](_cache(Path(os.environ["AUTOLAB_CACHE"])))

    after = run_cli("status", "--lab", lab, "--json")
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout)["counts"] == before["counts"]
    patch.write_text(knob_patch_text(2.5))
    again = run_cli("propose", "--lab", lab, "--patch", str(patch), "--hypothesis", "X to 2.5")
    assert again.returncode == 0, again.stderr
    cache = _cache(Path(os.environ["AUTOLAB_CACHE"]))
    fsck = subprocess.run(["git", "fsck", "--no-dangling"], cwd=cache, capture_output=True,
                          text=True)
    assert fsck.returncode == 0, fsck.stderr


def test_a_commit_gone_with_a_rebuilt_cache_is_built_again(daemon_remote, monkeypatch):
    """Another process rebuilds the host's cache clone between this agent building a main
    commit and pushing it: the push is a lost race (built again on a fresh read), not a
    transport failure retried until the agent gives up."""
    lab = Lab.open(daemon_remote.url, "planner")
    propose_x(lab, 1.0)
    cache = _cache(Path(os.environ["AUTOLAB_CACHE"]))
    real, pushed = lab.store.cas_main, []

    def rebuilt_then_push(new: str, expected: str) -> None:
        if not pushed:
            shutil.rmtree(cache)
            run_cli("status", "--lab", daemon_remote.url, check=True)  # rebuilds it
            assert (cache / "objects").is_dir()
        pushed.append(new)
        real(new, expected)

    monkeypatch.setattr(lab.store, "cas_main", rebuilt_then_push)
    propose_x(lab, 2.0)
    assert len(pushed) == 2 and pushed[0] != pushed[1]  # built again, pushed once more
    assert lab.stats["conflicts"] >= 1
    main = daemon_remote.git("rev-parse", "main").strip()
    assert main == pushed[1]
    state = Lab.open(daemon_remote.url, "reader").read().state
    assert len(state.experiments) == 2


@pytest.mark.slow
def test_agents_sharing_a_cache_never_corrupt_it(daemon_remote, tmp_path):
    """Six processes start at once on an empty shared cache (racing to create it), then
    propose and read in loops; the cache stays a valid repository and nothing is lost.
    (Two rounds each: the processes race at the cache's creation and then write and
    fetch into it at once; more rounds repeat the same.)"""
    lab = daemon_remote.url
    script = tmp_path / "agent.sh"
    script.write_text(
        'for i in 1 2; do\n'
        f'  "{sys.executable}" -m autolab.agents.cli propose --lab "$LAB" --agent "$AGENT" '
        '--set "X=$AGENT.$i" --hypothesis "X to $AGENT.$i" --json || exit 1\n'
        f'  "{sys.executable}" -m autolab.agents.cli status --lab "$LAB" --json >/dev/null '
        '|| exit 1\n'
        'done\n')
    procs = [subprocess.Popen(["bash", str(script)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "LAB": lab, "AGENT": str(n)})
             for n in range(1, 7)]
    proposed = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        proposed += [json.loads(line)["experiment_id"] for line in out.splitlines()]
    assert len(set(proposed)) == 12
    status = json.loads(run_cli("status", "--lab", lab, "--json", check=True).stdout)
    assert status["counts"]["queued"] == 12
    cache = _cache(Path(os.environ["AUTOLAB_CACHE"]))
    fsck = subprocess.run(["git", "fsck", "--no-dangling"], cwd=cache, capture_output=True,
                          text=True)
    assert fsck.returncode == 0, fsck.stderr
    assert not list(cache.parent.glob("*.tmp*")) and not list(cache.parent.glob("*.damaged*"))
