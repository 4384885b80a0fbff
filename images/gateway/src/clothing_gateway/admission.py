"""A bound on the predictions one worker handles at once. Past it a request is refused at once (503 `overloaded`,
with Retry-After) rather than queued: a queue in front of a saturated worker only adds latency to every request
behind it, while a refusal lets the client or the load balancer try another pod."""

from __future__ import annotations

import threading


class Admission:
    """Counts the requests admitted and not yet finished; `enter` refuses once `limit` are in flight."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._in_flight = 0
        self._lock = threading.Lock()

    def enter(self) -> bool:
        """Admit one more request if fewer than `limit` are in flight."""
        with self._lock:
            if self._in_flight >= self.limit:
                return False
            self._in_flight += 1
            return True

    def leave(self) -> None:
        """An admitted request has finished."""
        with self._lock:
            self._in_flight -= 1
