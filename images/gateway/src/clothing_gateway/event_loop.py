"""What the gateway does about gevent's event loop (gunicorn's gevent worker; see gunicorn.conf.py).

Every request of a worker runs on one OS thread, switching at I/O. Two things follow: CPU-heavy work must leave that
thread (`off_the_event_loop`), and when the thread itself is saturated every request waits for it, whatever the
other bounds say (`LoopLag` measures that wait). Outside gevent (tests, a threaded server) both are no-ops.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def _under_gevent() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("threading"))


def off_the_event_loop(function: Callable[..., T], *args: Any) -> T:
    """Run CPU-bound `function` on a native thread of gevent's pool when this process runs gevent (a 100 ms decode on
    the loop would stall every other request, health checks included); in the calling thread otherwise. Pillow and
    NumPy release the GIL while they work, so the loop keeps answering."""
    if not _under_gevent():
        return function(*args)
    import gevent

    return gevent.get_hub().threadpool.apply(function, args)


class LoopLag:
    """How late the event loop runs what is ready: a greenlet asks to wake every `interval` seconds and measures how
    late it woke. `seconds` is the least of the last `readings` measurements: a lag that lasted about 0.1 s (a standing
    queue: the worker's CPU cannot keep up), not one long turn of the loop (a burst of arrivals, which it absorbs).
    That is about how long a request arriving now waits before the worker starts on it. Always 0 outside gevent.

    Only predictions ask for it (admission), so it is measured only while they arrive (`arrived()`): after
    `idle_after` seconds without one the watcher reads 0 and sleeps until the next, and an idle worker costs no CPU
    (100 wake-ups a second were ~16 millicores per worker, enough to hold an HPA's replicas up)."""

    def __init__(
        self, report: Callable[[float], None], interval: float = 0.01, readings: int = 10, idle_after: float = 1.0
    ) -> None:
        self.report = report
        self.interval = interval
        self.idle_after = idle_after
        self.seconds = 0.0
        self._recent: deque[float] = deque(maxlen=readings)
        self._last_arrival = 0.0
        self._arrival: Any = None  # a gevent Event once started

    def start(self) -> None:
        """Start watching (in a gevent worker, once its loop is about to run: gunicorn's post_worker_init)."""
        if _under_gevent():
            import gevent
            from gevent.event import Event

            self._arrival = Event()
            gevent.spawn(self._watch)

    def arrived(self) -> None:
        """A prediction arrived: keep measuring (from the event loop's thread, like every request)."""
        self._last_arrival = time.monotonic()
        if self._arrival is not None and not self._arrival.is_set():
            self._arrival.set()

    def _watch(self) -> None:
        import gevent

        while True:
            if time.monotonic() - self._last_arrival > self.idle_after:
                self._recent.clear()
                self.seconds = 0.0
                self.report(0.0)
                self._arrival.clear()  # no switch since the check: an arrival cannot fall in between
                self._arrival.wait()
            started = time.perf_counter()
            gevent.sleep(self.interval)
            self._recent.append(max(0.0, time.perf_counter() - started - self.interval))
            self.seconds = min(self._recent)
            self.report(self.seconds)
