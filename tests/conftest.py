"""Shared fixtures: real Git remotes (a bare repo on a path, and a ``git daemon`` on
127.0.0.1 started and stopped by the fixture), per-test cache dirs, lab factories.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from autolab.agents.lab_init import init_lab

# Smart HTTPS and SSH remotes (servers and their session fixtures: tests/transports.py).
from .transports import (
    SERVED,
    https_git_server,  # noqa: F401 - a fixture
    served_remote_for_test,
    ssh_git_server,  # noqa: F401 - a fixture
)

REPO = Path(__file__).resolve().parents[1]


def pytest_sessionstart(session: pytest.Session) -> None:
    """With ``$AUTOLAB_TEST_INSTALLED`` (a site-packages directory; ``.ci/run`` sets it),
    the tests must exercise the copy of autolab installed there, not the checkout."""
    site = os.environ.get("AUTOLAB_TEST_INSTALLED")
    if not site:
        return
    import autolab
    import autolab.agents.cli.app
    import autolab.protocol

    where = Path(site).resolve()
    for module in (autolab, autolab.protocol, autolab.agents.cli.app):
        path = Path(module.__file__ or "").resolve()
        if where not in path.parents:
            raise pytest.UsageError(f"{module.__name__} comes from {path}, not from {where}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GitDaemon:
    """``git daemon --enable=receive-pack`` serving ``base`` on a free loopback port."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--export-all", "--enable=receive-pack",
             f"--base-path={self.base}", "--listen=127.0.0.1", f"--port={self.port}",
             "--max-connections=0", str(self.base)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("git daemon did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="session")
def git_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitDaemon]:
    daemon = GitDaemon(tmp_path_factory.mktemp("daemon"))
    daemon.start()
    yield daemon
    daemon.stop()


@dataclass
class Remote:
    """A lab remote under test: its URL and the bare repository behind it."""

    kind: str
    url: str
    bare: Path

    def git(self, *args: str) -> str:
        return subprocess.run(["git", *args], cwd=self.bare, check=True, capture_output=True,
                              text=True).stdout.strip()

    def main(self) -> str:
        return self.git("rev-parse", "refs/heads/main")

    def fsck(self) -> None:
        proc = subprocess.run(["git", "fsck", "--no-progress"], cwd=self.bare,
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"git fsck failed on {self.bare}: {proc.stdout}{proc.stderr}"
        problems = [ln for ln in proc.stdout.splitlines() if not ln.startswith("dangling")]
        assert not problems, problems


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))  # reporters sync there
    monkeypatch.delenv("AUTOLAB_LAB", raising=False)
    monkeypatch.delenv("AUTOLAB_AGENT", raising=False)


def _make_remote(kind: str, tmp_path: Path, git_daemon: GitDaemon, template: str) -> Remote:
    name = f"lab-{tmp_path.name}.git"
    if kind in ("path", "file"):
        bare = tmp_path / name
        url = str(bare) if kind == "path" else f"file://{bare}"
    else:
        bare = git_daemon.base / name
        url = git_daemon.url(name)
    init_lab(bare, template, bare=True)
    return Remote(kind, url, bare)


def _remote_for_test(kind: str, tmp_path: Path, git_daemon: GitDaemon) -> Iterator[Remote]:
    """A fresh ``blank`` lab; fsck'd after the test, and removed if it was served."""
    rem = _make_remote(kind, tmp_path, git_daemon, "blank")
    yield rem
    rem.fsck()
    if rem.kind == "daemon":
        shutil.rmtree(rem.bare, ignore_errors=True)


@pytest.fixture(params=["path", "daemon"])
def remote(request: pytest.FixtureRequest, tmp_path: Path, git_daemon: GitDaemon
           ) -> Iterator[Remote]:
    """A fresh ``blank`` lab on each kind of remote; fsck'd after the test."""
    yield from _remote_for_test(request.param, tmp_path, git_daemon)


@pytest.fixture(params=["path", "file", "daemon", *SERVED])
def any_remote(request: pytest.FixtureRequest, tmp_path: Path, git_daemon: GitDaemon
               ) -> Iterator[Remote]:
    """Like ``remote``, plus ``file://``, smart HTTPS and SSH URLs (for the store
    conformance suite)."""
    if request.param in SERVED:
        yield from served_remote_for_test(request, tmp_path, Remote)
    else:
        yield from _remote_for_test(request.param, tmp_path, git_daemon)


@pytest.fixture(params=SERVED)
def served_remote(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Remote]:
    """A fresh ``blank`` lab over smart HTTPS (token required) and over SSH."""
    yield from served_remote_for_test(request, tmp_path, Remote)


@pytest.fixture
def daemon_remote(tmp_path: Path, git_daemon: GitDaemon) -> Iterator[Remote]:
    yield from _remote_for_test("daemon", tmp_path, git_daemon)


class LabTemplates:
    """Labs with known contents, each built once per session through the protocol (over
    the transport a test asks for) and copied for every test that starts from it.

    A copy of a bare repository is the same lab: the same commits, refs and records,
    so a test reads and changes its copy as it would a lab it built itself. For labs
    whose building is not what the tests using them check (their own tests do that).
    """

    def __init__(self, root: Path, daemon: GitDaemon) -> None:
        self.root, self.daemon = root, daemon
        self._built: dict[tuple[str, str], Path] = {}

    def copy(self, name: str, kind: str, tmp_path: Path, build: Callable[[str], object],
             template: str = "blank", edit: Callable[[Path], None] | None = None
             ) -> Iterator[Remote]:
        """Yield a copy, on a ``kind`` remote (``path`` or ``daemon``), of the lab that
        ``build(url)`` makes of a new ``template`` lab (its files changed by ``edit``
        first, as :func:`init_lab` does); fsck it afterwards. ``name`` names the lab:
        the same name, the same ``build``, ``template`` and ``edit``."""
        made = self._built.get((name, kind))
        if made is None:
            made = self._build(name, kind, build, template, edit)
        dest = (self.daemon.base if kind == "daemon" else tmp_path) / f"lab-{tmp_path.name}.git"
        shutil.copytree(made, dest, symlinks=True)
        rem = Remote(kind, self.daemon.url(dest.name) if kind == "daemon" else str(dest), dest)
        yield rem
        rem.fsck()
        if kind == "daemon":
            shutil.rmtree(dest, ignore_errors=True)

    def _build(self, name: str, kind: str, build: Callable[[str], object], template: str,
               edit: Callable[[Path], None] | None) -> Path:
        label = f"template-{len(self._built)}-{kind}"
        bare = (self.daemon.base if kind == "daemon" else self.root) / f"{label}.git"
        init_lab(bare, template, bare=True, edit=edit)
        url = self.daemon.url(bare.name) if kind == "daemon" else str(bare)
        with pytest.MonkeyPatch.context() as env:  # its own cache: no test's
            env.setenv("AUTOLAB_CACHE", str(self.root / f"{label}-cache"))
            build(url)
        Remote(kind, url, bare).fsck()
        self._built[(name, kind)] = bare
        return bare


@pytest.fixture(scope="session")
def lab_templates(tmp_path_factory: pytest.TempPathFactory, git_daemon: GitDaemon
                  ) -> LabTemplates:
    return LabTemplates(tmp_path_factory.mktemp("templates"), git_daemon)


def run_cli(*args: str, env: dict[str, str] | None = None, check: bool = False,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real ``autolab`` console entry point in a subprocess."""
    proc = subprocess.run(
        [sys.executable, "-m", "autolab.agents.cli", *args], capture_output=True, text=True,
        env={**os.environ, **(env or {})}, cwd=cwd, timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"autolab {' '.join(args)} -> {proc.returncode}\n{proc.stderr}")
    return proc


def knob_patch_text(value: float) -> str:
    """A patch setting X in the blank template's experiment.py."""
    source = (REPO / "repo_template" / "blank" / "experiment.py").read_text()
    from autolab.protocol.knobs import set_knobs, unified_diff

    return unified_diff("experiment.py", source, set_knobs(source, {"X": value}))
