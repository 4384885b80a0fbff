"""What the benchmarks share: ports, server processes (started, awaited, stopped), gunicorn command lines for the
gateway and the book's reference gateway, CPU and memory readings from /proc, and the benchmark photo."""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GATEWAY_VENV = REPO / ".venv-gateway"
PROJECT_BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port that is free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout} s (exit code {process.poll()})")


@contextmanager
def running(command: list[str], port: int, env: dict[str, str], log: Path, timeout: float = 30) -> Iterator[Any]:
    """Run a server process until the block ends; yields (process, seconds until its port accepted)."""
    started = time.monotonic()
    with log.open("ab") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=out)
    try:
        _wait_for_port(port, process, timeout)
        yield process, time.monotonic() - started
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def first_answer(port: int, timeout: float = 30) -> None:
    """Wait until GET /healthz answers 200 (the worker has loaded the app)."""
    import http.client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.01)
    raise TimeoutError("no answer from /healthz")


def worker_pids(master: int) -> list[int]:
    """The gunicorn workers of master."""
    return [int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()]


def worker_memory_mb(master: int, field: str = "Rss") -> list[float]:
    """Rss (or Pss: shared pages divided among the processes sharing them) of each gunicorn worker of master."""
    sizes = []
    for pid in worker_pids(master):
        match = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/smaps_rollup").read_text(), re.MULTILINE)
        if match:
            sizes.append(round(int(match.group(1)) / 1024, 1))
    return sizes


def photo_1200x800() -> bytes:
    """The pants photo resized to 1200x800, JPEG quality 90 (a typical phone-sized upload)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(REPO / "tests" / "data" / "pants.jpg").resize((1200, 800), Image.Resampling.BICUBIC).save(
        buffer, format="JPEG", quality=90
    )
    return buffer.getvalue()


def gunicorn_command(which: str, port: int, workers: int, threads: int) -> list[str]:
    """gateway (gateway-exact, gateway-fast): its gunicorn.conf.py; floor (floor-refused): bench/floor_app.py's app
    (its refused) under the same gevent workers; reference: the same workers and threads; reference-book: the book's
    `gunicorn --bind=0.0.0.0:9696 gateway:app` (one sync worker)."""
    if which.startswith("gateway"):
        return [str(GATEWAY_VENV / "bin" / "gunicorn"), "-c", str(REPO / "images" / "gateway" / "gunicorn.conf.py")]
    if which in ("floor", "floor-refused"):
        return [
            str(GATEWAY_VENV / "bin" / "gunicorn"),
            f"--bind=127.0.0.1:{port}",
            f"--workers={workers}",
            "--worker-class=gevent",
            "--no-control-socket",
            "bench.floor_app:refused" if which == "floor-refused" else "bench.floor_app:app",
        ]
    if which == "reference-book":
        return [
            str(PROJECT_BIN / "gunicorn"),
            f"--bind=127.0.0.1:{port}",
            "--no-control-socket",
            "bench.reference_gateway:app",
        ]
    return [
        str(PROJECT_BIN / "gunicorn"),
        f"--bind=127.0.0.1:{port}",
        f"--workers={workers}",
        f"--threads={threads}",
        "--worker-class=gthread",
        "--no-control-socket",
        "bench.reference_gateway:app",
    ]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes (all their threads)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks
