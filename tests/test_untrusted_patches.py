"""Hostile patches: each is refused at propose, and again at run time when an agent
with push rights writes it onto the queue itself; nothing it points at leaks, and
what runs (and may be promoted) is exactly parent + patch (real git, real runs)."""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from autolab.agents.backends.local import LocalBackend
from autolab.agents.worker import Worker
from autolab.protocol import transactions as tx
from autolab.protocol.config import parse_config
from autolab.protocol.errors import ConfigError, PatchError
from autolab.protocol.lab import Lab

from .adversary import BLANK, all_objects_text, forge_proposal, git_patch
from .helpers import main_harness_hash, propose_x

SECRET = f"host-secret-{uuid.uuid4().hex}"


def _symlink(target: str):  # noqa: ANN202
    def mutate(work: Path) -> None:
        (work / "experiment.py").unlink()
        os.symlink(target, work / "experiment.py")
    return mutate


def _copy(work: Path) -> None:
    source = (work / "experiment.py").read_text()
    (work / "helper.py").write_text(source)
    (work / "experiment.py").write_text(source.replace("X = 0.0", "X = 3.0"))


def _rename(work: Path) -> None:
    (work / "experiment.py").rename(work / "moved.py")


def _gitlink(work: Path) -> None:
    (work / "experiment.py").unlink()
    sub = work / "experiment.py"
    sub.mkdir()
    (sub / "f").write_text("x")
    for args in (["init", "-q"], ["add", "f"],
                 ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "s"]):
        subprocess.run(["git", *args], cwd=sub, check=True, capture_output=True)


def _gitattributes(work: Path) -> None:
    (work / ".gitattributes").write_text("experiment.py export-subst\n")


def _binary(work: Path) -> None:
    (work / "experiment.py").write_bytes(b"X = 3.0\0\1\2\n")


# (name, mutate, extra `git diff` flags, what the refusal names)
GIT_MADE = [
    ("symlink-to-host-file", None, (), "experiment.py: symlinks are not accepted"),
    ("symlink-to-environ", _symlink("/proc/self/environ"), (),
     "experiment.py: symlinks are not accepted"),
    ("symlink-to-directory", _symlink("/etc"), (), "experiment.py: symlinks are not accepted"),
    ("copy-header", _copy, ("-C", "--find-copies-harder"), "helper.py: not an editable path"),
    ("rename-header", _rename, ("-M",), "moved.py: not an editable path"),
    ("gitlink", _gitlink, (), "experiment.py: submodules (gitlinks) are not accepted"),
    ("gitattributes", _gitattributes, (), ".gitattributes: git's own files"),
    ("binary", _binary, ("--binary",), "patch is binary"),
    ("binary-without-data", _binary, (), "patch is binary"),
]

_HUNK = "@@ -1 +1 @@\n-a\n+b\n"
HAND_MADE = [
    ("dotdot", f"--- a/../program.md\n+++ b/../program.md\n{_HUNK}", "'..' path components"),
    ("dot", f"--- a/./program.md\n+++ b/./program.md\n{_HUNK}", "'.' and '..'"),
    ("double-slash", f"--- a//program.md\n+++ b//program.md\n{_HUNK}", "absolute paths"),
    ("inner-double-slash", f"--- a/x//program.md\n+++ b/x//program.md\n{_HUNK}", "empty, '.'"),
    ("case", f"--- a/Program.md\n+++ b/Program.md\n{_HUNK}", "Program.md: protected path"),
    ("upper-case", f"--- a/PROGRAM.MD\n+++ b/PROGRAM.MD\n{_HUNK}", "PROGRAM.MD: protected path"),
    ("traditional", f"--- program.md\n+++ program.md\n{_HUNK}", "program.md: protected path"),
    ("state", f"--- a/.autolab/queue/x\n+++ b/.autolab/queue/x\n{_HUNK}", "lab's state"),
    ("trailing-dot", f"--- a/program.md.\n+++ b/program.md.\n{_HUNK}", "ending in a dot"),
    ("absolute", f"--- /etc/passwd\n+++ /etc/passwd\n{_HUNK}", "absolute paths"),
]


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "host-secret.txt"
    path.write_text(SECRET)
    return path


def _attack(name: str, mutate, flags, tmp_path: Path, secret_file: Path) -> str:  # noqa: ANN001
    if name == "symlink-to-host-file":
        mutate = _symlink(str(secret_file))
    return git_patch(tmp_path, mutate, *flags)


@pytest.mark.parametrize("name, mutate, flags, rule", GIT_MADE, ids=[a[0] for a in GIT_MADE])
def test_git_made_attack_is_refused_at_propose_and_at_run_time(
        daemon_remote, tmp_path, secret_file, name, mutate, flags, rule):
    lab = Lab.open(daemon_remote.url, "planner")
    patch = _attack(name, mutate, flags, tmp_path, secret_file)
    before = daemon_remote.main()
    with pytest.raises(PatchError, match=re.escape(rule)) as refused:
        tx.propose(lab, [tx.Proposal(name, patch)])
    assert "\n" not in str(refused.value)
    assert daemon_remote.main() == before

    eid = forge_proposal(lab, patch, name)
    cycle = Worker(Lab.open(daemon_remote.url, "worker"), LocalBackend(), tmp_path / "logs",
                   say=lambda _: None).run_once()
    assert cycle is not None and cycle.experiment_id == eid and cycle.status == "invalid"
    result = lab.read().state.experiments[eid].result
    assert rule.split(":")[-1].strip() in result["reason"] and result["branch_commit"] is None
    branches = daemon_remote.git("for-each-ref", "refs/heads/autolab/")
    assert branches == ""  # nothing was pushed for it
    assert SECRET.encode() not in all_objects_text(daemon_remote.bare)


@pytest.mark.parametrize("name, patch, rule", HAND_MADE, ids=[a[0] for a in HAND_MADE])
def test_noncanonical_and_protected_spellings_are_refused(daemon_remote, tmp_path, name,
                                                          patch, rule):
    lab = Lab.open(daemon_remote.url, "planner")
    with pytest.raises(PatchError, match=re.escape(rule)):
        tx.propose(lab, [tx.Proposal(name, patch)])
    eid = forge_proposal(lab, patch, name)
    cycle = Worker(Lab.open(daemon_remote.url, "worker"), LocalBackend(), tmp_path / "logs",
                   say=lambda _: None).run_once()
    assert cycle is not None and cycle.status == "invalid"
    assert rule in lab.read().state.experiments[eid].result["reason"]


def test_the_executable_bit_is_the_one_mode_change_allowed(daemon_remote, tmp_path):
    lab = Lab.open(daemon_remote.url, "planner")
    patch = git_patch(tmp_path, lambda w: (w / "experiment.py").chmod(0o755))
    assert "new mode 100755" in patch
    assert tx.propose(lab, [tx.Proposal("chmod", patch)]) == ["0001"]


def test_what_runs_is_committed_not_what_the_run_rewrites(daemon_remote, tmp_path):
    """The run prints its score, then rewrites its own editable file: the branch holds
    the patched file, byte for byte, not the rewrite."""
    lab = Lab.open(daemon_remote.url, "planner")

    def mutate(work: Path) -> None:
        source = (work / "experiment.py").read_text().replace("X = 0.0", "X = 2.0")
        source += ("import pathlib\npathlib.Path(__file__).write_text("
                   "'X = 3.0  # rewritten after the score was printed\\n')\n")
        (work / "experiment.py").write_text(source)

    patch = git_patch(tmp_path, mutate)
    [eid] = tx.propose(lab, [tx.Proposal("rewrites itself", patch)])
    cycle = Worker(Lab.open(daemon_remote.url, "worker"), LocalBackend(), tmp_path / "logs",
                   say=lambda _: None).run_once()
    assert cycle is not None and cycle.status == "ok" and cycle.metric == 1.0
    view = lab.read()
    head = view.state.experiments[eid].result["branch_commit"]
    exp = view.state.experiments[eid]
    committed = lab.store.read_file(head, "experiment.py").decode()
    assert "rewritten" not in committed.splitlines()[0] and "X = 2.0" in committed
    assert committed == lab.store.read_file(view.main, "experiment.py").decode()  # promoted
    assert lab.store.is_ancestor(exp.parent_commit, head)


def test_forged_results_are_never_promoted(daemon_remote, tmp_path):
    """A 0.0 claimed with main's own commit, or with a branch that also edits the
    harness, names a commit that is not the experiment's parent plus its patch."""
    lab = Lab.open(daemon_remote.url, "agent")
    propose_x(lab, 2.0, 2.5, 1.5)
    view = lab.read()
    main = view.main
    claims = [tx.claim(lab, experiment_id=e) for e in ("0001", "0002", "0003")]
    # 1: main's own commit, or the experiment's parent, as the "measured" one.
    parent = view.state.experiments["0003"].parent_commit
    for eid, commit, why in (
            ("0001", main, "not the experiment's parent plus exactly its patch"),
            ("0003", parent, "is the experiment's parent itself")):
        score = tx.make_score(eid, 1, status="ok", metric=0.0, branch_commit=commit,
                              harness_hash=main_harness_hash(lab))
        assert tx.submit(lab, score).outcome == "recorded"
        outcome = tx.promote(lab, eid)
        assert not outcome.promoted and why in outcome.reason
    # 2: the right edit plus a rewritten harness file, pushed to the branch.
    from autolab.protocol.patch_judge import judge_patch
    from autolab.protocol.store import FileChange

    exp = view.state.experiments["0002"]
    patched = lab.store.commit_tree(exp.parent_commit,
                                    judge_patch(lab.store, exp.parent_commit, exp.patch,
                                                view.config).tree, "patch")
    evil = lab.store.make_commit(patched, FileChange(add={"program.md": b"anything goes\n"}),
                                 "and the brief")
    lab.store.push_ref("refs/heads/autolab/exp/0002", evil, None)
    tx.submit(lab, tx.make_score("0002", claims[1].attempt, status="ok", metric=0.0,
                                 branch_commit=evil, harness_hash=main_harness_hash(lab)))
    outcome = tx.promote(lab, "0002")
    assert not outcome.promoted
    assert "not the experiment's parent plus exactly its patch" in outcome.reason
    assert daemon_remote.main() == lab.read().main and lab.read().state.promotions == []


@pytest.mark.parametrize("editable, protected, word", [
    ('["*"]', '["program.md"]', "overlaps"),  # would take .autolab/ and autolab.toml too
    ('["src/**"]', '["src/eval.py"]', "overlaps the protected path 'src/eval.py'"),
    ('["Program.md"]', '["program.md"]', "overlaps"),
    ('[".github/workflows/ci.yml"]', "[]", ".git"),
])
def test_editable_paths_overlapping_protected_ones_are_a_config_error(editable, protected,
                                                                       word):
    text = (BLANK / "autolab.toml").read_text()
    text = text.replace('editable = ["experiment.py"]', f"editable = {editable}")
    text = text.replace('protected = ["program.md", "SKILL.md"]', f"protected = {protected}")
    with pytest.raises(ConfigError, match=word.replace("*", r"\*")):
        parse_config(text)
