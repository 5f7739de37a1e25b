"""Protocol overhead of the main job, and scaling with the protocol as all the work.

1. ``demo``: runs ``autolab demo`` on tiny-lm and reports the protocol overhead per
   experiment (a worker's cycle wall time minus the experiment command's own time)
   and its share of the workers' time. Target: < 1 s per experiment, < 5 %.
2. ``scaling``: a lab whose run command only prints a summary block, drained by one
   ``autolab worker`` process and then by 16 of them over a ``git daemon`` remote.
   Target: 16 workers finish experiments at least twice as fast as one; every
   experiment scored exactly once.

Usage::

    python tests/benchmarks/bench_demo.py [--minutes 2] [--budget 5] [--experiments 300]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.conftest import GitDaemon, knob_patch_text  # noqa: E402

INSTANT = 'awk \'BEGIN { srand(); print "---"; printf "score: %.6f\\n", rand() * 100 }\''


def demo(minutes: float, budget: float | None, workers: int, tmp: Path) -> dict:
    from autolab.agents.demo import run_demo

    os.environ["AUTOLAB_CACHE"] = str(tmp / "demo-cache")
    report = run_demo(workers=workers, minutes=minutes, directory=tmp / "demo", budget=budget,
                      live=False)
    return {"runs": len(report.cycles), "overhead_s": report.overhead_mean or float("nan"),
            "share": report.overhead_share or float("nan"), "wall_s": report.seconds}


def instant_lab(daemon: GitDaemon, tmp: Path, experiments: int) -> str:
    from autolab.agents.lab_init import init_lab
    from autolab.protocol import transactions as tx
    from autolab.protocol.lab import Lab

    name = f"instant-{len(list(daemon.base.iterdir()))}.git"
    bare = daemon.base / name
    init_lab(bare, "blank", bare=True, edit=_instant_command)
    url = daemon.url(name)
    os.environ["AUTOLAB_CACHE"] = str(tmp / "setup-cache")
    lab = Lab.open(url, "setup")
    step = 20 / experiments
    tx.propose(lab, [tx.Proposal(f"x{i}", knob_patch_text(round(-10 + i * step, 6)))
                     for i in range(experiments)])
    return url


def _instant_command(work: Path) -> None:
    config = work / "autolab.toml"
    lines = [
        "command = " + _toml_string(INSTANT) if line.startswith("command =") else line
        for line in config.read_text().splitlines()
    ]
    config.write_text("\n".join(lines) + "\n")


def _toml_string(text: str) -> str:
    return "'''" + text + "'''"


def drain(url: str, workers: int, tmp: Path) -> dict:
    from autolab.protocol.lab import Lab

    env = {**os.environ, "AUTOLAB_CACHE": str(tmp / f"cache-{workers}")}
    start = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "autolab.agents.cli", "worker", "--lab",
                               url, "--agent", f"w{n}"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
             for n in range(workers)]
    for proc in procs:
        proc.wait()
    wall = time.monotonic() - start
    os.environ["AUTOLAB_CACHE"] = str(tmp / "verify-cache")
    state = Lab.open(url, "verify").read().state
    per_exp: dict[str, int] = {}
    for score in state.scores:
        per_exp[score["experiment_id"]] = per_exp.get(score["experiment_id"], 0) + 1
    done = sum(1 for e in state.experiments.values() if e.state == "done")
    once = done == len(state.experiments) and set(per_exp.values()) == {1}
    return {"workers": workers, "experiments": done, "wall_s": wall, "rate": done / wall,
            "once": "yes" if once else f"NO ({done} done, {per_exp})",
            "promotions": len(state.promotions)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--budget", type=float, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--experiments", type=int, default=300)
    parser.add_argument("--skip-demo", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="autolab-bench-demo-"))
    if not args.skip_demo:
        d = demo(args.minutes, args.budget, args.workers, tmp)
        print("| demo runs | overhead per experiment (s) | overhead share of worker time |"
              " demo wall (s) |\n|---|---|---|---|")
        print(f"| {d['runs']} | {d['overhead_s']:.3f} | {d['share']:.2%} | {d['wall_s']:.0f} |")
        print()
    daemon = GitDaemon(tmp / "daemon")
    daemon.base.mkdir()
    daemon.start()
    try:
        rows = [drain(instant_lab(daemon, tmp, args.experiments), n, tmp) for n in (1, 16)]
    finally:
        daemon.stop()
    print("| workers | experiments | wall (s) | experiments/s | x one worker | promotions |"
          " each scored once |\n|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['workers']} | {row['experiments']} | {row['wall_s']:.1f} | "
              f"{row['rate']:.2f} | {row['rate'] / rows[0]['rate']:.2f} | "
              f"{row['promotions']} | {row['once']} |")


if __name__ == "__main__":
    main()
