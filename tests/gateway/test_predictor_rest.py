"""The REST client (KServe's TF Serving predictor API) against model-tools' stand-in of TF Serving's REST API on
loopback, in this process, serving a fake servable: compact columnar requests, readiness, the contract check,
tensor-name discovery, retries, deadlines and errors."""

from __future__ import annotations

import json
import shutil
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clothing_gateway.errors import GatewayError
from clothing_gateway.predictor.rest_api import RestPredictor, json_tensor
from model_interface.contract import ModelContract, parse_contract
from model_interface.preprocessing import load_image, resize_pixels, scale
from tests.conftest import free_port
from tests.gateway.conftest import CONTRACT, LABELS, predict
from tests.gateway.fake_servable import fake_logits

UINT8_CONTRACT = {**CONTRACT, "uint8": {"signatureName": "serving_uint8", "inputName": "pixels"}}
# What the book's transformer sends for one 299x299 image: json.dumps of the float32 pixels as Python floats.
BOOK_REQUEST_BYTES = 5_696_922


@pytest.fixture
def rest_server(serve_fake: Any) -> Any:
    """Start the stand-in with its REST API; returns its base URL."""

    def start(contract: dict[str, Any] = CONTRACT, **settings: Any) -> str:
        return f"http://127.0.0.1:{serve_fake(contract, rest=True, **settings).flags.rest_api_port}"

    return start


def client(base: str, contract: dict[str, Any] | ModelContract = CONTRACT, **kwargs: Any) -> Any:
    model_contract = contract if isinstance(contract, ModelContract) else parse_contract(contract)
    return RestPredictor(base, model_contract, **kwargs)


@pytest.fixture(scope="module")
def pixels(pants_jpeg: bytes) -> np.ndarray:
    return resize_pixels(load_image(pants_jpeg), (299, 299))[None]


def test_predict_with_floats(rest_server: Any, pixels: np.ndarray) -> None:
    float_client = client(rest_server())
    batch = np.concatenate([scale(pixels), np.zeros_like(scale(pixels))])
    outputs = predict(float_client, list(batch), timeout=10)
    np.testing.assert_array_equal(outputs, fake_logits(batch, len(LABELS)))
    body = float_client.encode(float_client.resolve(timeout=5), list(batch)).body
    assert list(json.loads(body)) == ["signature_name", "inputs"]  # the columnar format
    assert len(body) < 2 / 3 * len(json.dumps(batch.tolist()))  # shortest float32 text, no spaces


def test_uint8_signature_sends_integer_pixels_in_the_columnar_format(rest_server: Any, pixels: np.ndarray) -> None:
    uint8_client = client(rest_server(UINT8_CONTRACT), UINT8_CONTRACT, use_uint8=True)
    assert uint8_client.resolve(timeout=5).signature.name == "serving_uint8"
    outputs = predict(uint8_client, list(pixels), timeout=10)
    np.testing.assert_allclose(outputs, fake_logits(scale(pixels), len(LABELS)), rtol=1e-5, atol=1e-5)
    body = uint8_client.encode(uint8_client.resolve(timeout=5), list(pixels)).body
    assert json.loads(body)["inputs"] == {"pixels": pixels.tolist()}
    assert len(body) < BOOK_REQUEST_BYTES / 4.5  # 1.1 MB instead of the book's 5.7 MB


@pytest.mark.parametrize("shape", [(1, 299, 299, 3), (3, 5, 4, 3), (2, 3), (7,), (1, 1, 1, 1)])
def test_json_tensor_is_exact_without_spaces(shape: tuple[int, ...]) -> None:
    pixels = np.random.default_rng(len(shape)).integers(0, 256, size=shape, dtype=np.uint8)
    text = json_tensor(pixels)
    assert json.loads(text) == pixels.tolist()
    assert b" " not in text
    floats = pixels.astype(np.float32) / 127.5 - 1
    decoded = np.asarray(json.loads(json_tensor(floats)), dtype=np.float32)
    assert decoded.tobytes() == floats.tobytes()


def test_readiness(serve_fake: Any) -> None:
    server = serve_fake(rest=True)
    base = f"http://127.0.0.1:{server.flags.rest_api_port}"
    readiness = client(base).readiness(timeout=5)
    assert readiness.ready, readiness.detail
    assert "version 1 is AVAILABLE" in readiness.detail
    other_model = client(base, {**CONTRACT, "name": "other"}).readiness(timeout=5)
    assert not other_model.ready
    assert "HTTP 404: Could not find any versions of model other" in other_model.detail
    shutil.rmtree(Path(server.flags.model_base_path) / "1")
    server.models.poll()  # version 1 is unloaded: its directory is gone
    unloaded = client(base).readiness(timeout=5)
    assert not unloaded.ready
    assert "no AVAILABLE version (1: END)" in unloaded.detail


def test_readiness_checks_the_contract_against_the_metadata(rest_server: Any) -> None:
    readiness = client(rest_server(output_size=5)).readiness(timeout=5)
    assert not readiness.ready
    assert 'output "dense_7" has 5 scores per image, the contract has 10 labels' in readiness.detail


def test_tensor_names_are_discovered_from_the_metadata(rest_server: Any, pixels: np.ndarray) -> None:
    unnamed = replace(parse_contract(CONTRACT), input_name="", output_name="")
    discovering = client(rest_server(), unnamed, discover_tensor_names=True)
    signature = discovering.resolve(timeout=5).signature
    assert (signature.name, signature.input_name, signature.output_name) == ("serving_default", "input_8", "dense_7")
    assert discovering.readiness(timeout=5).ready
    np.testing.assert_array_equal(
        predict(discovering, list(scale(pixels)), timeout=10), fake_logits(scale(pixels), len(LABELS))
    )


def test_model_server_down_is_unavailable_after_retries(pixels: np.ndarray) -> None:
    retries: list[int] = []
    down = client(f"http://127.0.0.1:{free_port()}", on_retry=lambda: retries.append(1))
    with pytest.raises(GatewayError) as caught:
        predict(down, list(scale(pixels)), timeout=5)
    assert caught.value.code == "model_unavailable"
    assert len(retries) == 2
    readiness = down.readiness(timeout=1)
    assert not readiness.ready
    assert "unavailable" in readiness.detail


class Overloaded(BaseHTTPRequestHandler):
    """TF Serving answering UNAVAILABLE (HTTP 503) to everything."""

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def _unavailable(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"error": "Request was rejected: batch queue full"}'
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _unavailable


def test_http_503_is_retried_then_unavailable(pixels: np.ndarray) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Overloaded)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        retries: list[int] = []
        overloaded = client(f"http://127.0.0.1:{server.server_address[1]}", on_retry=lambda: retries.append(1))
        with pytest.raises(GatewayError) as caught:
            predict(overloaded, list(scale(pixels)), timeout=5)
        assert (caught.value.code, len(retries)) == ("model_unavailable", 2)
        assert "HTTP 503" in caught.value.message
        assert "HTTP 503: Request was rejected: batch queue full" in overloaded.readiness(timeout=2).detail
    finally:
        server.shutdown()
        server.server_close()


def test_deadline(rest_server: Any, pixels: np.ndarray) -> None:
    with pytest.raises(GatewayError) as caught:
        predict(client(rest_server(latency=1.0)), list(scale(pixels)), timeout=0.3)
    assert caught.value.code == "deadline_exceeded"


@pytest.mark.parametrize(
    ("contract", "code", "message"),
    [
        ({**CONTRACT, "signatureName": "nope"}, "model_error", 'HTTP 400: Serving signature name: "nope" not found'),
        ({**CONTRACT, "name": "other"}, "model_unavailable", "unavailable (HTTP 404)"),
    ],
)
def test_refused_requests(
    rest_server: Any, pixels: np.ndarray, contract: dict[str, Any], code: str, message: str
) -> None:
    with pytest.raises(GatewayError) as caught:
        predict(client(rest_server(), contract), list(scale(pixels)), timeout=5)
    assert caught.value.code == code
    assert message in caught.value.message
