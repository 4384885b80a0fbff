"""Gateway test fixtures, on loopback only.

- a model server process: model-tools' stand-in of TF Serving with a fake, TensorFlow-free servable
  (tests/gateway/fake_servable.py);
- a loopback HTTP image server (stdlib http.server in a thread) with routes for every download case;
- `app` / `client`: the Flask app in this process and Flask's test client, for HTTP behaviour;
- gateways: real gunicorn processes from .venv-gateway (the runtime env without TensorFlow), for what needs a
  process: fork, SIGTERM drain, multiprocess metrics, the request-body limit on the socket, the image's entrypoint.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np
import pytest
from flask import Flask

from clothing_gateway.app import create_app
from clothing_gateway.config import Config
from clothing_gateway.predictor.base import Predictor
from model_interface.contract import BOOK_CONTRACT, BOOK_LABELS
from model_tools import server as stand_in
from model_tools.servable import Loader
from tests.conftest import DATA, REPO, bomb_png, free_port, image_bytes, wait_for_port
from tests.gateway.fake_servable import load_fake, write_version

LABELS = list(BOOK_LABELS)
CONTRACT: dict[str, Any] = BOOK_CONTRACT.to_dict()  # the book model's contract, as JSON
GUNICORN = REPO / ".venv-gateway" / "bin" / "gunicorn"
GATEWAY_PYTHON = REPO / ".venv-gateway" / "bin" / "python"
GUNICORN_CONF = REPO / "images" / "gateway" / "gunicorn.conf.py"


# ---------------------------------------------------------------------------------------------------------------
# Predictors


def predict(predictor: Predictor, images: Sequence[np.ndarray], timeout: float) -> np.ndarray:
    """One Predict request as the classifier makes it: resolve the contract, encode the batch, send it."""
    resolved = predictor.resolve(timeout)
    return predictor.predict(resolved, predictor.encode(resolved, images), timeout)


# ---------------------------------------------------------------------------------------------------------------
# Model server


def write_contract(path: Path, **changes: Any) -> Path:
    """Write CONTRACT (with changes) as JSON to path."""
    path.write_text(json.dumps({**CONTRACT, **changes}))
    return path


@dataclass
class ModelServer:
    """model-tools' stand-in of TF Serving with a fake version of the contract (tests/gateway/fake_servable.py), as a
    process that can be stopped and started again on the same ports. `rest_port` 0: no REST API."""

    contract: Path
    latency: float = 0.0
    rest_port: int = 0
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def base_path(self) -> Path:
        return self.contract.parent / f"models-{self.port}"

    def start(self) -> ModelServer:
        command = [
            sys.executable,
            "-m",
            "tests.gateway.fake_servable",
            f"--port={self.port}",
            f"--rest_api_port={self.rest_port}",
            f"--model_name={json.loads(self.contract.read_text())['name']}",
            f"--model_base_path={self.base_path}",
            f"--fake_contract={self.contract}",
            f"--fake_latency={self.latency}",
        ]
        self.process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL)
        for port in filter(None, (self.port, self.rest_port)):
            wait_for_port(port, self.process)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def serve_fake(tmp_path: Path) -> Iterator[Any]:
    """Start model-tools' stand-in of TF Serving in this process, serving a fake version of a contract (gRPC, and
    REST with rest=True); returns the running model_tools.server.ModelServer. All are stopped after the test."""
    servers: list[stand_in.ModelServer] = []

    def start(
        contract: dict[str, Any] = CONTRACT, *, rest: bool = False, loader: Loader = load_fake, **settings: Any
    ) -> stand_in.ModelServer:
        base_path = tmp_path / f"models-{len(servers)}"
        write_version(base_path, contract, **settings)
        flags = stand_in.Flags(
            port=free_port(),
            rest_api_port=free_port() if rest else 0,
            model_name=contract["name"],
            model_base_path=str(base_path),
        )
        server = stand_in.ModelServer(flags, loader)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(grace=0)


@pytest.fixture(scope="session")
def contract_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_contract(tmp_path_factory.mktemp("contract") / "contract.json")


@pytest.fixture(scope="session")
def model_server(contract_file: Path) -> Iterator[ModelServer]:
    server = ModelServer(contract_file).start()
    yield server
    server.stop()


# ---------------------------------------------------------------------------------------------------------------
# Image server


class ImageHandler(BaseHTTPRequestHandler):
    """Routes for every download case; `server.images` maps paths to (content type, bytes)."""

    protocol_version = "HTTP/1.1"
    server: ImageServerHTTP
    served_here = 0  # requests answered on this connection (one handler per connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def _send(self, status: int, body: bytes = b"", content_type: str = "image/jpeg", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        params = {key: values[0] for key, values in parse_qs(query).items()}
        self.server.requests.append((path, self.headers.get("Host", "")))
        self.server.client_ports.append(self.client_address[1])  # one per connection
        pants = self.server.images["/pants.jpg"][1]
        if path in self.server.images:
            content_type, body = self.server.images[path]
            self._send(200, body, content_type)
        elif path == "/redirect":
            self._send(int(params.get("status", "302")), content_type="text/plain", Location=params["to"])
        elif path == "/redirect-chain":
            hops = int(params["n"])
            self._send(
                302, content_type="text/plain", Location=f"/redirect-chain?n={hops - 1}" if hops else "/pants.jpg"
            )
        elif path == "/slow":  # the headers at once, the body (?image=, default pants) after ?seconds=
            body = self.server.images[params.get("image", "/pants.jpg")][1]
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.flush()
            time.sleep(float(params["seconds"]))
            self.wfile.write(body)
        elif path == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", str(len(pants)))
            self.end_headers()
            try:
                for start in range(0, len(pants), 200):
                    self.wfile.write(pants[start : start + 200])
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass
        elif path == "/declared-huge":
            self.send_response(200)
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
            self.wfile.write(pants[:100])
        elif path == "/endless":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"\0" * 65536
            try:
                for _ in range(2000):
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except OSError:
                pass
            self.close_connection = True
        elif path == "/close-after":
            self._send(200, pants)
            self.close_connection = True  # without saying so in a header
        elif path == "/random-close":
            # As a busy server or a load balancer: on a kept-alive connection, at random moments, it drops the
            # connection as the next request arrives, or answers and then closes.
            self.served_here += 1
            roll = self.server.random.random()
            if self.served_here > 1 and roll < 0.2:
                self.close_connection = True
                return
            self._send(200, pants)
            self.close_connection = roll > 0.8
        elif path == "/once-per-connection":
            self.served_here += 1
            if self.served_here > 1:
                self.close_connection = True  # as a server dropping a kept-alive connection just as it is reused
                return
            self._send(200, pants)
        elif path.startswith("/status/"):
            self._send(int(path.rsplit("/", 1)[1]), b"no", "text/plain")
        else:
            self._send(404, b"not found", "text/plain")


class ImageServerHTTP(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default listen backlog is 5: with 64 clients' downloads on a loaded machine, connects overflow
    # it and the kernel's SYN retries (1, 2, 4, 8, 16 s) stall a download past a client's timeout. Image hosts and
    # CDNs listen with hundreds (nginx: 511).
    request_queue_size = 512
    images: dict[str, tuple[str, bytes]]
    requests: list[tuple[str, str]]
    client_ports: list[int]
    random: random.Random


@dataclass
class ImageServer:
    """The loopback image server: base URL and the requests it got (path, Host header)."""

    httpd: ImageServerHTTP
    host: str

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    @property
    def requests(self) -> list[tuple[str, str]]:
        return self.httpd.requests

    @property
    def connections(self) -> int:
        """TCP connections the requests so far came on."""
        return len(set(self.httpd.client_ports))


def start_image_server(host: str = "127.0.0.1") -> ImageServer:
    """Serve test images on host (a loopback address) in a daemon thread."""
    httpd = ImageServerHTTP((host, 0), ImageHandler)
    pants = (DATA / "pants.jpg").read_bytes()
    httpd.images = {
        "/pants.jpg": ("image/jpeg", pants),
        "/pants-as-html": ("text/html", pants),  # content is sniffed, the header is not trusted
        "/red.png": ("image/png", image_bytes((220, 20, 20))),
        "/blue.jpg": ("image/jpeg", image_bytes((20, 20, 220), fmt="JPEG")),
        "/text.txt": ("text/plain", b"hello, not an image"),
        "/fake.jpg": ("image/jpeg", b"<html>not really a jpeg</html>"),
        "/bomb.png": ("image/png", bomb_png()),
    }
    httpd.requests = []
    httpd.client_ports = []
    httpd.random = random.Random(20261202)  # noqa: S311 (when to drop a connection, not a secret)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return ImageServer(httpd, host)


@pytest.fixture(scope="session")
def image_server() -> Iterator[ImageServer]:
    server = start_image_server()
    yield server
    server.httpd.shutdown()


# ---------------------------------------------------------------------------------------------------------------
# Gateway


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Gateway:
    """A gunicorn gateway process on loopback; with `kserve_args`, started through the image's entrypoint with
    those arguments plus `--http_port <port>`, as KServe starts a transformer."""

    env: dict[str, str]
    log: Path
    kserve_args: list[str] | None = None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> Gateway:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "GATEWAY_BIND": f"127.0.0.1:{self.port}",
            "GATEWAY_WORKERS": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            **self.env,
        }
        command = [str(GUNICORN), "-c", str(GUNICORN_CONF)]
        if self.kserve_args is not None:
            entrypoint = [
                str(GATEWAY_PYTHON),
                "-m",
                "clothing_gateway.entrypoint",
                f"--gunicorn-config={GUNICORN_CONF}",
            ]
            command = [*entrypoint, *self.kserve_args, "--http_port", str(self.port)]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log)
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if self.request("GET", "/healthz", timeout=1).status == 200:
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"gateway not healthy after {timeout} s:\n{self.log.read_text()[-3000:]}")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> Response:
        request = urllib.request.Request(self.base + path, data=body, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return Response(answer.status, dict(answer.headers), answer.read())
        except urllib.error.HTTPError as exc:
            return Response(exc.code, dict(exc.headers), exc.read())

    def post_json(self, path: str, payload: Any, **kwargs: Any) -> Response:
        return self.request("POST", path, json.dumps(payload).encode(), {"Content-Type": "application/json"}, **kwargs)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=30)
        self.process = None
        return code


def gateway_env(model_server: ModelServer, **overrides: str) -> dict[str, str]:
    """Environment for a test gateway talking to model_server, with loopback downloads allowed."""
    return {
        "TF_SERVING_HOST": model_server.target,
        "GATEWAY_MODEL_CONTRACT_FILE": str(model_server.contract),
        "GATEWAY_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128",
        "GATEWAY_MAX_DOWNLOAD_BYTES": str(1024 * 1024),
        "GATEWAY_MAX_REQUEST_BYTES": str(4 * 1024 * 1024),
        "GATEWAY_MAX_PIXELS": "4000000",
        "GATEWAY_DOWNLOAD_TIMEOUT_SECONDS": "1.5",
        "GATEWAY_MAX_REDIRECTS": "2",
        "GATEWAY_MAX_BATCH": "4",
        "GATEWAY_DEADLINE_SECONDS": "5",
        "GATEWAY_GRACEFUL_TIMEOUT": "5",
        **overrides,
    }


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[Any]:
    """Start gateways with given env (and KServe's arguments); all are stopped at the end of the test."""
    started: list[Gateway] = []

    def make(env: dict[str, str], wait: bool = True, kserve_args: list[str] | None = None) -> Gateway:
        gateway = Gateway(env, tmp_path / f"gateway-{len(started)}.log", kserve_args)
        started.append(gateway)
        return gateway.start(wait=wait)

    yield make
    for gateway in started:
        gateway.stop(signal.SIGQUIT)


@dataclass
class InProcessGateway:
    """The app in this process under Flask's test client, with the same calls as Gateway (request, post_json)."""

    app: Flask

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> Response:
        answer = self.app.test_client().open(path, method=method, data=body, headers=headers or {})
        return Response(answer.status_code, dict(answer.headers), answer.get_data())

    def post_json(self, path: str, payload: Any, **kwargs: Any) -> Response:
        return self.request("POST", path, json.dumps(payload).encode(), {"Content-Type": "application/json"}, **kwargs)


@pytest.fixture(scope="session")
def app(model_server: ModelServer) -> Iterator[Flask]:
    """The gateway app in this process (its predictor speaks gRPC to the test model server), loopback downloads
    allowed: what Flask's test client drives."""
    application = create_app(Config.from_env(gateway_env(model_server)))
    yield application
    application.extensions["clothing_gateway"].close()


@pytest.fixture(scope="session")
def client(app: Flask) -> InProcessGateway:
    return InProcessGateway(app)


@pytest.fixture(scope="session")
def gateway(
    model_server: ModelServer, image_server: ImageServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """The main test gateway: 2 workers, loopback downloads allowed."""
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    gw = Gateway(gateway_env(model_server, GATEWAY_WORKERS="2"), log).start()
    yield gw
    gw.stop(signal.SIGQUIT)


@pytest.fixture(scope="session")
def strict_gateway(model_server: ModelServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway with the default, strict download policy (no loopback), except 127.0.0.2/32 (a test image store)."""
    env = gateway_env(model_server, GATEWAY_ALLOWED_NETWORKS="127.0.0.2/32")
    gw = Gateway(env, tmp_path_factory.mktemp("strict") / "gateway.log").start()
    yield gw
    gw.stop(signal.SIGQUIT)
