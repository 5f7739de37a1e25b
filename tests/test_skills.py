"""The SKILL.md files that teach coding agents the protocol: every command and flag they
quote exists in the CLI, their loops work as written against a real lab, and
``autolab skill install`` puts them where each agent looks."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest
import typer.main
import yaml

from autolab.agents.cli import app as cli_app
from autolab.agents.skill_install import ROLES, skill_names, skill_text
from autolab.protocol.config import parse_config
from autolab.protocol.lab import Lab
from autolab.protocol.patches import matches

from .conftest import REPO, run_cli
from .test_manual_flow import _bash

SHIPPED = REPO / "agents" / "skills"
COPIES = [REPO / "docs" / "SKILL.md", *sorted((REPO / "repo_template").glob("*/SKILL.md"))]
EVERY_SKILL = [*sorted(SHIPPED.glob("*/SKILL.md")), *COPIES]

cli_app._register()
ROOT = typer.main.get_command(cli_app.app)
HELP = ("-h", "--help")


def _code(text: str) -> list[str]:
    """The lines of a Markdown text's fenced code blocks, and its inline code spans."""
    fence = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
    lines = [line for block in fence.findall(text) for line in block.splitlines()]
    return lines + re.findall(r"`([^`\n]+)`", fence.sub("", text))


def autolab_commands(text: str) -> list[list[str]]:
    """Every ``autolab ...`` invocation in a Markdown text's code, as argv after
    ``autolab`` (shell words; comments, redirections and pipes end a command)."""
    found = []
    for piece in _code(text):
        lexer = shlex.shlex(piece, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
        for start, word in enumerate(words):
            if word != "autolab":
                continue
            argv = []
            for arg in words[start + 1:]:
                if arg and set(arg) <= set(";&|()<>"):
                    break
                argv.append(arg)
            if argv:
                found.append(argv)
    return found


def _options(command) -> dict:  # noqa: ANN001
    return {name: p for p in command.params if p.param_type_name == "option"
            for name in (*p.opts, *p.secondary_opts)}


def _every_option() -> set[str]:
    names: set[str] = set(HELP)
    todo = [ROOT]
    while todo:
        command = todo.pop()
        names |= set(_options(command))
        todo += list(getattr(command, "commands", {}).values())
    return names


def cli_problems(argv: list[str]) -> list[str]:
    """What the CLI would refuse in ``autolab ARGV``: an unknown command or flag, a flag
    without its value, a value that is not one of the flag's choices. Placeholders
    (``ID``, ``NAME=VALUE``, ``$X``) pass as values; arguments are not counted."""
    command, path, i = ROOT, ["autolab"], 0
    while hasattr(command, "commands") and i < len(argv) and argv[i] not in HELP:
        if argv[i] not in command.commands:
            return [f"no command `{' '.join([*path, argv[i]])}`"]
        command = command.commands[argv[i]]
        path.append(argv[i])
        i += 1
    if hasattr(command, "commands") and not set(argv[i:]) & set(HELP):
        return [f"`{' '.join(path)}` needs a subcommand"]
    options, problems = _options(command), []
    while i < len(argv):
        token = argv[i]
        i += 1
        if token == "--":
            break
        if not token.startswith("-") or token == "-" or token in HELP:
            continue
        name, eq, value = token.partition("=")
        option = options.get(name)
        if option is None:
            problems.append(f"`{' '.join(path)}` has no option {name}")
            continue
        if option.is_flag or option.count:
            continue
        if not eq:
            if i == len(argv):
                problems.append(f"`{' '.join(path)} {name}` needs a value")
                continue
            value, i = argv[i], i + 1
        choices = getattr(option.type, "choices", None)
        placeholder = value.startswith("$") or value.upper() == value
        if choices and not placeholder and value not in [str(c) for c in choices]:
            problems.append(f"`{' '.join(path)} {name}`: {value!r} is not one of {choices}")
    return problems


def test_the_checker_refuses_what_the_cli_refuses():
    assert cli_problems(["claim", "--json", "--worktree", "run1"]) == []
    assert cli_problems(["skill", "install", "--for", "claude", "--dir", "."]) == []
    assert cli_problems(["submit", "--worktree", "DIR", "--log", "F", "--status", "crash"]) == []
    assert cli_problems(["claim", "--bogus"]) == ["`autolab claim` has no option --bogus"]
    assert cli_problems(["review", "pr"]) == ["no command `autolab review pr`"]
    assert cli_problems(["bogus"]) == ["no command `autolab bogus`"]
    assert cli_problems(["schedule"]) == ["`autolab schedule` needs a subcommand"]
    assert cli_problems(["submit", "--status", "great"])
    assert cli_problems(["skill", "install", "--for", "vim"])
    assert cli_problems(["propose", "--hypothesis"])
    commands = autolab_commands("run `autolab show ID --json`, then\n```bash\n"
                                "x=$(autolab claim --json) && autolab sql 'SELECT 1' # autolab no\n"
                                "```\nnot `autolab.toml` nor `autolab`")
    assert commands == [["claim", "--json"], ["sql", "SELECT 1"], ["show", "ID", "--json"]]


@pytest.mark.parametrize("skill", EVERY_SKILL, ids=lambda p: str(p.relative_to(REPO)))
def test_every_command_and_flag_a_skill_quotes_exists(skill):
    text = skill.read_text()
    commands = autolab_commands(text)
    assert len(commands) >= 3, commands
    for argv in commands:
        assert cli_problems(argv) == [], argv
    # A flag quoted on its own (`--status crash`, "(or `--loop`)") is some command's.
    known = _every_option()
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))
    assert flags and flags <= known, flags - known
    for flag, value in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*) ([a-z][\w-]*)", text):
        for command in _commands_with(flag):
            choices = getattr(_options(command)[flag].type, "choices", None)
            assert not choices or value in choices, (flag, value, choices)


def _commands_with(flag: str) -> list:
    found, todo = [], [ROOT]
    while todo:
        command = todo.pop()
        if flag in _options(command):
            found.append(command)
        todo += list(getattr(command, "commands", {}).values())
    return found


def test_the_choices_the_cli_names_are_the_skills_module_s():
    from autolab.agents.cli import cmd_skill
    from autolab.agents.skill_install import PROJECT_DIRS

    assert tuple(PROJECT_DIRS) == cmd_skill.AGENTS and ROLES == cmd_skill.ROLES


def test_the_protocol_skill_quotes_the_loop_and_each_role_its_commands():
    verbs = {argv[0] for argv in autolab_commands(skill_text())}
    assert {"propose", "claim", "submit", "promote", "status", "sql"} <= verbs
    for role in ROLES:
        assert autolab_commands(skill_text(role)), role


@pytest.mark.parametrize("name", skill_names())
def test_each_skill_has_the_front_matter_agents_require(name):
    text = (SHIPPED / name / "SKILL.md").read_text()
    head, sep, body = text.removeprefix("---\n").partition("\n---\n")
    assert text.startswith("---\n") and sep and body.strip(), name
    meta = yaml.safe_load(head)
    # Agent Skills: name = the directory, [a-z0-9] words joined by single hyphens, at most
    # 64 characters; description 1 to 1024 characters; nothing else needed.
    assert set(meta) == {"name", "description"}
    assert meta["name"] == name and len(name) <= 64
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name)
    assert isinstance(meta["description"], str) and 1 <= len(meta["description"]) <= 1024
    assert "Use when" in meta["description"] or "Use in" in meta["description"]
    assert sorted(p.name for p in SHIPPED.iterdir() if p.is_dir()) == sorted(skill_names())


def test_the_templates_and_docs_carry_the_shipped_skill_and_protect_it():
    shipped = skill_text()
    templates = sorted(p for p in (REPO / "repo_template").iterdir()
                       if (p / "autolab.toml").is_file())
    assert [p.parent for p in COPIES[1:]] == templates
    for copy in COPIES:
        assert copy.read_text() == shipped, (
            f"{copy.relative_to(REPO)} differs: copy agents/skills/autolab/SKILL.md there")
    for template in templates:
        config = parse_config((template / "autolab.toml").read_text())
        assert matches("SKILL.md", config.all_protected), template.name


def test_the_skill_loops_work_as_written(tmp_path):
    """The protocol skill's loop, then the worker skill's, run verbatim against a blank
    lab; then every read command the skills quote, against that lab."""
    loop = re.search(r"^## The loop\n.*?^```bash\n(.*?)^```", skill_text(), re.S | re.M)
    worker = re.search(r"^```bash\n(.*?)^```", skill_text("worker"), re.S | re.M)
    assert loop and worker
    lab_url = str(tmp_path / "mylab.git")
    env = f"export AUTOLAB_LAB={shlex.quote(lab_url)} AUTOLAB_AGENT=me\n"
    proc = _bash(f"autolab init mylab.git --template blank --bare\n{env}{loop[1]}", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (tmp_path / "w").mkdir()
    run_cli("propose", "--lab", lab_url, "--hypothesis", "X at 2.9", "--set", "X=2.9",
            check=True)
    proc = _bash(env + worker[1], tmp_path / "w")
    assert proc.returncode == 0, proc.stdout + proc.stderr

    view = Lab.open(lab_url, "check").read()
    done = view.state.experiments
    assert [(e.id, e.state, e.promoted, e.result["metric"]) for e in done.values()] == [
        ("0001", "done", True, 0.25), ("0002", "done", True, pytest.approx(0.01))]
    assert done["0001"].result["agent"] == "me" and done["0001"].result["branch_commit"]
    assert "X = 2.9" in view.store.read_file(view.main, "experiment.py").decode()

    reads = {shlex.join(argv).replace("ID", "0001") for skill in EVERY_SKILL
             for argv in autolab_commands(skill.read_text())
             if argv[0] in ("status", "leaderboard", "lineage", "sql", "show", "doctor")}
    assert len(reads) >= 5, reads
    env = {**os.environ, "AUTOLAB_LAB": lab_url}
    running = {line: subprocess.Popen([sys.executable, "-m", "autolab.agents.cli",
                                       *shlex.split(line)], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for line in sorted(reads)}  # at once: each only reads
    for line, child in running.items():
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, (line, err)
        if "--json" in line:
            json.loads(out)


# Where each agent reads a project's skills, from its documentation (see PROJECT_DIRS).
WHERE = {"claude": ".claude/skills", "codex": ".agents/skills",
         "opencode": ".opencode/skills", "gemini": ".gemini/skills"}


@pytest.mark.parametrize("agent", list(WHERE))
def test_install_puts_every_skill_where_the_agent_looks(tmp_path, agent):
    proc = run_cli("skill", "install", "--for", agent, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [f["status"] for f in report["files"]] == ["written"] * len(skill_names())
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")
                     if p.is_file())
    assert written == sorted(f"{WHERE[agent]}/{name}/SKILL.md" for name in skill_names())
    assert (tmp_path / WHERE[agent] / "autolab" / "SKILL.md").read_text() == skill_text()
    for role in ROLES:
        path = tmp_path / WHERE[agent] / f"autolab-{role}" / "SKILL.md"
        assert path.read_text() == skill_text(role)


def test_install_is_idempotent_and_overwrites_a_different_file_only_with_force(tmp_path):
    lab = tmp_path / "lab"
    lab.mkdir()
    first = run_cli("skill", "install", "--for", "claude", "--dir", str(lab))
    assert first.returncode == 0, first.stderr
    skills = lab / ".claude" / "skills"
    again = run_cli("skill", "install", "--for", "claude", "--dir", str(lab), "--json")
    assert again.returncode == 0 and again.stderr == ""
    assert {f["status"] for f in json.loads(again.stdout)["files"]} == {"unchanged"}

    (skills / "autolab-worker" / "SKILL.md").write_text("my own notes\n")
    (skills / "autolab" / "SKILL.md").unlink()
    refused = run_cli("skill", "install", "--for", "claude", "--dir", str(lab))
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "--force" in refused.stderr
    assert "autolab-worker/SKILL.md exists and differs" in refused.stderr
    assert not (skills / "autolab" / "SKILL.md").exists()  # nothing written
    assert (skills / "autolab-worker" / "SKILL.md").read_text() == "my own notes\n"

    forced = run_cli("skill", "install", "--for", "claude", "--dir", str(lab), "--force")
    assert forced.returncode == 0, forced.stderr
    assert f"replaced: {skills / 'autolab-worker' / 'SKILL.md'}" in forced.stdout
    assert f"written: {skills / 'autolab' / 'SKILL.md'}" in forced.stdout
    assert (skills / "autolab-worker" / "SKILL.md").read_text() == skill_text("worker")

    missing = run_cli("skill", "install", "--for", "codex", "--dir", str(tmp_path / "no"))
    assert missing.returncode == 1 and "no such directory" in missing.stderr
    bad = run_cli("skill", "install", "--for", "vim", cwd=tmp_path)
    assert bad.returncode == 2 and "'claude', 'codex', 'opencode', 'gemini'" in bad.stderr


def test_skill_show_prints_the_skills_and_starts_without_heavy_libraries():
    assert run_cli("skill", "show").stdout == skill_text()
    assert run_cli("skill", "show", "--role", "reviewer").stdout == skill_text("reviewer")
    assert run_cli("skill", "show", "--role", "boss").returncode == 2
    script = ("import sys\nfrom autolab.agents.cli.app import main\n"
              "try:\n    main(['skill', 'show', '--role', 'worker'])\n"
              "except SystemExit:\n    pass\n"
              "print('LOADED', [m for m in ('pyarrow', 'duckdb', 'pygit2', 'torch') "
              "if m in sys.modules])\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.endswith("LOADED []\n"), proc.stdout[-300:] + proc.stderr
    assert proc.stdout.startswith("---\nname: autolab-worker\n")
