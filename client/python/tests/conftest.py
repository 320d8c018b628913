"""Fixtures: a real ``isoflow serve`` (role ``all``: one process, no etcd)
on a free loopback port with a temp data dir, plain or with TLS and API
tokens; and a loopback HTTP server whose requests wait until released.

The binary is ``ISOFLOW_BIN``, else the workspace's ``target/debug/isoflow``
(under ``CARGO_TARGET_DIR`` when that is set). Waits are on conditions,
each bounded by ``LONG`` so that a broken node fails the test instead of
hanging it; nothing asserts how long anything took.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
PYTHON_ROOT = HERE.parent
REPO = PYTHON_ROOT.parent.parent
sys.path.insert(0, str(PYTHON_ROOT / "src"))

# Bounds every wait (debug builds, a busy machine).
LONG = 120.0
TOKEN = "acme-token-0123456789abcdef"
ADMIN_TOKEN = "admin-token-0123456789abcdef"


def isoflow_binary() -> Path:
    candidates = []
    if os.environ.get("ISOFLOW_BIN"):
        candidates.append(Path(os.environ["ISOFLOW_BIN"]))
    else:
        candidates.append(REPO / "target" / "debug" / "isoflow")
        if os.environ.get("CARGO_TARGET_DIR"):
            candidates.append(Path(os.environ["CARGO_TARGET_DIR"]) / "debug" / "isoflow")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    pytest.fail(
        f"no isoflow binary at {', '.join(map(str, candidates))}: "
        "build it (cargo build -p isoflow-node) or set ISOFLOW_BIN",
        pytrace=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """``isoflow serve`` with a config of its own; stderr kept for failures."""

    def __init__(
        self, directory: Path, extra_config: str = "", scheme: str = "http", port: int | None = None
    ) -> None:
        self.port = port or free_port()
        self.address = f"{scheme}://127.0.0.1:{self.port}"
        config = directory / "isoflow.toml"
        config.write_text(
            f'role = "all"\ndata_dir = "{directory / "data"}"\n'
            f'[api]\nlisten = "127.0.0.1:{self.port}"\n'
            '[egress]\nallow = ["127.0.0.1"]\n' + extra_config
        )
        self.lines: list[str] = []
        self._listening = threading.Event()
        self.process = subprocess.Popen(
            [str(isoflow_binary()), "serve", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read_stderr, daemon=True).start()
        if not self._listening.wait(LONG) or self.process.poll() is not None:
            self.stop()
            pytest.fail(f"isoflow serve did not start:\n{self.log()}", pytrace=False)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            if "listening on" in line:
                self._listening.set()
        # Ended: whoever waits for "listening" stops waiting.
        self._listening.set()

    def log(self) -> str:
        return "\n".join(self.lines[-40:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A plain node without tokens: everyone is tenant ``local``."""
    started = Node(tmp_path_factory.mktemp("node"))
    yield started
    started.stop()


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 and localhost, made
    with openssl as deploy/scripts/cluster.sh makes them: (ca, cert, key)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl(
        "req", "-x509", *ec, "-days", "2", "-subj", "/CN=isoflow python test CA",
        "-keyout", "ca-key.pem", "-out", "ca.pem",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    (directory / "server.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    openssl("req", "-new", *ec, "-subj", "/CN=127.0.0.1", "-keyout", "server-key.pem",
            "-out", "server.csr")  # fmt: skip
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
        "-CAcreateserial", "-days", "2", "-extfile", "server.ext", "-out", "server.pem",
    )  # fmt: skip
    return directory / "ca.pem", directory / "server.pem", directory / "server-key.pem"


class SecuredNode(Node):
    ca: Path


@pytest.fixture(scope="session")
def secured_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredNode]:
    """A node that speaks TLS only, serves tenant ``acme`` by ``TOKEN``,
    keeps credentials (a vault key) and serves the admin API to
    ``ADMIN_TOKEN``."""
    directory = tmp_path_factory.mktemp("secured")
    ca, cert, key = make_certificates(directory)
    vault_key = directory / "vault.key"
    vault_key.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    vault_key.chmod(0o600)
    admin_token = directory / "admin-token"
    admin_token.write_text(ADMIN_TOKEN + "\n")
    admin_token.chmod(0o600)
    started = SecuredNode(
        directory,
        f'[tls]\ncert = "{cert}"\nkey = "{key}"\nclient_ca = "{ca}"\n'
        f'[vault.key]\nid = "python-test"\nfile = "{vault_key}"\n'
        f'[auth]\nadmin_token_file = "{admin_token}"\n'
        f'[[auth.tokens]]\ntenant = "acme"\ntoken = "{TOKEN}"\n',
        scheme="https",
    )
    started.ca = ca
    yield started
    started.stop()


class Held:
    """A loopback HTTP server: each request is counted, then answered
    ``{"held": true}`` once :meth:`release` is called."""

    def __init__(self) -> None:
        self.arrived = 0
        self._changed = threading.Condition()
        self._released = threading.Event()
        held = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with held._changed:
                    held.arrived += 1
                    held._changed.notify_all()
                held._released.wait(LONG)
                body = json.dumps({"held": True}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def wait_for(self, count: int) -> bool:
        """Whether ``count`` requests arrived within ``LONG``."""
        with self._changed:
            return self._changed.wait_for(lambda: self.arrived >= count, LONG)

    def release(self) -> None:
        self._released.set()

    def close(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def held() -> Iterator[Held]:
    server = Held()
    yield server
    server.close()
