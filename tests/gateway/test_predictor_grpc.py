"""The gRPC predictor against real gRPC servers on loopback (the test stub, run in-process here): Predict with float_val
or tensor_content answers, the uint8 signature, readiness, the contract check, retries and deadlines."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import grpc
import numpy as np
import pytest

from clothing_gateway.errors import GatewayError
from clothing_gateway.predictor.grpc_api import GrpcPredictor
from clothing_gateway.predictor.signature import contract_differences, discover_tensor_names
from model_interface.contract import ModelContract, parse_contract
from model_interface.preprocessing import load_image, preprocess, resize_pixels
from model_interface.tfs_protos.tensorflow.core.framework import types_pb2
from model_interface.tfs_protos.tensorflow_serving.apis import get_model_metadata_pb2
from tests.conftest import free_port
from tests.gateway.conftest import CONTRACT, LABELS, predict
from tests.gateway.stub_model_server import StubModel, serve, stub_logits

UINT8_CONTRACT = {**CONTRACT, "uint8": {"signatureName": "serving_uint8", "inputName": "pixels"}}


def start_stub(contract: dict[str, Any], **options: Any) -> tuple[grpc.Server, str]:
    settings = {"latency": 0.0, "tensor_content": False, "output_size": 0, "status": "AVAILABLE", **options}
    port = free_port()
    return serve(port, StubModel(contract, **settings)), f"127.0.0.1:{port}"


@pytest.fixture
def stub() -> Iterator[Any]:
    servers: list[grpc.Server] = []

    def start(contract: dict[str, Any] = CONTRACT, **options: Any) -> str:
        server, target = start_stub(contract, **options)
        servers.append(server)
        return target

    yield start
    for server in servers:
        server.stop(grace=0)


def client(target: str, contract: dict[str, Any] = CONTRACT, **kwargs: Any) -> GrpcPredictor:
    return GrpcPredictor(target, parse_contract(contract), **kwargs)


@pytest.fixture(scope="module")
def batch(pants_jpeg: bytes) -> np.ndarray:
    return np.stack([preprocess(pants_jpeg, (299, 299)), np.zeros((299, 299, 3), np.float32)])


@pytest.mark.parametrize("tensor_content", [False, True], ids=["float_val", "tensor_content"])
def test_predict(stub: Any, batch: np.ndarray, tensor_content: bool) -> None:
    images = list(batch)
    outputs = predict(client(stub(tensor_content=tensor_content)), images, timeout=5)
    assert len(images) == 2  # the caller's list is left as it was
    assert outputs.shape == (2, len(LABELS))
    np.testing.assert_array_equal(outputs, stub_logits(batch, len(LABELS)))


def test_uint8_signature(stub: Any, pants_jpeg: bytes, batch: np.ndarray) -> None:
    uint8_client = client(stub(UINT8_CONTRACT), UINT8_CONTRACT, use_uint8=True)
    signature = uint8_client.resolve(timeout=5).signature
    assert (signature.name, signature.input_dtype) == ("serving_uint8", "uint8")
    pixels = resize_pixels(load_image(pants_jpeg), (299, 299))[None]
    outputs = predict(uint8_client, list(pixels), timeout=5)
    np.testing.assert_allclose(outputs, stub_logits(batch[:1], len(LABELS)), rtol=1e-5, atol=1e-5)
    assert client("x:1", UINT8_CONTRACT, use_uint8=False).resolve(timeout=5).signature.name == "serving_default"


def test_readiness(stub: Any) -> None:
    readiness = client(stub()).readiness(timeout=5)
    assert readiness.ready, readiness.detail
    assert "version 1 is AVAILABLE" in readiness.detail
    loading = client(stub(status="LOADING")).readiness(timeout=5)
    assert not loading.ready
    assert "no AVAILABLE version (1: LOADING)" in loading.detail
    other_model = client(stub(), {**CONTRACT, "name": "other"}).readiness(timeout=5)
    assert not other_model.ready
    assert "NOT_FOUND" in other_model.detail


def test_readiness_reports_every_contract_difference(stub: Any) -> None:
    target = stub(output_size=5)
    readiness = client(target).readiness(timeout=5)
    assert not readiness.ready
    assert 'output "dense_7" has 5 scores per image, the contract has 10 labels' in readiness.detail
    wrong = {**CONTRACT, "inputName": "input_1", "inputSize": [224, 224], "signatureName": "serving_default"}
    detail = client(target, wrong).readiness(timeout=5).detail
    assert 'has no input "input_1"; inputs: input_8' in detail


@pytest.mark.parametrize(("policy", "both_used"), [("round_robin", True), ("pick_first", False)])
def test_load_balancing_policy(batch: np.ndarray, policy: str, both_used: bool) -> None:
    models = [StubModel(CONTRACT, 0.0, False, 0, "AVAILABLE") for _ in range(2)]
    ports = [free_port(), free_port()]
    servers = [serve(port, model) for port, model in zip(ports, models, strict=True)]
    try:
        target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports)  # one name, two addresses
        balanced = client(target, lb_policy=policy)
        for _ in range(8):
            predict(balanced, list(batch[:1]), timeout=5)
        calls = [model.predict_calls for model in models]
        assert sum(calls) == 8
        assert (min(calls) > 0) is both_used, calls
    finally:
        for server in servers:
            server.stop(grace=0)


def test_model_server_down_is_unavailable_after_retries() -> None:
    retries: list[int] = []
    down = client(f"127.0.0.1:{free_port()}", on_retry=lambda: retries.append(1))
    with pytest.raises(GatewayError) as caught:
        predict(down, [np.zeros((299, 299, 3), np.float32)], timeout=5)
    assert caught.value.code == "model_unavailable"
    assert len(retries) == 2
    assert not down.readiness(timeout=1).ready


class CancelsOnce(StubModel):
    """A model server that cancels the first Predict, as a server shutting down does with queued calls."""

    def Predict(self, request: Any, context: Any) -> Any:
        if self.predict_calls == 0:
            self.predict_calls += 1
            context.abort(grpc.StatusCode.CANCELLED, "CANCELLED")
        return super().Predict(request, context)


def test_a_call_cancelled_by_a_stopping_server_is_retried(batch: np.ndarray) -> None:
    model = CancelsOnce(CONTRACT, 0.0, False, 0, "AVAILABLE")
    port = free_port()
    server = serve(port, model)
    try:
        retries: list[int] = []
        logits = predict(client(f"127.0.0.1:{port}", on_retry=lambda: retries.append(1)), list(batch[:1]), timeout=5)
        assert logits.shape == (1, len(LABELS))
        assert retries == [1]
    finally:
        server.stop(grace=0)


def test_deadline(stub: Any, batch: np.ndarray) -> None:
    with pytest.raises(GatewayError) as caught:
        predict(client(stub(latency=1.0)), list(batch), timeout=0.3)
    assert caught.value.code == "deadline_exceeded"


def test_rejected_request_is_a_model_error(stub: Any, batch: np.ndarray) -> None:
    with pytest.raises(GatewayError) as caught:
        predict(client(stub(), {**CONTRACT, "signatureName": "nope"}), list(batch), timeout=5)
    assert caught.value.code == "model_error"
    assert "FAILED_PRECONDITION" in caught.value.message


def _signatures(**changes: Any) -> dict[str, Any]:
    """A SignatureDefMap like TF Serving reports for the book's model, with changes to serving_default."""
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    definition = signature_map.signature_def["serving_default"]
    tensor_in = definition.inputs[changes.get("input_name", "input_8")]
    tensor_in.dtype = changes.get("input_dtype", types_pb2.DT_FLOAT)
    for size in changes.get("input_shape", (-1, 299, 299, 3)):
        tensor_in.tensor_shape.dim.add(size=size)
    tensor_out = definition.outputs[changes.get("output_name", "dense_7")]
    tensor_out.dtype = types_pb2.DT_FLOAT
    for size in changes.get("output_shape", (-1, 10)):
        tensor_out.tensor_shape.dim.add(size=size)
    return dict(signature_map.signature_def)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, []),
        ({"input_shape": (-1, -1, -1, 3)}, []),
        ({"input_name": "input_1"}, ['signature "serving_default" has no input "input_8"; inputs: input_1']),
        ({"input_dtype": types_pb2.DT_UINT8}, ['input "input_8" is DT_UINT8, the contract says float32']),
        ({"input_shape": (-1, 224, 224, 3)}, ["has shape [-1, 224, 224, 3], the contract expects [-1, 299, 299, 3]"]),
        ({"output_name": "logits"}, ['has no output "dense_7"; outputs: logits']),
        ({"output_shape": (-1, 12)}, ["has 12 scores per image, the contract has 10 labels"]),
    ],
)
def test_contract_differences(changes: dict[str, Any], expected: list[str]) -> None:
    differences = contract_differences(parse_contract(CONTRACT), _signatures(**changes))
    assert len(differences) == len(expected)
    for difference, text in zip(differences, expected, strict=True):
        assert text in difference


def test_missing_signatures_are_named() -> None:
    contract: ModelContract = parse_contract(UINT8_CONTRACT)
    differences = contract_differences(contract, _signatures())
    assert differences == ['signature "serving_uint8" not found; the model has: serving_default']


def test_tensor_names_are_discovered_from_the_only_input_and_output() -> None:
    unnamed = replace(parse_contract(CONTRACT), input_name="", output_name="")
    found = discover_tensor_names(
        unnamed, _signatures(input_name="input_image", output_name="logits", input_dtype=types_pb2.DT_UINT8)
    )
    assert (found.input_name, found.output_name, found.input_dtype) == ("input_image", "logits", "uint8")
    assert contract_differences(found, _signatures(input_name="input_image", output_name="logits")) == [
        'signature "serving_default" input "input_image" is DT_FLOAT, the contract says uint8'
    ]


def _two_outputs() -> dict[str, Any]:
    signature_defs = _signatures()
    signature_defs["serving_default"].outputs["probabilities"].dtype = types_pb2.DT_FLOAT
    return signature_defs


@pytest.mark.parametrize(
    ("served", "message"),
    [
        (dict, 'signature "serving_default" not found; the model has: no signatures'),
        (_two_outputs, "has inputs ['input_8'] and outputs ['dense_7', 'probabilities']"),
        (lambda: _signatures(input_dtype=types_pb2.DT_INT32), 'input "input_8" is DT_INT32, not a pixel type'),
    ],
    ids=["no signature", "two outputs", "int32 input"],
)
def test_discovery_needs_one_pixel_input_and_one_output(served: Any, message: str) -> None:
    with pytest.raises(GatewayError) as caught:
        discover_tensor_names(replace(parse_contract(CONTRACT), input_name="", output_name=""), served())
    assert caught.value.code == "model_error"
    assert message in caught.value.message


def test_grpc_client_discovers_the_tensor_names(stub: Any, batch: np.ndarray) -> None:
    unnamed = replace(parse_contract(CONTRACT), input_name="", output_name="")
    discovering = GrpcPredictor(stub(), unnamed, discover_tensor_names=True)
    assert discovering.readiness(timeout=5).ready
    assert discovering.resolve(timeout=5).signature.input_name == "input_8"
    np.testing.assert_array_equal(predict(discovering, list(batch), timeout=5), stub_logits(batch, len(LABELS)))
