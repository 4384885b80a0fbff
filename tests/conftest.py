"""Fixtures shared by every test suite (keep this small; suite-specific fixtures live in each suite's conftest)."""

from __future__ import annotations

import io
import socket
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on loopback right now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port (fail early if the process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


@pytest.fixture(scope="session")
def pants_jpeg() -> bytes:
    """The book's pants photo (tests/data/pants.jpg)."""
    return (DATA / "pants.jpg").read_bytes()


def image_bytes(color: tuple[int, int, int], size: tuple[int, int] = (64, 48), fmt: str = "PNG") -> bytes:
    """A solid-colour image encoded as fmt."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def bomb_png(side: int = 3000) -> bytes:
    """A tiny PNG that declares side x side pixels (a decompression bomb for small GATEWAY_MAX_PIXELS)."""
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, format="PNG")
    return buffer.getvalue()
