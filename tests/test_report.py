"""``autolab report``: a lab with known contents, built through the protocol, rendered
to HTML and PNGs by the real command; ``--publish``; a real headless Chromium."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from autolab.protocol import transactions as tx
from autolab.protocol.lab import Lab, MainChange, now
from autolab.protocol.store import FileChange
from autolab.scoreboard import figures
from autolab.scoreboard import report as rep

from .conftest import LabTemplates, Remote, run_cli
from .helpers import main_harness_hash, propose_x, push_branch

T0 = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
EVIL = '<script>alert("pwned")</script> & X nearer 3, "quoted"'
CHROMIUM = Path("/usr/bin/chromium")
SHOT = Path("/tmp/autolab-report-shot.png")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# The lab built by ``build_lab``: what the report must show.
LEADERBOARD = ["0005", "0004", "0003", "0001", "0002", "0008"]  # best first
PROMOTED = ["0001", "0003", "0004", "0005"]
AGENTS = ["w-alpha", "w-beta", "w-gamma"]
FAILURE_KINDS = {"crash", "timeout", "invalid", "expired"}


def _run(lab: Lab, eid: str, x: float, start_min: float, minutes: float, *,
         status: str = "ok", reason: str | None = None) -> None:
    """Claim ``eid`` and score it as the blank lab would, at a chosen time."""
    # A fresh view: a claim decided on this agent's cached view may pick an attempt
    # another agent already took, and a lost claim of a named experiment is not retried.
    lab.read()
    won = tx.claim(lab, experiment_id=eid)
    started = T0 + timedelta(minutes=start_min)
    ok = status == "ok"
    score = tx.make_score(
        eid, won.attempt, status=status, metric=(x - 3) ** 2 if ok else None, reason=reason,
        branch_commit=push_branch(lab, eid, x) if ok else None, runtime_s=minutes * 60,
        harness_hash=main_harness_hash(lab) if ok else None,
        started_at=started, finished_at=started + timedelta(minutes=minutes), agent=lab.agent)
    assert tx.submit(lab, score).outcome == "recorded"
    if ok:
        tx.promote(lab, eid)


def build_lab(url: str) -> None:
    """Three workers, a planner, promotions, a crash, a timeout, an invalid result, an
    expired lease with its late result, and a hypothesis with HTML in it."""
    planner = Lab.open(url, "planner")
    store = planner.store
    main = store.refresh().main
    config = store.read_file(main, "autolab.toml").decode()
    with_floor = config.replace("bounds = [0.0, 1e9]", "bounds = [0.0, 1e9]\nfloor = 0.0")
    assert with_floor != config
    store.cas_main(store.make_commit(main, FileChange(add={"autolab.toml": with_floor.encode()}),
                                     "set the floor"), main)
    alpha, beta, gamma = (Lab.open(url, a) for a in AGENTS)
    assert propose_x(planner, 1.0, 5.0, 2.0) == ["0001", "0002", "0003"]
    _run(alpha, "0001", 1.0, 0, 5)  # 4.0: promoted
    _run(beta, "0002", 5.0, 1, 6)  # 4.0: not better
    _run(gamma, "0003", 2.0, 2, 7)  # 1.0: promoted
    from autolab.protocol.knobs import set_knobs, unified_diff

    source = planner.store.read_file(planner.read().main, "experiment.py").decode()
    ids = tx.propose(planner, [tx.Proposal(EVIL, unified_diff(
        "experiment.py", source, set_knobs(source, {"X": 2.5})))])
    ids += propose_x(planner, 2.9, 7.0, 8.0, -1.0, 9.0)
    assert ids == ["0004", "0005", "0006", "0007", "0008", "0009"]
    _run(alpha, "0004", 2.5, 10, 4)  # 0.25: promoted; its parent's best was 1.0
    _run(beta, "0006", 7.0, 10, 1, status="crash", reason="exit code 1\nTraceback ...")
    _run(gamma, "0007", 8.0, 11, 2, status="timeout", reason="killed after 60 s")
    stale = tx.claim(alpha, experiment_id="0008")
    assert [r.experiment_id for r in tx.reap(planner, at=now() + timedelta(hours=1))] == ["0008"]
    late = tx.make_score("0008", stale.attempt, status="ok", metric=16.0, agent=alpha.agent,
                         started_at=T0 + timedelta(minutes=15),
                         finished_at=T0 + timedelta(minutes=20), runtime_s=300.0)
    assert tx.submit(alpha, late).outcome == "late"
    _run(beta, "0008", -1.0, 16, 3)  # 16.0, attempt 2
    _run(gamma, "0005", 2.9, 20, 6)  # 0.01: promoted
    won = tx.claim(alpha, experiment_id="0009")
    tx.submit(alpha, tx.make_score("0009", won.attempt, status="ok", metric=float("nan"),
                                   started_at=T0 + timedelta(minutes=22), agent=alpha.agent,
                                   finished_at=T0 + timedelta(minutes=23), runtime_s=60.0))


def decode_png(path: Path) -> np.ndarray:
    """Pixels of a PNG, decoded by matplotlib (so it must be a valid PNG)."""
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"
    return matplotlib.image.imread(str(path))


def assert_not_blank(pixels: np.ndarray, *, colours: int = 10) -> None:
    flat = pixels[..., :3].reshape(-1, 3)
    assert float(flat.var()) > 0, "image is uniform"
    distinct = len(np.unique((flat * 255).astype(np.uint8), axis=0))
    assert distinct >= colours, f"only {distinct} distinct colours"


@pytest.fixture(params=["path", "daemon"])
def built(request: pytest.FixtureRequest, lab_templates: LabTemplates, tmp_path: Path
          ) -> Iterator[Remote]:
    """A copy of the lab ``build_lab`` makes (built once per transport), on each kind
    of remote."""
    yield from lab_templates.copy("report", request.param, tmp_path, build_lab)


@pytest.fixture
def built_daemon(lab_templates: LabTemplates, tmp_path: Path) -> Iterator[Remote]:
    yield from lab_templates.copy("report", "daemon", tmp_path, build_lab)


def test_report_page_and_figures(built, tmp_path):
    remote = built
    out = tmp_path / "report"
    proc = run_cli("report", "--lab", remote.url, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    for step in rep.STEPS:  # progress while figures render
        assert f"report: rendering {step}" in proc.stdout
    assert f"wrote {out / 'index.html'} and 3 figure(s)" in proc.stdout
    page = (out / "index.html").read_text()

    view = Lab.open(remote.url, "check").read()
    hypotheses = {e.id: e.hypothesis for e in view.state.experiments.values()}
    rows = re.findall(r'<tr><td class="num">\d+</td><td class=""><span class="id">(\d+)</span>',
                      page.split("<h2>Leaderboard</h2>")[1].split("</table>")[0])
    assert rows == LEADERBOARD
    for eid in LEADERBOARD:
        assert html.escape(hypotheses[eid]) in page
    # The user-written hypothesis is shown escaped; the page holds no script at all.
    assert html.escape(EVIL) in page and EVIL not in page
    assert "<script" not in page.lower() and "alert(\"pwned\")" not in page
    for agent in AGENTS:
        assert agent in page
    # Δ vs the parent's best: 0004 was proposed when main's best was 1.0.
    board = {r["experiment_id"]: r for r in rep.leaderboard_rows(view)}
    assert board["0004"]["parent_best"] == 1.0 and board["0004"]["delta"] == -0.75
    assert board["0001"]["delta"] is None  # proposed before any promotion
    assert "-0.75" in page
    assert "spend: unknown" in page and "entropy floor" in page
    assert "Each bar is one run" in page  # a few runs: a bar each
    for reason in ("crash: exit code 1", "timeout: killed after 60 s", "lease expired",
                   "invalid: metric is nan"):
        assert reason in page
    # Self-contained: every src/href is an embedded PNG, identical to the file beside it.
    links = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert len(links) == 3 and all(u.startswith("data:image/png;base64,") for u in links)
    assert "http://" not in page and "https://" not in page and "@import" not in page
    embedded = {base64.b64decode(u.split(",", 1)[1]) for u in links}
    assert embedded == {(out / n).read_bytes() for n in
                        (rep.PROGRESS_PNG, rep.GANTT_PNG, rep.FAILURES_PNG)}

    runs = rep.runs(view)
    assert [r.outcome for r in runs].count("promoted") == len(PROMOTED)
    assert {r.outcome for r in runs} == {"ok", "promoted", "crash", "timeout", "invalid", "late"}
    assert {s for _, s, _ in rep.failures(view, runs)} == FAILURE_KINDS
    expected = {  # name: (height, width) in inches
        rep.PROGRESS_PNG: (figures.PROGRESS_HEIGHT_IN, figures.WIDTH_IN),
        rep.GANTT_PNG: (figures.gantt_height_in(len(AGENTS)), figures.WIDTH_IN),
        rep.FAILURES_PNG: (figures.failures_height_in(len(FAILURE_KINDS)),
                           figures.FAILURES_WIDTH_IN),
    }
    for name, inches in expected.items():
        pixels = decode_png(out / name)
        assert pixels.shape[:2] == tuple(round(v * figures.DPI) for v in inches), name
        assert_not_blank(pixels)
    assert figures.WIDTH_PX == 1100


def test_publish_commits_to_report_branch_and_leaves_main(built, tmp_path):
    remote = built
    before = remote.main()
    first = run_cli("report", "--lab", remote.url, "--out", str(tmp_path / "a"), "--publish",
                    "--json", check=True)
    data = json.loads(first.stdout)
    assert "report: rendering page" in first.stderr  # --json keeps stdout one document
    assert data["main"] == before and data["published"]
    assert remote.git("rev-parse", "refs/heads/autolab/report") == data["published"]
    tree = remote.git("ls-tree", "--name-only", "autolab/report").split()
    assert sorted(tree) == sorted(["index.html", *(Path(f).name for f in data["files"][1:])])
    assert sorted(tree) == ["failures.png", "gantt.png", "index.html", "progress.png"]
    shown = subprocess.run(["git", "show", "autolab/report:index.html"], cwd=remote.bare,
                           check=True, capture_output=True).stdout
    assert shown == (tmp_path / "a" / "index.html").read_bytes()
    # A second report builds on the first (the branch keeps the history); main never moves.
    second = json.loads(run_cli("report", "--lab", remote.url, "--out", str(tmp_path / "b"),
                                "--publish", "--json", check=True).stdout)
    assert remote.git("rev-parse", "autolab/report^") == data["published"]
    assert remote.git("rev-parse", "autolab/report") == second["published"]
    assert remote.main() == before
    assert "autolab/report" not in remote.git("log", "--format=%s", "main")


def test_report_of_an_empty_lab(daemon_remote, tmp_path):
    proc = run_cli("report", "--lab", daemon_remote.url, "--out", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "r" / "index.html").read_text()
    assert "No successful run yet." in page and "No promotion yet." in page
    assert not (tmp_path / "r" / rep.FAILURES_PNG).exists()
    for name in (rep.PROGRESS_PNG, rep.GANTT_PNG):
        assert_not_blank(decode_png(tmp_path / "r" / name), colours=3)


def test_spend_sums_cost_when_scores_carry_it():
    import pyarrow as pa

    assert rep.spend_usd(pa.table({"metric": [1.0]})) is None
    assert rep.spend_usd(pa.table({"cost_usd": pa.array([None, None], pa.float64())})) is None
    assert rep.spend_usd(pa.table({"cost_usd": [0.5, None, 1.25]})) == 1.75


def test_gantt_bars_closer_than_a_pixel_are_drawn_as_one():
    bars = [(10.0, 1.0), (0.0, 2.0), (2.05, 1.0), (1.0, 0.5), (5.0, 0.1), (20.0, 0.0)]
    joined = figures._joined(bars, gap=0.1)
    assert joined == [(0.0, 3.05), (5.0, 0.1), (10.0, 1.0), (20.0, 0.0)]

    def covered(parts, x):
        return any(a <= x <= a + w for a, w in parts)

    probes = [x / 100 for x in range(0, 2200)]
    # Nothing drawn that was not within the gap of a bar; every bar's span still drawn.
    assert all(covered(joined, x) for x in probes if covered(bars, x))
    assert all(any(a - 0.1 <= x <= a + w + 0.1 for a, w in bars)
               for x in probes if covered(joined, x))


def _colour_share(png: bytes, hex_colour: str) -> float:
    import io

    import matplotlib.image

    pixels = matplotlib.image.imread(io.BytesIO(png))[..., :3]
    want = np.array([int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    return float((np.abs(pixels - want).max(axis=2) < 0.02).mean())


@pytest.mark.parametrize("agents", [1, 4])
def test_a_crowded_gantt_shows_outcomes_in_proportion(agents):
    """Thousands of runs per row, nine in ten ok: drawn a bar each, the crashes drawn
    over them would paint the rows red; drawn as proportions, the rows stay mostly blue
    and the crashes still show."""
    runs = []
    for i in range(6000 * agents):
        start = T0 + timedelta(seconds=10 * (i // agents))
        crashed = i % 10 == 0
        runs.append(rep.Run(f"{i:05d}", 1, f"agent-{i % agents}", "crash" if crashed else "ok",
                            "crash" if crashed else "ok", None if crashed else 1.0, False,
                            start, start + timedelta(seconds=8), 8.0, None))
    assert figures.gantt_crowded(runs)  # the page's caption says so
    png = figures.gantt_png(runs)
    ok = _colour_share(png, figures.OUTCOME_COLOURS["ok"])
    crash = _colour_share(png, figures.OUTCOME_COLOURS["crash"])
    assert crash > 0.0005, (ok, crash)  # visible
    assert 5 < ok / crash < 20, (ok, crash)  # about nine to one


def _bulk_lab(url: str, experiments: int, agents: int) -> None:
    """A lab of many finished experiments, written as three main commits of real rows
    (the transactions would take minutes to produce them one by one)."""
    lab = Lab.open(url, "bulk")
    main = lab.read().main
    queue, scores, promoted = [], [], []
    best = None
    for i in range(1, experiments + 1):
        eid, agent = f"{i:04d}", f"agent-{i % agents}"
        start = T0 + timedelta(seconds=40 * i / agents * 3)
        queue.append({"experiment_id": eid, "event": "proposed", "at": start, "patch": "",
                      "patch_hash": f"h{i}", "hypothesis": f"try {i}", "priority": 1.0,
                      "parent_commit": main})
        queue.append({"experiment_id": eid, "event": "claimed", "attempt": 1, "agent": agent,
                      "at": start, "lease_until": start + timedelta(hours=1)})
        crashed = i % 9 == 0
        metric = None if crashed else 3.0 / (1 + i / 50) + (i * 7919 % 13) / 20
        runtime = 60.0 + i % 40
        scores.append(tx.make_score(eid, 1, status="crash" if crashed else "ok", metric=metric,
                                    reason="exit code 1" if crashed else None, agent=agent,
                                    started_at=start, runtime_s=runtime,
                                    finished_at=start + timedelta(seconds=runtime)))
        if metric is not None and (best is None or metric < best):
            best = metric
            promoted.append({"experiment_id": eid, "event": "promoted", "attempt": 1,
                             "metric": metric, "at": start, "source_commit": main})
    for table, rows in (("queue", queue), ("scores", scores), ("queue", promoted)):
        lab.commit_main(lambda v, t=table, r=rows: MainChange(f"bulk {t}", rows={t: r}))


def test_report_of_hundreds_of_experiments_renders_every_figure(daemon_remote, tmp_path):
    _bulk_lab(daemon_remote.url, 400, 8)
    proc = run_cli("report", "--lab", daemon_remote.url, "--out", str(tmp_path / "r"), "--json",
                   check=True)
    data = json.loads(proc.stdout)
    view = Lab.open(daemon_remote.url, "check").read()
    assert len(view.state.scores) == 400 and view.state.promotions
    # The time it took is reported (its speed is a benchmark's business, not a test's).
    assert data["seconds"] > 0 and len(data["files"]) >= 3, data
    assert_not_blank(decode_png(tmp_path / "r" / rep.GANTT_PNG))


# -- in a real browser ------------------------------------------------------------------

_BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package "
                    "(apt-get install -y chromium; .ci/run does) to render the report")
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    return subprocess.run([str(CHROMIUM), *_BROWSER_FLAGS, f"--user-data-dir={profile}",
                           *args], capture_output=True, text=True, timeout=120)


def console_messages(tmp: Path, url: str) -> tuple[list[str], str]:
    """Console messages (errors included) of the page at ``url``, and its DOM.

    With ``--enable-logging=stderr --v=0`` Chromium logs every console message of the
    page (``console.error``, uncaught exceptions, CSP violations, failed loads the
    renderer reports) as ``INFO:CONSOLE...] "text", source: URL (line)`` on stderr;
    ``--dump-dom`` prints the DOM after the load event and exits, so every message of
    the load is in. Chromium's own noise (dbus, GPU) has other tags. The test proves
    this detector on a page with known errors before trusting its silence.
    """
    proc = _chromium(tmp, "--enable-logging=stderr", "--v=0", "--dump-dom", url)
    lines = [ln for ln in proc.stderr.splitlines()
             if ":CONSOLE" in ln or "Uncaught" in ln or "Refused to" in ln]
    return lines, proc.stdout


@pytest.mark.slow
def test_report_renders_in_headless_chromium(built_daemon, tmp_path):
    out = tmp_path / "report"
    run_cli("report", "--lab", built_daemon.url, "--out", str(out), check=True)
    page = out / "index.html"

    # The detector sees errors where there are some...
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><p>x</p><script>console.error("boom"); nope();</script>')
    caught, _ = console_messages(tmp_path, bad.as_uri())
    assert any("boom" in ln for ln in caught) and any("Uncaught" in ln for ln in caught), caught
    # ...and the report has none, and its DOM is the whole page.
    messages, dom = console_messages(tmp_path, page.as_uri())
    assert messages == [], messages
    assert all(eid in dom for eid in LEADERBOARD) and "</footer>" in dom

    shot = tmp_path / "shot.png"
    proc = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000",
                     "--hide-scrollbars", page.as_uri())
    assert shot.exists(), proc.stderr[-2000:]
    shutil.copyfile(shot, SHOT)  # for a human to look at
    pixels = decode_png(shot)
    assert pixels.shape[:2] == (2000, 1280)
    assert_not_blank(pixels, colours=200)
    # Not one colour over most of the page: text, tiles and figures fill it.
    rows = pixels[..., :3].reshape(pixels.shape[0], -1).var(axis=1)
    assert (rows > 0).mean() > 0.5
