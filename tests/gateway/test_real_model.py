"""The gateway against the committed trained model, served by model-tools' TF-Serving-compatible server (real
SavedModel, real GetModelMetadata): the pants photo comes out as pants through both the float32 and the uint8
signatures, and the committed contract matches what the server reports."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import REPO, free_port, wait_for_port
from tests.gateway.conftest import Gateway

MODEL = REPO / "model-tools" / "models" / "clothing-model"
CONTRACT = MODEL / "1" / "assets.extra" / "model-contract.json"


@pytest.fixture(scope="module")
def real_model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not CONTRACT.exists():
        pytest.skip("the committed model is not there")
    pytest.importorskip("model_tools.server")
    port = free_port()
    log = tmp_path_factory.mktemp("model-server") / "server.log"
    command = [
        sys.executable,
        "-m",
        "model_tools.server",
        f"--port={port}",
        "--rest_api_port=0",
        "--model_name=clothing-model",
        f"--model_base_path={MODEL}",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=out, env={"TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        wait_for_port(port, process, timeout=90)
        yield f"127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_pants_photo_is_pants_through_both_signatures(
    real_model_server: str, make_gateway: Any, pants_jpeg: bytes
) -> None:
    results = {}
    for use_uint8 in ("true", "false"):
        env = {
            "TF_SERVING_HOST": real_model_server,
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
