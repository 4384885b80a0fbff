"""Load generation: concurrent HTTP clients against a gateway, and concurrent batched Predict calls straight to the
model server (its own throughput, the ceiling the gateway is compared with)."""

from __future__ import annotations

import http.client
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any


def _summary(latencies: list[float], errors: int, seconds: float, items_per_call: int = 1) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {
        "calls": len(ordered),
        "errors": errors,
        "throughput_per_s": round(len(ordered) * items_per_call / seconds, 1),
        "p50_ms": round(ordered[len(ordered) // 2] * 1000, 1) if ordered else None,
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1) if ordered else None,
        "mean_ms": round(statistics.fmean(ordered) * 1000, 1) if ordered else None,
    }


def _run(call: Callable[[], bool], concurrency: int, seconds: float, warmup: float) -> tuple[list[float], int, float]:
    """Run call() from `concurrency` threads; record latencies after the warm-up."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start = time.monotonic()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    def worker() -> None:
        while (now := time.monotonic()) < stop_at:
            ok = call()
            took = time.monotonic() - now
            if now >= measure_from:
                with lock:
                    if ok:
                        latencies.append(took)
                    else:
                        errors[0] += 1

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors[0], seconds


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
    target: str, contract: Any, batch: Any, concurrency: int, seconds: float, use_uint8: bool
) -> dict[str, Any]:
    """Images per second of batched Predict calls straight to the model server."""
    from clothing_gateway.errors import GatewayError
    from clothing_gateway.tfserving import ModelServerClient

    client = ModelServerClient(target, contract, use_uint8=use_uint8)

    def call() -> bool:
        try:
            client.predict(batch, timeout=30)
            return True
        except GatewayError:
            return False

    result = _summary(*_run(call, concurrency, seconds, warmup=0.5), items_per_call=batch.shape[0])
    client.close()
    return result
