"""The push spool under concurrent agents: an update that cannot be pushed fails alone.

Agents of one host share a spool; whoever holds its lock pushes every pending request
in one ``git push``. git refuses such a push outright if one refspec in it names an
object the cache lacks or is not a ref, so without a check the batch-mates of one bad
request all failed with it.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import time

import pytest

from autolab.protocol.errors import LabError
from autolab.protocol.lab import Lab
from autolab.protocol.push_spool import INVALID
from autolab.protocol.store import FileChange

pytestmark = pytest.mark.slow

_GOOD_AGENTS, _REFS_EACH = 4, 8


def _create_refs(url: str, cache: str, agent: str, barrier) -> list[tuple[str, str]]:
    """Create refs one at a time with no retry: any failure surfaces here."""
    os.environ["AUTOLAB_CACHE"] = cache
    store = Lab.open(url, agent).store
    made = []
    for i in range(_REFS_EACH):
        commit = store.make_commit(None, FileChange(add={"f": f"{agent} {i}".encode()}),
                                   f"{agent} {i}", agent=agent)
        made.append((f"refs/spool-test/{agent}/{i}", commit))
    barrier.wait()
    for ref, commit in made:
        store.create_ref(ref, commit)
    return made


def _push_bad_updates(url: str, cache: str, barrier) -> list[tuple[str, str]]:
    """Updates of commits this host never had (as after a cache rebuild)."""
    os.environ["AUTOLAB_CACHE"] = cache
    store = Lab.open(url, "bad").store
    barrier.wait()
    answers = []
    for i in range(_REFS_EACH):
        answers.append(store._spool.push(f"refs/spool-test/bad/{i}", f"{i:040x}", None))
    return answers


def _seed_garbage(spool_dir, count: int) -> list:
    """Requests as a broken writer would leave them, waiting to be batched."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    bodies = ["not json", json.dumps(["refs/x", "deadbeef"]),
              json.dumps(["refs/bad..name", "0" * 40, None]), json.dumps(["main", "1" * 40, None])]
    made = []
    for n in range(count):
        path = spool_dir / f"{time.time_ns():020d}-seed{n:04d}.req"
        path.write_text(bodies[n % len(bodies)])
        made.append(path)
    return made


def test_bad_spool_requests_fail_alone_under_concurrent_pushers(daemon_remote, tmp_path):
    cache = os.environ["AUTOLAB_CACHE"]
    store = Lab.open(daemon_remote.url, "setup").store
    garbage = _seed_garbage(store._spool.path, 8)  # the first leader batches these
    ctx = mp.get_context("spawn")
    barrier = ctx.Manager().Barrier(_GOOD_AGENTS + 1)
    with ctx.Pool(_GOOD_AGENTS + 1) as pool:
        good = [pool.apply_async(_create_refs, (daemon_remote.url, cache, f"g{n}", barrier))
                for n in range(_GOOD_AGENTS)]
        bad = pool.apply_async(_push_bad_updates, (daemon_remote.url, cache, barrier))
        made = [pair for result in good for pair in result.get(timeout=240)]
        answers = bad.get(timeout=240)

    on_remote = dict(line.split()[::-1] for line in subprocess.run(
        ["git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/spool-test/"],
        cwd=daemon_remote.bare, check=True, capture_output=True, text=True).stdout.splitlines())
    assert on_remote == dict(made)  # every good update landed; no bad one did
    assert len(made) == _GOOD_AGENTS * _REFS_EACH
    assert [flag for flag, _ in answers] == [INVALID] * _REFS_EACH
    assert all("not in the local cache" in summary for _, summary in answers)
    reasons = [json.loads(p.with_suffix(".res").read_text())[1] for p in garbage]
    assert sum("malformed spool request" in r for r in reasons) == 4  # not JSON, 2 fields
    assert sum("invalid ref name" in r for r in reasons) == 4  # refs/bad..name, main
    assert not list(store._spool.path.glob("*.req"))


def test_an_update_the_spool_refuses_is_an_error_not_a_retry(daemon_remote):
    store = Lab.open(daemon_remote.url, "agent").store
    start = time.monotonic()
    with pytest.raises(LabError, match="not in the local cache"):
        store.create_ref("refs/spool-test/missing", "ab" * 20)
    assert time.monotonic() - start < 5  # answered at once, not retried as a transport error
