"""Claims and proposals under contention: the Git bus against a naive fetch + commit +
push loop.

For N concurrent agent *processes* and each remote kind (a bare repo on a filesystem
path, and ``git daemon`` on 127.0.0.1), the benchmark runs for ``--seconds``:

* ``claim``: every agent loops ``transactions.claim`` (one long-lived ``Lab`` per
  process, as ``--loop`` agents do; agents share the host's cache clone);
* ``propose``: 1, 8 and 16 processes (``--proposers``) loop ``transactions.propose``,
  one experiment per compare-and-swap commit of ``main`` (the contended write);
* ``naive``: every agent loops the naive protocol on its own clone: ``git fetch``,
  reset, write a file, ``git commit``, ``git push origin HEAD:main``, retrying on
  rejection; this is the baseline, measured in the same run.

It prints successful operations per second, p50/p95/p99 latency of one successful
operation (retries included), and retries per success; then checks that every
experiment was claimed exactly once. Usage::

    python tests/benchmarks/bench_bus.py [--agents 1,4,16,32] [--seconds 15]

Diagnostics: ``BENCH_SLOW=1`` prints where claims slower than 2 s spent their time,
``BENCH_PROFILE=1`` profiles the first agent; each claim line also reports the mean
time in fetch (refresh), push and fold, and CPU per claim in Python and in git.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.conftest import GitDaemon, knob_patch_text  # noqa: E402


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def claim_agent(url: str, cache: str, agent: str, seconds: float, barrier, out) -> None:
    os.environ["AUTOLAB_CACHE"] = cache
    from autolab.protocol import transactions as tx
    from autolab.protocol.errors import NothingToDo
    from autolab.protocol.lab import Lab

    lab = Lab.open(url, agent)
    phases = {"refresh": 0.0, "push": 0.0, "fold": 0.0}
    _time_phase(lab.store, "refresh", phases, "refresh")
    _time_phase(lab.store, "create_ref", phases, "push")
    _time_phase(lab, "fold", phases, "fold")
    lab.read()
    barrier.wait()
    for key in phases:
        phases[key] = 0.0
    import resource

    own0 = resource.getrusage(resource.RUSAGE_SELF)
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    end = time.time() + seconds
    lat, ids, retries = [], [], []
    profiler = None
    if os.environ.get("BENCH_PROFILE") and agent == "a0":
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    while time.time() < end:
        lost = lab.stats.get("lost_claims", 0)
        before = dict(phases)
        start = time.perf_counter()
        try:
            won = tx.claim(lab)
        except NothingToDo:
            break
        lat.append(time.perf_counter() - start)
        if os.environ.get("BENCH_SLOW") and lat[-1] > 2:
            spent = {k: round(phases[k] - before[k], 3) for k in phases}
            print(f"slow claim {lat[-1]:.2f}s at {time.time() % 1000:.2f} {spent}",
                  file=sys.stderr, flush=True)
        ids.append(won.experiment_id)
        retries.append(lab.stats.get("lost_claims", 0) - lost)
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    phases["cpu_self"] = own.ru_utime + own.ru_stime - own0.ru_utime - own0.ru_stime
    phases["cpu_git"] = kids.ru_utime + kids.ru_stime - kids0.ru_utime - kids0.ru_stime
    if profiler is not None:
        import pstats

        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(30)
    out.put((agent, lat, ids, retries, time.time(), phases))


def propose_agent(url: str, cache: str, agent: str, seconds: float, barrier, out) -> None:
    """Loop ``transactions.propose`` (one experiment per main commit) for ``seconds``."""
    os.environ["AUTOLAB_CACHE"] = cache
    from autolab.protocol import transactions as tx
    from autolab.protocol.errors import AutoLabError
    from autolab.protocol.lab import Lab

    lab = Lab.open(url, agent)
    lab.read()
    barrier.wait()
    end = time.time() + seconds
    lat, ids, retries, failed = [], [], [], 0
    n = 0
    while time.time() < end:
        # Distinct patches (knob values keep 4 significant digits): 1.000 ... 5.799.
        value = round(1 + (int(agent[1:]) * 300 + n % 300) * 0.001, 3)
        n += 1
        lost = lab.stats["conflicts"]
        start = time.perf_counter()
        try:
            [eid] = tx.propose(lab, [tx.Proposal(f"{agent} {n}", knob_patch_text(value))])
        except AutoLabError as exc:
            failed += 1
            print(f"{agent}: {exc}", file=sys.stderr, flush=True)
            continue
        lat.append(time.perf_counter() - start)
        retries.append(lab.stats["conflicts"] - lost)
        if eid is not None:
            ids.append(eid)
    out.put((agent, lat, ids, retries, time.time(), {"failed": float(failed)}))


def _time_phase(obj, name: str, phases: dict, key: str) -> None:
    """Wrap ``obj.name`` to add its wall time to ``phases[key]`` (where time goes)."""
    inner = getattr(obj, name)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            phases[key] += time.perf_counter() - start

    setattr(obj, name, timed)


def raw_agent(url: str, workdir: str, agent: str, seconds: float, barrier, out) -> None:
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=workdir, capture_output=True, text=True)

    subprocess.run(["git", "clone", "-q", url, workdir], check=True, capture_output=True)
    git("config", "user.name", agent)
    git("config", "user.email", f"{agent}@bench")
    barrier.wait()
    end = time.time() + seconds
    lat, retries, n = [], [], 0
    while time.time() < end:
        start, tries = time.perf_counter(), 0
        while time.time() < end:
            git("fetch", "-q", "origin", "main")
            git("reset", "-q", "--hard", "FETCH_HEAD")
            n += 1
            (Path(workdir) / f"{agent}-{n}.txt").write_text(str(n))
            git("add", "-A")
            git("commit", "-qm", f"{agent} {n}")
            if git("push", "-q", "origin", "HEAD:main").returncode == 0:
                lat.append(time.perf_counter() - start)
                retries.append(tries)
                break
            tries += 1
    out.put((agent, lat, [], retries, time.time(), {}))


def run(kind: str, mode: str, url: str, agents: int, seconds: float, tmp: Path) -> dict:
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(agents + 1), ctx.Queue()
    procs = []
    for n in range(agents):
        if mode == "claim":
            args = (url, str(tmp / "cache"), f"a{n}", seconds, barrier, out)
            target = claim_agent
        elif mode == "propose":
            args = (url, str(tmp / "cache"), f"a{n}", seconds, barrier, out)
            target = propose_agent
        else:
            args = (url, str(tmp / f"raw{n}"), f"r{n}", seconds, barrier, out)
            target = raw_agent
        procs.append(ctx.Process(target=target, args=args))
        procs[-1].start()
    barrier.wait()
    start = time.time()
    results = [out.get(timeout=seconds + 300) for _ in procs]
    for p in procs:
        p.join()
    elapsed = max(r[4] for r in results) - start
    lat = [x for r in results for x in r[1]]
    retries = [x for r in results for x in r[3]]
    ids = [x for r in results for x in r[2]]
    phases: dict[str, float] = {}
    for r in results:
        for key, value in r[5].items():
            scale = 1 if key == "failed" else max(1, len(lat))
            phases[key] = phases.get(key, 0.0) + value / scale
    return {"phases": phases, "remote": kind, "mode": mode, "agents": agents, "ops": len(lat),
            "rate": len(lat) / elapsed, "p50": _percentile(lat, 0.5),
            "p95": _percentile(lat, 0.95), "p99": _percentile(lat, 0.99),
            "retries": sum(retries) / max(1, len(lat)), "ids": ids}


def make_lab(kind: str, tmp: Path, daemon: GitDaemon, experiments: int) -> str:
    from autolab.agents.lab_init import init_lab
    from autolab.protocol import transactions as tx
    from autolab.protocol.lab import Lab

    name = f"lab-{len(list(daemon.base.iterdir()))}.git"
    bare = daemon.base / name
    init_lab(bare, "blank", bare=True)
    url = str(bare) if kind == "path" else daemon.url(name)
    os.environ["AUTOLAB_CACHE"] = str(tmp / "setup-cache")
    lab = Lab.open(url, "setup")
    step = 20 / experiments
    proposals = [tx.Proposal(f"x{i}", knob_patch_text(round(-10 + i * step, 6)))
                 for i in range(experiments)]
    for i in range(0, experiments, 1000):
        tx.propose(lab, proposals[i:i + 1000])
    return url


def verify_proposals(url: str, tmp: Path, ids: list[str], failed: float) -> str:
    from autolab.protocol.lab import Lab

    os.environ["AUTOLAB_CACHE"] = str(tmp / "verify-cache")
    state = Lab.open(url, "verify").read().state
    landed = set(ids) <= set(state.experiments) and len(ids) == len(set(ids))
    return "yes" if landed and not failed else f"NO ({int(failed)} failed, landed {landed})"


def verify(url: str, tmp: Path, ids: list[str]) -> str:
    from autolab.protocol.lab import Lab

    os.environ["AUTOLAB_CACHE"] = str(tmp / "verify-cache")
    state = Lab.open(url, "verify").read().state
    claimed = {e.id for e in state.experiments.values() if e.state == "claimed"}
    once = len(ids) == len(set(ids)) and set(ids) == claimed and not state.anomalies
    return "yes" if once else f"NO ({len(ids)} claims, {len(set(ids))} distinct, " \
                              f"{len(claimed)} claimed in lab)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", default="1,4,16,32")
    parser.add_argument("--remotes", default="path,daemon")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--experiments", type=int, default=3000)
    parser.add_argument("--proposers", default="1,8,16",
                        help="proposer counts for the propose loop ('' to skip)")
    args = parser.parse_args()
    counts = [int(n) for n in args.agents.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="autolab-bench-"))
    daemon = GitDaemon(tmp / "daemon")
    daemon.base.mkdir()
    daemon.start()
    rows = []
    try:
        for kind in args.remotes.split(","):
            for n in counts:
                raw_url = make_lab(kind, tmp, daemon, 1)
                rows.append(run(kind, "naive", raw_url, n, args.seconds, tmp / f"raw-{kind}-{n}"))
                url = make_lab(kind, tmp, daemon, args.experiments)
                row = run(kind, "claim", url, n, args.seconds, tmp / f"claim-{kind}-{n}")
                row["once"] = verify(url, tmp, row["ids"])
                rows.append(row)
                print(_line(rows[-2]), flush=True)
                print(_line(rows[-1]), flush=True)
            for n in [int(p) for p in args.proposers.split(",") if p]:
                url = make_lab(kind, tmp, daemon, 1)
                row = run(kind, "propose", url, n, args.seconds, tmp / f"propose-{kind}-{n}")
                row["once"] = verify_proposals(url, tmp, row["ids"], row["phases"]["failed"])
                rows.append(row)
                print(_line(rows[-1]), flush=True)
    finally:
        daemon.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(_table(rows))


def _line(r: dict) -> str:
    return (f"{r['remote']:6} {r['mode']:6} N={r['agents']:<3} {r['ops']:5} ops "
            f"{r['rate']:6.1f}/s p50 {r['p50']:.3f}s p95 {r['p95']:.3f}s p99 {r['p99']:.3f}s "
            f"retries/op {r['retries']:.2f} {r.get('once', '')} "
            + " ".join(f"{k} {v:.3f}s" for k, v in r["phases"].items()))


def _table(rows: list[dict]) -> str:
    base = {r["remote"]: r for r in rows if r["mode"] == "naive" and r["agents"] == 1}
    head = ("| remote | loop | agents | ops/s | x raw N=1 | p50 s | p95 s | p99 s | "
            "retries/op | each claim once / every proposal landed |\n"
            "|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        ratio = r["rate"] / base[r["remote"]]["rate"] if r["remote"] in base else float("nan")
        lines.append(
            f"| {r['remote']} | {r['mode']} | {r['agents']} | {r['rate']:.1f} | {ratio:.2f} | "
            f"{r['p50']:.3f} | {r['p95']:.3f} | {r['p99']:.3f} | {r['retries']:.2f} | "
            f"{r.get('once', '-')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
