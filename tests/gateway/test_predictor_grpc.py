"""The gRPC predictor against model-tools' stand-in of TF Serving on loopback, in this process, serving a fake
servable: Predict, the uint8 signature, readiness, the contract check, retries and deadlines."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

from clothing_gateway.errors import GatewayError
from clothing_gateway.predictor.grpc_api import Connection, GrpcPredictor
from clothing_gateway.predictor.signature import contract_differences, discover_tensor_names
from model_interface.contract import ModelContract, parse_contract
from model_interface.preprocessing import load_image, preprocess, resize_pixels
from model_interface.tfs_protos.tensorflow.core.framework import types_pb2
from model_interface.tfs_protos.tensorflow_serving.apis import get_model_metadata_pb2
from model_tools.servable import LoadedVersion, ServingError
from tests.conftest import free_port
from tests.gateway.conftest import CONTRACT, LABELS, predict
from tests.gateway.fake_servable import fake_logits, load_fake

UINT8_CONTRACT = {**CONTRACT, "uint8": {"signatureName": "serving_uint8", "inputName": "pixels"}}


def target(server: Any) -> str:
    return f"127.0.0.1:{server.flags.port}"


def client(target: str, contract: dict[str, Any] = CONTRACT, **kwargs: Any) -> GrpcPredictor:
    return GrpcPredictor(target, parse_contract(contract), **kwargs)


@pytest.fixture(scope="module")
def batch(pants_jpeg: bytes) -> np.ndarray:
    return np.stack([preprocess(pants_jpeg, (299, 299)), np.zeros((299, 299, 3), np.float32)])


def test_predict(serve_fake: Any, batch: np.ndarray) -> None:
    images = list(batch)
    outputs = predict(client(target(serve_fake())), images, timeout=5)
    assert len(images) == 2  # the caller's list is left as it was
    assert outputs.shape == (2, len(LABELS))
    np.testing.assert_array_equal(outputs, fake_logits(batch, len(LABELS)))


def test_uint8_signature(serve_fake: Any, pants_jpeg: bytes, batch: np.ndarray) -> None:
    uint8_client = client(target(serve_fake(UINT8_CONTRACT)), UINT8_CONTRACT, use_uint8=True)
    signature = uint8_client.resolve(timeout=5).signature
    assert (signature.name, signature.input_dtype) == ("serving_uint8", "uint8")
    pixels = resize_pixels(load_image(pants_jpeg), (299, 299))[None]
    outputs = predict(uint8_client, list(pixels), timeout=5)
    np.testing.assert_allclose(outputs, fake_logits(batch[:1], len(LABELS)), rtol=1e-5, atol=1e-5)
    assert client("x:1", UINT8_CONTRACT, use_uint8=False).resolve(timeout=5).signature.name == "serving_default"


def test_readiness(serve_fake: Any) -> None:
    server = serve_fake()
    readiness = client(target(server)).readiness(timeout=5)
    assert readiness.ready, readiness.detail
    assert "version 1 is AVAILABLE" in readiness.detail
    other_model = client(target(server), {**CONTRACT, "name": "other"}).readiness(timeout=5)
    assert not other_model.ready
    assert "NOT_FOUND" in other_model.detail
    shutil.rmtree(Path(server.flags.model_base_path) / "1")
    server.models.poll()  # version 1 is unloaded: its directory is gone
    unloaded = client(target(server)).readiness(timeout=5)
    assert not unloaded.ready
    assert "no AVAILABLE version (1: END)" in unloaded.detail


def test_readiness_reports_every_contract_difference(serve_fake: Any) -> None:
    server = target(serve_fake(output_size=5))
    readiness = client(server).readiness(timeout=5)
    assert not readiness.ready
    assert 'output "dense_7" has 5 scores per image, the contract has 10 labels' in readiness.detail
    wrong = {**CONTRACT, "inputName": "input_1", "inputSize": [224, 224], "signatureName": "serving_default"}
    detail = client(server, wrong).readiness(timeout=5).detail
    assert 'has no input "input_1"; inputs: input_8' in detail


@pytest.mark.parametrize(("policy", "both_used"), [("round_robin", True), ("pick_first", False)])
def test_load_balancing_policy(serve_fake: Any, batch: np.ndarray, policy: str, both_used: bool) -> None:
    servers = [serve_fake(), serve_fake()]
    addresses = "ipv4:" + ",".join(target(server) for server in servers)  # one name, two addresses
    balanced = client(addresses, lb_policy=policy)
    for _ in range(8):
        predict(balanced, list(batch[:1]), timeout=5)
    calls = [sum(server.metrics.request_count.values()) for server in servers]
    assert sum(calls) == 8
    assert (min(calls) > 0) is both_used, calls


def test_model_server_down_is_unavailable_after_retries() -> None:
    retries: list[int] = []
    down = client(f"127.0.0.1:{free_port()}", on_retry=lambda: retries.append(1))
    with pytest.raises(GatewayError) as caught:
        predict(down, [np.zeros((299, 299, 3), np.float32)], timeout=5)
    assert caught.value.code == "model_unavailable"
    assert len(retries) == 2
    assert not down.readiness(timeout=1).ready


class Name(BaseResolver):
    """A DNS server's answer for every name: an A record of `address`, or NXDOMAIN while it is None (as for a headless
    Service with no ready pod)."""

    address: str | None = None

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        if self.address is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype == QTYPE.A:
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(self.address), ttl=1))
        return reply


@contextmanager
def dns_server(name: Name) -> Iterator[int]:
    """A real DNS server on a loopback UDP port (yielded), answering as `name` says."""
    server = DNSServer(name, address="127.0.0.1", port=0, logger=DNSLogger(logf=lambda _: None))
    server.start_thread()
    try:
        yield server.server.server_address[1]
    finally:
        server.stop()


def seconds_until_answered(model: GrpcPredictor, images: list[np.ndarray], limit: float = 15) -> float:
    """Seconds until a predict (0.5 s deadline each) succeeds; infinity if none does within `limit`."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        with suppress(GatewayError):
            predict(model, images, timeout=0.5)
            return time.monotonic() - start
    return math.inf


def test_a_channel_whose_name_did_not_resolve_is_renewed(serve_fake: Any, batch: np.ndarray) -> None:
    """Every TF Serving pod gone for 10 s: gRPC's resolver backs off after each failed lookup (1 s, x1.6, ...: ~6 s
    apart by then), so a channel kept from then would look the name up again seconds after it resolves. Renewed once a
    second without a successful call, the gateway answers again within the renewal, a lookup and a connection."""
    port = serve_fake().flags.port
    name = Name()
    with dns_server(name) as dns_port:
        connection = Connection(f"dns://127.0.0.1:{dns_port}/tf-serving.test:{port}", renew_after=1.0)
        model = client(connection.target, shared=connection)
        outage_ends = time.monotonic() + 10
        while time.monotonic() < outage_ends:
            with pytest.raises(GatewayError) as caught:
                predict(model, list(batch[:1]), timeout=0.5)
            assert caught.value.code == "model_unavailable"
        name.address = "127.0.0.1"
        assert seconds_until_answered(model, list(batch[:1])) < 3.5


def cancels_once(version_dir: Path) -> LoadedVersion:
    """A fake version whose first Predict is cancelled, as a server shutting down does with queued calls."""
    loaded = load_fake(version_dir)
    cancelled: list[bool] = []

    def session_run(feeds: dict[str, np.ndarray], fetches: list[str]) -> list[np.ndarray]:
        if not cancelled:
            cancelled.append(True)
            raise ServingError(grpc.StatusCode.CANCELLED, "CANCELLED")
        return loaded.session_run(feeds, fetches)

    return LoadedVersion(loaded.version, loaded.path, loaded.signature_defs, session_run)


def test_a_call_cancelled_by_a_stopping_server_is_retried(serve_fake: Any, batch: np.ndarray) -> None:
    retries: list[int] = []
    cancelling = client(target(serve_fake(loader=cancels_once)), on_retry=lambda: retries.append(1))
    logits = predict(cancelling, list(batch[:1]), timeout=5)
    assert logits.shape == (1, len(LABELS))
    assert retries == [1]


def test_deadline(serve_fake: Any, batch: np.ndarray) -> None:
    with pytest.raises(GatewayError) as caught:
        predict(client(target(serve_fake(latency=1.0))), list(batch), timeout=0.3)
    assert caught.value.code == "deadline_exceeded"


def test_rejected_request_is_a_model_error(serve_fake: Any, batch: np.ndarray) -> None:
    with pytest.raises(GatewayError) as caught:
        predict(client(target(serve_fake()), {**CONTRACT, "signatureName": "nope"}), list(batch), timeout=5)
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


def test_grpc_client_discovers_the_tensor_names(serve_fake: Any, batch: np.ndarray) -> None:
    unnamed = replace(parse_contract(CONTRACT), input_name="", output_name="")
    discovering = GrpcPredictor(target(serve_fake()), unnamed, discover_tensor_names=True)
    assert discovering.readiness(timeout=5).ready
    assert discovering.resolve(timeout=5).signature.input_name == "input_8"
    np.testing.assert_array_equal(predict(discovering, list(batch), timeout=5), fake_logits(batch, len(LABELS)))
