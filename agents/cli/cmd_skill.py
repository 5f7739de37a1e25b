"""``autolab skill``: the SKILL.md files that teach coding agents the protocol."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from autolab.agents.cli.common import JsonOpt, print_json

# The choices of --for and --role, named here rather than imported: every command pays
# for what this module imports at start-up (a test keeps them equal to
# autolab.agents.skill_install's PROJECT_DIRS and ROLES).
AGENTS = ("claude", "codex", "opencode", "gemini")
ROLES = ("planner", "worker", "reviewer", "researcher", "reporter")
Agent = StrEnum("Agent", {name: name for name in AGENTS})
Role = StrEnum("Role", {name: name for name in ROLES})

skill_app = typer.Typer(
    help="The SKILL.md files that teach a coding agent (Claude Code, Codex, OpenCode, "
    "Gemini CLI) the AutoLab protocol: one for the protocol, one per role.",
    no_args_is_help=True,
)


@skill_app.command("install")
def skill_install(
    agent: Annotated[Agent, typer.Option(
        "--for", help="The coding agent: each looks for a project's skills in its own "
        "directory (.claude/skills, .agents/skills, .opencode/skills, .gemini/skills).",
        show_default=False)],
    directory: Annotated[Path, typer.Option(
        "--dir", help="The project: a checkout of the lab.")] = Path("."),
    force: Annotated[bool, typer.Option(
        "--force", help="Replace skill files that differ from autolab's.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write the protocol's skill and one skill per role where the agent finds them.

    Files already holding the same text are left alone; a file that differs is an
    error (nothing is written) unless --force.
    """
    from autolab.agents.skill_install import install

    done = install(agent.value, directory, force=force)
    if as_json:
        print_json({"agent": agent.value, "dir": str(directory),
                    "files": [{"name": f.name, "path": str(f.path), "status": f.status}
                              for f in done]})
        return
    for item in done:
        typer.echo(f"{item.status}: {item.path}")


@skill_app.command("show")
def skill_show(
    role: Annotated[Role | None, typer.Option(
        help="A role's skill instead of the protocol's.", show_default=False)] = None,
) -> None:
    """Print the protocol's SKILL.md, or a role's."""
    from autolab.agents.skill_install import skill_text

    typer.echo(skill_text(role.value if role else None), nl=False)


def register(app: typer.Typer) -> None:
    app.add_typer(skill_app, name="skill")
