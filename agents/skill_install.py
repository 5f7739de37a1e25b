"""Agent skills: the ``SKILL.md`` files that teach a coding agent the AutoLab protocol,
and where each agent looks for a project's skills (``autolab skill``).

The skills ship as package data in ``skills/<name>/SKILL.md`` beside this module: one
for the protocol (``autolab``: the loop, the commands, the rules) and one per role
(``autolab-planner``, ``autolab-worker``...). Each is a directory named like its
front matter's ``name``, as the Agent Skills format that all four agents read asks.
Only ``autolab skill`` imports it, and it imports nothing heavy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from autolab.protocol.errors import AutoLabError, shown

PROTOCOL = "autolab"
ROLES = ("planner", "worker", "reviewer", "researcher", "reporter")
SKILL_FILE = "SKILL.md"

# Where each coding agent finds a project's skills: <project>/<directory>/<name>/SKILL.md.
PROJECT_DIRS = {
    # Claude Code, "Extend Claude with skills" (code.claude.com/docs/en/skills), "Where
    # skills live": a project's skills are .claude/skills/<skill-name>/SKILL.md.
    "claude": ".claude/skills",
    # Codex, "Agent Skills" (developers.openai.com/codex/skills), "Where to save skills":
    # REPO scope is .agents/skills in every directory from the working directory up to
    # the repository root (Codex releases before it read .codex/skills instead).
    "codex": ".agents/skills",
    # OpenCode, "Agent Skills" (opencode.ai/docs/skills), "Place files": project config
    # .opencode/skills/<name>/SKILL.md, the name matching its directory
    # (packages/opencode/src/skill/skill.ts globs {skill,skills}/**/SKILL.md there).
    "opencode": ".opencode/skills",
    # Gemini CLI, "Agent Skills" (geminicli.com/docs/cli/skills, docs/cli/skills.md of
    # google-gemini/gemini-cli), "Skill Discovery Tiers": workspace skills are in
    # .gemini/skills/ (.agents/skills/ is read as an alias).
    "gemini": ".gemini/skills",
}


def skill_name(role: str | None = None) -> str:
    """The skill's name: ``autolab``, or ``autolab-<role>`` for a role."""
    if role is None:
        return PROTOCOL
    if role not in ROLES:
        raise AutoLabError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    return f"{PROTOCOL}-{role}"


def skill_names() -> tuple[str, ...]:
    """Every shipped skill: the protocol's, then one per role."""
    return (PROTOCOL, *(skill_name(role) for role in ROLES))


def skill_text(role: str | None = None) -> str:
    """The ``SKILL.md`` of the protocol, or of ``role``, as shipped."""
    return _shipped(skill_name(role))


def _shipped(name: str) -> str:
    from importlib import resources

    source = resources.files("autolab.agents") / "skills" / name / SKILL_FILE
    return source.read_text(encoding="utf-8")


@dataclass(frozen=True)
class Installed:
    """One skill file of :func:`install`: where, and what happened to it."""

    name: str
    path: Path
    status: str  # "written", "unchanged" or "replaced"


def install(agent: str, directory: Path, *, force: bool = False) -> list[Installed]:
    """Write every skill where ``agent`` looks for the skills of the project
    ``directory`` (a checkout of the lab).

    A file already holding the same text is left as it is, so installing twice is a
    no-op. Every file is checked before any is written: a file that differs is
    replaced only with ``force``; without it nothing is written.

    Raises:
        AutoLabError: ``directory`` is not a directory, a skill file differs from the
            shipped one (without ``force``), or a file cannot be written.
    """
    if agent not in PROJECT_DIRS:
        raise AutoLabError(f"unknown agent {agent!r}; choose one of {', '.join(PROJECT_DIRS)}")
    if not directory.is_dir():
        what = "not a directory" if directory.exists() else "no such directory"
        raise AutoLabError(f"--dir {shown(str(directory))}: {what}")
    root = directory / PROJECT_DIRS[agent]
    plan: list[tuple[str, Path, str, str]] = []
    for name in skill_names():
        path = root / name / SKILL_FILE
        text = _shipped(name)
        status = _status(path, text)
        if status == "replaced" and not force:
            raise AutoLabError(f"{shown(str(path))} exists and differs from autolab's skill; "
                               "pass --force to replace it")
        plan.append((name, path, text, status))
    for _name, path, text, status in plan:
        if status != "unchanged":
            _write(path, text)
    return [Installed(name, path, status) for name, path, _text, status in plan]


def _status(path: Path, text: str) -> str:
    """What installing ``text`` at ``path`` does: written (new), unchanged, replaced."""
    try:
        current = path.read_bytes()
    except FileNotFoundError:
        return "written"
    except IsADirectoryError:
        raise AutoLabError(f"{shown(str(path))} is a directory, not a file") from None
    except OSError as exc:
        raise AutoLabError(f"{shown(str(path))}: cannot read ({exc.strerror})") from None
    return "unchanged" if current == text.encode("utf-8") else "replaced"


def _write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole (a temporary file renamed over it)."""
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{SKILL_FILE}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(text.encode("utf-8"))
            os.chmod(tmp, 0o666 & ~_umask())  # as open() would create it
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise AutoLabError(f"{shown(str(path))}: cannot write ({exc.strerror})") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
