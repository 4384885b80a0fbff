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
from clothing_gateway.errors import GatewayError
from clothing_gateway.metrics import Metrics
from clothing_gateway.predictor.grpc_api import GrpcPredictor
from clothing_gateway.service import Classifier, DecodeSlots, ServedModel
from tests.gateway.conftest import ModelServer, gateway_env


@pytest.mark.parametrize("limit", [1, 2])
def test_full_size_decodes_are_bounded_per_worker(
    model_server: ModelServer, pants_jpeg: bytes, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    """However many threads classify at once, at most GATEWAY_MAX_CONCURRENT_DECODES images are decoded together."""
    config = Config.from_env(gateway_env(model_server, GATEWAY_MAX_CONCURRENT_DECODES=str(limit)))
    decoding, most = 0, 0
    lock = threading.Lock()
    real_image_pixels = service.image_pixels

    def slow_image_pixels(*args: Any) -> Any:
        nonlocal decoding, most
        with lock:
            decoding += 1
            most = max(most, decoding)
        time.sleep(0.05)  # long enough for the other threads to try
        try:
            return real_image_pixels(*args)
        finally:
            with lock:
                decoding -= 1

    monkeypatch.setattr(service, "image_pixels", slow_image_pixels)
    metrics = Metrics()
    classifier = Classifier(config, metrics)
    model = ServedModel(GrpcPredictor(model_server.target, config.default_contract), "exact")
    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            results = list(
                pool.map(lambda _: classifier.classify(model, [pants_jpeg], time.monotonic() + 10), range(6))
            )
    finally:
        classifier.close()
        model.predictor.close()
    assert most == limit
    assert all(len(scores) == 1 and len(scores[0]) == len(config.default_contract.labels) for scores in results)


def test_a_prediction_waiting_too_long_for_a_decode_slot_is_refused(
    model_server: ModelServer, pants_jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one decode slot held for 1 s, a second image waits at most GATEWAY_MAX_QUEUE_SECONDS, then 503."""
    env = gateway_env(model_server, GATEWAY_MAX_CONCURRENT_DECODES="1", GATEWAY_MAX_QUEUE_SECONDS="0.2")
    config = Config.from_env(env)
    real_image_pixels = service.image_pixels

    def slow_image_pixels(*args: Any) -> Any:
        time.sleep(1.0)
        return real_image_pixels(*args)

    monkeypatch.setattr(service, "image_pixels", slow_image_pixels)
    metrics = Metrics()
    classifier = Classifier(config, metrics)
    model = ServedModel(GrpcPredictor(model_server.target, config.default_contract), "exact")
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            first = pool.submit(classifier.classify, model, [pants_jpeg], time.monotonic() + 10)
            time.sleep(0.3)  # the first holds the only slot
            started = time.monotonic()
            with pytest.raises(GatewayError) as caught:
                classifier.classify(model, [pants_jpeg], time.monotonic() + 10)
            waited = time.monotonic() - started
            assert len(first.result()[0]) == len(config.default_contract.labels)
    finally:
        classifier.close()
        model.predictor.close()
    assert caught.value.code == "overloaded"
    assert "GATEWAY_MAX_QUEUE_SECONDS" in caught.value.message
    assert 0.15 < waited < 0.8, waited
    assert metrics.registry.get_sample_value("gateway_shed_requests_total", {"bound": "decode_queue"}) == 1
    assert metrics.registry.get_sample_value("gateway_queued_requests") == 0


def test_a_decode_queue_holding_more_work_than_the_bound_refuses_newcomers_and_keeps_admitted_images() -> None:
    """Decodes take 0.3 s; with one slot busy and 4 images queued (1.2 s of work, more than half the 2 s bound) a
    newcomer is refused (admission asks `refusal()`), while an image admitted before the queue grew, arriving from
    its download now, still gets its turn: refusing it would throw its download away."""
    decodes = DecodeSlots(slots=1, max_wait=2.0, metrics=Metrics())
    with decodes.hold():
        time.sleep(0.3)  # the recent decode time
    busy = threading.Event()

    def decode(seconds: float) -> None:
        with decodes.hold():
            busy.set()
            time.sleep(seconds)

    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [pool.submit(decode, 0.5)]
        assert busy.wait(5)
        futures += [pool.submit(decode, 0) for _ in range(4)]
        deadline = time.monotonic() + 5
        while decodes.metrics.registry.get_sample_value("gateway_queued_requests") != 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        reason = decodes.refusal()
        futures.append(pool.submit(decode, 0))  # admitted earlier, its download done
        assert [future.result() for future in futures] == [None] * 6
    assert reason is not None
    assert "GATEWAY_MAX_QUEUE_SECONDS" in reason, reason
    assert decodes.metrics.registry.get_sample_value("gateway_shed_requests_total", {"bound": "decode_queue"}) is None
    assert decodes.refusal() is None  # the queue is empty again: admitted
