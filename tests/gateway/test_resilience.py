"""Failure modes of real gunicorn gateways: model server down then back, request deadline, contract mismatch,
SIGTERM drain, invalid configuration."""

from __future__ import annotations

import base64
import io
import signal
import statistics
import threading
import time
import urllib.error
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.conftest import DATA
from tests.gateway.conftest import (
    Gateway,
    ImageServer,
    ModelServer,
    Response,
    gateway_env,
    image_bytes,
    start_image_server,
    write_contract,
)

RED = {"image_b64": base64.b64encode(image_bytes((220, 20, 20))).decode()}


def code_of(response: Response) -> tuple[int, str]:
    return response.status, response.json()["error"]["code"]


def test_model_server_down_then_back(contract_file: Path, make_gateway: Any) -> None:
    server = ModelServer(contract_file).start()
    try:
        gateway = make_gateway(gateway_env(server))
        assert gateway.post_json("/predict", RED).status == 200
        server.stop()
        down = gateway.post_json("/predict", RED)
        assert code_of(down) == (503, "model_unavailable")
        assert down.headers["Retry-After"] == "2"
        not_ready = gateway.request("GET", "/readyz")
        assert code_of(not_ready) == (503, "not_ready")
        assert "Retry-After" in not_ready.headers
        probe = gateway.request("GET", "/readyz?exclude=models")  # the pod stays in its Service, answering 503s
        assert probe.status == 200
        assert probe.json()["ready"] is False
        assert probe.json()["models"]["clothing-model"]["ready"] is False
        assert code_of(gateway.request("GET", "/readyz?exclude=everything")) == (400, "invalid_request")
        model = gateway.request("GET", "/v1/models/clothing-model")
        assert code_of(model) == (503, "not_ready")
        assert (model.json()["name"], model.json()["ready"]) == ("clothing-model", False)

        server.start()  # same port, same gateway process
        deadline = time.monotonic() + 15
        while (answer := gateway.post_json("/predict", RED)).status != 200:
            assert time.monotonic() < deadline, answer.body
            time.sleep(0.2)
        assert gateway.request("GET", "/readyz").status == 200
        assert gateway.request("GET", "/readyz?exclude=models").json()["ready"] is True
    finally:
        server.stop()


def test_deadline_exceeded(contract_file: Path, make_gateway: Any) -> None:
    slow = ModelServer(contract_file, latency=2.0).start()
    try:
        gateway = make_gateway(gateway_env(slow, GATEWAY_DEADLINE_SECONDS="0.6"))
        started = time.monotonic()
        assert code_of(gateway.post_json("/predict", RED)) == (504, "deadline_exceeded")
        assert time.monotonic() - started < 1.5
    finally:
        slow.stop()


def test_model_calls_in_flight_hold_no_thread_that_decodes_need(contract_file: Path, make_gateway: Any) -> None:
    """30 predictions wait on a slow model (1 s) in one worker, and every image is still decoded at once. A model
    call waited on as a blocking grpcio call held one of gevent's 10 pool threads for its whole duration, so the
    11th image on waited seconds for a thread to decode on (and was refused as "decoding queued")."""
    slow = ModelServer(contract_file, latency=1.0).start()
    try:
        gateway = make_gateway(gateway_env(slow, GATEWAY_WORKERS="1", GATEWAY_DEADLINE_SECONDS="30"))
        with ThreadPoolExecutor(max_workers=30) as clients:
            responses = list(clients.map(lambda _: gateway.post_json("/predict", RED, timeout=60), range(30)))
        assert [response.status for response in responses] == [200] * 30
        histogram = dict(
            line.split()
            for line in gateway.request("GET", "/metrics").body.decode().splitlines()
            if line.startswith("gateway_preprocess_duration_seconds_")
        )
        within_half_a_second = float(histogram['gateway_preprocess_duration_seconds_bucket{le="0.5"}'])
        assert within_half_a_second == float(histogram["gateway_preprocess_duration_seconds_count"]) >= 30
    finally:
        slow.stop()


def test_contract_mismatch_is_reported_exactly(model_server: ModelServer, make_gateway: Any, tmp_path: Path) -> None:
    wrong = write_contract(tmp_path / "wrong.json", outputName="logits")
    env = gateway_env(model_server, GATEWAY_MODEL_CONTRACT_FILE=str(wrong))
    gateway = make_gateway(env)
    ready = gateway.request("GET", "/readyz")
    assert code_of(ready) == (503, "not_ready")
    assert 'signature "serving_default" has no output "logits"; outputs: dense_7' in ready.json()["error"]["message"]
    assert code_of(gateway.post_json("/predict", RED)) == (502, "model_error")
    assert "model contract does not match the served model" in gateway.log.read_text()


def test_sigterm_drains_in_flight_requests(
    model_server: ModelServer, image_server: ImageServer, make_gateway: Any
) -> None:
    env = gateway_env(model_server, GATEWAY_DOWNLOAD_TIMEOUT_SECONDS="10", GATEWAY_GRACEFUL_TIMEOUT="10")
    gateway: Gateway = make_gateway(env)
    assert gateway.process is not None
    results: list[Response] = []
    slow_url = image_server.url("/slow?seconds=3")
    client = threading.Thread(target=lambda: results.append(gateway.post_json("/predict", {"url": slow_url})))
    client.start()
    time.sleep(0.5)  # the request is in flight, waiting for the slow download
    gateway.process.send_signal(signal.SIGTERM)
    time.sleep(1.3)  # a gevent worker notices within a second, then stops accepting
    with pytest.raises((urllib.error.URLError, OSError)):
        gateway.request("GET", "/healthz", timeout=2)  # no new connections once draining
    client.join(timeout=15)
    assert len(results) == 1
    assert results[0].status == 200, results[0].body
    assert gateway.process.wait(timeout=15) == 0


def test_many_concurrent_url_requests_to_one_image_host_all_succeed(
    model_server: ModelServer, make_gateway: Any
) -> None:
    """64 clients, two workers, one image host: every request is answered 200."""
    image_host = start_image_server()
    patient = {
        "GATEWAY_DOWNLOAD_TIMEOUT_SECONDS": "60",
        "GATEWAY_DEADLINE_SECONDS": "60",
        "GATEWAY_MAX_LOOP_LAG_SECONDS": "60",
        "GATEWAY_MAX_QUEUE_SECONDS": "60",
    }  # a loaded CI machine is slow: no overload refusal either (what this test checks is the keep-alive race)
    gateway: Gateway = make_gateway(gateway_env(model_server, GATEWAY_WORKERS="2", **patient))
    body = {"url": image_host.url("/pants.jpg")}
    # Each client waits past the gateway's own 60 s limits, so every status is the gateway's answer (twice a CI run
    # with background builds saw one request of 384 unanswered after a 30 s client timeout; cause not found).
    with ThreadPoolExecutor(max_workers=64) as clients:
        statuses = Counter(clients.map(lambda _: gateway.post_json("/predict", body, timeout=90).status, range(384)))
    image_host.httpd.shutdown()
    image_host.httpd.server_close()
    assert statuses == {200: 384}, gateway.log.read_text()[-3000:]
    assert "unhandled error" not in gateway.log.read_text()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GATEWAY_DEADLINE_SECONDS": "soon"}, "GATEWAY_DEADLINE_SECONDS must be a number of seconds"),
        ({"GATEWAY_MODEL_CONTRACT_FILE": ""}, "no model contract"),
        ({"TF_SERVING_HOST": "http://tf-serving:8501"}, "TF_SERVING_HOST is a gRPC target"),
        ({"GATEWAY_WORKERS": "many"}, "GATEWAY_WORKERS must be an integer"),
    ],
)
def test_invalid_configuration_stops_gunicorn_with_one_line(
    model_server: ModelServer, make_gateway: Any, env: dict[str, str], message: str
) -> None:
    gateway = make_gateway(gateway_env(model_server, **env), wait=False)
    assert gateway.process.wait(timeout=20) == 1
    last_line = gateway.log.read_text().strip().splitlines()[-1]
    assert last_line.startswith("gateway: invalid configuration: ")
    assert message in last_line


def test_past_the_in_flight_bound_a_prediction_is_refused_at_once(
    model_server: ModelServer, image_server: ImageServer, make_gateway: Any
) -> None:
    env = gateway_env(
        model_server, GATEWAY_WORKERS="1", GATEWAY_MAX_IN_FLIGHT="2", GATEWAY_DOWNLOAD_TIMEOUT_SECONDS="5"
    )
    gateway: Gateway = make_gateway(env)
    slow = {"url": image_server.url("/slow?seconds=2")}
    with ThreadPoolExecutor(max_workers=2) as clients:
        held = [clients.submit(gateway.post_json, "/predict", slow) for _ in range(2)]
        time.sleep(0.5)  # both are in flight, waiting for their downloads
        started = time.monotonic()
        refused = gateway.post_json("/predict", RED)
        refused_in = time.monotonic() - started
        assert gateway.request("GET", "/healthz").status == 200  # probes are never refused
        assert [future.result().status for future in held] == [200, 200]
    assert code_of(refused) == (503, "overloaded")
    assert refused.headers["Retry-After"] == "2"
    assert refused_in < 0.5, refused_in
    assert 'gateway_shed_requests_total{bound="in_flight"} 1.0' in gateway.request("GET", "/metrics").body.decode()
    assert gateway.post_json("/predict", RED).status == 200  # admitted again once the others finished


def test_an_upload_is_answered_while_200_downloads_drip(
    model_server: ModelServer, make_gateway: Any, pants_jpeg: bytes
) -> None:
    """Waiting downloads hold no worker: 200 requests whose image arrives 200 bytes every 0.1 s do not delay an
    upload (with threads, 16 of them stalled a pod)."""
    tarpit = start_image_server()
    # One host: its per-host bound (128 per worker by default) would refuse some if a worker accepted most of them.
    # The 200 downloads end together: on a loaded CI machine that burst of decodes can rightly exceed the default
    # queue bound (seen: 38 refused as "about 1.5 s of decoding queued"); what is tested here is the upload.
    env = gateway_env(
        model_server,
        GATEWAY_WORKERS="2",
        GATEWAY_DOWNLOAD_TIMEOUT_SECONDS="60",
        GATEWAY_MAX_DOWNLOADS_PER_HOST="200",
        GATEWAY_MAX_QUEUE_SECONDS="60",
    )
    gateway: Gateway = make_gateway({**env, "GATEWAY_DEADLINE_SECONDS": "60"})
    drip = {"url": tarpit.url("/drip")}
    with ThreadPoolExecutor(max_workers=200) as clients:
        dripping = [clients.submit(gateway.post_json, "/predict", drip, timeout=90) for _ in range(200)]
        time.sleep(2)  # all 200 are downloading
        assert not any(future.done() for future in dripping)
        started = time.monotonic()
        upload = gateway.request("POST", "/predict", pants_jpeg, {"Content-Type": "image/jpeg"}, timeout=30)
        upload_seconds = time.monotonic() - started
        statuses = Counter(future.result().status for future in dripping)
    tarpit.httpd.shutdown()
    tarpit.httpd.server_close()
    assert upload.status == 200, upload.body
    assert upload_seconds < 5, upload_seconds  # generous: it is answered while the downloads still drip
    assert statuses == {200: 200}, {future.result().body for future in dripping if future.result().status != 200}


def upload(gateway: Gateway, image: bytes) -> Response:
    return gateway.request("POST", "/predict", image, {"Content-Type": "image/png"}, timeout=90)


def test_a_worker_busy_decoding_still_answers_at_once(model_server: ModelServer, make_gateway: Any) -> None:
    """Decoding runs beside the event loop, not on it: while 4 clients keep one worker decoding 16-megapixel PNGs
    (one decode slot), its health checks are answered long before a decode could finish."""
    buffer = io.BytesIO()
    Image.open(DATA / "pants.jpg").resize((4000, 4000)).save(buffer, format="PNG", compress_level=1)
    png = buffer.getvalue()
    env = gateway_env(model_server, GATEWAY_WORKERS="1", GATEWAY_MAX_CONCURRENT_DECODES="1")
    big = {
        "GATEWAY_MAX_DOWNLOAD_BYTES": str(len(png)),
        "GATEWAY_MAX_REQUEST_BYTES": str(len(png)),
        "GATEWAY_MAX_PIXELS": "16000000",
    }
    gateway: Gateway = make_gateway({**env, **big, "GATEWAY_MAX_QUEUE_SECONDS": "60", "GATEWAY_DEADLINE_SECONDS": "60"})
    started = time.monotonic()
    assert upload(gateway, png).status == 200
    alone = time.monotonic() - started  # one upload, decode included
    stop = threading.Event()

    def keep_decoding() -> list[int]:
        statuses = []
        while not stop.is_set():
            statuses.append(upload(gateway, png).status)
        return statuses

    with ThreadPoolExecutor(max_workers=4) as clients:
        busy = [clients.submit(keep_decoding) for _ in range(4)]
        time.sleep(2 * alone)  # every client has an upload queued or decoding
        probes = []
        for _ in range(10):
            started = time.monotonic()
            assert gateway.request("GET", "/healthz").status == 200
            probes.append(time.monotonic() - started)
            time.sleep(0.05)
        stop.set()
        statuses = Counter(status for future in busy for status in future.result())
    assert set(statuses) == {200}
    assert statistics.median(probes) < alone / 3, (probes, alone)
