"""A resource created on first use in each process.

gunicorn builds the app in each worker after the fork, but a gRPC channel, a connection pool or a thread pool must
never cross a fork in any case: `PerProcess` creates its resource lazily and again in a process that did not create
it, and closes only the one its own process created.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerProcess(Generic[T]):
    """`get()` returns this process's resource, created by `create` on first use; `close()` releases it."""

    def __init__(self, create: Callable[[], T], close: Callable[[T], None]) -> None:
        self._create = create
        self._close = close
        self._lock = threading.Lock()
        self._resource: T | None = None
        self._pid = 0

    def get(self) -> T:
        with self._lock:
            if self._resource is None or self._pid != os.getpid():
                self._resource = self._create()
                self._pid = os.getpid()
            return self._resource

    def close(self) -> None:
        """Release the resource if this process created it (a later `get()` creates a new one)."""
        with self._lock:
            if self._resource is not None and self._pid == os.getpid():
                self._close(self._resource)
            self._resource = None
