"""The gateway as a KServe transformer: started through the image's entrypoint with the arguments KServe appends,
calling the predictor over TF Serving's REST API (KServe's stock runtime) or gRPC, configured by a contract or by the
book's transformer env, answering the book's `{"instances": [{"url": ...}]}` request."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clothing_gateway.entrypoint import gateway_environment, parser
from model_interface.preprocessing import preprocess
from tests.conftest import DATA, REPO, free_port
from tests.gateway.conftest import (
    CONTRACT,
    GATEWAY_PYTHON,
    LABELS,
    Gateway,
    ImageServer,
    ModelServer,
    gateway_env,
    write_contract,
)
from tests.gateway.fake_servable import fake_logits

BOOK_LABELS = ", ".join(LABELS)  # the book's MODEL_LABELS, spaces included


def kserve_environment(argv: list[str], environ: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    args, unknown = parser().parse_known_args(argv)
    return gateway_environment(args, environ), unknown


def test_kserve_arguments_become_the_gateway_environment() -> None:
    argv = ["--model_name", "clothing", "--predictor_host", "clothing-predictor.models", "--http_port", "8080"]
    argv += ["--workers", "3", "--predictor_protocol", "v1", "--enable_docs_url=true"]
    env, unknown = kserve_environment(argv, {"GATEWAY_BIND": "127.0.0.1:9696", "GATEWAY_LOG_LEVEL": "debug"})
    assert env == {
        "GATEWAY_MODEL_NAME": "clothing",
        "TF_SERVING_HOST": "clothing-predictor.models",
        "GATEWAY_PREDICTOR_PROTOCOL": "rest",  # KServe's predictor host speaks HTTP unless told otherwise
        "GATEWAY_BIND": "127.0.0.1:8080",
        "GATEWAY_WORKERS": "3",
        "GATEWAY_LOG_LEVEL": "debug",
    }
    assert unknown == ["--predictor_protocol", "v1", "--enable_docs_url=true"]


@pytest.mark.parametrize(
    ("predictor_host", "target"),
    [("clothing-predictor.models", "clothing-predictor.models:9000"), ("tf-serving:8500", "tf-serving:8500")],
)
def test_grpc_predictor_host_gets_the_runtimes_grpc_port(predictor_host: str, target: str) -> None:
    env, _ = kserve_environment(["--predictor_host", predictor_host], {"GATEWAY_PREDICTOR_PROTOCOL": "grpc"})
    assert env["TF_SERVING_HOST"] == target


def test_without_arguments_the_environment_is_unchanged() -> None:
    environ = {"TF_SERVING_HOST": "tf-serving:8500", "GATEWAY_BIND": "0.0.0.0:9696"}
    assert kserve_environment([], environ) == (environ, [])
    assert kserve_environment(["--http_port", "8080"], {})[0] == {"GATEWAY_BIND": "0.0.0.0:8080"}


@pytest.mark.parametrize("argv", [["--workers", "0"], ["--http_port", "70000"], ["--model_name"]])
def test_invalid_kserve_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_known_args(argv)


def test_image_entrypoint_without_arguments_runs_the_gateway_as_before(
    model_server: ModelServer, tmp_path: Path, pants_jpeg: bytes
) -> None:
    """The Dockerfile's layout (/app/gunicorn.conf.py next to /app/model_interface and /app/clothing_gateway) and
    ENTRYPOINT, no arguments."""
    dockerfile = (REPO / "images" / "gateway" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "-m", "clothing_gateway.entrypoint"]' in dockerfile
    assert "COPY images/gateway/gunicorn.conf.py /app/gunicorn.conf.py" in dockerfile
    assert "COPY model-interface/src/model_interface /app/model_interface" in dockerfile
    assert "COPY images/gateway/src/clothing_gateway /app/clothing_gateway" in dockerfile
    app = tmp_path / "app"
    shutil.copytree(REPO / "model-interface" / "src" / "model_interface", app / "model_interface")
    shutil.copytree(REPO / "images" / "gateway" / "src" / "clothing_gateway", app / "clothing_gateway")
    shutil.copy(REPO / "images" / "gateway" / "gunicorn.conf.py", app / "gunicorn.conf.py")
    port = free_port()
    env = {**gateway_env(model_server), "GATEWAY_BIND": f"127.0.0.1:{port}", "PYTHONPATH": str(app)}
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(GATEWAY_PYTHON), "-m", "clothing_gateway.entrypoint"], cwd=app, env=env, stdout=out, stderr=out
        )
    gateway = Gateway(env, log, port=port, process=process)
    try:
        gateway.wait_healthy()
        response = gateway.request("POST", "/predict", pants_jpeg, {"Content-Type": "image/jpeg"})
        assert response.status == 200, response.body
        assert list(response.json()) == LABELS
        assert gateway.process is process  # exec: gunicorn's master is the entrypoint's process
        assert "-m gunicorn -c" in Path(f"/proc/{process.pid}/cmdline").read_text().replace("\0", " ")
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModelServer, int]]:
    """The model server with both TF Serving APIs: (server, REST port)."""
    rest_port = free_port()
    contract = write_contract(tmp_path_factory.mktemp("predictor") / "contract.json")
    server = ModelServer(contract, rest_port=rest_port).start()
    yield server, rest_port
    server.stop()


def expected_predictions(data: bytes, size: tuple[int, int] = (299, 299)) -> list[dict[str, float]]:
    logits = fake_logits(preprocess(data, size)[None], len(LABELS))[0]
    return [dict(zip(LABELS, logits.tolist(), strict=True))]


def transformer_env(**overrides: str) -> dict[str, str]:
    """The transformer's env as the chart sets it: the contract inline, under another name than KServe's."""
    return {
        "GATEWAY_MODEL_CONTRACT": json.dumps({**CONTRACT, "name": "renamed-by-kserve"}),
        "GATEWAY_ALLOWED_NETWORKS": "127.0.0.0/8",
        "GATEWAY_DEADLINE_SECONDS": "10",
        **overrides,
    }


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_transformer_answers_the_books_request(
    predictor: tuple[ModelServer, int], make_gateway: Any, image_server: ImageServer, pants_jpeg: bytes, protocol: str
) -> None:
    server, rest_port = predictor
    port = rest_port if protocol == "rest" else server.port
    kserve_args = ["--model_name", "clothing-model", "--predictor_host", f"127.0.0.1:{port}", "--workers", "2"]
    env = transformer_env() if protocol == "rest" else transformer_env(GATEWAY_PREDICTOR_PROTOCOL="grpc")
    transformer: Gateway = make_gateway(env, kserve_args=[*kserve_args, "--enable_docs_url", "true"])
    ready = transformer.request("GET", "/v1/models/clothing-model")
    assert (ready.status, ready.json()) == (200, {"name": "clothing-model", "ready": True})
    response = transformer.post_json(
        "/v1/models/clothing-model:predict", {"instances": [{"url": image_server.url("/pants.jpg")}]}
    )
    assert response.status == 200, response.body
    assert response.json() == {"predictions": expected_predictions(pants_jpeg)}
    assert "ignoring arguments it does not use: --enable_docs_url true" in transformer.log.read_text()
    assert transformer.process is not None
    workers = Path(f"/proc/{transformer.process.pid}/task/{transformer.process.pid}/children").read_text().split()
    assert len(workers) == 2


def test_books_transformer_env_with_a_non_square_input(
    make_gateway: Any, tmp_path: Path, image_server: ImageServer, pants_jpeg: bytes
) -> None:
    """MODEL_INPUT_SIZE="64,96" is height 64, width 96; the model server refuses any other shape (the book's transformer
    sent 96x96). Tensor names come from the predictor's metadata."""
    rest_port = free_port()
    contract = write_contract(tmp_path / "contract.json", inputSize=[64, 96], inputName="input_1", outputName="out")
    server = ModelServer(contract, rest_port=rest_port).start()
    try:
        env = {
            "MODEL_INPUT_SIZE": "64,96",
            "KERAS_MODEL_NAME": "xception",
            "MODEL_LABELS": BOOK_LABELS,
            "GATEWAY_ALLOWED_NETWORKS": "127.0.0.0/8",
        }
        kserve_args = ["--model_name", "clothing-model", "--predictor_host", f"127.0.0.1:{rest_port}"]
        transformer: Gateway = make_gateway(env, kserve_args=kserve_args)
        assert transformer.request("GET", "/readyz").json()["ready"] is True
        book_request = {"instances": [{"url": image_server.url("/pants.jpg")}]}
        response = transformer.post_json("/v1/models/clothing-model:predict", book_request)
        assert response.status == 200, response.body
        assert response.json() == {"predictions": expected_predictions(pants_jpeg, (64, 96))}
    finally:
        server.stop()


def test_transformer_is_not_ready_while_the_predictor_has_no_available_version(
    make_gateway: Any, tmp_path: Path
) -> None:
    rest_port = free_port()
    server = ModelServer(write_contract(tmp_path / "contract.json"), rest_port=rest_port).start()
    try:
        shutil.rmtree(server.base_path / "1")  # TF Serving unloads a version whose directory is gone (1 s polls)
        kserve_args = ["--model_name", "clothing-model", "--predictor_host", f"127.0.0.1:{rest_port}"]
        transformer: Gateway = make_gateway(transformer_env(), kserve_args=kserve_args)
        deadline = time.monotonic() + 10
        while (response := transformer.request("GET", "/v1/models/clothing-model")).status == 200:
            assert time.monotonic() < deadline, "version 1 was never unloaded"
            time.sleep(0.2)
        assert response.status == 503
        assert response.json()["ready"] is False
        assert "no AVAILABLE version (1: END)" in response.json()["error"]["message"]
    finally:
        server.stop()


def test_smoke_module_speaks_kserve_v1(
    predictor: tuple[ModelServer, int], make_gateway: Any, pants_jpeg: bytes
) -> None:
    _, rest_port = predictor
    kserve_args = ["--model_name", "clothing-model", "--predictor_host", f"127.0.0.1:{rest_port}"]
    transformer: Gateway = make_gateway(transformer_env(), kserve_args=kserve_args)
    smoke = [str(GATEWAY_PYTHON), "-m", "clothing_gateway.smoke", "--endpoint", transformer.base, "--timeout", "5"]
    ready = subprocess.run([*smoke, "--kserve-model", "clothing-model", "--ready-only"], capture_output=True, text=True)
    assert ready.returncode == 0, ready.stderr
    winner = max(expected_predictions(pants_jpeg)[0].items(), key=lambda item: item[1])[0]
    image = ["--image", str(DATA / "pants.jpg"), "--expect", winner]
    ok = subprocess.run([*smoke, "--kserve-model", "clothing-model", *image], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert f"OK: top label is {winner!r}" in ok.stdout
    other = subprocess.run(
        [*smoke, "--kserve-model", "other", "--ready-only", "--timeout", "0.5"], capture_output=True, text=True
    )
    assert other.returncode == 1
    assert "model_not_found" in other.stderr
