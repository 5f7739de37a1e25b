"""Packaging: the wheel carries every package and template file, under ``autolab`` only;
one version everywhere.

The install itself (a fresh virtual environment, the wheel installed without
``-e``, the demo and the hf-jobs contract run against it) is in ``.ci/run``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import autolab

from .conftest import REPO, run_cli

# Repository directory -> where its files land in the wheel (DESIGN.md §2).
LAYOUT = {"package": "autolab", "protocol": "autolab/protocol", "agents": "autolab/agents",
          "scoreboard": "autolab/scoreboard", "repo_template": "autolab/templates"}
CACHES = {"__pycache__", ".data"}


def _checkout_copy(dest: Path) -> Path:
    """The files a clean checkout of this working tree has (tracked and new, not the
    ignored ones: no venv, no stale ``build/``), copied to ``dest``."""
    if (REPO / ".git").exists():
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                                 "--exclude-standard"], cwd=REPO, capture_output=True,
                                check=True).stdout.decode().split("\0")
        for name in filter(None, listed):
            src = REPO / name
            if src.is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name)
    else:
        shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(
            ".venv", "build", "dist", "*.egg-info", *CACHES, "*.pyc"), dirs_exist_ok=True)
    return dest


def _build_wheel(source: Path, out: Path) -> Path:
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                           "--no-build-isolation", "--no-index", "-w", str(out), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (wheel,) = out.glob("autolab-*.whl")
    return wheel


def _expected(source: Path) -> set[str]:
    """Every file the wheel must hold: each Python file of a directory holding an
    ``__init__.py`` (a package) and every other file below one, and every file of
    the templates, hidden ones included."""
    want: set[str] = set()
    for directory, target in LAYOUT.items():
        top = source / directory
        for path in top.rglob("*"):
            rel = path.relative_to(top)
            if not path.is_file() or CACHES & set(rel.parts) or path.suffix == ".pyc":
                continue
            want.add(f"{target}/{rel.as_posix()}")
    return want


@pytest.mark.slow
def test_wheel_carries_every_subpackage_and_template_file_even_new_ones(tmp_path):
    source = _checkout_copy(tmp_path / "src")
    # What the next contributor adds: a subpackage two levels down with a data file,
    # a template file in a hidden directory. None of them may need a packaging edit.
    new_pkg = source / "agents" / "proposers" / "extra"
    new_pkg.mkdir(parents=True)
    (new_pkg / "__init__.py").write_text('"""A new subpackage."""\n')
    (new_pkg / "prompts").mkdir()
    (new_pkg / "prompts" / "system.txt").write_text("be brief\n")
    (source / "scoreboard" / "sub").mkdir()
    (source / "scoreboard" / "sub" / "__init__.py").write_text("")
    (source / "repo_template" / "blank" / ".config").mkdir()
    (source / "repo_template" / "blank" / ".config" / "settings.toml").write_text("a = 1\n")

    wheel = _build_wheel(source, tmp_path / "dist")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
        entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt")))
    files = {n for n in names if ".dist-info/" not in n}

    missing = _expected(source) - files
    assert not missing, f"not in the wheel: {sorted(missing)}"
    # Nothing under a generic top-level name (agents, protocol...), no caches.
    assert {n.split("/")[0] for n in files} == {"autolab"}, sorted(files)
    assert not [n for n in files if "__pycache__" in n or n.endswith(".pyc")]
    assert "autolab/agents/proposers/extra/prompts/system.txt" in files
    assert "autolab/templates/blank/.config/settings.toml" in files

    version = re.search(r'__version__ = "([^"]+)"',
                        (source / "package" / "__init__.py").read_text()).group(1)
    assert wheel.name.startswith(f"autolab-{version}-")
    assert f"\nVersion: {version}\n" in metadata.decode()
    assert b"autolab = autolab.agents.cli.app:main" in entry_points
    # The lean core: what only some commands need is an extra, never a requirement.
    core = [line for line in metadata.decode().splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line]
    for heavy in ("torch", "matplotlib", "trackio", "numpy", "gitpython"):
        assert not [line for line in core if heavy in line.lower()], core
    for extra in ("train", "report", "trackio", "all", "dev"):
        assert f"Provides-Extra: {extra}\n" in metadata.decode()


def test_version_flag_prints_the_package_version():
    proc = run_cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"autolab {autolab.__version__}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", autolab.__version__)
