"""Open-loop load (not a test): `python -m bench.open_loop --port P --rate R --seconds S --body FILE`.

Sends `POST /predict` with the body at a fixed rate whatever the answers, as independent users do (a closed loop of
clients slows down with the server and cannot overload it). Each request takes an idle keep-alive connection or opens
a new one; its latency counts from the moment it was due, so a late send is not hidden. Runs in a process of its own
(asyncio, one thread), so the load generator neither shares a GIL with the benchmark's image host nor falls behind.
The first `--warmup` seconds are sent but not counted (the server's estimates settle); of the requests due in the
measured window it prints one JSON object: how many, answers by status and p50/p99 latency by status, and the
goodput (200s completed within the window per second).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _Client:
    def __init__(self, port: int, body: bytes, content_type: str, timeout: float) -> None:
        self.port = port
        self.request = (
            f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.timeout = timeout
        self.idle: list[Connection] = []
        self.answers: list[tuple[float, float, str]] = []  # due, completed, status

    async def send(self, due: float) -> None:
        """One request; its status (or "error") is recorded with when it was due and when it completed."""
        try:
            status = await asyncio.wait_for(self._exchange(), self.timeout)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, IndexError, ValueError):
            status = "error"
        self.answers.append((due, time.monotonic(), status))

    async def _exchange(self) -> str:
        reader, writer = self.idle.pop() if self.idle else await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(self.request)
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
            length = int(head.split("content-length:", 1)[1].split("\r\n", 1)[0])
            await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        if "connection: close" in head:
            writer.close()
        else:
            self.idle.append((reader, writer))
        return head.split(" ", 2)[1]


async def open_loop(
    port: int, body: bytes, content_type: str, rate: float, seconds: float, warmup: float, timeout: float
) -> Any:
    """Send requests evenly spaced at `rate` for warmup + seconds, wait for every answer (at most `timeout` each),
    and summarise the measured window."""
    client = _Client(port, body, content_type, timeout)
    start = time.monotonic()
    tasks = []
    for index in range(int(rate * (warmup + seconds))):
        due = start + index / rate
        if (wait := due - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(client.send(due)))
    await asyncio.gather(*tasks)
    for _, writer in client.idle:
        writer.close()
    window = (start + warmup, start + warmup + seconds)
    latencies: dict[str, list[float]] = {}
    for due, completed, status in client.answers:
        if window[0] <= due < window[1]:
            latencies.setdefault(status, []).append(completed - due)
    completed_ok = sum(
        1 for _, completed, status in client.answers if status == "200" and window[0] <= completed < window[1]
    )
    return {
        "sent": sum(len(values) for values in latencies.values()),
        "goodput_per_s": round(completed_ok / seconds, 1),
        "by_status": {status: _percentiles(values) for status, values in sorted(latencies.items())},
    }


def _percentiles(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "p50_ms": round(ordered[len(ordered) // 2] * 1000, 1),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.open_loop", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds sent before the measured window")
    parser.add_argument("--body", type=Path, required=True, help="file with the request body")
    parser.add_argument("--content-type", default="application/json")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before a request counts as an error")
    args = parser.parse_args()
    result = asyncio.run(
        open_loop(
            args.port, args.body.read_bytes(), args.content_type, args.rate, args.seconds, args.warmup, args.timeout
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
