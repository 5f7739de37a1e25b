"""The ``agent`` proposer: a coding agent's edits in a fresh worktree become the patch.

``[agent] command`` (aider, codex, opencode, claude, gemini, ...) runs in a worktree
holding main's files, with the lab's context as its prompt, a timeout, and an
environment holding only ``PATH``, ``LANG``, a private ``HOME`` and the variables
``[agent] env`` lists. It runs the way experiment runs do (the same guard and
sandbox: docs/security.md). The agent's last ``HYPOTHESIS:`` line (else its last line
of output) is the hypothesis.

Nothing the agent left is trusted: its own ``.git`` is never read. What it changed is
found by a private git directory outside the worktree, made before the agent starts,
where a sandboxed agent cannot see it (a repository the agent could write would let
it run code through git's hooks or config when read back). What the lab's
``.gitignore`` ignores is left out, and so are new files outside the editable paths
(a chat history, a cache) and changes to git's own files (``.gitignore``): they never
reach the lab. Every other change goes through
the same judge as every patch (an edit of a protected file refuses the proposal), and
a diff holding the value of any variable given to the agent is refused without being
stored.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from autolab.agents.events import WARNING, emit
from autolab.agents.proposers.base import Outcome
from autolab.agents.proposers.context import build_context, render
from autolab.protocol.errors import AutoLabError, PatchError
from autolab.protocol.git_cli import run_git
from autolab.protocol.patch_judge import judge_patch, path_rule
from autolab.protocol.patches import normalized_hash
from autolab.protocol.redact import redact
from autolab.protocol.transactions import Proposal

if TYPE_CHECKING:
    from autolab.protocol.config import AgentConfig, LabConfig
    from autolab.protocol.lab import Lab
    from autolab.protocol.reader import LabView

PROMPT_CHARS = 60_000  # one argv word may hold 128 KiB on Linux
MAX_HYPOTHESIS = 500
WRITE_TASK = """## Your task
You are in a checkout of the experiment's parent. Implement exactly this hypothesis, and
nothing else, by editing the editable files:
{hypothesis}
Do not run the training or the evaluation (the lab runs them), do not commit, and do not
touch protected files. End your final message with one line:
HYPOTHESIS: <the hypothesis, as you implemented it>"""
TASK = """## Your task
You are in a checkout of main. Make one experiment: edit the editable files to test one
hypothesis that should improve the metric. Do not run the training or the evaluation
(the lab runs them), do not commit, and do not touch protected files.
End your final message with one line:
HYPOTHESIS: <one sentence: the change and why it should improve the metric>"""
_PLACEHOLDERS = re.compile(r"\{(prompt|prompt_file|workdir)\}")
_GIT = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false",
        "-c", "user.name=autolab", "-c", "user.email=autolab@localhost",
        "-c", "commit.gpgsign=false", "-c", "core.autocrlf=false")


def _private_git_env(private: Path) -> dict[str, str]:
    """Git reading the agent's worktree with no configuration but ours: no system
    config, and a global one that does not exist, in the private directory (never a
    shared file such as /dev/null, which a config write would replace)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=str(private.parent / "no-config"),
               LC_ALL="C", GIT_TERMINAL_PROMPT="0")
    return env


def command_words(template: str, *, prompt: str, prompt_file: Path, workdir: Path) -> list[str]:
    """``template`` split like a shell line, placeholders replaced in each word."""
    values = {"prompt": prompt, "prompt_file": str(prompt_file), "workdir": str(workdir)}
    return [_PLACEHOLDERS.sub(lambda m: values[m[1]], word) for word in shlex.split(template)]


def hypothesis_from(output: str) -> str:
    """The agent's last ``HYPOTHESIS:`` line, else its last non-empty line of output."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    marked = [ln.split(":", 1)[1] for ln in lines if re.match(r"^\W*HYPOTHESIS\W*:", ln)]
    text = marked[-1] if marked else (lines[-1] if lines else "")
    return " ".join(text.strip(" *`\"'").split())[:MAX_HYPOTHESIS]


@dataclass
class AgentProposer:
    """Proposes by running the coding agent ``config`` describes (``[agent]``)."""

    config: AgentConfig
    say: Callable[[str], None] = print
    name: str = "agent"

    def propose(self, lab: Lab, view: LabView, count: int) -> list[Outcome]:
        if not self.config.command.strip():
            raise AutoLabError("the agent proposer needs a command: set [agent] command in "
                               "autolab.toml or pass --agent-command")
        ctx = build_context(lab, view)
        ctx.files = {}  # the agent reads them in its worktree
        tried = view.state.patch_hashes()
        outcomes = []
        for _ in range(count):
            outcome = self._one(lab, view, render(ctx, PROMPT_CHARS, TASK), tried)
            outcomes.append(outcome)
            if outcome.refused is None:
                tried.add(normalized_hash(outcome.proposal.patch))
                ctx.running.append(outcome.proposal.hypothesis)
        return outcomes

    def _one(self, lab: Lab, view: LabView, prompt: str, tried: set[str]) -> Outcome:
        origin = {"proposer": "agent", "model": self.config.command.split()[0]}
        edit = write_change(lab, view.main, view.config, self.config, prompt, self.say)
        if edit.refused is None and normalized_hash(edit.patch) in tried:
            edit.refused = "the same change was already tried or is queued"
        if edit.refused is not None:
            return self._refused(edit.hypothesis, edit.patch, origin, edit.refused)
        return Outcome(Proposal(edit.hypothesis, edit.patch, origin=origin))

    def _refused(self, hypothesis: str, patch: str, origin: dict, reason: str) -> Outcome:
        emit(self.say, "agent_refused", f"agent proposal refused: {reason}", level=WARNING,
             reason=reason)
        return Outcome(Proposal(hypothesis, patch, origin=origin), refused=reason)


@dataclass
class AgentEdit:
    """What a coding agent's run left: its hypothesis and patch, or why it is refused
    (``patch`` is then what may be stored: empty when it held a secret)."""

    hypothesis: str
    patch: str = ""
    refused: str | None = None


def write_change(lab: Lab, commit: str, lab_config: LabConfig, agent: AgentConfig,
                 prompt: str, say: Callable[[str], None] = print) -> AgentEdit:
    """Run the coding agent ``agent`` on ``commit``'s files with ``prompt``; its change.

    The change is judged on ``lab_config``'s rules against ``commit`` (see the module
    docstring for what is trusted and what is left out).
    """
    from autolab.agents.backends.base import RunRequest
    from autolab.agents.backends.local import LocalBackend
    from autolab.agents.worktree import Worktree, work_root

    scratch = Path(tempfile.mkdtemp(prefix="autolab-agent-"))  # its HOME and prompt
    # Under the work root, which a sandboxed agent cannot see (docs/security.md).
    private = Path(tempfile.mkdtemp(prefix="agent-git-", dir=work_root())) / "git"
    passed = {k: os.environ[k] for k in agent.env if k in os.environ}
    try:
        with Worktree() as tree:
            work = tree.path
            Worktree.fill(work, lab.store, commit, {})
            base = _snapshot(private, work, initial=True)
            # Agents that want a repository (aider, codex) get one of their own.
            own = _private_git_env(private)
            for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "main"]):
                run_git([*_GIT, *args], cwd=work, env=own)
            home = scratch / "home"
            home.mkdir()
            prompt_file = scratch / "prompt.md"
            prompt_file.write_text(prompt)
            words = command_words(agent.command, prompt=prompt, prompt_file=prompt_file,
                                  workdir=work)
            log = scratch / "agent.log"
            result = LocalBackend(name="agent").run(RunRequest(
                command=shlex.join(words), workdir=work, timeout=agent.timeout,
                env={"HOME": str(home), **passed}, log_path=log))
            output = log.read_text(errors="replace") if log.exists() else ""
            hypothesis = hypothesis_from(output) or "(the agent said nothing)"
            if result.status == "timeout":
                return AgentEdit(hypothesis, refused=f"the agent ran past {agent.timeout:g}s "
                                 "(its edits discarded)")
            if result.returncode not in (0, None):
                return AgentEdit(hypothesis, refused=f"the agent failed: {result.reason}")
            patch, dropped = _diff(private, work, base, lab_config)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(private.parent, ignore_errors=True)
    if dropped:
        emit(say, "agent_files_dropped",
             f"left out {len(dropped)} new file(s) outside the editable paths: "
             f"{', '.join(dropped[:5])}", level=WARNING, paths=dropped[:50])
    if not patch.strip():
        return AgentEdit(hypothesis, refused="the agent changed no editable file")
    leaked = [k for k, v in passed.items() if len(v) >= 6 and v in patch]
    if leaked or redact(patch) != patch:
        names = ", ".join(leaked) or "a token"
        return AgentEdit(hypothesis, refused=f"the agent's diff holds a secret ({names}); "
                         "not stored")
    try:
        judge_patch(lab.store, commit, patch, lab_config)
    except PatchError as exc:
        return AgentEdit(hypothesis, patch, refused=str(exc))
    return AgentEdit(hypothesis, patch)


# -- the private repository: made before the agent starts, read after it ends -----


def _left_out(status: str, path: str, config: LabConfig) -> bool:
    """Whether a change of the agent's is left out of the patch rather than judged: a
    new file outside the editable paths, or any change to git's own files
    (``.gitignore``, ``.gitattributes``: agents add their caches there). Neither can
    reach the lab; every other change is judged (editing the harness refuses it)."""
    why = path_rule(path, config)
    return why is not None and (status == "A" or why.startswith("git's own files"))


def _snapshot(private: Path, work: Path, *, initial: bool = False) -> str:
    """Commit ``work``'s files into the private repository ``private``; the commit id."""
    env = _private_git_env(private)
    git = [*_GIT, "--git-dir", str(private), "--work-tree", str(work)]
    if initial:
        run_git([*_GIT, "init", "-q", "--bare", str(private)], env=env)
    # What the lab's .gitignore ignores (caches a run leaves) never becomes the patch.
    run_git([*git, "add", "-A"], cwd=work, env=env)
    proc = run_git([*git, "commit", "-q", "--allow-empty", "--no-verify", "-m", "snapshot"],
                   cwd=work, env=env)
    if proc.returncode != 0:
        raise AutoLabError(f"cannot record the agent's worktree: {proc.stderr.strip()}")
    return run_git([*git, "rev-parse", "HEAD"], cwd=work, env=env).stdout.strip()


def _diff(private: Path, work: Path, base: str, config: LabConfig
          ) -> tuple[str, list[str]]:
    """The agent's changes as a patch, and the paths left out of it (:func:`_left_out`)."""
    after = _snapshot(private, work)
    git = [*_GIT, "--git-dir", str(private)]
    env = _private_git_env(private)
    listed = run_git([*git, "diff", "--name-status", "--no-renames", "-z", base, after],
                     env=env)
    if listed.returncode != 0:
        raise AutoLabError(f"cannot read the agent's changes: {listed.stderr.strip()}")
    fields = listed.stdout.split("\0")
    changes = list(zip(fields[0::2], fields[1::2], strict=False))
    dropped = [path for status, path in changes if _left_out(status, path, config)]
    kept = [path for _, path in changes if path and path not in dropped]
    if not kept:
        return "", dropped
    proc = run_git([*git, "diff", "--binary", "--no-renames", "--no-ext-diff",
                    "--no-textconv", base, after, "--",
                    *(f":(literal){path}" for path in kept)], env=env)
    if proc.returncode != 0:
        raise AutoLabError(f"cannot read the agent's changes: {proc.stderr.strip()}")
    return proc.stdout, dropped
