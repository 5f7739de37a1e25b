"""The scoreboard's read path at scale: ``status``, ``leaderboard``, ``sql``, ``lineage``.

Builds two labs from the ``tiny-lm`` template on a local path, written through the
protocol's own writer (``Lab.build_main_commit`` and ``store.make_commit``, as every
transaction does) in big batches, because proposing, claiming and submitting 100,000
experiments one at a time would take days:

* ``compacted``: ``--experiments`` experiments (100,000 by default) with the mix a
  busy lab has (ok results, crashes, timeouts, invalid runs, expired and released
  leases retried, experiments failed at ``max_attempts``, late scores, cancellations,
  a queue and running claims, promotions as real merge commits), then compacted by
  ``transactions.compact``;
* ``uncompacted``: small commits (a proposal commit, a claim commit, a result commit
  per few experiments) until main holds ``--shards`` shard files (10,000 by default).

Rows are built as the transactions build them (``make_score`` itself; the other rows
copy the dicts of ``propose``, ``claim``, ``_end_attempt``, ``cancel`` and ``promote``)
and a check first runs the real transactions on a small lab and compares, per table
and event, which columns each kind of row fills. Score rows name a branch commit; only
promoted experiments' branches exist (the read path never opens the others).

Then, for each lab, it times each command as a CLI subprocess (wall time, peak RSS of
the process) and in-process (``Lab.open(url).read()`` plus the command, in a fresh
process, and again in the same process), ``--repeat`` times, and prints medians as a
markdown table. "new host" runs with an empty cache (cloning the lab is part of it),
"cold" with the cache clone but no fold cached on disk (as after an upgrade of
autolab), "warm" any later command, "after main moved" the first after a new commit.

Usage::

    python tests/benchmarks/bench_scoreboard.py                     # build, then time
    python tests/benchmarks/bench_scoreboard.py --dir /tmp/sb --keep   # keep the labs
    python tests/benchmarks/bench_scoreboard.py --dir /tmp/sb --reuse  # time kept labs
    # the same labs read by another checkout of autolab (e.g. before a change):
    python tests/benchmarks/bench_scoreboard.py --dir /tmp/sb --reuse --pythonpath OLD
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from autolab.agents.lab_init import init_lab  # noqa: E402
from autolab.agents.proposers.space import BASELINE_HYPOTHESIS, hypothesis, mutate  # noqa: E402
from autolab.protocol import transactions as tx  # noqa: E402
from autolab.protocol.gitstore import GitStore  # noqa: E402
from autolab.protocol.harness import harness_files, harness_hash  # noqa: E402
from autolab.protocol.knobs import knob_patch, set_knobs  # noqa: E402
from autolab.protocol.lab import Lab, MainChange, now  # noqa: E402
from autolab.protocol.patches import matches, normalized_hash  # noqa: E402
from autolab.protocol.reader import load_config  # noqa: E402
from autolab.protocol.store import FileChange  # noqa: E402

KNOB_FILE = "train.py"
WORKERS = [f"worker-{i:02d}" for i in range(16)]
SQL = ("SELECT state, count(*) AS n, min(metric) AS best FROM experiments "
       "GROUP BY state ORDER BY n DESC")
SQL_KNOBS = ("SELECT N_LAYER, count(*) AS n, min(metric) AS best FROM knobs "
             "WHERE state = 'done' GROUP BY N_LAYER ORDER BY best")


# -- rows, as the transactions write them ---------------------------------------------


def proposed_row(eid: str, parent: str, patch: str, hyp: str, priority: float = 1.0
                 ) -> dict[str, Any]:
    """``transactions.propose``."""
    return {"experiment_id": eid, "event": "proposed", "at": now(), "parent_commit": parent,
            "patch": patch, "patch_hash": normalized_hash(patch), "hypothesis": hyp,
            "priority": float(priority)}


def claimed_row(eid: str, attempt: int, agent: str, lease_s: float) -> dict[str, Any]:
    """``transactions.claim`` (its record row; ``agent`` is what the stamp adds)."""
    return {"experiment_id": eid, "event": "claimed", "attempt": attempt, "at": now(),
            "lease_until": now() + timedelta(seconds=lease_s), "backend": "local",
            "job_id": None, "agent": agent}


def ended_row(eid: str, attempt: int, event: str, reason: str, agent: str) -> dict[str, Any]:
    """``transactions._end_attempt`` (expired, failed, released)."""
    return {"experiment_id": eid, "event": event, "attempt": attempt, "at": now(),
            "reason": reason, "agent": agent}


def cancelled_row(eid: str, attempt: int, reason: str) -> dict[str, Any]:
    """``transactions.cancel``."""
    return {"experiment_id": eid, "event": "cancelled", "at": now(), "reason": reason,
            "attempt": attempt or None}


def promoted_row(eid: str, attempt: int, metric: float, head: str, agent: str
                 ) -> dict[str, Any]:
    """``transactions.promote``."""
    return {"experiment_id": eid, "event": "promoted", "at": now(), "attempt": attempt,
            "metric": metric, "source_commit": head, "agent": agent}


def score_row(eid: str, attempt: int, *, status: str, metric: float | None, reason: str | None,
              head: str | None, harness: str, patch_hash: str, agent: str, late: bool = False
              ) -> dict[str, Any]:
    """``make_score`` with the fields ``Worker.execute`` passes."""
    metrics = {"val_bpb": metric, "train_seconds": 15.0, "steps": 900.0} if metric else {}
    row = tx.make_score(eid, attempt, status=status, metric=metric, metrics=metrics,
                        reason=reason, branch_commit=head, runtime_s=round(random.uniform(15, 17),
                                                                          3),
                        backend="local", job_id=None, harness_hash=harness,
                        patch_hash=patch_hash, started_at=now(), agent=agent)
    if late:
        row["late"] = True  # transactions.submit, for an attempt that had already ended
    return row


# -- the lab builder -------------------------------------------------------------------


@dataclass
class Pending:
    """An experiment between attempts: what happens to its next ones."""

    eid: str
    attempt: int  # the next attempt to claim
    plan: list[str]  # outcome of each remaining attempt


@dataclass
class Builder:
    """Writes a lab's history commit by commit in the cache clone; pushes once at the end."""

    url: str
    rng: random.Random
    store: GitStore = field(init=False)
    main: str = field(init=False)
    max_seq: int = 0
    commits: int = 0
    shards: int = 0
    next_id: int = 1
    best: float | None = None
    promotions: int = 0

    def __post_init__(self) -> None:
        self.store = GitStore(self.url)
        self.start = self.main = self.store.refresh().main
        self.config = load_config(self.store, self.main)
        self.harness = harness_hash(harness_files(self.store, self.main, self.config))
        self.text = (self.store.read_file(self.main, KNOB_FILE) or b"").decode()
        self.values = {n: _literal(self.text, n) for n in self.config.knobs}
        self.seen: set[str] = set()
        # eid -> (parent commit, knob file text there, knob values set, patch hash)
        self.info: dict[str, tuple[str, str, dict[str, Any], str]] = {}

    def commit(self, agent: str, message: str, rows: dict[str, list[dict[str, Any]]],
               files: FileChange | None = None, merge_parent: str | None = None) -> None:
        """One main commit, built by ``Lab.build_main_commit`` on the current main."""
        view = SimpleNamespace(main=self.main, max_seq=self.max_seq,
                               pending=[])
        change = MainChange(message=message, rows=rows, files=files or FileChange(),
                            merge_parent=merge_parent, fold_records=False)
        self.main = Lab(self.store, agent).build_main_commit(view, change)  # type: ignore[arg-type]
        self.max_seq += sum(len(r) for r in rows.values())
        self.shards += sum(1 for r in rows.values() if r)
        self.commits += 1

    def push(self) -> None:
        self.store.cas_main(self.main, self.start)
        self.start = self.main

    def new_patch(self) -> tuple[str, str, dict[str, Any]]:
        """A one-to-three-knob change of main's values that was not proposed before."""
        names = list(self.config.knobs)
        while True:
            chosen = self.rng.sample(names, self.rng.choice([1, 1, 2, 3]))
            new = {n: mutate(self.config.knobs[n], self.values[n], self.rng) for n in chosen}
            new = {n: v for n, v in new.items() if v != self.values[n]}
            if not new:
                continue
            patch = knob_patch(self.config, {KNOB_FILE: self.text},
                               [f"{n}={v}" for n, v in new.items()])
            digest = normalized_hash(patch)
            if digest in self.seen:
                continue
            self.seen.add(digest)
            first = next(iter(new))
            return patch, hypothesis(first, self.values[first], new[first]), new

    def propose(self, count: int) -> list[str]:
        rows, ids = [], []
        if self.next_id == 1:
            rows.append(proposed_row("0001", self.main, "", BASELINE_HYPOTHESIS, 100.0))
            self.seen.add(normalized_hash(""))
            self.info["0001"] = (self.main, self.text, {}, normalized_hash(""))
            ids.append("0001")
            self.next_id += 1
        while len(ids) < count:
            patch, hyp, values = self.new_patch()
            eid = f"{self.next_id:04d}"
            self.next_id += 1
            rows.append(proposed_row(eid, self.main, patch, hyp))
            self.info[eid] = (self.main, self.text, values, rows[-1]["patch_hash"])
            ids.append(eid)
        self.commit("planner", f"propose {len(rows)} experiment(s) from {ids[0]}",
                    {"queue": rows})
        return ids

    def metric(self, progress: float) -> float:
        """A noisy val_bpb that improves slowly as the lab goes on (above the template's
        entropy floor, 1.163)."""
        return round(2.3 - 0.85 * progress ** 0.5 + self.rng.gauss(0, 0.04), 6)

    def run(self, work: list[Pending], progress: float, *, promote: bool,
            running: int = 0) -> list[Pending]:
        """Claim every experiment of ``work``; end all but ``running`` of the attempts.

        Returns the experiments to retry (their next attempt goes in a later batch).
        """
        lease = self.config.lease_seconds()
        claims = [claimed_row(p.eid, p.attempt, self.rng.choice(WORKERS), lease) for p in work]
        self.commit("bench-fold", f"fold {len(claims)} record(s)", {"queue": claims})
        ended, scores, retry = [], [], []
        ok: list[tuple[float, Pending, str]] = []
        for p, claim in zip(work[:len(work) - running], claims, strict=False):
            outcome = p.plan.pop(0)
            agent = claim["agent"]
            if outcome in ("expired", "released", "failed", "late"):
                reason = ("worker stopped" if outcome == "released"
                          else f"lease of attempt {p.attempt} by {agent} expired")
                if outcome == "failed":
                    reason += f" (max_attempts {self.config.policy.max_attempts} reached)"
                event = "expired" if outcome == "late" else outcome
                who = agent if event == "released" else "reporter"
                ended.append(ended_row(p.eid, p.attempt, event, reason, who))
                if outcome == "late":  # the worker's result came after the reaper's expiry
                    scores.append(self._score(p, "ok", self.metric(progress), agent, late=True))
                if outcome != "failed":
                    retry.append(Pending(p.eid, p.attempt + 1, p.plan))
            elif outcome == "ok":
                ok.append((self.metric(progress), p, agent))
            else:
                scores.append(self._score(p, outcome, None, agent))
        winner = None
        if promote and ok:
            value, p, agent = min(ok, key=lambda item: item[0])
            if self.best is None or value <= self.best - self.config.policy.min_delta:
                winner = (value, p, agent)
        heads: dict[str, str] = {}
        if winner is not None:
            heads[winner[1].eid] = self._branch(winner[1].eid)
        for value, p, agent in ok:
            scores.append(self._score(p, "ok", value, agent, head=heads.get(p.eid)))
        self.commit("bench-fold", f"fold {len(ended) + len(scores)} record(s)",
                    {"queue": ended, "scores": scores})
        if winner is not None:
            self._promote(*winner, head=heads[winner[1].eid])
        return retry

    def _score(self, p: Pending, status: str, metric: float | None, agent: str, *,
               late: bool = False, head: str | None = None) -> dict[str, Any]:
        reason = {"crash": "exit code 1: RuntimeError: shape mismatch in attention",
                  "timeout": "exceeded the 120s timeout",
                  "invalid": "no val_bpb in the output's summary block"}.get(status)
        if head is None:
            # Unpromoted experiments' branches are not built: the read path never opens them.
            head = hashlib.sha1(f"{p.eid}/{p.attempt}".encode()).hexdigest()
        return score_row(p.eid, p.attempt, status=status, metric=metric, reason=reason,
                         head=head, harness=self.harness, patch_hash=self.info[p.eid][3],
                         agent=agent, late=late)

    def _branch(self, eid: str) -> str:
        """The experiment's branch head: its parent with the knob file edited."""
        parent, text, values, _ = self.info[eid]
        return self.store.make_commit(parent, FileChange(
            add={KNOB_FILE: set_knobs(text, values).encode()}), f"experiment {eid}")

    def _promote(self, metric: float, p: Pending, agent: str, *, head: str) -> None:
        """``transactions.promote``'s merge commit."""
        editable = self.config.editable
        theirs = {q: b for q, b in self.store.list_files(head).items() if matches(q, editable)}
        ours = [q for q in self.store.list_files(self.main) if matches(q, editable)]
        was = "none" if self.best is None else f"{self.best:.6g}"
        self.commit(agent, f"promote {p.eid}: val_bpb {was} -> {metric:.6g}",
                    {"queue": [promoted_row(p.eid, p.attempt, metric, head, agent)]},
                    FileChange(remove=[q for q in ours if q not in theirs], add_blobs=theirs),
                    merge_parent=head)
        self.best = metric
        self.promotions += 1
        self.text = set_knobs(self.info[p.eid][1], self.info[p.eid][2])
        self.values = {n: _literal(self.text, n) for n in self.config.knobs}

    def plan(self, index: int | None = None) -> list[str]:
        """Outcomes of an experiment's attempts, drawn with a busy lab's frequencies
        (``index``: the first experiments get each kind once, so every kind is there)."""
        if index is not None and index < len(PLANS):
            return list(PLANS[index][1])
        r = self.rng.random()
        return list(next((plan for limit, plan in PLANS if r < limit), ["ok"]))


# Cumulative probability, outcomes of successive attempts.
PLANS = ((0.04, ["crash"]), (0.06, ["timeout"]), (0.07, ["invalid"]),
         (0.10, ["expired", "ok"]), (0.11, ["released", "ok"]),
         (0.115, ["expired", "expired", "failed"]), (0.117, ["late", "ok"]))


def _literal(text: str, name: str) -> Any:
    import ast

    from autolab.protocol.knobs import read_knob

    raw = read_knob(text, name)
    return ast.literal_eval(raw) if raw is not None else None


def build(path: Path, experiments: int, batch: int, *, seed: int, promote_every: int = 1,
          shard_target: int | None = None, say: Any = print) -> dict[str, Any]:
    """Create the lab at ``path``; stop at ``experiments``, or at ``shard_target`` shards."""
    init_lab(path, "tiny-lm", bare=True)
    builder = Builder(str(path), random.Random(seed))
    retry: list[Pending] = []
    started, rounds = time.monotonic(), 0
    # The last experiments stay queued or running: the lab is live when it is read.
    tail = min(200, batch * 4)
    while True:
        done = builder.next_id - 1
        if shard_target is not None and builder.shards >= shard_target:
            break
        count = min(batch, experiments - tail - done)
        if count <= 0:
            break
        ids = builder.propose(count)
        work = retry + [Pending(e, 1, builder.plan(i if rounds == 0 else None))
                        for i, e in enumerate(ids)]
        if rounds % 20 == 3 and work:  # now and then an experiment is cancelled unrun
            gone = work.pop()
            builder.commit("planner", f"cancel {gone.eid}: superseded",
                           {"queue": [cancelled_row(gone.eid, 0, "superseded")]})
        progress = (done + count) / experiments if shard_target is None else (
            builder.shards / shard_target)
        retry = builder.run(work, progress, promote=rounds % promote_every == 0)
        rounds += 1
        if rounds % 20 == 0:
            say(f"  {builder.next_id - 1} experiments, {builder.commits} commits, "
                f"{builder.shards} shards, {time.monotonic() - started:.0f}s")
    last = builder.propose(tail if shard_target is None else min(tail, batch * 4))
    work = retry + [Pending(e, 1, ["ok"]) for e in last[:16]]
    builder.run(work, 1.0, promote=False, running=min(16, len(last)))
    builder.push()
    return {"experiments": builder.next_id - 1, "commits": builder.commits,
            "shards": builder.shards, "promotions": builder.promotions,
            "build_s": round(time.monotonic() - started, 1)}


def compact(url: str) -> dict[str, Any]:
    started = time.monotonic()
    report = tx.compact(Lab.open(url, "bench-reporter"))
    return {"compact_s": round(time.monotonic() - started, 1),
            "shards_before": sum(report.shards_before.values())}


# -- the check: synthetic rows fill the same columns as the transactions' rows ------------


def _signature(rows: list[dict[str, Any]], kind: str) -> dict[str, frozenset[str]]:
    out: dict[str, set[str]] = {}
    for row in rows:
        key = row.get("event") or f"{row['status']}{'-late' if row['late'] else ''}"
        cols = {k for k, v in row.items() if v is not None and k not in ("seq",)}
        out.setdefault(f"{kind}:{key}", set()).update(cols)
    return {k: frozenset(v) for k, v in out.items()}


def check_rows(workdir: Path) -> None:
    """Run the real transactions on a small lab; compare each kind of row's columns."""
    real_path, fake_path = workdir / "real.git", workdir / "fake.git"
    init_lab(real_path, "tiny-lm", bare=True)
    lab = Lab.open(str(real_path), "worker-00")
    config = lab.read().config
    text = (lab.store.read_file(lab.read().main, KNOB_FILE) or b"").decode()
    props = [tx.Proposal(f"h{v}", knob_patch(config, {KNOB_FILE: text}, [f"N_LAYER={v}"]))
             for v in (1, 3, 4)]
    props.append(tx.Proposal("wd", knob_patch(config, {KNOB_FILE: text}, ["WEIGHT_DECAY=0.1"])))
    tx.propose(lab, props)
    harness = harness_hash(harness_files(lab.store, lab.read().main, config))
    later = now() + timedelta(days=1)
    claim = tx.claim(lab, experiment_id="0001", backend="local")
    view = lab.read()
    head = lab.store.make_commit(view.main, FileChange(add={KNOB_FILE: set_knobs(
        text, {"N_LAYER": 1}).encode()}), "experiment 0001")
    lab.store.push_ref(f"refs/heads/{tx.branch_name('0001')}", head, None)
    tx.submit(lab, score_row("0001", claim.attempt, status="ok", metric=2.0, reason=None,
                             head=head, harness=harness, patch_hash=claim.patch_hash,
                             agent=lab.agent))
    assert tx.promote(lab, "0001").promoted
    crash = tx.claim(lab, experiment_id="0002", backend="local")
    tx.submit(lab, score_row("0002", crash.attempt, status="crash", metric=None,
                             reason="exit code 1: x", head=head, harness=harness,
                             patch_hash=crash.patch_hash, agent=lab.agent))
    for _ in range(3):
        tx.claim(lab, experiment_id="0003", backend="local")
        tx.reap(lab, at=later)
    late = tx.claim(lab, experiment_id="0004", backend="local")
    tx.release(lab, "0004", late.attempt, "worker stopped")
    tx.submit(lab, score_row("0004", late.attempt, status="ok", metric=2.5, reason=None,
                             head=head, harness=harness, patch_hash=late.patch_hash,
                             agent=lab.agent))
    tx.propose(lab, [tx.Proposal("c", knob_patch(config, {KNOB_FILE: text}, ["N_HEAD=4"]))])
    tx.cancel(lab, "0005", "superseded")
    lab.fold(always=True)
    real = lab.read()

    build(fake_path, 400, 40, seed=1, say=lambda _: None)
    fake = Lab.open(str(fake_path), "check").read()
    sig_real = {**_signature(real.table("queue").to_pylist(), "queue"),
                **_signature(real.table("scores").to_pylist(), "scores")}
    sig_fake = {**_signature(fake.table("queue").to_pylist(), "queue"),
                **_signature(fake.table("scores").to_pylist(), "scores")}
    for key, cols in sig_real.items():
        assert key in sig_fake, f"the benchmark lab has no {key} rows"
        assert cols == sig_fake[key], f"{key}: real rows fill {sorted(cols ^ sig_fake[key])} " \
                                      "differently"


# -- timing ------------------------------------------------------------------------------


_INPROC = r"""
import json, resource, sys, time
url, command, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3])
from autolab.protocol.lab import Lab
def run(view):
    if command == "status":
        from autolab.scoreboard.status import status
        return status(view)
    if command == "leaderboard":
        from autolab.scoreboard.leaderboard import leaderboard
        return leaderboard(view, 10)
    if command == "lineage":
        from autolab.scoreboard.lineage import lineage
        return lineage(view)
    from autolab.scoreboard.views import query
    return query(view, command)
times = []
lab = Lab.open(url, "bench")
for _ in range(repeat):
    start = time.perf_counter()
    run(lab.read())
    times.append(time.perf_counter() - start)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"first": times[0], "again": min(times[1:] or times), "rss_mb": rss}))
"""


_TIME = shutil.which("time", path="/usr/bin:/bin")


def _run_measured(args: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run a process; (wall seconds, its own peak RSS in MiB, stdout).

    The peak comes from GNU ``time`` where installed: a child forked from this
    process counts this process's pages until it execs, so its own ``ru_maxrss``
    can be this process's size.
    """
    wrapped = [_TIME, "-f", "autolab-bench-rss-kb=%M", *args] if _TIME else args
    start = time.perf_counter()
    proc = subprocess.run(wrapped, capture_output=True, env=env)
    wall = time.perf_counter() - start
    err = proc.stderr.decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[2:6])} failed: {err[-500:]}")
    peak = float("nan")
    if _TIME:
        peak = int(err.rsplit("autolab-bench-rss-kb=", 1)[1].split()[0]) / 1024
    return wall, peak, proc.stdout.decode()


def _clear_state_cache(cache: Path) -> None:
    """Drop folds cached on disk, so the next read is a cold one."""
    for path in cache.glob("*.state"):
        shutil.rmtree(path, ignore_errors=True)


class Mover:
    """Moves a lab's main as a planner does: one commit of four proposals at a time."""

    def __init__(self, url: str) -> None:
        self.lab = Lab.open(url, "bench-planner")
        self.rng = random.Random(11)
        self.moves = 0

    def move(self) -> None:
        view = self.lab.read()
        text = (self.lab.store.read_file(view.main, KNOB_FILE) or b"").decode()
        config = view.config
        proposals: list[tx.Proposal] = []
        while len(proposals) < 4:
            knob = self.rng.choice(list(config.knobs))
            old = _literal(text, knob)
            value = mutate(config.knobs[knob], old, self.rng)
            if value != old:
                patch = knob_patch(config, {KNOB_FILE: text}, [f"{knob}={value}"])
                proposals.append(tx.Proposal(f"move {self.moves}: {knob}={value}", patch))
        tx.propose(self.lab, proposals)
        self.moves += 1


def time_lab(url: str, moving: str, cache: Path, repeat: int, env: dict[str, str],
             commands: list[tuple[str, list[str], str]]) -> list[dict[str, Any]]:
    """Time each command as a CLI process: on a new host (no cache clone: the clone is
    part of it), cold (the clone there, no fold cached on disk), warm (the fold of this
    main cached) and just after main moved (a fold of an earlier main cached);
    in-process, first and repeated; peak RSS of the cold and warm processes."""
    env = {**env, "AUTOLAB_CACHE": str(cache)}
    py = sys.executable
    mover = Mover(moving)
    out = []
    for label, cli_args, inproc in commands:
        row: dict[str, Any] = {"command": label}
        runs: dict[str, list[float]] = {k: [] for k in ("new_host", "cold", "warm", "moved",
                                                         "first", "again", "rss_cold",
                                                         "rss_warm")}

        def cli(lab: str, args: list[str] = cli_args) -> tuple[float, float]:
            wall, peak, _ = _run_measured([py, "-m", "autolab.agents.cli", *args,
                                           "--lab", lab], env)
            return wall, peak

        try:
            fresh = Path(f"{cache}-new-host")
            for _ in range(min(repeat, 2)):  # the clone is most of it, and the same each time
                shutil.rmtree(fresh, ignore_errors=True)
                runs["new_host"].append(_run_measured(
                    [py, "-m", "autolab.agents.cli", *cli_args, "--lab", url],
                    {**env, "AUTOLAB_CACHE": str(fresh)})[0])
            shutil.rmtree(fresh, ignore_errors=True)
            for _ in range(repeat):
                _clear_state_cache(cache)
                wall, peak = cli(url)
                runs["cold"].append(wall)
                runs["rss_cold"].append(peak)
                wall, peak = cli(url)
                runs["warm"].append(wall)
                runs["rss_warm"].append(peak)
            cli(moving)  # a fold of the moving lab's main on disk, then main moves
            for _ in range(repeat):
                mover.move()
                runs["moved"].append(cli(moving)[0])
            for _ in range(repeat):
                _, peak, text = _run_measured([py, "-c", _INPROC, url, inproc, "3"], env)
                data = json.loads(text)
                runs["first"].append(data["first"])
                runs["again"].append(data["again"])
        except RuntimeError as exc:
            # An older autolab (--pythonpath) lacks some commands.
            row["error"] = "no such command" if "No such command" in str(exc) or (
                "No module named" in str(exc)) else str(exc).splitlines()[0][:80]
        for key, values in runs.items():
            pick = max if key.startswith("rss") else statistics.median
            row[key] = pick(values) if values else None
        out.append(row)
    return out


def startup(env: dict[str, str], repeat: int) -> float:
    """Wall time of ``autolab --help``: the interpreter and CLI start-up alone."""
    times = [_run_measured([sys.executable, "-m", "autolab.agents.cli", "--help"], env)[0]
             for _ in range(repeat)]
    return statistics.median(times)


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) and value < 100 else f"{value:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the labs (with --dir)")
    parser.add_argument("--reuse", action="store_true", help="time the labs already in --dir")
    parser.add_argument("--pythonpath", default=None,
                        help="prepend to PYTHONPATH of the timed processes (another autolab)")
    parser.add_argument("--skip-check", action="store_true")
    parser.add_argument("--only", choices=["compacted", "uncompacted"], default=None)
    parser.add_argument("--build-only", action="store_true", help="build the labs, time nothing")
    args = parser.parse_args()

    root = args.dir or Path(tempfile.mkdtemp(prefix="bench-scoreboard-"))
    root.mkdir(parents=True, exist_ok=True)
    os.environ["AUTOLAB_CACHE"] = str(root / "build-cache")
    big, small = root / "compacted.git", root / "uncompacted.git"
    meta_file = root / "labs.json"
    if not args.reuse:
        if not args.skip_check:
            with tempfile.TemporaryDirectory() as tmp:
                check_rows(Path(tmp))
            print("check: synthetic rows fill the same columns as the transactions' rows")
        meta: dict[str, Any] = {}
        for path in (big, small):
            shutil.rmtree(path, ignore_errors=True)
        if args.only in (None, "compacted"):
            print(f"building {args.experiments} experiments ...", flush=True)
            meta["compacted"] = build(big, args.experiments, 1000, seed=7, promote_every=2)
            meta["compacted"].update(compact(str(big)))
        if args.only in (None, "uncompacted"):
            print(f"building a lab of {args.shards} shards ...", flush=True)
            meta["uncompacted"] = build(small, 10**9, 4, seed=8, promote_every=25,
                                        shard_target=args.shards)
        meta_file.write_text(json.dumps(meta))
    meta = json.loads(meta_file.read_text())
    for name, info in meta.items():
        print(f"{name}: {info}")

    if args.build_only:
        return
    env = dict(os.environ)
    env.pop("AUTOLAB_LAB", None)
    if args.pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.pythonpath,
                                                          env.get("PYTHONPATH")]))
    print(f"\nCLI start-up (`autolab --help`): {startup(env, args.repeat):.3f} s")
    commands = [
        ("status", ["status", "--json"], "status"),
        ("leaderboard", ["leaderboard", "--json"], "leaderboard"),
        ("sql (experiments)", ["sql", "--json", SQL], SQL),
        ("sql (knobs)", ["sql", "--json", SQL_KNOBS], SQL_KNOBS),
        ("lineage", ["lineage", "--json"], "lineage"),
    ]
    print("\n| lab | command | CLI new host (s) | CLI cold (s) | CLI warm (s) "
          "| CLI after main moved (s) | in-process first (s) | in-process again (s) "
          "| peak RSS cold / warm (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, path in (("compacted", big), ("uncompacted", small)):
        if name not in meta:
            continue
        info = meta[name]
        label = (f"{info['experiments']:,} exp, compacted" if name == "compacted"
                 else f"{info['experiments']:,} exp, {info['shards']:,} shards")
        # A new path each run: the cache remembers the main it saw at a path, and a
        # copy of the lab would look like a rewritten main there.
        moving = root / f"{name}-moving-{os.getpid()}.git"
        shutil.rmtree(moving, ignore_errors=True)
        shutil.copytree(path, moving)
        try:
            rows = time_lab(str(path), str(moving), root / f"cache-{name}", args.repeat, env,
                            commands)
        finally:
            shutil.rmtree(moving, ignore_errors=True)
        for row in rows:
            cells = [_fmt(row[k]) for k in ("new_host", "cold", "warm", "moved", "first",
                                             "again")]
            cells.append(f"{_fmt(row['rss_cold'])} / {_fmt(row['rss_warm'])}")
            note = f" ({row['error']})" if "error" in row else ""
            print(f"| {label} | {row['command']}{note} | " + " | ".join(cells) + " |",
                  flush=True)
    if not (args.keep or args.reuse):
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
