"""Smart HTTPS and SSH remotes: where credentials go, and what a client without them sees.

The servers are real (``git http-backend`` behind a token-checking HTTPS server, and
OpenSSH's ``sshd``; see ``tests/transports.py``); the conformance suite and the claim
race also run over both (``any_remote``, ``served_remote``).
"""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import pytest

from autolab.agents.lab_init import init_lab
from autolab.protocol.errors import LabError, TransportError
from autolab.protocol.gitstore import GitStore
from autolab.protocol.store import FileChange

from .conftest import run_cli
from .transports import TOKEN, HttpsSetup, SmartHttpServer, SshServer, _tls_context


def _basic(userinfo: str) -> str:
    return "Basic " + base64.b64encode(userinfo.encode()).decode()


def _write_and_read(url: str) -> GitStore:
    """Every kind of git round trip the store makes: fetch, record push, main push."""
    store = GitStore(url)
    base = store.refresh().main
    record = store.make_commit(None, FileChange(add={"r/x": b"1"}), "record")
    store.create_ref("refs/autolab/claims/0001/1", record)
    store.cas_main(store.make_commit(base, FileChange(add={"a.txt": b"a"}), "a"), base)
    assert set(store.refresh().records) == {"refs/autolab/claims/0001/1"}
    return store


def _assert_secret_absent(secret: str, trace: Path, cache: Path) -> None:
    """Neither ``secret`` nor its Basic-auth encodings in git's trace (every argv of
    every git process) or in any file under the cache directory."""
    forms = [secret.encode(), base64.b64encode(f"autolab:{secret}".encode()),
             base64.b64encode(f"alice:{secret}".encode())]
    text = trace.read_bytes()
    assert b"git-remote-https" in text or b"remote-https" in text, "trace saw no transport"
    for form in forms:
        assert form not in text, f"{form!r} in git's trace"
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert any(p.name == "config" for p in files)
    for path in files:
        data = path.read_bytes()
        for form in forms:
            assert form not in data, f"{form!r} in {path}"


def _lab_requests(server: SmartHttpServer, name: str) -> list:
    return [r for r in server.requests if r.path.startswith(f"/{name}/")]


def test_https_token_from_the_environment_reaches_git_only_as_a_header_for_that_host(
        https_git_server: HttpsSetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    setup = https_git_server
    name = f"env-{tmp_path.name}.git"
    init_lab(setup.root / name, "blank", bare=True)
    for key, value in setup.env().items():
        monkeypatch.setenv(key, value)
    trace = tmp_path / "git-trace"
    monkeypatch.setenv("GIT_TRACE", str(trace))
    store = _write_and_read(setup.server.url(name))
    seen = _lab_requests(setup.server, name)
    assert {r.method for r in seen} == {"GET", "POST"}
    assert {r.authorization for r in seen} == {_basic(f"autolab:{TOKEN}")}
    assert "receive-pack" in " ".join(r.path for r in seen)
    assert subprocess.run(["git", "--git-dir", str(store.path), "config", "remote.origin.url"],
                          capture_output=True, text=True).stdout.strip() == store.url
    _assert_secret_absent(TOKEN, trace, Path(os.environ["AUTOLAB_CACHE"]))
    # The CLI too: a command's argv and its output never hold the token.
    proc = run_cli("status", "--json", "--lab", setup.server.url(name))
    assert proc.returncode == 0, proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr


def test_https_token_in_the_url_reaches_git_only_as_a_header_for_that_host(
        https_git_server: HttpsSetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    setup = https_git_server
    name = f"url-{tmp_path.name}.git"
    init_lab(setup.root / name, "blank", bare=True)
    monkeypatch.setenv("GIT_SSL_CAINFO", str(setup.cafile))
    monkeypatch.delenv("AUTOLAB_GIT_TOKEN", raising=False)
    trace = tmp_path / "git-trace"
    monkeypatch.setenv("GIT_TRACE", str(trace))
    store = _write_and_read(setup.server.url(name, f"alice:{TOKEN}"))
    assert store.url == setup.server.url(name)  # kept without its credentials
    seen = _lab_requests(setup.server, name)
    assert seen and {r.authorization for r in seen} == {_basic(f"alice:{TOKEN}")}
    _assert_secret_absent(TOKEN, trace, Path(os.environ["AUTOLAB_CACHE"]))


def test_a_password_with_an_unencoded_at_sign_leaves_no_piece_of_itself_in_the_url(
        https_git_server: HttpsSetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``https://alice:s3cr@t-tail@host/lab.git``: the URL kept (cache config,
    messages) was ``https://t-tail@host/...``."""
    setup = https_git_server
    name = f"at-{tmp_path.name}.git"
    init_lab(setup.root / name, "blank", bare=True)
    password = "s3cr@t-tail-91e2"
    server = SmartHttpServer(setup.root, token=password,
                             tls=_tls_context(setup.cert, setup.key)).start()
    try:
        monkeypatch.setenv("GIT_SSL_CAINFO", str(setup.cafile))
        monkeypatch.delenv("AUTOLAB_GIT_TOKEN", raising=False)
        store = GitStore(server.url(name, f"alice:{password}"))
        assert store.url == server.url(name)
        store.refresh()
        assert {r.authorization for r in server.requests} == {_basic(f"alice:{password}")}
        assert "t-tail" not in (store.path / "config").read_text()
    finally:
        server.stop()


@pytest.mark.parametrize("how", ["environment", "url"])
def test_a_redirect_to_another_host_never_carries_the_token(
        https_git_server: HttpsSetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        how: str):
    """The lab's host answers ``info/refs`` with a redirect to another port (git
    follows initial redirects): that other server must never see the credential."""
    setup = https_git_server
    name = f"redir-{tmp_path.name}.git"
    init_lab(setup.root / name, "blank", bare=True)
    other = SmartHttpServer(setup.root, token=None,
                            tls=_tls_context(setup.cert, setup.key)).start()
    first = SmartHttpServer(setup.root, tls=_tls_context(setup.cert, setup.key),
                            redirect_to=other.base).start()
    try:
        monkeypatch.setenv("GIT_SSL_CAINFO", str(setup.cafile))
        if how == "environment":
            monkeypatch.setenv("AUTOLAB_GIT_TOKEN", TOKEN)
            url = first.url(name)
        else:
            monkeypatch.delenv("AUTOLAB_GIT_TOKEN", raising=False)
            url = first.url(name, f"alice:{TOKEN}")
        # Refusing to follow is the answer (naming why); following with the token is not.
        with pytest.raises(LabError, match="redirect") as refused:
            GitStore(url).refresh()
        assert TOKEN not in str(refused.value)
        assert any(r.path.endswith("/info/refs") for r in first.requests)
        assert all(r.authorization for r in first.requests)
        assert [r.authorization for r in other.requests] == [None] * len(other.requests)
    finally:
        first.stop()
        other.stop()


def _fetches(trace: Path) -> int:
    """How many ``git fetch`` commands ran, from git's trace."""
    return trace.read_text().count("trace: built-in: git fetch")


def _one_line_error(proc: subprocess.CompletedProcess[str], secret: str | None = None) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autolab: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    if secret:
        assert secret not in proc.stderr
    return lines[0]


@pytest.mark.parametrize("token", [None, "wrong-token-123"])
def test_https_without_the_right_token_is_a_prompt_one_line_error(
        https_git_server: HttpsSetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        token: str | None):
    setup = https_git_server
    name = f"noauth-{tmp_path.name}.git"
    init_lab(setup.root / name, "blank", bare=True)
    monkeypatch.setenv("GIT_SSL_CAINFO", str(setup.cafile))
    if token is None:
        monkeypatch.delenv("AUTOLAB_GIT_TOKEN", raising=False)
    else:
        monkeypatch.setenv("AUTOLAB_GIT_TOKEN", token)
    trace = tmp_path / "git-trace"
    monkeypatch.setenv("GIT_TRACE", str(trace))
    line = _one_line_error(run_cli("status", "--lab", setup.server.url(name)), token)
    assert setup.server.url(name) in line and "AUTOLAB_GIT_TOKEN" in line, line
    assert _fetches(trace) == 1  # an authentication failure is not worth retrying


def test_an_untrusted_tls_certificate_is_a_prompt_one_line_error(
        https_git_server: HttpsSetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    setup = https_git_server
    name = f"tls-{tmp_path.name}.git"
    init_lab(setup.root / name, "blank", bare=True)
    monkeypatch.delenv("GIT_SSL_CAINFO", raising=False)  # the throwaway CA is not trusted
    monkeypatch.setenv("AUTOLAB_GIT_TOKEN", TOKEN)
    trace = tmp_path / "git-trace"
    monkeypatch.setenv("GIT_TRACE", str(trace))
    line = _one_line_error(run_cli("status", "--lab", setup.server.url(name)), TOKEN)
    assert "TLS certificate" in line and "GIT_SSL_CAINFO" in line, line
    assert _fetches(trace) == 1
    assert not _lab_requests(setup.server, name)  # nothing was sent to an unverified host


def test_a_token_that_may_not_push_is_named_in_the_push_error(
        https_git_server: HttpsSetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    setup = https_git_server
    name = f"ro-{tmp_path.name}.git"
    init_lab(setup.root / name, "blank", bare=True)
    reader = SmartHttpServer(setup.root, tls=_tls_context(setup.cert, setup.key),
                             read_only=True).start()
    try:
        for key, value in setup.env().items():
            monkeypatch.setenv(key, value)
        store = GitStore(reader.url(name))
        base = store.refresh().main  # reading works
        record = store.make_commit(None, FileChange(add={"r/x": b"1"}), "record")
        with pytest.raises(TransportError, match="refused the credentials from "
                                                 "AUTOLAB_GIT_TOKEN") as refused:
            store.create_ref("refs/autolab/claims/0001/1", record)
        assert TOKEN not in str(refused.value)
        new = store.make_commit(base, FileChange(add={"a.txt": b"a"}), "a")
        with pytest.raises(TransportError, match="may read and push"):
            store.cas_main(new, base)
    finally:
        reader.stop()


def test_ssh_without_an_accepted_key_is_a_prompt_one_line_error(
        ssh_git_server: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    sshd = ssh_git_server
    bare = tmp_path / "lab.git"
    init_lab(bare, "blank", bare=True)
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
                   check=True)
    monkeypatch.setenv("GIT_SSH_COMMAND", sshd.ssh_command().replace(str(sshd.key),
                                                                    str(stranger)))
    trace = tmp_path / "git-trace"
    monkeypatch.setenv("GIT_TRACE", str(trace))
    line = _one_line_error(run_cli("status", "--lab", sshd.url(bare)))
    assert "Permission denied (publickey)" in line and "GIT_SSH_COMMAND" in line, line
    assert _fetches(trace) == 1  # an authentication failure is not worth retrying


def test_ssh_to_a_host_of_unknown_key_is_a_prompt_one_line_error(
        ssh_git_server: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    sshd = ssh_git_server
    bare = tmp_path / "lab.git"
    init_lab(bare, "blank", bare=True)
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    monkeypatch.setenv("GIT_SSH_COMMAND", sshd.ssh_command().replace(str(sshd.known_hosts),
                                                                    str(empty)))
    trace = tmp_path / "git-trace"
    monkeypatch.setenv("GIT_TRACE", str(trace))
    line = _one_line_error(run_cli("status", "--lab", sshd.url(bare)))
    assert "Host key verification failed" in line and "known_hosts" in line, line
    assert _fetches(trace) == 1


def test_a_missing_lab_over_https_and_ssh_is_no_such_lab(served_remote, tmp_path):
    url = served_remote.url.replace(served_remote.bare.name, "nowhere.git")
    with pytest.raises(LabError, match="no such lab"):
        GitStore(url).refresh()


def test_smart_http_carries_chunked_and_gzipped_requests(
        https_git_server: HttpsSetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Large pushes come chunked, and long fetch requests gzipped: the lab works either
    way (the shapes git uses against real hosts)."""
    setup = https_git_server
    name = f"big-{tmp_path.name}.git"
    bare = setup.root / name
    init_lab(bare, "blank", bare=True)
    for key, value in setup.env().items():
        monkeypatch.setenv(key, value)
    url = setup.server.url(name)
    store = GitStore(url)
    base = store.refresh().main
    blob = os.urandom(2_500_000)  # over git's 1 MiB http.postBuffer: sent chunked
    big = store.make_commit(base, FileChange(add={"data.bin": blob}), "big")
    store.push_ref("refs/heads/autolab/exp/big", big, None)
    # Forty distinct records fetched at once: a request body that git gzips.
    for n in range(40):
        commit = subprocess.run(["git", "commit-tree", "-m", f"r{n}", f"{base}^{{tree}}"],
                                cwd=bare, check=True, capture_output=True,
                                text=True).stdout.strip()
        subprocess.run(["git", "update-ref", f"refs/autolab/claims/{n:04d}/1", commit],
                       cwd=bare, check=True)
    other = GitStore(url, cache_dir=tmp_path / "other")
    assert len(other.refresh().records) == 40
    assert other.fetch_ref("refs/heads/autolab/exp/big") == big
    assert other.read_file(big, "data.bin") == blob
    seen = _lab_requests(setup.server, name)
    assert any(r.chunked and r.path.endswith("git-receive-pack") for r in seen)
    assert any(r.encoding == "gzip" and r.path.endswith("git-upload-pack") for r in seen)


def test_an_scp_style_url_through_an_ssh_host_alias_is_a_remote_not_a_path(
        ssh_git_server: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``host:/path/lab.git`` (git's short SSH form, with a host from ~/.ssh/config)
    was taken for a relative local path."""
    sshd = ssh_git_server
    bare = tmp_path / "lab.git"
    init_lab(bare, "blank", bare=True)
    config = tmp_path / "ssh_config"
    config.write_text(f"Host labhost\n  HostName 127.0.0.1\n  Port {sshd.port}\n"
                      f"  User {sshd.user}\n  LogLevel ERROR\n")
    monkeypatch.setenv("GIT_SSH_COMMAND", sshd.ssh_command().replace(
        str(sshd.client_config), str(config)))
    monkeypatch.chdir(tmp_path)
    store = GitStore(f"labhost:{bare}")
    assert store.url == f"labhost:{bare}"
    assert store.refresh().main == subprocess.run(
        ["git", "rev-parse", "main"], cwd=bare, capture_output=True, text=True).stdout.strip()
    record = store.make_commit(None, FileChange(add={"r/x": b"1"}), "record")
    store.create_ref("refs/autolab/claims/0001/1", record)
    assert subprocess.run(["git", "rev-parse", "refs/autolab/claims/0001/1"], cwd=bare,
                          capture_output=True, text=True).stdout.strip() == record


@pytest.mark.parametrize("how", ["core.sshCommand", "GIT_SSH"])
def test_the_ssh_command_the_user_gave_git_is_kept(
        ssh_git_server: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str):
    """autolab's own default (``ssh -o BatchMode=yes``) used to replace an ssh command
    the user configured for git, so git worked and autolab did not."""
    sshd = ssh_git_server
    bare = tmp_path / "lab.git"
    init_lab(bare, "blank", bare=True)
    monkeypatch.delenv("GIT_SSH_COMMAND", raising=False)
    monkeypatch.delenv("GIT_SSH", raising=False)
    if how == "core.sshCommand":
        config = tmp_path / "gitconfig"
        subprocess.run(["git", "config", "--file", str(config), "core.sshCommand",
                        sshd.ssh_command()], check=True)
        monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    else:
        wrapper = tmp_path / "ssh-for-git"
        wrapper.write_text(f'#!/bin/sh\nexec {sshd.ssh_command()} "$@"\n')
        wrapper.chmod(0o755)
        monkeypatch.setenv("GIT_SSH", str(wrapper))
    store = GitStore(sshd.url(bare))
    base = store.refresh().main
    store.cas_main(store.make_commit(base, FileChange(add={"a.txt": b"a"}), "a"), base)
    assert store.refresh().main != base
