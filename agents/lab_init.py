"""``autolab init``: create a lab repository from a template."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from autolab.protocol.config import parse_config
from autolab.protocol.errors import AutoLabError, UsageError

STATE_README = """# Lab state

Immutable parquet shards, one directory per table (`queue/`, `scores/`, `ideas/`).
Never edit them by hand: agents add new shards through compare-and-swap pushes.
Query them with DuckDB, e.g. `SELECT * FROM read_parquet('.autolab/scores/*.parquet')`,
or with `autolab sql`.
"""


def templates() -> list[str]:
    """Names of the templates shipped with autolab."""
    root = resources.files("autolab.templates")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))


def template_dir(name: str) -> Path:
    """A shipped template by name, or a directory path holding one."""
    if Path(name).is_dir() and (Path(name) / "autolab.toml").is_file():
        return Path(name)
    if name not in templates():
        raise UsageError(f"unknown template {name!r}; choose one of {', '.join(templates())}")
    return Path(str(resources.files("autolab.templates") / name))


def _git(*args: str, cwd: Path) -> None:
    """Run a local git command for ``init``; any failure is one line naming it."""
    from autolab.protocol.errors import TransportError
    from autolab.protocol.git_cli import last_line, run_git, verb

    try:
        proc = run_git(args, cwd=cwd, what=str(cwd))
    except TransportError as exc:  # timed out, or git could not be started: not transport
        raise AutoLabError(str(exc)) from None
    if proc.returncode != 0:
        raise AutoLabError(f"git {verb(args)} failed in {cwd}: {last_line(proc.stderr)}")


def init_lab(path: Path, template: str = "tiny-lm", *, bare: bool = False,
             edit: Callable[[Path], None] | None = None) -> Path:
    """Create a lab at ``path`` from ``template``: one commit on ``main``.

    With ``bare``, ``path`` becomes a bare repository that agents use as the lab's
    remote; otherwise a working repository with ``main`` checked out. ``edit`` may
    change the files before the commit (the demo sets its budget this way).
    """
    source = template_dir(template)
    path = Path(path).resolve()
    if path.exists() and any(path.iterdir()):
        raise AutoLabError(f"{path} exists and is not empty")
    with tempfile.TemporaryDirectory(prefix="autolab-init-") as tmp:
        work = Path(tmp) / "lab" if bare else path
        shutil.copytree(source, work, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", ".data", "*.pyc"))
        if edit is not None:
            edit(work)
        parse_config((work / "autolab.toml").read_text())  # refuse to create a broken lab
        (work / ".autolab").mkdir(exist_ok=True)
        (work / ".autolab" / "README.md").write_text(STATE_README)
        _git("init", "--quiet", "--initial-branch=main", ".", cwd=work)
        _git("add", "-A", cwd=work)
        _git("-c", "user.name=autolab", "-c", "user.email=autolab@localhost", "commit",
             "--quiet", "-m", f"init lab from template {template}", cwd=work)
        if bare:
            path.parent.mkdir(parents=True, exist_ok=True)
            _git("clone", "--quiet", "--bare", str(work), str(path), cwd=Path(tmp))
            _git("remote", "remove", "origin", cwd=path)
    return path
