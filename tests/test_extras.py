"""The lean install: the core runs every coordinating command without torch, numpy,
matplotlib or trackio, and a command that needs one of them says which extra to
install, in one line.

The environment is real: a virtual environment that holds this one's packages except
the extras' (their files are simply not there), not an import hook.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autolab.agents.lab_init import init_lab

# The extras' distributions, and what they pull in that the core does not need.
HIDDEN = ("torch", "numpy", "matplotlib", "trackio", "contourpy", "gradio_client")


def _top_level(dist: md.Distribution) -> set[str]:
    """The names ``dist`` installs at the top of site-packages (packages, modules, its
    own ``.dist-info`` and library directories), as its RECORD lists them."""
    names = set()
    for file in dist.files or ():
        part = file.parts[0]
        if part not in ("..", "__pycache__") and not part.endswith(".pth"):
            names.add(part)
    return names


def lean_venv(dest: Path, hide: tuple[str, ...] = HIDDEN) -> Path:
    """A virtual environment with this environment's packages (symlinked), except the
    distributions named in ``hide``; return its python.

    Every ``site-packages`` directory on ``sys.path`` is linked entry by entry (the
    first of a name wins, as on ``sys.path``); ``.pth`` files keep their ``import``
    lines (an editable install's finder) and drop their path lines (those directories
    are linked already)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(dest)], check=True)
    (site,) = (dest / "lib").glob("python*/site-packages")
    hidden: set[str] = set()
    for name in hide:
        try:
            hidden |= _top_level(md.distribution(name))
        except md.PackageNotFoundError:
            continue
    for entry in sys.path:
        top = Path(entry)
        if top.name not in ("site-packages", "dist-packages") or not top.is_dir():
            continue
        for child in sorted(top.iterdir()):
            target = site / child.name
            if child.name in hidden or child.name == "__pycache__" or target.exists():
                continue
            if child.suffix == ".pth":
                lines = [ln for ln in child.read_text().splitlines()
                         if ln.startswith(("import ", "import\t"))]
                target.write_text("".join(ln + "\n" for ln in lines))
            else:
                target.symlink_to(child)
    return dest / "bin" / "python"


@pytest.fixture(scope="module")
def lean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    python = lean_venv(tmp_path_factory.mktemp("lean") / "venv")
    probe = subprocess.run(
        [str(python), "-c", "import importlib.util as u, autolab.agents.cli.app; "
         f"print([m for m in {HIDDEN[:4]!r} if u.find_spec(m)])"],
        capture_output=True, text=True, cwd=python.parent)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "[]", "the lean environment still sees an extra"
    return python


def _cli(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), "-m", "autolab.agents.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300, env={**os.environ})


def test_lean_install_runs_the_coordinating_commands(lean, tmp_path):
    lab = tmp_path / "lab.git"
    init_lab(lab, "blank", bare=True)
    url = str(lab)
    assert _cli(lean, "--version", cwd=tmp_path).returncode == 0
    ok = _cli(lean, "propose", "--lab", url, "--hypothesis", "closer", "--set", "X=2.5",
              cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    planner = _cli(lean, "planner", "--once", "--lab", url, "--depth", "2", cwd=tmp_path)
    assert planner.returncode == 0, planner.stderr
    worker = _cli(lean, "worker", "--once", "--lab", url, cwd=tmp_path)
    assert worker.returncode == 0, worker.stdout + worker.stderr
    reporter = _cli(lean, "reporter", "--once", "--lab", url, cwd=tmp_path)
    assert reporter.returncode == 0, reporter.stderr
    assert reporter.stdout.count("trackio mirror off: trackio is not installed "
                                 "(pip install 'autolab[trackio]')") == 1
    assert "Traceback" not in reporter.stdout + reporter.stderr
    status = json.loads(_cli(lean, "status", "--lab", url, "--json", cwd=tmp_path).stdout)
    assert status["counts"]["done"] == 1
    rows = _cli(lean, "sql", "--lab", url, "--json", "SELECT status FROM scores",
                cwd=tmp_path)
    assert json.loads(rows.stdout) == [{"status": "ok"}]
    assert _cli(lean, "doctor", "--lab", url, cwd=tmp_path).returncode == 0


@pytest.mark.parametrize(("args", "line"), [
    (("report", "--out", "r"), "autolab report needs matplotlib: pip install 'autolab[report]'"),
    (("trackio-sync",), "autolab trackio-sync needs trackio: pip install 'autolab[trackio]'"),
    (("dashboard",), "autolab dashboard needs trackio: pip install 'autolab[trackio]'"),
    (("demo", "--dir", "d", "--no-live"),
     "autolab demo needs torch: pip install 'autolab[train]'"),
])
def test_lean_install_names_the_missing_extra_in_one_line(lean, tmp_path, args, line):
    lab = tmp_path / "lab.git"
    init_lab(lab, "blank", bare=True)
    lab_args = () if args[0] == "demo" else ("--lab", str(lab))
    proc = _cli(lean, *args, *lab_args, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr == f"autolab: error: {line}\n"
    assert not (tmp_path / "d").exists() and not (tmp_path / "r").exists()
