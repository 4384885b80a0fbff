"""The gateway's HTTP API as users see it: book format, uploads, KServe V1, every error class, the OpenAPI document,
in this process with Flask's test client (`client`); the model server is model-tools' stand-in with a fake servable,
over real gRPC; images come from a loopback image server. What needs the real process runs against gunicorn
(`gateway`, from .venv-gateway, no TensorFlow): the request-body limit before the body is read, request ids in the
logs, the workers' metrics, no TensorFlow in the workers, the smoke module."""

from __future__ import annotations

import base64
import http.client
import json
import re
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest

from clothing_gateway.app import create_app
from clothing_gateway.config import Config
from clothing_gateway.errors import ERROR_CODES
from clothing_gateway.predictor.grpc_api import GrpcPredictor
from model_interface.preprocessing import preprocess
from tests.conftest import DATA, REPO, free_port
from tests.gateway.conftest import (
    LABELS,
    Gateway,
    ImageServer,
    InProcessGateway,
    ModelServer,
    gateway_env,
    image_bytes,
)
from tests.gateway.fake_servable import fake_logits

RED_PNG = image_bytes((220, 20, 20))


def expected_scores(data: bytes) -> dict[str, float]:
    """What the book's gateway returns for these image bytes if the model were the fake servable."""
    logits = fake_logits(preprocess(data, (299, 299))[None], len(LABELS))[0]
    return dict(zip(LABELS, logits.tolist(), strict=True))


def multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def test_book_request_format(client: InProcessGateway, image_server: ImageServer, pants_jpeg: bytes) -> None:
    response = client.post_json("/predict", {"url": image_server.url("/pants.jpg")})
    assert response.status == 200, response.body
    assert response.headers["Content-Type"] == "application/json"
    scores = response.json()
    assert list(scores) == LABELS
    assert scores == expected_scores(pants_jpeg)


def test_content_is_sniffed_not_taken_from_headers(
    client: InProcessGateway, image_server: ImageServer, pants_jpeg: bytes
) -> None:
    response = client.post_json("/predict", {"url": image_server.url("/pants-as-html")})
    assert response.json() == expected_scores(pants_jpeg)


@pytest.mark.parametrize("content_type", ["image/jpeg", "image/png", "application/octet-stream"])
def test_raw_upload(client: InProcessGateway, pants_jpeg: bytes, content_type: str) -> None:
    response = client.request("POST", "/predict", pants_jpeg, {"Content-Type": content_type})
    assert response.status == 200, response.body
    assert response.json() == expected_scores(pants_jpeg)


@pytest.mark.parametrize("field", ["image", "file"])
def test_multipart_upload(client: InProcessGateway, pants_jpeg: bytes, field: str) -> None:
    body, content_type = multipart(field, "pants.jpg", pants_jpeg)
    response = client.request("POST", "/predict", body, {"Content-Type": content_type})
    assert response.status == 200, response.body
    assert response.json() == expected_scores(pants_jpeg)


def test_base64_upload_and_top_k(client: InProcessGateway) -> None:
    payload = {"image_b64": base64.b64encode(RED_PNG).decode()}
    response = client.post_json("/predict?top_k=3", payload)
    assert response.status == 200, response.body
    expected = sorted(expected_scores(RED_PNG).items(), key=lambda item: -item[1])[:3]
    assert list(response.json().items()) == expected


def test_kserve_v1_batch(client: InProcessGateway, image_server: ImageServer, pants_jpeg: bytes) -> None:
    blue = image_server.httpd.images["/blue.jpg"][1]
    instances = [
        {"url": image_server.url("/pants.jpg")},
        {"b64": base64.b64encode(RED_PNG).decode()},
        {"url": image_server.url("/blue.jpg")},
    ]
    response = client.post_json("/v1/models/clothing-model:predict", {"instances": instances})
    assert response.status == 200, response.body
    predictions = response.json()["predictions"]
    assert predictions == [expected_scores(pants_jpeg), expected_scores(RED_PNG), expected_scores(blue)]
    assert len({max(p, key=lambda label: p[label]) for p in predictions}) > 1  # different images, different winners


def test_kserve_model_readiness(client: InProcessGateway) -> None:
    response = client.request("GET", "/v1/models/clothing-model")
    assert (response.status, response.json()) == (200, {"name": "clothing-model", "ready": True})
    assert client.request("GET", "/v1/models/other").json()["error"]["code"] == "model_not_found"


def test_health_and_readiness(client: InProcessGateway) -> None:
    assert client.request("GET", "/healthz").json() == {"status": "ok"}
    ready = client.request("GET", "/readyz")
    assert ready.status == 200
    assert ready.json()["ready"] is True
    model = ready.json()["models"]["clothing-model"]
    assert model["ready"] is True
    assert model["preprocessing"] == {"serving": "exact", "validated": "exact"}  # the book's contract


def _error(response: object) -> tuple[int, str]:
    status, body = response.status, response.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert "Traceback" not in body["error"]["message"]
    return status, body["error"]["code"]


JSON = {"Content-Type": "application/json"}
ERROR_CASES = [
    # (name, method, path, body, headers, expected status, expected code)
    ("bad json", "POST", "/predict", b"{not json", JSON, 400, "invalid_json"),
    ("json array", "POST", "/predict", b"[1, 2]", JSON, 400, "invalid_json"),
    ("no field", "POST", "/predict", b"{}", JSON, 400, "invalid_request"),
    ("unknown field", "POST", "/predict", b'{"uri": "http://x"}', JSON, 400, "invalid_request"),
    ("url not a string", "POST", "/predict", b'{"url": 5}', JSON, 400, "invalid_request"),
    ("url and b64", "POST", "/predict", b'{"url": "http://a/", "image_b64": "AA=="}', JSON, 400, "invalid_request"),
    ("bad base64", "POST", "/predict", b'{"image_b64": "@@@"}', JSON, 400, "invalid_base64"),
    ("relative url", "POST", "/predict", b'{"url": "example.com/x.jpg"}', JSON, 400, "invalid_url"),
    ("top_k zero", "POST", "/predict?top_k=0", b'{"url": "http://a/"}', JSON, 400, "invalid_request"),
    ("top_k too big", "POST", "/predict?top_k=11", b'{"url": "http://a/"}', JSON, 400, "invalid_request"),
    ("empty raw body", "POST", "/predict", b"", {"Content-Type": "image/jpeg"}, 400, "invalid_request"),
    ("multipart without file", "POST", "/predict", b"--b--\r\n", {"Content-Type": "multipart/form-data; boundary=b"},
     400, "invalid_request"),
    ("no instances", "POST", "/v1/models/clothing-model:predict", b'{"instances": []}', JSON, 400, "invalid_request"),
    ("bad instance", "POST", "/v1/models/clothing-model:predict", b'{"instances": [{"url": "http://a/"}, 7]}', JSON,
     400, "invalid_request"),
    ("unknown path", "GET", "/nope", None, {}, 404, "not_found"),
    ("unknown model", "POST", "/v1/models/resnet:predict", b'{"instances": [{"url": "http://a/"}]}', JSON,
     404, "model_not_found"),
    ("GET predict", "GET", "/predict", None, {}, 405, "method_not_allowed"),
    ("PUT healthz", "PUT", "/healthz", b"", {}, 405, "method_not_allowed"),
    ("upload over max image bytes", "POST", "/predict", b"\xff" * (1024 * 1024 + 1), {"Content-Type": "image/jpeg"},
     413, "image_too_large"),
    ("batch too large", "POST", "/v1/models/clothing-model:predict",
     json.dumps({"instances": [{"url": "http://a/"}] * 5}).encode(), JSON, 400, "batch_too_large"),
    ("text body", "POST", "/predict", b"hello", {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
    ("form body", "POST", "/predict", b"url=x", {"Content-Type": "application/x-www-form-urlencoded"},
     415, "unsupported_media_type"),
    ("kserve not json", "POST", "/v1/models/clothing-model:predict", b"x", {"Content-Type": "text/plain"},
     415, "unsupported_media_type"),
    ("upload not an image", "POST", "/predict", b"GIF89a-but-not-really", {"Content-Type": "image/gif"},
     415, "not_an_image"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "code"),
    [pytest.param(*case[1:], id=case[0]) for case in ERROR_CASES],
)
def test_request_errors(
    client: InProcessGateway,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    response = client.request(method, path, body, headers)
    assert _error(response) == (status, code)
    if status == 405:
        assert response.headers["Allow"]


def test_json_nested_too_deeply_is_a_client_error(client: InProcessGateway) -> None:
    for body in (b"[" * 100_000, b'{"url": ' + b"[" * 100_000):
        assert _error(client.request("POST", "/predict", body, JSON)) == (400, "invalid_json")


def test_body_over_max_request_bytes_is_refused_before_it_is_read(gateway: Gateway) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    connection.putrequest("POST", "/predict")
    connection.putheader("Content-Type", "image/jpeg")
    connection.putheader("Content-Length", str(4 * 1024 * 1024 + 1))
    connection.endheaders(b"\xff\xd8" + b"\0" * 1000)  # the client sends only the start of the body
    response = connection.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["error"]["code"] == "payload_too_large"
    connection.close()


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/declared-huge", 413, "image_too_large"),
        ("/endless", 413, "image_too_large"),
        ("/bomb.png", 413, "too_many_pixels"),
        ("/text.txt", 415, "not_an_image"),
        ("/fake.jpg", 415, "not_an_image"),
        ("/status/404", 502, "download_failed"),
        ("/status/503", 502, "download_failed"),
        ("/redirect-chain?n=5", 502, "download_failed"),
        ("/slow?seconds=3", 504, "download_timeout"),
        ("/drip", 504, "download_timeout"),
    ],
)
def test_download_errors(
    client: InProcessGateway, image_server: ImageServer, path: str, status: int, code: str
) -> None:
    assert _error(client.post_json("/predict", {"url": image_server.url(path)})) == (status, code)


def test_blocked_urls_even_with_loopback_allowed(client: InProcessGateway) -> None:
    for url in ("http://169.254.169.254/latest/meta-data/", "file:///etc/passwd", "http://10.0.0.1/x.jpg"):
        assert _error(client.post_json("/predict", {"url": url})) == (422, "blocked_url")


def test_batch_errors_name_the_instance(client: InProcessGateway, image_server: ImageServer) -> None:
    instances = [{"url": image_server.url("/pants.jpg")}, {"url": image_server.url("/text.txt")}]
    response = client.post_json("/v1/models/clothing-model:predict", {"instances": instances})
    assert _error(response) == (415, "not_an_image")
    assert response.json()["error"]["message"].startswith("instances[1]: ")


def test_request_id_is_echoed_and_logged(gateway: Gateway) -> None:
    response = gateway.request("GET", "/nope", headers={"X-Request-ID": "test-1234.abc"})
    assert response.headers["X-Request-ID"] == "test-1234.abc"
    generated = gateway.request("GET", "/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["X-Request-ID"])
    lines = [json.loads(line) for line in gateway.log.read_text().splitlines() if line.startswith("{")]
    logged = [line for line in lines if line.get("request_id") == "test-1234.abc"]
    assert logged
    assert logged[-1]["status"] == 404
    assert logged[-1]["path"] == "/nope"
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)


def test_metrics(gateway: Gateway, image_server: ImageServer) -> None:
    for _ in range(6):
        gateway.request("GET", "/healthz")
    gateway.post_json("/predict", {"url": image_server.url("/pants.jpg")})
    response = gateway.request("GET", "/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = response.body.decode()
    healthz = re.search(r'gateway_requests_total\{[^}]*route="/healthz"[^}]*status="200"[^}]*\} (\S+)', text)
    assert healthz
    assert float(healthz.group(1)) >= 6
    for name in (
        'gateway_request_duration_seconds_bucket{le="0.005",outcome="ok",route="/predict"}',
        'gateway_download_duration_seconds_count{outcome="ok"}',
        "gateway_preprocess_duration_seconds_count",
        'gateway_model_duration_seconds_count{model="clothing-model",outcome="ok",version_label="latest"}',
        "gateway_batch_size_bucket",
        "gateway_in_flight_requests",
        "gateway_downloads_in_flight",
        "gateway_queued_requests",
        "gateway_event_loop_lag_seconds",  # measured in each gevent worker
        'outcome="not_found"',
    ):
        assert name in text, name


def test_a_worker_whose_event_loop_runs_late_refuses_predictions_at_once(model_server: ModelServer) -> None:
    """Past GATEWAY_MAX_LOOP_LAG_SECONDS a prediction is refused before Flask handles it, with the usual error body,
    Retry-After and request id, and counted; health checks and unknown routes are answered as always."""
    app = create_app(Config.from_env(gateway_env(model_server, GATEWAY_MAX_LOOP_LAG_SECONDS="0.05")))
    client = InProcessGateway(app)
    gateway = app.extensions["clothing_gateway"]
    gateway.loop_lag.seconds = 0.2  # as measured in a saturated gevent worker
    try:
        refused = client.request("POST", "/v1/models/clothing-model:predict", b"{}", {"X-Request-ID": "lagging-1"})
        assert client.request("GET", "/healthz").status == 200
        assert client.request("POST", "/nope").status == 404
        gateway.loop_lag.seconds = 0.0
        admitted = client.post_json("/predict", {"image_b64": "not base64!"})
    finally:
        gateway.close()
    assert refused.status == 503
    assert refused.json()["error"]["code"] == "overloaded"
    assert "200 ms late" in refused.json()["error"]["message"]
    assert (refused.headers["Retry-After"], refused.headers["X-Request-ID"]) == ("2", "lagging-1")
    assert admitted.json()["error"]["code"] == "invalid_base64"  # admitted again: Flask handled it
    registry = gateway.metrics.registry
    assert registry.get_sample_value("gateway_shed_requests_total", {"bound": "event_loop"}) == 1
    labels = {"route": "/v1/models/<model:name>:predict", "method": "POST", "status": "503", "outcome": "overloaded"}
    assert registry.get_sample_value("gateway_requests_total", labels) == 1


def test_openapi_documents_every_error_code(client: InProcessGateway) -> None:
    document = client.request("GET", "/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {
        "/predict", "/v1/models/{name}:predict", "/v1/models/{name}/versions/{version}:predict",
        "/v1/models/{name}/labels/{label}:predict", "/v1/models/{name}", "/healthz", "/readyz", "/metrics",
        "/openapi.json",
    }  # fmt: skip
    text = json.dumps(document)
    for code in ERROR_CODES:
        if code not in ("not_found", "method_not_allowed"):  # any path / any method: not per operation
            assert f'"{code}"' in text, code
    assert set(document["paths"]["/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"][
        "properties"]) == set(LABELS)  # fmt: skip


def test_no_tensorflow_in_the_gateway_workers(gateway: Gateway) -> None:
    assert gateway.process is not None
    master = gateway.process.pid
    workers = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    assert workers
    for pid in workers:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "tensorflow" not in maps
        assert "/.venv/" not in maps


def test_smoke_module(gateway: Gateway, pants_jpeg: bytes) -> None:
    python = str(REPO / ".venv-gateway" / "bin" / "python")
    winner = max(expected_scores(pants_jpeg).items(), key=lambda item: item[1])[0]
    base = [python, "-m", "clothing_gateway.smoke", "--endpoint", gateway.base, "--timeout", "10"]
    ready = subprocess.run([*base, "--ready-only"], capture_output=True, text=True, timeout=30)
    assert ready.returncode == 0, ready.stderr
    image = str(DATA / "pants.jpg")
    ok = subprocess.run([*base, "--image", image, "--expect", winner], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert winner in ok.stdout
    assert "OK" in ok.stdout
    wrong = "dress" if winner != "dress" else "hat"
    bad = subprocess.run([*base, "--image", image, "--expect", wrong], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1
    assert "FAIL" in bad.stderr


def test_scores_match_the_model_output(client: InProcessGateway, pants_jpeg: bytes) -> None:
    """The gateway's numbers are exactly the model's float32 outputs, as the book's float_val-based code shows."""
    response = client.request("POST", "/predict", pants_jpeg, {"Content-Type": "image/jpeg"})
    logits = fake_logits(preprocess(pants_jpeg, (299, 299))[None], len(LABELS))[0]
    assert np.array(list(response.json().values()), dtype=np.float32).tobytes() == logits.tobytes()


def test_the_app_uses_the_predictors_it_is_given(model_server: ModelServer, pants_jpeg: bytes) -> None:
    """create_app(config, predictors): here one whose model server is down; readiness and predictions say so."""
    config = Config.from_env(gateway_env(model_server))
    down = GrpcPredictor(f"127.0.0.1:{free_port()}", config.default_contract, max_attempts=1)
    app = create_app(config, predictors=[down])
    client = InProcessGateway(app)
    try:
        ready = client.request("GET", "/v1/models/clothing-model")
        assert (ready.status, ready.json()["name"], ready.json()["ready"]) == (503, "clothing-model", False)
        assert ready.json()["error"]["code"] == "not_ready"
        assert ready.headers["Retry-After"]
        answer = client.request("POST", "/predict", pants_jpeg, {"Content-Type": "image/jpeg"})
        assert _error(answer) == (503, "model_unavailable")
    finally:
        app.extensions["clothing_gateway"].close()
