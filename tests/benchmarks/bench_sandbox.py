"""What containing a run costs: the local backend running a trivial command in each
containment mode this machine has, and the patch check of a proposal.

Run: ``python tests/benchmarks/bench_sandbox.py [--runs N]``. Prints a table of
medians; ratios are against the process-tree sweep (``none``) measured in the same
process, so they hold on a noisy machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _time_runs(mode: str, runs: int) -> list[float]:
    from autolab.agents.backends.base import RunRequest
    from autolab.agents.backends.local import LocalBackend

    os.environ["AUTOLAB_SANDBOX"] = mode
    backend = LocalBackend()
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(runs):
            start = time.perf_counter()
            result = backend.run(RunRequest("printf -- '---\\nm: 1\\n'", Path(tmp),
                                            timeout=30, metric="m"))
            times.append(time.perf_counter() - start)
            assert result.status == "ok", result.reason
    return times


def _time_judge(runs: int) -> tuple[list[float], list[float]]:
    """Judging one knob patch of the blank lab: cold (git apply) and cached."""
    from autolab.agents.lab_init import init_lab
    from autolab.protocol import patch_judge
    from autolab.protocol.lab import Lab

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.conftest import knob_patch_text

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["AUTOLAB_CACHE"] = str(Path(tmp) / "cache")
        init_lab(Path(tmp) / "lab.git", "blank", bare=True)
        lab = Lab.open(str(Path(tmp) / "lab.git"), "bench")
        view = lab.read()
        cold, warm = [], []
        for n in range(runs):
            patch = knob_patch_text(1.0 + n / 1000)
            start = time.perf_counter()
            patch_judge.judge_patch(lab.store, view.main, patch, view.config)
            cold.append(time.perf_counter() - start)
            start = time.perf_counter()
            patch_judge.judge_patch(lab.store, view.main, patch, view.config)
            warm.append(time.perf_counter() - start)
    return cold, warm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    from autolab.agents.backends import sandbox

    rows = [("none", statistics.median(_time_runs("none", args.runs)))]
    problem = sandbox.namespaces_problem()
    if problem is None:
        rows.append(("namespaces", statistics.median(_time_runs("namespaces", args.runs))))
    base = rows[0][1]
    print(f"{'run of a trivial command':<28} {'median ms':>10} {'vs none':>8}")
    for mode, median in rows:
        print(f"{mode:<28} {median * 1000:>10.1f} {median / base:>7.2f}x")
    if problem is not None:
        print(f"namespaces: unavailable here ({problem})")
    cold, warm = _time_judge(args.runs)
    print(f"{'judge a patch (git apply)':<28} {statistics.median(cold) * 1000:>10.1f}")
    print(f"{'judge it again (cached)':<28} {statistics.median(warm) * 1000:>10.1f}")


if __name__ == "__main__":
    main()
