"""The stand-in model server, as a real process over real sockets: TF Serving's gRPC and REST behaviour."""

from __future__ import annotations

import json
import shutil
import signal
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from model_interface.tensors import to_ndarray, to_tensor_proto
from model_interface.tfs_protos.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tests.model_tools.conftest import ServerProcess, run_cli, start_server


def rest(server: ServerProcess, path: str, body: Any = None) -> tuple[int, Any]:
    """GET (or POST JSON) against the server's REST port; returns (status, parsed JSON or raw text)."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(server.rest_url + path, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except json.JSONDecodeError:
        return status, raw.decode()


def predict_request(name: str = "mini", signature: str = "", batch: int = 1, **inputs: np.ndarray) -> Any:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if not inputs:
        inputs = {"input_1": np.zeros((batch, 48, 48, 3), np.float32)}
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(to_tensor_proto(value))
    return request


@pytest.fixture(scope="module")
def stub(mini_server: ServerProcess) -> Any:
    channel = grpc.insecure_channel(mini_server.grpc_address)
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


def rpc_error(call: Any, request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30)
    return caught.value


def test_grpc_predict_returns_logits_like_tf_serving(stub: Any) -> None:
    x = np.random.default_rng(1).uniform(-1, 1, (2, 48, 48, 3)).astype(np.float32)
    response = stub.Predict(predict_request(input_1=x), timeout=30)
    assert response.model_spec.name == "mini"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"
    logits = response.outputs["dense"]
    assert len(logits.float_val) == 20  # TF Serving's default: typed field, not tensor_content
    assert to_ndarray(logits).shape == (2, 10)


def test_uint8_signature_matches_float_signature(stub: Any) -> None:
    pixels = np.random.default_rng(2).integers(0, 256, (1, 48, 48, 3), dtype=np.uint8)
    scaled = pixels.astype(np.float32) / 127.5 - 1.0
    by_float = to_ndarray(stub.Predict(predict_request(input_1=scaled), timeout=30).outputs["dense"])
    by_uint8 = to_ndarray(
        stub.Predict(predict_request(signature="serving_uint8", pixels=pixels), timeout=30).outputs["dense"]
    )
    np.testing.assert_allclose(by_uint8, by_float, atol=1e-5)


@pytest.mark.parametrize(
    ("request_factory", "code", "message"),
    [
        (
            lambda: predict_request(name="nope"),
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Latest(nope)",
        ),
        (
            lambda: predict_request(signature="x"),
            grpc.StatusCode.FAILED_PRECONDITION,
            'Serving signature key "x" not found.',
        ),
        (
            lambda: predict_request(input_1=np.zeros((1, 48, 48, 3), np.float32), extra=np.zeros(1, np.float32)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input size does not match signature: 2!=1 len({extra,input_1}) != len({input_1}). "
            "Sent extra: {extra}. Missing but required: {}.",
        ),
        (
            lambda: predict_request(wrong=np.zeros((1, 48, 48, 3), np.float32)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Signature input alias: input_1(feed name: serving_default_input_1:0) not found in request",
        ),
        (
            lambda: predict_request(input_1=np.array([b"x"], dtype=object)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Expects arg[0] to be float but string is provided",
        ),
    ],
    ids=["unknown-model", "unknown-signature", "extra-input", "wrong-input-name", "wrong-dtype"],
)
def test_grpc_errors_match_tf_serving(stub: Any, request_factory: Any, code: grpc.StatusCode, message: str) -> None:
    error = rpc_error(stub.Predict, request_factory())
    assert error.code() == code
    assert error.details().startswith(message)


def test_specific_version_that_is_not_loaded_is_not_found(stub: Any) -> None:
    request = predict_request()
    request.model_spec.version.value = 7
    error = rpc_error(stub.Predict, request)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "Servable not found for request: Specific(mini, 7)"


def test_metadata_lists_every_signature(stub: Any) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "mini"
    response = stub.GetModelMetadata(request, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    assert {"serving_default", "serving_uint8", "serving_bytes"} <= set(signatures.signature_def)
    default = signatures.signature_def["serving_default"]
    assert [d.size for d in default.inputs["input_1"].tensor_shape.dim] == [-1, 48, 48, 3]
    assert [d.size for d in default.outputs["dense"].tensor_shape.dim] == [-1, 10]


def test_model_status_and_health(mini_server: ServerProcess) -> None:
    channel = grpc.insecure_channel(mini_server.grpc_address)
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "mini"}), timeout=30
    )
    assert [(s.version, s.state) for s in status.model_version_status] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)
    ]
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "PredictionService", "ModelService"):
        assert (
            health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30).status
            == health_pb2.HealthCheckResponse.SERVING
        )
    channel.close()


def test_rest_status_metadata_and_predict(mini_server: ServerProcess) -> None:
    assert rest(mini_server, "/v1/models/mini") == (
        200,
        {
            "model_version_status": [
                {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            ]
        },
    )
    status, metadata = rest(mini_server, "/v1/models/mini/metadata")
    assert status == 200
    assert metadata["model_spec"] == {"name": "mini", "signature_name": "", "version": "1"}
    assert "serving_default" in metadata["metadata"]["signature_def"]["signature_def"]
    image = np.zeros((48, 48, 3)).tolist()
    status, rows = rest(mini_server, "/v1/models/mini:predict", {"instances": [image, image]})
    assert status == 200
    assert np.asarray(rows["predictions"]).shape == (2, 10)
    status, columns = rest(mini_server, "/V1/MODELS/mini/versions/1:predict", {"inputs": {"input_1": [image]}})
    assert status == 200
    np.testing.assert_allclose(columns["outputs"], rows["predictions"][:1], rtol=1e-5)


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/v1/models/mini:predict", b"", 400, "JSON Parse error: The document is empty"),
        ("/v1/models/nope:predict", b"", 400, "JSON Parse error: The document is empty"),
        ("/v1/models/nope:predict", {"instances": [1]}, 404, "Servable not found for request: Latest(nope)"),
        (
            "/v1/models/mini:predict",
            {"signature_name": "x", "instances": [1]},
            400,
            'Serving signature name: "x" not found in signature def',
        ),
        (
            "/v1/models/mini:predict",
            {"instances": [{"foo": 1}]},
            400,
            "Failed to process element: 0 key: foo of 'instances' list. "
            "Error: INVALID_ARGUMENT: JSON object: does not have named input: foo",
        ),
        ("/v1/models/mini:predict", {"inputs": {"x": 1}}, 400, "Missing named input: input_1 in 'inputs' object."),
        ("/v1/models/mini:predict", {"instances": ["a"]}, 400, "is not of expected type: float"),
        (
            "/v1/models/mini/labels/stable:predict",
            {"instances": [1]},
            400,
            "Unrecognized servable version label: stable",
        ),
        ("/v1/models", None, 400, "Missing model name in request."),
        ("/v1/models/nope", None, 404, "Could not find any versions of model nope"),
        ("/v1/models/mini/versions/9", None, 404, "Could not find version 9 of model mini"),
        ("/v1/models/nope/metadata", None, 404, "Servable not found for request: Latest(nope)"),
        ("/v1/foo", None, 400, "Malformed request: GET /v1/foo"),
    ],
)
def test_rest_errors_match_tf_serving(
    mini_server: ServerProcess, path: str, body: Any, status: int, error: str
) -> None:
    got_status, got = rest(mini_server, path, body)
    assert got_status == status
    assert error in got["error"]


def test_non_v1_paths_get_a_plain_404(mini_server: ServerProcess) -> None:
    status, body = rest(mini_server, "/healthz")
    assert status == 404
    assert "<TITLE>404 Not Found</TITLE>" in body


def test_concurrent_clients_are_batched(mini_server: ServerProcess, stub: Any) -> None:
    request = predict_request()
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda _: stub.Predict(request, timeout=60), range(48)))
    assert all(to_ndarray(r.outputs["dense"]).shape == (1, 10) for r in responses)
    _, metrics = rest(mini_server, "/monitoring/prometheus/metrics")
    sizes = {
        int(line.split('batch_size="')[1].split('"')[0]): int(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(":tensorflow:serving:batching_session:processed_batch_size{")
    }
    assert max(sizes) > 1, f"no batch larger than 1 was formed: {sizes}"
    assert max(sizes) <= 16  # max_batch_size from the parameters file
    assert ':tensorflow:serving:request_count{model_name="mini",status="OK"}' in metrics
    assert 'request_latency_count{model_name="mini",API="Predict",entrypoint="GRPC"}' in metrics


def test_a_new_version_is_served_without_restart(converted: Path, mini_h5: Path, tmp_path: Path) -> None:
    base = tmp_path / "mini"
    shutil.copytree(converted, base)
    server = start_server(base, "mini", tmp_path / "server.log")
    try:
        result = run_cli("convert", mini_h5, "--out", tmp_path, "--name", "mini", "--version", "2")
        assert result.returncode == 0, result.stderr
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            _, status = rest(server, "/v1/models/mini")
            if (
                status["model_version_status"][0]["state"] == "AVAILABLE"
                and status["model_version_status"][0]["version"] == "2"
            ):
                break
            time.sleep(0.5)
        assert [(s["version"], s["state"]) for s in status["model_version_status"]] == [
            ("2", "AVAILABLE"),
            ("1", "END"),
        ]
        channel = grpc.insecure_channel(server.grpc_address)
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(predict_request(), timeout=30)
        assert response.model_spec.version.value == 2
        channel.close()
    finally:
        server.stop()


def test_version_directories_with_leading_zeros_are_their_numbers(converted: Path, tmp_path: Path) -> None:
    """TF Serving parses a version directory's name as a number: `00000123` is version 123 and is loaded from that
    directory (the book's KServe layout uses `0001`)."""
    base = tmp_path / "mini"
    for name in ("0001", "00000123"):
        shutil.copytree(converted / "1", base / name)
    assert json.loads(run_cli("inspect", base, "--format", "json").stdout)["inputName"] == "input_1"
    server = start_server(base, "mini", tmp_path / "server.log")
    try:
        _, status = rest(server, "/v1/models/mini")
        assert [(s["version"], s["state"]) for s in status["model_version_status"]] == [("123", "AVAILABLE")]
        with grpc.insecure_channel(server.grpc_address) as channel:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(predict_request(), timeout=30)
        assert response.model_spec.version.value == 123
        assert rest(server, "/v1/models/mini/versions/123")[0] == 200
    finally:
        server.stop()


def test_grpc_also_listens_on_a_unix_socket(converted: Path, tmp_path: Path) -> None:
    """`--grpc_socket_path`: the same gRPC services on a Unix domain socket as well as on the TCP port."""
    socket_path = tmp_path / "tfs.sock"
    server = start_server(converted, "mini", tmp_path / "server.log", f"--grpc_socket_path={socket_path}")
    try:
        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(predict_request(), timeout=30)
        assert to_ndarray(response.outputs["dense"]).shape == (1, 10)
        assert f"Running gRPC ModelServer at UNIX socket {socket_path}" in server.output()
    finally:
        server.stop()


def test_warmup_records_are_replayed_before_the_ports_open(converted: Path, tmp_path: Path) -> None:
    base = tmp_path / "mini"
    shutil.copytree(converted, base)
    assert (
        run_cli("warmup", base, Path(__file__).parents[1] / "data" / "pants.jpg", "--batch-sizes", "1,2").returncode
        == 0
    )
    server = start_server(base, "mini", tmp_path / "server.log")
    try:
        assert "Number of warmup records read: 4." in server.output()
    finally:
        server.stop()


def test_a_model_that_fails_to_load_exits_255_without_opening_ports(tmp_path: Path) -> None:
    broken = tmp_path / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"garbage")
    server = start_server(broken.parent, "broken", tmp_path / "server.log", wait=False)
    assert server.process.wait(timeout=120) == 255
    assert "did not become available" in server.output()
    assert "Running gRPC ModelServer" not in server.output()


def test_sigterm_while_the_first_version_is_awaited_ends_the_server(tmp_path: Path) -> None:
    """TF Serving has no SIGTERM handler: a server still waiting for its model (here, a base path with no version)
    ends at once, so a pod deleted in that state does not wait out its grace period."""
    server = start_server(tmp_path / "absent", "absent", tmp_path / "server.log", wait=False)
    deadline = time.monotonic() + 60
    while "Could not find base path" not in server.output() and time.monotonic() < deadline:
        time.sleep(0.2)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=10) == -signal.SIGTERM
