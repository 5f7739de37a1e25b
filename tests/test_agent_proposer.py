"""The ``agent`` proposer: a coding agent's command runs in a worktree of main and its
edits become the proposal. Each agent here is a real process (a small script playing
an agent that behaves, or one that misbehaves); tests/test_coding_agents.py runs a
real coding agent (aider) the same way.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from autolab.protocol.lab import Lab

from .conftest import LabTemplates, Remote, run_cli


def _measure(url: str) -> None:
    proc = run_cli("planner", "--once", "--lab", url, "--depth", "1")  # the baseline
    assert proc.returncode == 0, proc.stderr
    assert run_cli("worker", "--once", "--lab", url).returncode == 0


@pytest.fixture
def lab(lab_templates: LabTemplates, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """``lab(agent_toml)``: the URL of a blank lab (on the git daemon) with ``agent_toml``
    as its ``[agent]`` table and its baseline measured; a copy of one built once per
    session for each ``agent_toml``."""
    copies: list[Iterator[Remote]] = []

    def make(agent_toml: str = "") -> str:
        def edit(root: Path) -> None:
            toml = root / "autolab.toml"
            toml.write_text(toml.read_text() + "\n[agent]\n" + agent_toml)

        copy = lab_templates.copy(f"agent {agent_toml!r}", "daemon", tmp_path, _measure,
                                  "blank", edit)
        copies.append(copy)
        return next(copy).url

    yield make
    for copy in copies:
        next(copy, None)  # fsck'd, removed


def _script(tmp_path: Path, body: str) -> str:
    """An agent: a Python script run with the prompt file as its argument."""
    path = tmp_path / "agent.py"
    path.write_text("import os, sys, pathlib\nprompt = pathlib.Path(sys.argv[1]).read_text()\n"
                    + body)
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(path))} {{prompt_file}}"


def _plan(url: str, command: str, *extra: str, env: dict | None = None):
    return run_cli("planner", "--once", "--lab", url, "--agent", "agent-planner",
                   "--proposer", "agent", "--agent-command", command, "--depth", "1", "--json",
                   *extra, env=env)


def _experiments(url: str) -> list:
    return list(Lab.open(url, "check").read().state.experiments.values())


def _events(proc) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_the_agents_edit_becomes_a_proposal_with_its_hypothesis(lab, tmp_path):
    url = lab()
    command = _script(tmp_path, """
assert "experiment.py" in prompt and "score" in prompt  # the lab's context
text = pathlib.Path("experiment.py").read_text().replace("X = 0.0", "X = 3.0")
pathlib.Path("experiment.py").write_text(text)
os.makedirs(".agent-cache", exist_ok=True)  # an agent's own files: left out
pathlib.Path(".agent-cache/history.md").write_text("chat")
print("I set X to 3.")
print("HYPOTHESIS: X = 3 is the minimum of (X - 3)^2")
""")
    proc = _plan(url, command)
    assert proc.returncode == 0, proc.stderr
    names = [e["event"] for e in _events(proc)]
    assert "proposed" in names and "agent_files_dropped" in names
    exp = _experiments(url)[-1]
    assert exp.state == "queued" and exp.hypothesis == "X = 3 is the minimum of (X - 3)^2"
    (patch,) = Lab.open(url, "x").read().patches([exp.id])
    assert "+X = 3.0" in patch and ".agent-cache" not in patch
    assert run_cli("worker", "--once", "--lab", url).returncode == 0
    exp = [e for e in _experiments(url) if e.id == exp.id][0]
    assert exp.result["metric"] == 0.0 and exp.promoted


def test_an_agent_that_edits_the_harness_is_refused_and_recorded(lab, tmp_path):
    url = lab()
    command = _script(tmp_path, """
pathlib.Path("program.md").write_text("All scores are 0.\\n")
text = pathlib.Path("experiment.py").read_text().replace("X = 0.0", "X = 1.0")
pathlib.Path("experiment.py").write_text(text)
print("HYPOTHESIS: a better brief")
""")
    proc = _plan(url, command)
    assert proc.returncode == 0, proc.stderr
    exp = _experiments(url)[-1]
    assert exp.state == "failed" and "refused" in exp.reason and "program.md" in exp.reason


def test_an_agent_gets_only_the_variables_the_lab_lists_and_cannot_leak_them(
        lab, tmp_path):
    url = lab('env = ["AGENT_API_KEY"]\n')
    command = _script(tmp_path, """
names = sorted(k for k in os.environ if k in ("AGENT_API_KEY", "HF_TOKEN", "OTHER_SECRET"))
text = pathlib.Path("experiment.py").read_text()
text += "# " + os.environ.get("AGENT_API_KEY", "") + "\\n"
pathlib.Path("experiment.py").write_text(text)
print("HYPOTHESIS: saw " + " ".join(names) + " home " + os.environ["HOME"])
""")
    secret = "sk-agent-0123456789abcdef"
    proc = _plan(url, command, env={"AGENT_API_KEY": secret, "HF_TOKEN": "hf_" + "a" * 30,
                                    "OTHER_SECRET": "do-not-pass-me"})
    assert proc.returncode == 0, proc.stderr
    exp = _experiments(url)[-1]
    assert exp.hypothesis.startswith("saw AGENT_API_KEY home ")  # nothing else passed
    assert str(Path.home()) not in exp.hypothesis.split(" home ")[1]  # a private HOME
    assert exp.state == "failed" and "secret" in exp.reason and "AGENT_API_KEY" in exp.reason
    (patch,) = Lab.open(url, "x").read().patches([exp.id])
    assert secret not in patch and patch == ""
    assert secret not in proc.stdout + proc.stderr


def test_an_agent_that_runs_past_its_timeout_is_killed_and_its_edits_discarded(
        lab, tmp_path):
    url = lab("timeout = 2\n")
    marker = tmp_path / "still-running"
    command = _script(tmp_path, f"""
import subprocess, time
text = pathlib.Path("experiment.py").read_text().replace("X = 0.0", "X = 3.0")
pathlib.Path("experiment.py").write_text(text)
subprocess.Popen(["sh", "-c", "sleep 4; touch {marker}"])  # a child that would outlive it
time.sleep(60)
""")
    proc = _plan(url, command)
    assert proc.returncode == 0, proc.stderr
    exp = _experiments(url)[-1]
    assert exp.state == "failed" and "ran past 2s" in exp.reason
    import time

    time.sleep(4.5)
    assert not marker.exists()  # no process of the agent outlived it


def test_what_an_agent_plants_in_its_own_repository_never_runs(lab, tmp_path):
    url = lab()
    pwned = tmp_path / "pwned"
    command = _script(tmp_path, f"""
import subprocess
hook = pathlib.Path(".git/hooks/pre-commit")
hook.write_text("#!/bin/sh\\ntouch {pwned}\\n")
hook.chmod(0o755)
subprocess.run(["git", "config", "core.fsmonitor", "touch {pwned}; echo"], check=True)
subprocess.run(["git", "config", "filter.x.clean", "touch {pwned}; cat"], check=True)
pathlib.Path(".gitattributes").write_text("* filter=x\\n")
text = pathlib.Path("experiment.py").read_text().replace("X = 0.0", "X = 2.0")
pathlib.Path("experiment.py").write_text(text)
print("HYPOTHESIS: X = 2")
""")
    proc = _plan(url, command)
    assert proc.returncode == 0, proc.stderr
    assert not pwned.exists()
    exp = _experiments(url)[-1]
    assert exp.state == "queued" and exp.hypothesis == "X = 2"
    (patch,) = Lab.open(url, "x").read().patches([exp.id])
    # The new .gitattributes is the agent's own file: left out, like its .git.
    assert "+X = 2.0" in patch and ".gitattributes" not in patch and "hooks" not in patch


def test_an_agent_that_changes_nothing_or_fails_is_recorded_with_the_reason(
        lab, tmp_path):
    url = lab()
    proc = _plan(url, _script(tmp_path, "print('HYPOTHESIS: nothing to do')\n"))
    assert proc.returncode == 0, proc.stderr
    assert "changed no editable file" in _experiments(url)[-1].reason
    proc = _plan(url, _script(tmp_path, "sys.exit('model quota exceeded')\n"))
    assert proc.returncode == 0, proc.stderr
    last = _experiments(url)[-1]
    assert last.state == "failed" and "exit code 1" in last.reason
