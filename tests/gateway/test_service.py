"""The classifier (download, preprocess, predict) in-process, against model-tools' stand-in with a fake servable, over
real gRPC."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from clothing_gateway import service
from clothing_gateway.config import Config
from clothing_gateway.metrics import Metrics
from clothing_gateway.predictor.grpc_api import GrpcPredictor
from clothing_gateway.service import Classifier
from tests.gateway.conftest import ModelServer, gateway_env


@pytest.mark.parametrize("limit", [1, 2])
def test_full_size_decodes_are_bounded_per_worker(
    model_server: ModelServer, pants_jpeg: bytes, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    """However many threads classify at once, at most GATEWAY_MAX_CONCURRENT_DECODES images are decoded together."""
    config = Config.from_env(gateway_env(model_server, GATEWAY_MAX_CONCURRENT_DECODES=str(limit)))
    decoding, most = 0, 0
    lock = threading.Lock()
    real_load_image = service.load_image

    def slow_load_image(*args: Any) -> Any:
        nonlocal decoding, most
        with lock:
            decoding += 1
            most = max(most, decoding)
        time.sleep(0.05)  # long enough for the other threads to try
        try:
            return real_load_image(*args)
        finally:
            with lock:
                decoding -= 1

    monkeypatch.setattr(service, "load_image", slow_load_image)
    metrics = Metrics()
    classifier = Classifier(config, GrpcPredictor(model_server.target, config.contract), metrics)
    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            results = list(pool.map(lambda _: classifier.classify([pants_jpeg], time.monotonic() + 10), range(6)))
    finally:
        classifier.close()
    assert most == limit
    assert all(len(scores) == 1 and len(scores[0]) == len(config.contract.labels) for scores in results)
