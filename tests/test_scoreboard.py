"""The scoreboard against real labs with known contents: the SQL views (``knobs``
included), ``leaderboard``, ``lineage`` and ``status`` (its ``--json`` checked against
the shape its module documents), and the fold they read: continued from a cached or
earlier fold, it must equal a fold of everything from scratch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from autolab.protocol import fold_cache, main_fold
from autolab.protocol import transactions as tx
from autolab.protocol.knobs import unified_diff
from autolab.protocol.lab import Lab, now
from autolab.protocol.state import state_tables
from autolab.scoreboard import leaderboard, lineage, status
from autolab.scoreboard.knobs import PatchReader, literal
from autolab.scoreboard.views import query

from .conftest import LabTemplates, run_cli
from .helpers import finish, propose_x

# -- a lab with one experiment in every condition ----------------------------------------

X_OF = {"0001": 2.0, "0002": 2.5, "0003": 4.0, "0004": 6.0, "0005": 9.0, "0006": 2.8,
        "0007": 7.0, "0008": 8.0, "0009": 2.8, "0010": None}
STATES = {"0001": "done", "0002": "done", "0003": "done", "0004": "failed", "0005": "claimed",
          "0006": "done", "0007": "cancelled", "0008": "queued", "0009": "queued",
          "0010": "queued"}


def _main_file(lab: Lab) -> str:
    return lab.store.read_file(lab.read().main, "experiment.py").decode()


def build_lab(url: str) -> Lab:
    """Promotions 0001 (1.0), 0002 (0.25), 0006 (0.04, proposed after 0001's); a crash
    (0003), an experiment failed at max_attempts (0004), one running (0005), one
    cancelled (0007), three queued: 0008 sets X, 0009 leaves X alone (a docstring
    edit), 0010 removes the X line."""
    lab = Lab.open(url, "agent")
    propose_x(lab, 2.0, 2.5, 4.0, 6.0, 9.0)
    finish(lab, tx.claim(lab, experiment_id="0001"), 2.0)
    propose_x(lab, 2.8)
    finish(lab, tx.claim(lab, experiment_id="0002"), 2.5)
    finish(lab, tx.claim(lab, experiment_id="0006"), 2.8)
    crash = tx.claim(lab, experiment_id="0003")
    tx.submit(lab, tx.make_score("0003", crash.attempt, status="crash", metric=None,
                                 reason="exit code 1: boom", agent=lab.agent))
    for _ in range(3):
        tx.claim(lab, experiment_id="0004")
        tx.reap(lab, at=now() + timedelta(days=1))
    tx.claim(lab, experiment_id="0005", backend="local")
    propose_x(lab, 7.0, 8.0)
    tx.cancel(lab, "0007", "not worth it")
    source = _main_file(lab)
    docs = unified_diff("experiment.py", source,
                        source.replace("editable surface", "editable part"))
    removed = unified_diff("experiment.py", source, source.replace("X = 2.8\n", "Y = 2.8\n"))
    assert tx.propose(lab, [tx.Proposal("docs only", docs),
                            tx.Proposal("no X", removed)]) == ["0009", "0010"]
    return lab


@pytest.fixture(params=["path", "daemon"])
def busy(request: pytest.FixtureRequest, lab_templates: LabTemplates, tmp_path: Path
         ) -> Iterator[tuple[Any, Lab]]:
    """A copy of the lab ``build_lab`` makes (built once per transport), on each kind
    of remote, and the builder's agent on it."""
    for remote in lab_templates.copy("scoreboard", request.param, tmp_path, build_lab):
        yield remote, Lab.open(remote.url, "agent")


@pytest.fixture
def busy_now(remote) -> tuple[Any, Lab]:
    """``build_lab`` made now (for what must be fresh: the running claim's lease)."""
    return remote, build_lab(remote.url)


def test_views_hold_the_folded_state(busy):
    _, lab = busy
    view = lab.read()
    state = view.state
    cols, rows = query(view, "SELECT experiment_id, state, attempt, metric, promoted "
                             "FROM experiments ORDER BY experiment_id")
    assert cols == ["experiment_id", "state", "attempt", "metric", "promoted"]
    assert rows == [(e.id, e.state, e.attempt, e.result["metric"] if e.result else None,
                     e.promoted) for e in sorted(state.experiments.values(), key=lambda e: e.id)]
    assert {r[0]: r[1] for r in rows} == STATES
    _, scores = query(view, "SELECT experiment_id, status, metric, late FROM scores")
    assert scores == [(s["experiment_id"], s["status"], s["metric"], s["late"])
                      for s in state.scores]
    _, promoted = query(view, "SELECT experiment_id, metric FROM promotions ORDER BY seq")
    assert promoted == [("0001", 1.0), ("0002", 0.25), ("0006", pytest.approx(0.04))]
    _, events = query(view, "SELECT count(*) FROM queue WHERE event = 'proposed'")
    assert events == [(10,)]


def test_knobs_view_reads_values_from_patches_and_parents(busy):
    _, lab = busy
    view = lab.read()
    cols, rows = query(view, "SELECT * FROM knobs ORDER BY experiment_id")
    assert cols == ["experiment_id", "state", "metric", "X"]
    assert {r[0]: r[3] for r in rows} == pytest.approx(X_OF)
    assert {r[0]: r[1] for r in rows} == STATES
    kind = query(view, "SELECT typeof(X) FROM knobs LIMIT 1")[1]
    assert kind == [("DOUBLE",)]
    _, best = query(view, "SELECT k.X FROM knobs k JOIN promotions p USING (experiment_id) "
                          "ORDER BY p.seq DESC LIMIT 1")
    assert best == [(pytest.approx(2.8),)]


def test_knob_values_are_cached_and_only_new_experiments_read(busy, monkeypatch):
    from autolab.scoreboard import knobs

    _, lab = busy
    monkeypatch.setattr(knobs, "_SAVE_AFTER", 0)
    first = knobs.knobs_table(lab.read())
    assert list(fold_cache.state_cache_dir(lab.store).glob("knobs-*.arrow"))
    propose_x(lab, 3.7)
    read = []
    real = knobs.knob_rows
    monkeypatch.setattr(knobs, "knob_rows", lambda config, store, patches, parents: (
        read.append(len(patches)) or real(config, store, patches, parents)))
    again = knobs.knobs_table(lab.read())
    assert read == [1]  # only the new experiment's patch
    assert again.slice(0, first.num_rows).equals(first)
    assert again.column("experiment_id")[-1].as_py() == "0011"
    assert again.column("X")[-1].as_py() == pytest.approx(3.7)


def test_patch_reader_follows_files_and_removals():
    from autolab.protocol.config import Knob

    knobs = {"LR": Knob("LR", "train.py", "float", 0.0, 1.0),
             "MODE": Knob("MODE", "cfg/model.py", "choice", choices=("a", "b"))}
    patch = ("diff --git a/other.py b/other.py\n--- a/other.py\n+++ b/other.py\n"
             "@@ -1 +1 @@\n-LR = 0.1\n+LR = 0.5\n"
             "diff --git a/train.py b/train.py\n--- a/train.py\n+++ b/train.py\n"
             "@@ -3,3 +3,3 @@\n # lr\n-LR = 0.1  # peak\n+LR = 3e-4  # peak\n LR_2 = 1\n"
             "--- a/cfg/model.py\n+++ b/cfg/model.py\n@@ -1 +1 @@\n-MODE = \"a\"\n")
    assert PatchReader(knobs).assignments(patch) == {"LR": 3e-4, "MODE": None}
    assert PatchReader(knobs).assignments("") == {}
    assert (literal("12"), literal("-1.5e-3"), literal('"gelu"'), literal("True"),
            literal("f(x)")) == (12, -1.5e-3, "gelu", True, None)


def test_leaderboard_ranks_ok_results_with_deltas_from_their_parent(busy):
    remote, lab = busy
    rows = leaderboard.leaderboard(lab.read(), limit=10)
    assert [(r["rank"], r["experiment_id"], r["promoted"]) for r in rows] == [
        (1, "0006", True), (2, "0002", True), (3, "0001", True)]
    # 0006 was proposed on the main that 0001's promotion made best (1.0).
    assert rows[0]["parent_best"] == 1.0 and rows[0]["delta"] == pytest.approx(0.04 - 1.0)
    assert rows[1]["parent_best"] is None and rows[1]["delta"] is None
    assert rows[0]["agent"] == "agent" and rows[0]["hypothesis"] == "set X to 2.8"
    cli = run_cli("leaderboard", "--lab", remote.url, "--json", "--limit", "2", check=True)
    assert [r["experiment_id"] for r in json.loads(cli.stdout)] == ["0006", "0002"]
    _check_shape(json.loads(cli.stdout), leaderboard.__doc__)
    text = run_cli("leaderboard", "--lab", remote.url, check=True).stdout
    assert "0006" in text and "-0.96" in text


def test_lineage_is_the_chain_of_promotion_merges(busy):
    remote, lab = busy
    view = lab.read()
    steps = lineage.lineage(view)
    assert [(s["experiment_id"], s["metric"]) for s in steps] == [
        ("0001", 1.0), ("0002", 0.25), ("0006", pytest.approx(0.04))]
    assert [s["delta"] for s in steps] == [None, -0.75, pytest.approx(0.04 - 0.25)]
    merges = remote.git("log", "--first-parent", "--merges", "--format=%H %P", "main")
    expected = [line.split() for line in reversed(merges.splitlines())]
    assert [[s["commit"], s["source_commit"]] for s in steps] == [[m[0], m[2]]
                                                                   for m in expected]
    assert steps[2]["hypothesis"] == "set X to 2.8"
    cli = json.loads(run_cli("lineage", "--lab", remote.url, "--json", check=True).stdout)
    assert [s["experiment_id"] for s in cli] == ["0001", "0002", "0006"]
    _check_shape(cli, lineage.__doc__)
    tree = run_cli("lineage", "--lab", remote.url, check=True).stdout
    assert tree.index("0001") < tree.index("0002") < tree.index("0006")


def test_status_json_has_the_documented_shape_and_the_lab_in_it(busy_now):
    remote, lab = busy_now
    proc = run_cli("status", "--lab", remote.url, "--json", check=True)
    data = json.loads(proc.stdout)
    _check_shape(data, status.__doc__)
    assert data["counts"] == {"queued": 3, "claimed": 1, "done": 4, "failed": 1,
                              "cancelled": 1}
    assert data["queue_depth"] == 3 and data["experiments"] == 10
    [running] = data["running"]
    assert (running["experiment_id"], running["backend"]) == ("0005", "local")
    assert 0 < running["lease_left_s"] <= 90  # the blank lab: 60 s timeout + 30 s margin
    assert data["best"]["experiment_id"] == "0006" and data["best"]["hypothesis"] == \
        "set X to 2.8"
    assert data["floor"] is None and data["gap_to_floor"] is None  # blank has no floor
    assert data["failures"] == {"crash": 1, "failed": 1}
    assert {"kind": "crash", "reason": "exit code 1: boom", "count": 1} in \
        data["failure_reasons"]
    assert data["recent"][0]["experiment_id"] == "0003" and data["promotions"] == 3
    assert data["pending_records"] == len(lab.read().pending)
    text = run_cli("status", "--lab", remote.url, check=True).stdout
    assert "queue depth 3" in text and "exit code 1: boom" in text


def test_status_gap_to_the_floor(remote, tmp_path):
    from autolab.agents.lab_init import init_lab

    def with_floor(work):
        config = work / "autolab.toml"
        config.write_text(config.read_text().replace('direction = "min"',
                                                     'direction = "min"\nfloor = 0.01'))

    bare = init_lab(tmp_path / "floor.git", "blank", bare=True, edit=with_floor)
    lab = Lab.open(str(bare), "agent")
    propose_x(lab, 2.5)
    finish(lab, tx.claim(lab), 2.5)
    data = status.status(lab.read())
    assert data["floor"] == 0.01 and data["gap_to_floor"] == pytest.approx(0.25 - 0.01)


# -- the fold the scoreboard reads ---------------------------------------------------------


def _fresh_tables(url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``state_tables`` of a fold of everything, with no cached fold to start from."""
    monkeypatch.setenv("AUTOLAB_STATE_CACHE_ROWS", "-1")
    main_fold._folds.clear()
    view = Lab.open(url, "fresh").read()
    tables = state_tables(view.state)
    main_fold._folds.clear()
    monkeypatch.setenv("AUTOLAB_STATE_CACHE_ROWS", "0")
    return view, tables


def _assert_same(got: Any, want: Any) -> None:
    for name in ("experiments", "scores", "promotions", "ideas", "anomalies"):
        assert getattr(got, name).equals(getattr(want, name)), name
    assert (got.main, got.max_seq) == (want.main, want.max_seq)


def test_folds_from_disk_and_across_compaction_equal_a_fresh_fold(busy, monkeypatch):
    remote, lab = busy
    monkeypatch.setenv("AUTOLAB_STATE_CACHE_ROWS", "0")  # cache even this small lab
    main_fold._folds.clear()
    Lab.open(remote.url, "first").read().folded()  # folds everything, saves it
    assert list(fold_cache.state_cache_dir(lab.store).glob("*-*/meta.pickle"))

    def no_full_fold(*args: Any) -> None:
        raise AssertionError("folded everything again instead of continuing")

    for change in ("new rows", "compaction", "records"):
        if change == "new rows":
            propose_x(lab, 3.3)
            finish(lab, tx.claim(lab, experiment_id="0011"), 3.3)
        elif change == "compaction":
            assert tx.compact(lab).commit
        else:
            tx.claim(lab, experiment_id="0008")
        _, want = _fresh_tables(remote.url, monkeypatch)
        with monkeypatch.context() as patched:
            patched.setattr(main_fold, "_fold_everything", no_full_fold)
            view = Lab.open(remote.url, "reader").read()  # a new process: only the disk
            _assert_same(view.folded(), want)
        main_fold._folds.clear()
    # The CLI reads the same through the cache.
    env = {"AUTOLAB_STATE_CACHE_ROWS": "0"}
    cli = json.loads(run_cli("sql", "--lab", remote.url, "--json", "SELECT experiment_id, "
                             "state FROM experiments ORDER BY 1", env=env, check=True).stdout)
    assert {r["experiment_id"]: r["state"] for r in cli} == {**STATES, "0008": "claimed",
                                                             "0011": "done"}


def test_an_agent_continues_its_fold_as_main_moves(busy, monkeypatch):
    remote, lab = busy
    monkeypatch.setenv("AUTOLAB_STATE_CACHE_ROWS", "-1")
    agent = Lab.open(remote.url, "agent")
    before = agent.read().state  # the base every later read continues
    assert before.experiments["0008"].state == "queued"
    propose_x(lab, 3.1)
    finish(lab, tx.claim(lab, experiment_id="0008"), 8.0, promote=False)
    tx.compact(lab)
    lab.fold(always=True)
    got = agent.read()
    assert got._fold._state is not None  # continued, not refolded
    view, want = _fresh_tables(remote.url, monkeypatch)
    _assert_same(state_tables(got.state), want)
    assert _signature(got.state) == _signature(view.state)
    assert before.experiments["0008"].state == "queued"  # the base is left untouched


def _signature(state: Any) -> Any:
    return ({k: (e.to_dict(), e.patch, e.outcomes, e.result) for k, e in
             state.experiments.items()}, list(state.experiments), state.promotions,
            state.scores, state.ideas, state.anomalies, state.max_seq)


# -- the documented JSON shapes --------------------------------------------------------------

_TOKEN = re.compile(r'\s*("[^"]*"|[{}\[\]:,|]|[A-Za-z_]+)')


def _shape_text(doc: str) -> str:
    """The indented block after the first ``::`` of a docstring."""
    block = doc.split("::", 1)[1]
    lines = []
    for line in block.splitlines()[1:]:
        if line.strip() and not line.startswith("    "):
            break
        lines.append(line)
    return "\n".join(lines)


def _parse_shape(text: str) -> Any:
    """``{"key": type, ...}``, ``[type]``, ``{str: type}``, ``a | b``, ``str``, ``"lit"``."""
    tokens = [t for t in _TOKEN.findall(text)]
    pos = 0

    def take(expected: str | None = None) -> str:
        nonlocal pos
        token = tokens[pos]
        assert expected is None or token == expected, (expected, token, tokens[pos - 5:pos + 5])
        pos += 1
        return token

    def union() -> Any:
        options = [primary()]
        while pos < len(tokens) and tokens[pos] == "|":
            take("|")
            options.append(primary())
        return ("union", options) if len(options) > 1 else options[0]

    def primary() -> Any:
        token = take()
        if token == "[":
            item = union()
            take("]")
            return ("list", item)
        if token == "{":
            if tokens[pos] == "str":
                take("str")
                take(":")
                value = union()
                take("}")
                return ("map", value)
            fields = {}
            while tokens[pos] != "}":
                key = take().strip('"')
                take(":")
                fields[key] = union()
                if tokens[pos] == ",":
                    take(",")
            take("}")
            return ("object", fields)
        if token.startswith('"'):
            return ("literal", token.strip('"'))
        assert token in ("str", "int", "float", "bool", "null"), token
        return (token,)

    shape = union()
    assert pos == len(tokens), tokens[pos:]
    return shape


def _matches(value: Any, shape: Any, where: str = "$") -> list[str]:
    kind = shape[0]
    if kind == "union":
        fits = [_matches(value, option, where) for option in shape[1]]
        return [] if any(not f for f in fits) else [f"{where}: {value!r} fits no option"]
    if kind == "object":
        if not isinstance(value, dict) or set(value) != set(shape[1]):
            return [f"{where}: keys {sorted(value) if isinstance(value, dict) else value!r} "
                    f"!= {sorted(shape[1])}"]
        return [p for key, sub in shape[1].items() for p in _matches(value[key], sub,
                                                                      f"{where}.{key}")]
    if kind == "map":
        if not isinstance(value, dict):
            return [f"{where}: not an object"]
        return [p for key, item in value.items() for p in _matches(item, shape[1],
                                                                    f"{where}.{key}")]
    if kind == "list":
        if not isinstance(value, list):
            return [f"{where}: not a list"]
        return [p for i, item in enumerate(value) for p in _matches(item, shape[1],
                                                                     f"{where}[{i}]")]
    checks = {
        "literal": lambda v: v == shape[1] if len(shape) > 1 else False,
        "str": lambda v: isinstance(v, str), "bool": lambda v: isinstance(v, bool),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "null": lambda v: v is None,
    }
    return [] if checks[kind](value) else [f"{where}: {value!r} is not {kind}"]


def _check_shape(data: Any, doc: str | None) -> None:
    assert doc is not None
    problems = _matches(data, _parse_shape(_shape_text(doc)))
    assert not problems, problems


def test_the_shape_checker_catches_a_wrong_document():
    shape = _parse_shape('{"a": int, "b": [{"c": str | null}], "d": {str: int}, '
                         '"e": "min" | "max"}')
    assert not _matches({"a": 1, "b": [{"c": None}], "d": {"x": 2}, "e": "max"}, shape)
    assert _matches({"a": 1.5, "b": [], "d": {}, "e": "min"}, shape)  # a float for an int
    assert _matches({"a": 1, "b": [{"c": 1}], "d": {}, "e": "min"}, shape)
    assert _matches({"a": 1, "b": [], "d": {}, "e": "up"}, shape)
    assert _matches({"a": 1, "b": [], "d": {}}, shape)  # a key missing
