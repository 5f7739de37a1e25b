"""Real network transports for lab remotes: smart HTTP(S) and SSH on 127.0.0.1.

* :class:`SmartHttpServer` is ``git http-backend`` behind a small threaded HTTP(S)
  server that requires HTTP Basic credentials (401 with ``WWW-Authenticate: Basic``
  otherwise), the way GitHub, GitLab or Gitea answer a client without a token. It logs
  every request's ``Authorization`` header, so tests can prove where a token went.
  It can also redirect the initial ``info/refs`` request to another server.
* :class:`SshServer` is OpenSSH's ``sshd`` on a high port with a throwaway host key
  and a throwaway user key, runnable as root or as an unprivileged user.

Both are started once per test session by the fixtures below and serve bare
repositories by absolute path. Each fixture skips (never fails) when the program it
needs (``openssl``, ``git http-backend``, ``sshd``) is not installed.
"""

from __future__ import annotations

import base64
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from autolab.agents.lab_init import init_lab

# Kinds of remote served over the network by this module (``any_remote`` params).
SERVED = ("https", "ssh")
TOKEN = "autolab-test-token-6f1c2a"  # the one password the HTTPS server accepts
HTTP_BACKEND_CANDIDATES = ("/usr/lib/git-core/git-http-backend",
                           "/usr/libexec/git-core/git-http-backend")
SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, what: str, proc: subprocess.Popen[Any] | None = None,
                   log: Path | None = None) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = log.read_text(errors="replace")[-2000:] if log else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}: {err}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start listening on 127.0.0.1:{port}")


def _http_backend() -> str | None:
    found = [p for p in HTTP_BACKEND_CANDIDATES if os.access(p, os.X_OK)]
    if found:
        return found[0]
    exec_path = subprocess.run(["git", "--exec-path"], capture_output=True, text=True)
    path = Path(exec_path.stdout.strip()) / "git-http-backend"
    return str(path) if os.access(path, os.X_OK) else None


def self_signed_cert(dest: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 (``openssl`` CLI): (cert, key)."""
    cert, key = dest / "cert.pem", dest / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True)
    return cert, key


# -- smart HTTP(S) -----------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    """One request as the server saw it (for assertions on where credentials went)."""

    method: str
    path: str
    authorization: str | None
    chunked: bool = False  # the body came in ``Transfer-Encoding: chunked``
    encoding: str | None = None  # its ``Content-Encoding`` (git gzips larger requests)


def _read_chunked(rfile: Any) -> bytes:
    """The body of a ``Transfer-Encoding: chunked`` request (git sends large pushes so)."""
    body = bytearray()
    while True:
        size_line = rfile.readline(1024)
        if not size_line:
            raise ValueError("connection closed inside a chunked body")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while rfile.readline(1024).strip():  # trailers up to the empty line
                pass
            return bytes(body)
        body += rfile.read(size)
        rfile.readline(1024)  # the CRLF after each chunk


class _GitHandler(BaseHTTPRequestHandler):
    """Basic auth, then ``git http-backend`` as a CGI program (RFC 3875)."""

    protocol_version = "HTTP/1.1"  # keep-alive, as git's libcurl expects
    server: _GitHttpd

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass  # the request log is ``SmartHttpServer.requests``

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._serve()

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        self._serve()

    def _serve(self) -> None:
        owner = self.server.owner
        auth = self.headers.get("Authorization")
        path, _, query = self.path.partition("?")
        owner.log(Request(self.command, path, auth,
                          self.headers.get("Transfer-Encoding", "").lower() == "chunked",
                          self.headers.get("Content-Encoding")))
        body = self._body()
        if owner.token is not None and not owner.authorized(auth):
            self._reply(401, {"WWW-Authenticate": 'Basic realm="autolab-test"',
                              "Content-Type": "text/plain"}, b"authentication required\n")
            return
        if owner.read_only and "receive-pack" in self.path:
            self._reply(403, {"Content-Type": "text/plain"}, b"this token may not push\n")
            return
        if owner.redirect_to is not None and path.endswith("/info/refs"):
            location = owner.redirect_to + self.path
            self._reply(302, {"Location": location}, b"")
            return
        self._cgi(path, query, body)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return _read_chunked(self.rfile)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _cgi(self, path: str, query: str, body: bytes) -> None:
        owner = self.server.owner
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(owner.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
        }
        if owner.token is not None:
            env["REMOTE_USER"] = "autolab"  # http-backend enables receive-pack for a user
        else:
            env.update(GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="http.receivepack",
                       GIT_CONFIG_VALUE_0="true")  # an open server: anyone may push
        encoding = self.headers.get("Content-Encoding")
        if encoding:
            # http-backend inflates a gzip body itself (git clients gzip big requests).
            env["HTTP_CONTENT_ENCODING"] = encoding
        protocol = self.headers.get("Git-Protocol")
        if protocol:
            env["GIT_PROTOCOL"] = protocol  # protocol v2, as web servers pass it on
        proc = subprocess.run([owner.backend], input=body, env=env, capture_output=True,
                              timeout=120)
        head, sep, out = proc.stdout.partition(b"\r\n\r\n")
        if not sep:
            head, sep, out = proc.stdout.partition(b"\n\n")
        if not sep:
            self._reply(500, {"Content-Type": "text/plain"},
                        b"http-backend failed: " + proc.stderr[-500:])
            return
        status, headers = 200, {}
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers[name.strip()] = value.strip()
        self._reply(status, headers, out)

    def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _GitHttpd(ThreadingHTTPServer):
    daemon_threads = True
    owner: SmartHttpServer

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake happens here, in the request's own thread: a stalled client
        # must not block the accept loop.
        if self.owner.tls is not None:
            request = self.owner.tls.wrap_socket(request, server_side=True)
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up mid-request are normal here


class SmartHttpServer:
    """``git http-backend`` serving the bare repositories under ``root`` over HTTP(S).

    ``token``: the password required in HTTP Basic auth (any user name), or None for
    an open server. ``redirect_to``: a base URL the ``info/refs`` request is sent to
    with a 302 (as a host does for a moved repository). ``read_only``: pushes are
    refused with 403, as for a token that may only read.
    """

    def __init__(self, root: Path, *, token: str | None = TOKEN,
                 tls: ssl.SSLContext | None = None, redirect_to: str | None = None,
                 read_only: bool = False) -> None:
        backend = _http_backend()
        if backend is None:
            raise FileNotFoundError("git-http-backend")
        self.backend = backend
        self.root = root
        self.token = token
        self.tls = tls
        self.redirect_to = redirect_to
        self.read_only = read_only
        self.requests: list[Request] = []
        self._log_lock = threading.Lock()
        self.httpd = _GitHttpd(("127.0.0.1", 0), _GitHandler)
        self.httpd.owner = self
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                        kwargs={"poll_interval": 0.05})

    @property
    def base(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def url(self, name: str, userinfo: str = "") -> str:
        return f"{self.base.replace('://', '://' + userinfo + '@' if userinfo else '://')}/{name}"

    def authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:], validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return False
        return decoded.partition(":")[2] == self.token

    def log(self, request: Request) -> None:
        with self._log_lock:
            self.requests.append(request)

    def start(self) -> SmartHttpServer:
        self._thread.start()
        _wait_for_port(self.port, "HTTP server")
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


def _tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


@dataclass
class HttpsSetup:
    """The session's HTTPS git host: its server, CA file and the root it serves."""

    server: SmartHttpServer
    cafile: Path
    cert: Path
    key: Path
    root: Path

    def env(self) -> dict[str, str]:
        """What a client needs: trust in the throwaway CA, and the token."""
        return {"GIT_SSL_CAINFO": str(self.cafile), "AUTOLAB_GIT_TOKEN": TOKEN}


@pytest.fixture(scope="session")
def https_git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsSetup]:
    """A token-protected smart HTTPS git host on 127.0.0.1 (self-signed certificate)."""
    if _http_backend() is None:
        pytest.skip("git-http-backend is not installed")
    if shutil.which("openssl") is None:
        pytest.skip("no openssl CLI to make a throwaway TLS certificate")
    base = tmp_path_factory.mktemp("https")
    root = base / "repos"
    root.mkdir()
    cert, key = self_signed_cert(base)
    server = SmartHttpServer(root, tls=_tls_context(cert, key)).start()
    yield HttpsSetup(server, cert, cert, key, root)
    server.stop()


# -- SSH ------------------------------------------------------------------------------------

def _sshd() -> str | None:
    found = [p for p in SSHD_CANDIDATES if os.access(p, os.X_OK)]
    return found[0] if found else shutil.which("sshd")


class SshServer:
    """OpenSSH ``sshd`` on a free 127.0.0.1 port, accepting one throwaway user key.

    Runs as whoever runs the tests: as root it logs in root by key only; as another
    user it can only log that user in, which is all a test needs.
    """

    def __init__(self, base: Path, sshd: str) -> None:
        self.base = base
        self.sshd = sshd
        self.port = free_port()
        self.user = pwd.getpwuid(os.getuid()).pw_name  # not $USER: it may lie
        self.key = base / "id_ed25519"
        self.proc: subprocess.Popen[str] | None = None
        self.config = base / "sshd_config"
        self.log = base / "sshd.log"
        self.known_hosts = base / "known_hosts"
        self.client_config = base / "ssh_config"

    def prepare(self) -> None:
        host_key = self.base / "host_ed25519"
        for path in (host_key, self.key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "autolab-test",
                            "-f", str(path)], check=True, capture_output=True)
        # The client trusts exactly this host key: no "yes/no" prompt, no file of the user.
        host_pub = (self.base / "host_ed25519.pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        self.client_config.write_text("LogLevel ERROR\n")
        authorized = self.base / "authorized_keys"
        authorized.write_text((self.base / "id_ed25519.pub").read_text())
        authorized.chmod(0o600)
        self.config.write_text("\n".join([
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {host_key}",
            f"PidFile {self.base / 'sshd.pid'}",
            f"AuthorizedKeysFile {authorized}",
            f"AllowUsers {self.user}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "UsePAM no",
            "StrictModes no",  # the key files live in a world-readable temp dir
            "PermitUserEnvironment no",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "PrintMotd no",
            "PrintLastLog no",
            # Post-quantum key exchange (OpenSSH 9's default) costs ~0.3 s per connection
            # on a busy two-core machine; every git command over SSH is a connection.
            "KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org",
            # Eight racing processes open many connections at once; the default (10:30:100)
            # would drop some of them as if under attack.
            "MaxStartups 200",
            "MaxSessions 200",
            "LogLevel ERROR",
            "",
        ]))
        if os.geteuid() == 0:
            # sshd run as root insists on its privilege separation directory.
            Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)

    def start(self) -> SshServer:
        self.prepare()
        # Its log goes to a file: a pipe nobody reads would fill and stall sshd.
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [self.sshd, "-D", "-e", "-f", str(self.config)],
                stdout=subprocess.DEVNULL, stderr=log, text=True)
        _wait_for_port(self.port, "sshd", self.proc, self.log)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None

    def ssh_command(self) -> str:
        """``GIT_SSH_COMMAND`` for a client: this key only, this server's host key only
        (a known_hosts file written from it), never a prompt, no user ssh config."""
        return (f"ssh -F {self.client_config} -i {self.key} -o IdentitiesOnly=yes "
                f"-o BatchMode=yes -o StrictHostKeyChecking=yes "
                f"-o UserKnownHostsFile={self.known_hosts}")

    def url(self, path: Path) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{path}"

    def env(self) -> dict[str, str]:
        return {"GIT_SSH_COMMAND": self.ssh_command()}


@pytest.fixture(scope="session")
def ssh_git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """``sshd`` on 127.0.0.1 for the session; skips when OpenSSH's server is absent."""
    sshd = _sshd()
    if sshd is None:
        pytest.skip("sshd is not installed (Debian: apt-get install openssh-server)")
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("the OpenSSH client (ssh, ssh-keygen) is not installed")
    server = SshServer(tmp_path_factory.mktemp("sshd"), sshd).start()
    yield server
    server.stop()


# -- remotes over these transports -----------------------------------------------------------

def served_remote_for_test(request: pytest.FixtureRequest, tmp_path: Path,
                           remote_type: Callable[[str, str, Path], Any]) -> Iterator[Any]:
    """A fresh ``blank`` lab served over ``request.param`` (``https`` or ``ssh``), with
    the client's environment (CA file and token, or ``GIT_SSH_COMMAND``) set for the
    test and every process it starts; fsck'd and removed afterwards."""
    kind = request.param
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    name = f"lab-{tmp_path.name}.git"
    if kind == "https":
        setup: HttpsSetup = request.getfixturevalue("https_git_server")
        bare = setup.root / name
        url = setup.server.url(name)
        env = setup.env()
    elif kind == "ssh":
        sshd: SshServer = request.getfixturevalue("ssh_git_server")
        bare = tmp_path / name
        url = sshd.url(bare)
        env = sshd.env()
    else:
        raise ValueError(f"not a served transport: {kind}")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    init_lab(bare, "blank", bare=True)
    remote = remote_type(kind, url, bare)
    yield remote
    remote.fsck()
    shutil.rmtree(bare, ignore_errors=True)

