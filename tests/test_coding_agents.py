"""A real coding agent, not a fake: aider (``aider-chat`` from PyPI, installed by the
test) does research through AutoLab on ``tiny-lm``, talking to a local stand-in of an
OpenAI-compatible model API (tests/hub_contract/chat_server.py) that answers with a
scripted edit in aider's own SEARCH/REPLACE format.

Two routes: aider as the planner's ``agent`` proposer, and aider driven by an outside
loop through the CLI's open primitives (``claim --worktree`` -> aider -> run ->
``submit --worktree``) on an open experiment. Both end with a scored experiment.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from filelock import FileLock

from autolab.agents.lab_init import init_lab
from autolab.protocol.lab import Lab

from .conftest import run_cli
from .hub_contract.chat_server import ChatServer, Reply

AIDER = "aider-chat==0.86.2"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def aider() -> Path:
    """aider's executable, installed once into a venv kept between runs."""
    root = Path(os.environ.get("AUTOLAB_TEST_TOOLS")
                or Path.home() / ".cache" / "autolab-tests") / AIDER.replace("==", "-")
    root.parent.mkdir(parents=True, exist_ok=True)
    exe = root / "bin" / "aider"
    with FileLock(str(root) + ".lock"):
        if not exe.exists():
            venv.create(root, with_pip=True)
            proc = subprocess.run([str(root / "bin" / "python"), "-m", "pip", "install", "-q",
                                   AIDER], capture_output=True, text=True, timeout=1200)
            assert proc.returncode == 0, f"cannot install {AIDER}:\n{proc.stderr[-3000:]}"
    return exe


def _command(aider: Path, server: ChatServer, *files: str) -> str:
    words = [str(aider), "--model", "openai/scripted", "--openai-api-base", server.base_url,
             "--edit-format", "diff", "--yes-always", "--no-auto-commits",
             "--no-check-update", "--no-analytics", "--no-show-model-warnings", "--no-pretty",
             "--no-stream", "--map-tokens", "0", "--message-file", "{prompt_file}", *files]
    return shlex.join(words).replace("'{prompt_file}'", "{prompt_file}")


def _edit(old: str, new: str, hypothesis: str) -> str:
    """A model's answer in aider's SEARCH/REPLACE format."""
    return (f"I will change one line of train.py.\n\ntrain.py\n```python\n<<<<<<< SEARCH\n"
            f"{old}\n=======\n{new}\n>>>>>>> REPLACE\n```\n\nHYPOTHESIS: {hypothesis}\n")


def _lab(tmp_path: Path, git_daemon, agent_toml: str) -> str:
    def edit(root: Path) -> None:
        toml = root / "autolab.toml"
        text = re.sub(r'(?m)^AUTOLAB_TRAIN_SECONDS\s*=.*$', 'AUTOLAB_TRAIN_SECONDS = "1"',
                      toml.read_text())
        toml.write_text(text + "\n[agent]\n" + agent_toml)

    name = f"aider-{tmp_path.name}.git"
    init_lab(git_daemon.base / name, "tiny-lm", bare=True, edit=edit)
    return git_daemon.url(name)


# The key aider sends (never a real one), and litellm told not to fetch its price list.
AGENT_ENV = {"OPENAI_API_KEY": "sk-local-test-key", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
AGENT_TOML = 'env = ["OPENAI_API_KEY", "LITELLM_LOCAL_MODEL_COST_MAP"]\ntimeout = 240\n'


def test_aider_as_the_planners_agent_proposer_on_tiny_lm(aider, tmp_path, git_daemon):
    answer = _edit("LEARNING_RATE = 2e-3", "LEARNING_RATE = 4e-3",
                   "A larger learning rate makes more progress in a 1 s budget")
    with ChatServer([Reply(answer)]) as server:
        url = _lab(tmp_path, git_daemon, AGENT_TOML)
        assert run_cli("planner", "--once", "--lab", url, "--depth", "1").returncode == 0
        assert run_cli("worker", "--once", "--lab", url).returncode == 0  # the baseline
        proc = run_cli("planner", "--once", "--lab", url, "--proposer", "agent", "--depth", "1",
                       "--agent-command", _command(aider, server, "train.py"), "--json",
                       env=AGENT_ENV)
        assert proc.returncode == 0, proc.stderr + proc.stdout
    # aider asked the model with the lab's prompt (then may summarize its chat history)
    seen = server.answered()[0]
    prompt = json.dumps(seen.messages)
    assert "val_bpb" in prompt and "HYPOTHESIS" in prompt
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    (proposed,) = [e for e in events if e["event"] == "proposed"]
    eid = proposed["experiment_id"]
    view = Lab.open(url, "check").read()
    exp = view.state.experiments[eid]
    assert exp.hypothesis == "A larger learning rate makes more progress in a 1 s budget"
    (patch,) = view.patches([eid])
    assert "+LEARNING_RATE = 4e-3" in patch
    assert ".aider" not in patch and ".gitignore" not in patch  # aider's own: left out
    assert run_cli("worker", "--once", "--lab", url).returncode == 0
    exp = Lab.open(url, "check").read().state.experiments[eid]
    assert exp.state == "done" and exp.result["status"] == "ok" and exp.result["metric"] > 0


def test_aider_through_the_open_primitives_claim_edit_run_submit(aider, tmp_path, git_daemon):
    answer = _edit("N_LAYER = 2", "N_LAYER = 1",
                   "One layer trains more steps within a 1 s budget")
    url = _lab(tmp_path, git_daemon, "")
    eid = json.loads(run_cli("propose", "--open", "--json", "--lab", url, "--hypothesis",
                             "A shallower model trains more steps in the budget",
                             check=True).stdout)["experiment_id"]
    work = tmp_path / "work"
    claim = json.loads(run_cli("claim", "--json", "--worktree", str(work), "--lab", url,
                               "--agent", "outside-agent", check=True).stdout)
    assert claim["experiment_id"] == eid and claim["open"]
    (tmp_path / "task.md").write_text(f"Implement: {claim['hypothesis']}\n")
    with ChatServer([Reply(answer)]) as server:
        words = shlex.split(_command(aider, server, "train.py").replace(
            "{prompt_file}", str(tmp_path / "task.md")))
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **AGENT_ENV}
        proc = subprocess.run(words, cwd=work, env=env, capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "N_LAYER = 1" in (work / "train.py").read_text()
    run = subprocess.run([sys.executable, "train.py"], cwd=work, capture_output=True,
                         text=True, timeout=300,
                         env={**os.environ, "AUTOLAB_TRAIN_SECONDS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    (work / "run.log").write_text(run.stdout)
    proc = run_cli("submit", "--worktree", str(work), "--log", str(work / "run.log"), "--json")
    assert proc.returncode == 0, proc.stderr
    view = Lab.open(url, "check").read()
    exp = view.state.experiments[eid]
    assert exp.state == "done" and exp.result["status"] == "ok"
    branch = view.store.fetch_ref(f"refs/heads/autolab/exp/{eid}")
    assert branch is not None
    assert b"N_LAYER = 1" in view.store.read_file(branch, "train.py")
    assert view.store.read_file(branch, ".aider.chat.history.md") is None  # not editable
