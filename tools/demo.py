"""`make demo`: the user story on loopback, with real processes.

Starts the model server (TF Serving's flags) on the committed model, the gateway under gunicorn from the TF-free
environment, and a tiny HTTP server for the pants photo; sends the book's request `{"url": ...}` to `/predict`,
prints the scores, and stops everything.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "model-tools" / "models" / "clothing-model"
CONTRACT = MODEL / "1" / "assets.extra" / "model-contract.json"


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    """Wait until url answers 200 (or fail if the process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"demo: {process.args[0]} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback URL built here
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"demo: {url} did not become ready in {timeout:.0f} s")


def main() -> int:
    """Run the demo; exit 0 when the top class is pants."""
    grpc_port, rest_port, gateway_port = free_port(), free_port(), free_port()
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    images = ThreadingHTTPServer(
        ("127.0.0.1", 0),
        functools.partial(type("Quiet", (SimpleHTTPRequestHandler,), {"log_message": lambda *a: None}),
                          directory=str(ROOT / "tests" / "data")),
    )  # fmt: skip
    threading.Thread(target=images.serve_forever, daemon=True).start()
    server = subprocess.Popen(
        [sys.executable, "-m", "model_tools.server", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
         "--model_name=clothing-model", f"--model_base_path={MODEL}", "--enable_batching",
         f"--batching_parameters_file={ROOT / 'images' / 'tf-serving' / 'batching.config'}"],
        **quiet,
    )  # fmt: skip
    gateway_env = {
        **os.environ,
        "TF_SERVING_HOST": f"127.0.0.1:{grpc_port}",
        "GATEWAY_MODEL_CONTRACT_FILE": str(CONTRACT),
        "GATEWAY_BIND": f"127.0.0.1:{gateway_port}",
        "GATEWAY_WORKERS": "1",
        "GATEWAY_ALLOWED_NETWORKS": "127.0.0.1/32",  # the demo's image server is on loopback
    }
    gateway = subprocess.Popen(
        [str(ROOT / ".venv-gateway" / "bin" / "gunicorn"), "-c", str(ROOT / "images" / "gateway" / "gunicorn.conf.py")],
        env=gateway_env,
        **quiet,
    )
    try:
        started = time.monotonic()
        wait_http(f"http://127.0.0.1:{rest_port}/v1/models/clothing-model", server)
        wait_http(f"http://127.0.0.1:{gateway_port}/readyz", gateway)
        print(f"model server and gateway ready in {time.monotonic() - started:.1f} s")
        url = f"http://127.0.0.1:{images.server_port}/pants.jpg"
        body = json.dumps({"url": url}).encode()
        print(f"$ curl -X POST http://127.0.0.1:{gateway_port}/predict -H 'Content-Type: application/json' "
              f"-d '{body.decode()}'")  # fmt: skip
        request = urllib.request.Request(
            f"http://127.0.0.1:{gateway_port}/predict", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback URL built here
            scores = json.load(response)
        print(json.dumps(scores, indent=2))
        top = max(scores, key=scores.get)
        print(f"top class: {top}")
        return 0 if top == "pants" else 1
    finally:
        for process in (gateway, server):
            process.terminate()
        for process in (gateway, server):
            process.wait(timeout=30)
        images.shutdown()


if __name__ == "__main__":
    sys.exit(main())
