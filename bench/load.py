"""Load generation: concurrent HTTP clients against a gateway, and concurrent batched Predict calls straight to the
model server (its own throughput, the ceiling the gateway is compared with)."""

from __future__ import annotations

import http.client
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any


def _summary(
    finished: list[list[tuple[float, float]]], errors: int, calls_made: int, items_per_call: int = 1
) -> dict[str, Any]:
    """Throughput and latency from each client's (finish time, latency) list.

    Each client's rate is measured between its first and last completion in the window, not as calls per window:
    with calls that take seconds (big batches, a big model), counting whole calls would be off by up to one call
    per client.
    """
    ordered = sorted(latency for client in finished for _, latency in client)
    rate = sum((len(c) - 1) / (c[-1][0] - c[0][0]) for c in finished if len(c) > 1 and c[-1][0] > c[0][0])
    return {
        "calls": len(ordered),
        "errors": errors,
        "calls_made": calls_made,  # all of them, warm-up and tail included (for CPU per call)
        "throughput_per_s": round(rate * items_per_call, 1),
        "p50_ms": round(ordered[len(ordered) // 2] * 1000, 1) if ordered else None,
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1) if ordered else None,
        "mean_ms": round(statistics.fmean(ordered) * 1000, 1) if ordered else None,
    }


def _run(
    call: Callable[[], bool], concurrency: int, seconds: float, warmup: float
) -> tuple[list[list[tuple[float, float]]], int, int]:
    """Run call() in a loop from `concurrency` threads; per thread, the (finish time, latency) of the successful
    calls that finished within the measured window (after the warm-up), and the numbers of failed calls and of
    calls made in all."""
    finished: list[list[tuple[float, float]]] = [[] for _ in range(concurrency)]
    errors, made = [0], [0]
    lock = threading.Lock()
    start = time.monotonic()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    def client(mine: list[tuple[float, float]]) -> None:
        while (began := time.monotonic()) < stop_at:
            ok = call()
            now = time.monotonic()
            with lock:
                made[0] += 1
                errors[0] += not ok
            if ok and measure_from <= now <= stop_at:
                mine.append((now, now - began))

    threads = [threading.Thread(target=client, args=(mine,)) for mine in finished]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return finished, errors[0], made[0]


def http_load(
    port: int, body: bytes, content_type: str, concurrency: int, seconds: float, warmup: float = 1.0
) -> dict[str, Any]:
    """POST body to 127.0.0.1:port/predict from `concurrency` keep-alive clients for `seconds`."""
    local = threading.local()

    def call() -> bool:
        if getattr(local, "connection", None) is None:
            local.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            local.connection.request("POST", "/predict", body, {"Content-Type": content_type})
            response = local.connection.getresponse()
            response.read()
            return response.status == 200
        except (OSError, http.client.HTTPException):
            local.connection.close()
            local.connection = None
            return False

    return _summary(*_run(call, concurrency, seconds, warmup))


def model_throughput(
    target: str, contract: Any, batch: Any, concurrency: int, seconds: float, use_uint8: bool, warmup: float = 0.5
) -> dict[str, Any]:
    """Images per second of batched Predict calls straight to the model server."""
    from clothing_gateway.errors import GatewayError
    from clothing_gateway.predictor.grpc_api import GrpcPredictor

    predictor = GrpcPredictor(target, contract, use_uint8=use_uint8)
    resolved = predictor.resolve(timeout=30)

    def call() -> bool:
        try:
            predictor.predict(resolved, predictor.encode(resolved, list(batch)), timeout=30)
            return True
        except GatewayError:
            return False

    result = _summary(*_run(call, concurrency, seconds, warmup), items_per_call=batch.shape[0])
    predictor.close()
    return result
