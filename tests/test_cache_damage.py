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

from .conftest import knob_patch_text, run_cli


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


@pytest.mark.slow
def test_agents_sharing_a_cache_never_corrupt_it(daemon_remote, tmp_path):
    """Six processes start at once on an empty shared cache (racing to create it), then
    propose and read in loops; the cache stays a valid repository and nothing is lost."""
    lab = daemon_remote.url
    script = tmp_path / "agent.sh"
    script.write_text(
        'for i in 1 2 3 4; do\n'
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
    assert len(set(proposed)) == 24
    status = json.loads(run_cli("status", "--lab", lab, "--json", check=True).stdout)
    assert status["counts"]["queued"] == 24
    cache = _cache(Path(os.environ["AUTOLAB_CACHE"]))
    fsck = subprocess.run(["git", "fsck", "--no-dangling"], cwd=cache, capture_output=True,
                          text=True)
    assert fsck.returncode == 0, fsck.stderr
    assert not list(cache.parent.glob("*.tmp*")) and not list(cache.parent.glob("*.damaged*"))
