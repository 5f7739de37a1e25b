"""Many live record refs: what ``refresh`` and folded-ref deletion cost as they pile up.

A reporter that stops deleting folded record refs (it crashed, or was not run) leaves
them on the remote; every agent's ``refresh`` then lists them all. For each remote kind
(a bare repo on a filesystem path, and ``git daemon`` on 127.0.0.1) and each count of
live record refs (default 0, 2,000 and 20,000), the benchmark writes that many record
commits and refs straight into the bare remote (``git fast-import``), then times, with
one long-lived ``GitStore`` as an agent holds it:

* ``cold``: the first refresh, into an empty cache clone;
* ``noop``: a refresh when nothing changed (median of ``--repeat``);
* ``one new``: a refresh after one more record ref appeared (median);
* ``delete``: ``delete_refs`` of ``--delete`` of the refs at once (largest count only).

Ratios are against the 0-ref row of the same remote kind, in the same run. Usage::

    python tests/benchmarks/bench_refs.py [--counts 0,2000,20000] [--repeat 5]
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


def add_records(bare: Path, start: int, count: int) -> dict[str, str]:
    """Write ``count`` record commits (one small file each) and their refs into ``bare``
    with ``git fast-import``; return {ref: commit}."""
    if count <= 0:
        return {}
    lines = []
    for n in range(start, start + count):
        body = f'{{"experiment_id": "e{n:06d}", "attempt": 1}}\n'.encode()
        lines.append(f"commit refs/autolab/claims/e{n:06d}/1\n"
                     f"mark :{n + 1}\n"
                     f"committer bench <bench@localhost> 1700000000 +0000\n"
                     f"data 5\nclaim\n"
                     f"M 100644 inline .autolab/queue/r-bench-{n:06d}.json\n"
                     f"data {len(body)}\n")
        lines.append(body.decode() + "\n")
    subprocess.run(["git", "fast-import", "--quiet", "--export-marks=/dev/null"], cwd=bare,
                   input="".join(lines).encode(), check=True, capture_output=True)
    proc = subprocess.run(["git", "for-each-ref", "--format=%(refname) %(objectname)",
                           "refs/autolab/"], cwd=bare, capture_output=True, text=True,
                          check=True)
    return dict(line.split(" ", 1) for line in proc.stdout.splitlines())


def _median(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(kind: str, count: int, daemon: GitDaemon, tmp: Path, repeat: int,
            delete: int) -> dict:
    from autolab.agents.lab_init import init_lab
    from autolab.protocol.gitstore import GitStore

    name = f"refs-{kind}-{count}.git"
    bare = daemon.base / name
    init_lab(bare, "blank", bare=True)
    refs = add_records(bare, 0, count)
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
        add_records(bare, extra[0], 1)
        extra[0] += 1
        start = time.perf_counter()
        store.refresh()
        one_new.spent.append(time.perf_counter() - start)  # type: ignore[attr-defined]

    one_new.spent = []  # type: ignore[attr-defined]
    for _ in range(repeat):
        one_new()
    row = {"kind": kind, "count": count, "cold": cold, "noop": noop,
           "new": statistics.median(one_new.spent)}  # type: ignore[attr-defined]
    if delete and count >= delete:
        doomed = dict(list(refs.items())[:delete])
        start = time.perf_counter()
        gone = store.delete_refs(doomed)
        row["delete"] = time.perf_counter() - start
        row["deleted"] = len(gone)
        assert len(store.refresh().records) == count + repeat - len(gone)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="0,2000,20000")
    parser.add_argument("--remotes", default="path,daemon")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--delete", type=int, default=15000,
                        help="refs deleted at once at the largest count (0: skip)")
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
                rows.append(measure(kind, count, daemon, tmp, args.repeat, delete))
                print(_line(rows[-1]), flush=True)
    finally:
        daemon.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(_table(rows))


def _line(r: dict) -> str:
    tail = (f" delete {r['deleted']} refs {r['delete']:.2f}s" if "delete" in r else "")
    return (f"{r['kind']:6} {r['count']:6} refs: cold {r['cold']:.3f}s noop {r['noop']:.3f}s "
            f"one new {r['new']:.3f}s{tail}")


def _table(rows: list[dict]) -> str:
    base = {r["kind"]: r for r in rows if r["count"] == 0}
    lines = ["| remote | live record refs | cold refresh s | no-op refresh s | x 0 refs | "
             "refresh after 1 new ref s | x 0 refs | delete at once |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = base.get(r["kind"])
        noop = f"{r['noop'] / b['noop']:.1f}" if b and b["noop"] else "-"
        new = f"{r['new'] / b['new']:.1f}" if b and b["new"] else "-"
        delete = f"{r['deleted']} in {r['delete']:.2f} s" if "delete" in r else "-"
        lines.append(f"| {r['kind']} | {r['count']} | {r['cold']:.3f} | {r['noop']:.3f} | "
                     f"{noop} | {r['new']:.3f} | {new} | {delete} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
