"""The gateway against the committed trained model, served by model-tools' TF-Serving-compatible server (real
SavedModel, real GetModelMetadata, TF Serving's REST API): the pants photo comes out as pants through both the
float32 and the uint8 signatures, the committed contract matches what the server reports, and as a KServe transformer
the book's request works over REST and gRPC, with the contract or the book's transformer env."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import REPO, free_port, wait_for_port
from tests.gateway.conftest import LABELS, Gateway, ImageServer

MODEL = REPO / "model-tools" / "models" / "clothing-model"
CONTRACT = MODEL / "1" / "assets.extra" / "model-contract.json"


@dataclass(frozen=True)
class RealModelServer:
    """Addresses of the model server's two APIs."""

    grpc: str
    rest: str


@pytest.fixture(scope="module")
def real_model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealModelServer]:
    if not CONTRACT.exists():
        pytest.skip("the committed model is not there")
    pytest.importorskip("model_tools.server")
    port, rest_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("model-server") / "server.log"
    command = [
        sys.executable,
        "-m",
        "model_tools.server",
        f"--port={port}",
        f"--rest_api_port={rest_port}",
        "--model_name=clothing-model",
        f"--model_base_path={MODEL}",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=out, env={"TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        wait_for_port(port, process, timeout=90)
        wait_for_port(rest_port, process)
        yield RealModelServer(f"127.0.0.1:{port}", f"127.0.0.1:{rest_port}")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_pants_photo_is_pants_through_both_signatures(
    real_model_server: RealModelServer, make_gateway: Any, pants_jpeg: bytes
) -> None:
    results = {}
    for use_uint8 in ("true", "false"):
        env = {
            "TF_SERVING_HOST": real_model_server.grpc,
            "GATEWAY_MODEL_CONTRACT_FILE": str(CONTRACT),
            "GATEWAY_USE_UINT8": use_uint8,
        }
        gateway: Gateway = make_gateway(env)
        ready = gateway.request("GET", "/readyz")
        assert ready.status == 200, ready.body
        response = gateway.request("POST", "/predict", pants_jpeg, {"Content-Type": "image/jpeg"})
        assert response.status == 200, response.body
        results[use_uint8] = response.json()
    for scores in results.values():
        assert max(scores, key=lambda label: scores[label]) == "pants"
    uint8, float32 = results["true"], results["false"]
    assert list(uint8) == list(float32)
    for label in uint8:
        assert uint8[label] == pytest.approx(float32[label], abs=1e-3)


def test_the_committed_model_is_served_with_the_preprocessing_it_was_validated_with(
    real_model_server: RealModelServer, make_gateway: Any, pants_jpeg: bytes
) -> None:
    served = {}
    for setting in ("", "exact"):
        env = {
            "TF_SERVING_HOST": real_model_server.grpc,
            "GATEWAY_MODEL_CONTRACT_FILE": str(CONTRACT),
            "GATEWAY_PREPROCESSING": setting,
        }
        gateway: Gateway = make_gateway(env)
        preprocessing = gateway.request("GET", "/readyz").json()["models"]["clothing-model"]["preprocessing"]
        served[preprocessing["serving"]] = preprocessing
        response = gateway.request("POST", "/predict", pants_jpeg, {"Content-Type": "image/jpeg"})
        scores = response.json()
        assert max(scores, key=lambda label: scores[label]) == "pants"
        served[preprocessing["serving"]]["pants"] = scores["pants"]
    assert served["fast"]["validated"] == served["exact"]["validated"] == "fast"
    assert served["fast"]["pants"] != served["exact"]["pants"]  # the setting reaches the decoder


def test_kserve_transformer_answers_the_books_request_over_rest_and_grpc(
    real_model_server: RealModelServer, make_gateway: Any, image_server: ImageServer
) -> None:
    """As KServe starts it: the book's InferenceService env (tensor names read from the model server) or the
    contract (REST then uses the uint8 signature), over TF Serving's REST API or gRPC."""
    book_env = {"MODEL_INPUT_SIZE": "128,128", "KERAS_MODEL_NAME": "xception", "MODEL_LABELS": ", ".join(LABELS)}
    setups = {
        "rest, book env": (real_model_server.rest, {**book_env, "GATEWAY_PREDICTOR_PROTOCOL": "rest"}),
        # The book's env means keras_image_helper's pixels (exact); the contract says fast: compared on the same pixels.
        "rest, contract": (
            real_model_server.rest,
            {"GATEWAY_MODEL_CONTRACT_FILE": str(CONTRACT), "GATEWAY_PREPROCESSING": "exact"},
        ),
        "grpc, book env": (real_model_server.grpc, {**book_env, "GATEWAY_PREDICTOR_PROTOCOL": "grpc"}),
    }
    book_request = {"instances": [{"url": image_server.url("/pants.jpg")}]}
    results = {}
    for name, (predictor_host, env) in setups.items():
        kserve_args = ["--model_name", "clothing-model", "--predictor_host", predictor_host]
        transformer: Gateway = make_gateway({**env, "GATEWAY_ALLOWED_NETWORKS": "127.0.0.0/8"}, kserve_args=kserve_args)
        assert transformer.request("GET", "/v1/models/clothing-model").status == 200, name
        response = transformer.post_json("/v1/models/clothing-model:predict", book_request)
        assert response.status == 200, (name, response.body)
        (scores,) = response.json()["predictions"]
        assert list(scores) == LABELS
        assert max(scores, key=lambda label: scores[label]) == "pants", (name, scores)
        results[name] = scores
    for scores in results.values():
        assert scores == pytest.approx(results["grpc, book env"], abs=1e-3)
