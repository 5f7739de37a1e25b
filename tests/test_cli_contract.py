"""The CLI's conventions (DESIGN.md §7), checked on the real ``autolab`` process: ``-h``
on every command, fixed choices refused as usage errors and listed in ``--help``, one
duration syntax for every time flag, ``--once`` and ``--loop`` exclusive."""

from __future__ import annotations

import json
import re

import pytest
import typer.main

from autolab.agents.cli import app as cli_app
from autolab.agents.cli.cmd_lab import TEMPLATES
from autolab.protocol.durations import parse_duration
from autolab.protocol.lab import Lab

from .conftest import run_cli
from .helpers import propose_x


def _command_paths() -> list[tuple[str, ...]]:
    """Every command and subcommand of the real app."""
    cli_app._register()
    root = typer.main.get_command(cli_app.app)
    paths: list[tuple[str, ...]] = []

    def walk(command, path: tuple[str, ...]) -> None:  # noqa: ANN001
        paths.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))

    walk(root, ())
    return paths


COMMANDS = _command_paths()


def test_every_command_takes_dash_h_as_help():
    from concurrent.futures import ThreadPoolExecutor

    assert ("schedule", "create") in COMMANDS and ("worker",) in COMMANDS
    with ThreadPoolExecutor(4) as pool:  # a few processes at once: each is mostly startup
        short = pool.map(lambda path: run_cli(*path, "-h"), COMMANDS)
        long = pool.map(lambda path: run_cli(*path, "--help"), COMMANDS)
        answers = list(zip(COMMANDS, short, long, strict=True))
    for path, proc, again in answers:
        assert proc.returncode == 0, (path, proc.stderr)
        assert proc.stdout.startswith(f"Usage: {' '.join(('autolab', *path))} "), path
        assert "-h, --help" in proc.stdout, path
        assert again.stdout == proc.stdout, path


# flag, argv with a bad value, choices the help lists
CHOICES = {
    "worker --backend": (["worker", "--backend", "cloud"], ["local", "hf-jobs"]),
    "submit --status": (["submit", "--experiment", "0001", "--attempt", "1",
                         "--metrics-file", "m.json", "--status", "great"],
                        ["ok", "crash", "timeout", "invalid"]),
    "schedule create --role": (["schedule", "create", "--role", "boss", "--every", "10m"],
                               ["planner", "worker", "reporter", "researcher"]),
    "init --template": (["init", "x", "--template", "nope"], list(TEMPLATES)),
    "skill install --for": (["skill", "install", "--for", "vim"],
                            ["claude", "codex", "opencode", "gemini"]),
    "skill show --role": (["skill", "show", "--role", "boss"],
                          ["planner", "worker", "reviewer", "researcher", "reporter"]),
}


@pytest.mark.parametrize("case", list(CHOICES))
def test_a_bad_choice_is_a_usage_error_and_help_lists_the_choices(tmp_path, case):
    argv, choices = CHOICES[case]
    flag = case.split()[-1]
    proc = run_cli(*argv, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("autolab: error: ") and flag in lines[0]
    assert not any(tmp_path.iterdir())  # refused before doing anything
    command = case.split(" --")[0].split()
    text = " ".join(run_cli(*command, "-h").stdout.split())
    assert all(choice in text for choice in choices), text
    assert "|".join(choices) in text  # as the flag's metavar, e.g. <local|hf-jobs>


def test_the_choices_the_cli_names_are_the_ones_the_code_has():
    """The CLI spells some choice lists out (listing them would load pyarrow or the
    templates package at every start): they must stay equal to the real ones."""
    from autolab.agents.cli.cmd_hf import Role
    from autolab.agents.cli.cmd_queue import Status
    from autolab.agents.lab_init import templates
    from autolab.protocol.schemas import SCORE_STATUSES

    assert sorted(TEMPLATES) == templates()
    assert tuple(s.value for s in Status) == SCORE_STATUSES
    assert {r.value for r in Role} == {"planner", "worker", "reporter", "researcher"}


# Every time flag: (argv before the value, the flag)
TIME_FLAGS = {
    "worker --interval": ["worker", "--interval"],
    "planner --interval": ["planner", "--interval"],
    "reporter --interval": ["reporter", "--interval"],
    "researcher --interval": ["researcher", "--interval"],
    "swarm --duration": ["swarm", "--duration"],
    "demo --duration": ["demo", "--duration"],
    "demo --budget": ["demo", "--budget"],
    "demo --minutes": ["demo", "--minutes"],
    "worker --job-timeout": ["worker", "--backend", "hf-jobs", "--job-timeout"],
    "schedule create --job-timeout": ["schedule", "create", "--role", "worker", "--every",
                                      "10m", "--job-timeout"],
    "schedule create --every": ["schedule", "create", "--role", "worker", "--every"],
    "claim --lease": ["claim", "--lease"],
    "submit --runtime": ["submit", "--experiment", "1", "--attempt", "1", "--metrics-file",
                         "m.json", "--runtime"],
}
BAD_DURATIONS = ["5x", "nan", "-1s", "30m1h", "1h1h", "", "1e3", "400d"]
BAD_ON_EVERY_FLAG = ["5x", "-1s", "30m1h", "400d"]


def test_every_time_flag_is_listed_here():
    """A new time flag must join TIME_FLAGS (and so the one syntax): every option that
    takes a duration says DURATION in its help, and every such option is tested."""
    cli_app._register()
    root = typer.main.get_command(cli_app.app)
    found = set()
    for path in COMMANDS:
        command = root
        for name in path:
            command = command.commands[name]
        for param in command.params:
            if "DURATION" in (param.metavar or "") or "MINUTES" in (param.metavar or ""):
                found.add(f"{' '.join(path)} {param.opts[0]}")
    assert found == set(TIME_FLAGS)


@pytest.mark.parametrize("case", list(TIME_FLAGS))
def test_a_bad_duration_is_a_usage_error_naming_the_flag(tmp_path, case):
    flag = case.split()[-1]
    for bad in BAD_ON_EVERY_FLAG:
        proc = run_cli(*TIME_FLAGS[case], bad, cwd=tmp_path,
                       env={"AUTOLAB_LAB": str(tmp_path / "none.git")})
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (bad, proc.stderr)
        assert len(lines) == 1 and flag in lines[0], (bad, lines)
    assert not any(tmp_path.iterdir())


def _started(proc) -> dict:  # noqa: ANN001
    assert proc.returncode in (0, 3), proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    return next(e for e in events if e["event"] == "started")


@pytest.mark.parametrize("text", ["90", "1m30s", "0.025h"])
def test_a_duration_means_the_same_on_every_flag(daemon_remote, tmp_path, text):
    """One parser: the seconds each flag ends up with, as the commands report them."""
    seconds = parse_duration(text)
    assert seconds == 90
    from concurrent.futures import ThreadPoolExecutor

    url = daemon_remote.url
    roles = ("planner", "reporter", "worker")
    with ThreadPoolExecutor(len(roles)) as pool:  # independent: all three at once
        procs = pool.map(lambda role: run_cli(
            role, "--once", "--json", "--lab", url, "--interval", text,
            *(["--no-trackio"] if role == "reporter" else [])), roles)
        for role, proc in zip(roles, procs, strict=True):
            assert _started(proc)["interval_s"] == seconds, role
    # submit --runtime is recorded in the score
    lab = Lab.open(url, "me")
    propose_x(lab, 2.0)
    claim = json.loads(run_cli("claim", "--json", "--lab", url, "--agent", "me").stdout)
    (tmp_path / "m.json").write_text('{"score": 1.0}')
    run_cli("submit", "--lab", url, "--agent", "me", "--experiment", claim["experiment_id"],
            "--attempt", str(claim["attempt"]), "--metrics-file", str(tmp_path / "m.json"),
            "--runtime", text, check=True)
    rows = json.loads(run_cli("sql", "--json", "--lab", url,
                              "SELECT runtime_s FROM scores WHERE backend = 'manual'").stdout)
    assert rows == [{"runtime_s": seconds}]


def test_durations_parse_as_documented():
    assert [parse_duration(t) for t in ("30s", "10m", "2h", "1h30m", "1d", "45", "0.5",
                                        " 90S ", "1.5m", "2m30s")] == [
        30, 600, 7200, 5400, 86400, 45, 0.5, 90, 90, 150]
    for bad in BAD_DURATIONS + ["inf", "1 h", "m", "٣s", True]:
        with pytest.raises(ValueError):
            parse_duration(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("role", ["worker", "planner", "reporter", "researcher"])
def test_once_and_loop_together_are_a_usage_error(daemon_remote, role):
    main = daemon_remote.main()
    for extra in ([], ["--json"], ["--backend", "hf-jobs"] if role == "worker" else []):
        proc = run_cli(role, "--once", "--loop", "--lab", daemon_remote.url, *extra)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == "autolab: error: give at most one of --once and --loop"
        assert proc.stdout == ""
    assert daemon_remote.main() == main


def test_click_usage_errors_are_one_line_with_a_pointer_to_help():
    proc = run_cli("claim", "--bogus")
    assert proc.returncode == 2
    assert proc.stderr == ("autolab: error: No such option: --bogus (see `autolab claim -h`)"
                           "\n")
    missing = run_cli("promote")
    assert missing.returncode == 2 and len(missing.stderr.splitlines()) == 1
    assert re.match(r"autolab: error: Missing argument .*\(see `autolab promote -h`\)$",
                    missing.stderr.strip())
