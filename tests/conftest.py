"""Fixtures shared by every test suite (keep this small; suite-specific fixtures live in each suite's conftest)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on loopback right now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def pants_jpeg() -> bytes:
    """The book's pants photo (tests/data/pants.jpg)."""
    return (DATA / "pants.jpg").read_bytes()
