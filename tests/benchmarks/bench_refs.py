"""Many live record refs: what ``refresh`` and folded-ref deletion cost as they pile up.

A reporter that stops deleting folded record refs (it crashed, or was not run) leaves
them on the remote; every agent's ``refresh`` then lists them all. For each remote kind
(a bare repo on a filesystem path, and ``git daemon`` on 127.0.0.1) and each count of
live record refs (default 0, 2,000 and 20,000), the benchmark writes that many valid
claim records straight into the bare remote (``git fast-import``; ``--packed`` then packs
the remote's refs, as ``git gc`` on a server would), then times, with one long-lived
``GitStore`` as an agent holds it:

* ``cold``: the first refresh, into an empty cache clone;
* ``noop``: a refresh when nothing changed (median of ``--repeat``);
* ``one new``: a refresh after one more record ref appeared (median);
* ``read``: a whole ``Lab.read`` (refresh plus decoding every record), warm;
* ``delete``: ``delete_refs`` of ``--delete`` of the refs (largest count only), called
  again until all are gone or ``--delete-calls`` calls were made (each call is bounded
  in time; the rest waits for the next one).

Ratios are against the 0-ref row of the same remote kind, in the same run. Usage::

    python tests/benchmarks/bench_refs.py [--counts 0,2000,20000] [--repeat 5] [--packed]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.conftest import GitDaemon  # noqa: E402
from tests.helpers import write_claim_records  # noqa: E402


def _median(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(kind: str, count: int, daemon: GitDaemon, tmp: Path, repeat: int,
            delete: int, calls: int, packed: bool) -> dict:
    from autolab.agents.lab_init import init_lab
    from autolab.protocol.gitstore import GitStore
    from autolab.protocol.lab import Lab

    name = f"refs-{kind}-{count}.git"
    bare = daemon.base / name
    init_lab(bare, "blank", bare=True)
    refs = write_claim_records(bare, 0, count)
    if packed:
        subprocess.run(["git", "pack-refs", "--all"], cwd=bare, check=True)
    url = str(bare) if kind == "path" else daemon.url(name)
    os.environ["AUTOLAB_CACHE"] = str(tmp / f"cache-{kind}-{count}")
    store = GitStore(url)
    start = time.perf_counter()
    snap = store.refresh()
    cold = time.perf_counter() - start
    assert len(snap.records) == count, (len(snap.records), count)
    noop = _median(store.refresh, repeat)
    extra = [count + 10_000_000]

    def one_new() -> None:
        write_claim_records(bare, extra[0], 1)
        extra[0] += 1
        start = time.perf_counter()
        store.refresh()
        one_new.spent.append(time.perf_counter() - start)  # type: ignore[attr-defined]

    one_new.spent = []  # type: ignore[attr-defined]
    for _ in range(repeat):
        one_new()
    lab = Lab(store, "bench")
    lab.read()
    row = {"kind": kind, "count": count, "cold": cold, "noop": noop,
           "new": statistics.median(one_new.spent),  # type: ignore[attr-defined]
           "read": _median(lab.read, 1)}
    if delete and count >= delete:
        doomed = dict(list(refs.items())[:delete])
        start = time.perf_counter()
        gone: list[str] = []
        for _ in range(calls):
            gone += store.delete_refs({r: c for r, c in doomed.items() if r not in gone})
            if len(gone) == len(doomed):
                break
        row["delete"] = time.perf_counter() - start
        row["deleted"] = len(gone)
        row["calls"] = _ + 1
        assert len(store.refresh().records) == count + repeat - len(gone)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="0,2000,20000")
    parser.add_argument("--remotes", default="path,daemon")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--delete", type=int, default=15000,
                        help="refs deleted at once at the largest count (0: skip)")
    parser.add_argument("--delete-calls", type=int, default=3,
                        help="delete_refs calls at most (each is bounded in time)")
    parser.add_argument("--packed", action="store_true",
                        help="pack the remote's refs (as git gc on a server would)")
    args = parser.parse_args()
    counts = [int(n) for n in args.counts.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="autolab-bench-refs-"))
    daemon = GitDaemon(tmp / "daemon")
    daemon.base.mkdir()
    daemon.start()
    rows = []
    try:
        for kind in args.remotes.split(","):
            for count in counts:
                delete = args.delete if count == max(counts) else 0
                rows.append(measure(kind, count, daemon, tmp, args.repeat, delete,
                                    args.delete_calls, args.packed))
                print(_line(rows[-1]), flush=True)
    finally:
        daemon.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(_table(rows))


def _line(r: dict) -> str:
    tail = (f" deleted {r['deleted']} refs in {r['delete']:.2f}s ({r['calls']} calls)"
            if "delete" in r else "")
    return (f"{r['kind']:6} {r['count']:6} refs: cold {r['cold']:.3f}s noop {r['noop']:.3f}s "
            f"one new {r['new']:.3f}s Lab.read {r['read']:.3f}s{tail}")


def _table(rows: list[dict]) -> str:
    base = {r["kind"]: r for r in rows if r["count"] == 0}
    lines = ["| remote | live record refs | cold refresh s | no-op refresh s | x 0 refs | "
             "refresh after 1 new ref s | x 0 refs | Lab.read s | deleted (calls) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = base.get(r["kind"])
        noop = f"{r['noop'] / b['noop']:.1f}" if b and b["noop"] else "-"
        new = f"{r['new'] / b['new']:.1f}" if b and b["new"] else "-"
        delete = (f"{r['deleted']} in {r['delete']:.1f} s ({r['calls']})" if "delete" in r
                  else "-")
        lines.append(f"| {r['kind']} | {r['count']} | {r['cold']:.3f} | {r['noop']:.3f} | "
                     f"{noop} | {r['new']:.3f} | {new} | {r['read']:.3f} | {delete} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
