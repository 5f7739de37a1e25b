"""Package discovery: every package under the code directories, mapped into ``autolab``.

The repository keeps its own top-level layout (``protocol/``, ``agents/``,
``scoreboard/``, ``repo_template/``: DESIGN.md §2) and installs it as one ``autolab``
namespace. setuptools' automatic discovery cannot rename directories, and a list
written by hand misses the next subpackage someone adds; so this file walks the
directories: every directory holding an ``__init__.py`` is a package, every file of
a package directory that is not Python is package data, and every file of a lab
template is shipped. ``tests/test_packaging.py`` checks the built wheel against the
same rule. Everything else (metadata, dependencies, extras) is in ``pyproject.toml``.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
# Import name -> directory of the repository. ``package/`` holds ``autolab`` itself
# (its ``__version__``): a directory named ``autolab`` at the top would shadow an
# installed copy for anyone running Python from a checkout.
CODE = {
    "autolab": "package",
    "autolab.protocol": "protocol",
    "autolab.agents": "agents",
    "autolab.scoreboard": "scoreboard",
}
TEMPLATES = ("autolab.templates", "repo_template")  # lab templates: data, not code
# Never shipped: caches and the data a template's prepare step writes.
SKIP_DIRS = frozenset({"__pycache__", ".data", ".pytest_cache", ".ruff_cache"})
SKIP_SUFFIXES = (".pyc", ".pyo")


def _files(top: Path) -> list[tuple[Path, list[str]]]:
    """(directory, its file names) for ``top`` and every directory below it, in a stable
    order, skipping :data:`SKIP_DIRS` and compiled files."""
    found = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        names = sorted(f for f in filenames if not f.endswith(SKIP_SUFFIXES))
        found.append((Path(dirpath), names))
    return found


def discover() -> tuple[dict[str, str], list[str], dict[str, list[str]]]:
    """``package_dir``, ``packages`` and ``package_data`` for :func:`setup`.

    A data file in a directory without ``__init__.py`` belongs to the nearest package
    above it (its path is then relative to that package).
    """
    package_dir = {**CODE, TEMPLATES[0]: TEMPLATES[1]}
    packages: list[str] = []
    package_data: dict[str, list[str]] = {}
    for name, directory in CODE.items():
        root = HERE / directory
        if not (root / "__init__.py").is_file():
            raise SystemExit(f"setup.py: {directory}/__init__.py is missing")
        owner: dict[Path, tuple[str, Path]] = {}  # directory -> (its package, package dir)
        for path, files in _files(root):
            rel = path.relative_to(root)
            if "__init__.py" in files:
                pkg = ".".join((name, *rel.parts))
                packages.append(pkg)
                owner[path] = (pkg, path)
            else:
                owner[path] = owner[path.parent]
            pkg, pkg_dir = owner[path]
            for file in files:
                if path != pkg_dir or not file.endswith(".py"):
                    package_data.setdefault(pkg, []).append(
                        (path / file).relative_to(pkg_dir).as_posix())
    name, directory = TEMPLATES
    packages.append(name)
    root = HERE / directory
    package_data[name] = [(path / f).relative_to(root).as_posix()
                          for path, files in _files(root) for f in files
                          if not (path == root and f == "__init__.py")]
    return package_dir, packages, package_data


package_dir, packages, package_data = discover()
setup(package_dir=package_dir, packages=packages, package_data=package_data,
      include_package_data=False)
