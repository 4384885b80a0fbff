"""gRPC client for TF Serving's `PredictionService` and `ModelService`, built on the vendored protos (no TensorFlow).

One channel per process, created on first use: gunicorn workers create theirs after the fork (a gRPC channel must
never cross a fork). Each call has a deadline; UNAVAILABLE (server restarting, connection refused, batch queue
full) and CANCELLED (this client never cancels, so it comes from a server that is shutting down with the call
queued) are retried with exponential backoff within that deadline: Predict is idempotent. Nothing else is.

Load balancing: by default (`pick_first`) the channel holds one HTTP/2 connection, so behind a ClusterIP Service
all of a worker's requests go to one TF Serving replica. With `round_robin` and a target that resolves to every
replica (a headless Service, e.g. `dns:///tf-serving-headless.ns.svc.cluster.local:8500`), the channel connects to
each address and spreads calls across them without a mesh. Caveat: gRPC's DNS resolver re-resolves only when a
connection breaks or fails (not on a timer), so a replica added later gets no traffic from this channel until
then. The fix is server-side: run TF Serving with `--grpc_channel_arguments=grpc.max_connection_age_ms=30000`, which
makes it close connections periodically (after in-flight calls), so clients reconnect and re-resolve (and removed
replicas drop out as their connections close).
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import grpc
import numpy as np

from clothing_gateway.errors import GatewayError
from model_interface.contract import INPUT_DTYPES, ModelContract
from model_interface.tensors import TensorError, dtype_enum, dtype_name, encode_predict_request, to_ndarray
from model_interface.tfs_protos.tensorflow.core.framework import types_pb2
from model_interface.tfs_protos.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 256 * 1024 * 1024
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    # The default 4 MiB receive limit is too small for big batches of big outputs (tensorflow/serving#1382).
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Detect a dead connection (node gone, no FIN) while calls are in flight. Pings only while calls are
    # active, so TF Serving's default ping policy (no more than one per 5 min without calls) is respected.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
    # Reconnect within ~2 s after the model server comes back (gRPC's default backoff grows to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]
ROUND_ROBIN_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
# Predict takes the request already serialized (tensors.encode_predict_request), so no request serializer.
PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
RETRIED_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
_OUTPUT_DTYPES = (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE)


@dataclass(frozen=True)
class Signature:
    """The signature requests are sent to, and the input dtype it takes."""

    name: str
    input_name: str
    output_name: str
    input_dtype: str


def request_signature(contract: ModelContract, use_uint8: bool) -> Signature:
    """The contract's uint8 signature when asked for and present, else its main signature."""
    if use_uint8 and contract.uint8 is not None:
        uint8 = contract.uint8
        return Signature(uint8.signature_name, uint8.input_name, uint8.output_name, "uint8")
    return Signature(contract.signature_name, contract.input_name, contract.output_name, contract.input_dtype)


@dataclass(frozen=True)
class Readiness:
    """Whether the model server reports the model AVAILABLE and matching the contract, and why (not)."""

    ready: bool
    detail: str


def _signature_differences(
    contract: ModelContract, signature: Signature, signature_defs: Mapping[str, Any]
) -> list[str]:
    where = f'signature "{signature.name}"'
    if signature.name not in signature_defs:
        return [f"{where} not found; the model has: {', '.join(sorted(signature_defs)) or 'no signatures'}"]
    definition = signature_defs[signature.name]
    differences = []
    inputs, outputs = definition.inputs, definition.outputs
    if signature.input_name not in inputs:
        differences.append(f'{where} has no input "{signature.input_name}"; inputs: {", ".join(sorted(inputs))}')
    else:
        info = inputs[signature.input_name]
        if info.dtype != dtype_enum(signature.input_dtype):
            differences.append(
                f'{where} input "{signature.input_name}" is {dtype_name(info.dtype)}, the contract says '
                f"{signature.input_dtype}"
            )
        if not info.tensor_shape.unknown_rank:
            dims = [dim.size for dim in info.tensor_shape.dim]
            height, width = contract.input_size
            if len(dims) != 4 or dims[1] not in (-1, height) or dims[2] not in (-1, width) or dims[3] not in (-1, 3):
                differences.append(
                    f'{where} input "{signature.input_name}" has shape {dims}, the contract expects '
                    f"[-1, {height}, {width}, 3]"
                )
    if signature.output_name not in outputs:
        differences.append(f'{where} has no output "{signature.output_name}"; outputs: {", ".join(sorted(outputs))}')
    else:
        info = outputs[signature.output_name]
        if info.dtype not in _OUTPUT_DTYPES:
            differences.append(f'{where} output "{signature.output_name}" is {dtype_name(info.dtype)}, not a float')
        dims = [dim.size for dim in info.tensor_shape.dim]
        if not info.tensor_shape.unknown_rank and dims and dims[-1] not in (-1, len(contract.labels)):
            differences.append(
                f'{where} output "{signature.output_name}" has {dims[-1]} scores per image, the contract has '
                f"{len(contract.labels)} labels"
            )
    return differences


def discover_tensor_names(contract: ModelContract, signature_defs: Mapping[str, Any]) -> ModelContract:
    """The contract with the input and output names and input dtype of its signature, which must have exactly one
    input and one output (GatewayError `model_error` otherwise)."""
    where = f'signature "{contract.signature_name}"'
    if contract.signature_name not in signature_defs:
        names = ", ".join(sorted(signature_defs)) or "no signatures"
        raise GatewayError("model_error", f"{where} not found; the model has: {names}")
    definition = signature_defs[contract.signature_name]
    if len(definition.inputs) != 1 or len(definition.outputs) != 1:
        raise GatewayError(
            "model_error",
            f"{where} has inputs {sorted(definition.inputs)} and outputs {sorted(definition.outputs)}: tensor names "
            "are discovered only for one input and one output; give the model contract (GATEWAY_MODEL_CONTRACT)",
        )
    ((input_name, info),) = definition.inputs.items()
    dtypes = {dtype_enum(name): name for name in INPUT_DTYPES}
    if info.dtype not in dtypes:
        raise GatewayError("model_error", f'{where} input "{input_name}" is {dtype_name(info.dtype)}, not a pixel type')
    (output_name,) = definition.outputs
    return replace(contract, input_name=input_name, output_name=output_name, input_dtype=dtypes[info.dtype])


def contract_differences(contract: ModelContract, signature_defs: Mapping[str, Any]) -> list[str]:
    """Every way the served signatures (name -> SignatureDef) differ from the contract; empty when they match."""
    differences = _signature_differences(contract, request_signature(contract, use_uint8=False), signature_defs)
    if contract.uint8 is not None:
        differences += _signature_differences(contract, request_signature(contract, use_uint8=True), signature_defs)
    return differences


class PredictorClient(ABC):
    """What the classifier needs from TF Serving, whatever the protocol (gRPC here, REST in tfserving_rest): the
    request signature, Predict, and readiness with the contract check.

    With `discover_tensor_names` (the book's transformer env gives no tensor names), the input and output names and
    the input dtype are read from the served signature, which must have one input and one output; this happens on
    the first readiness check or Predict, and again whenever a new model version is served.
    """

    def __init__(
        self, target: str, contract: ModelContract, *, use_uint8: bool = True, discover_tensor_names: bool = False
    ) -> None:
        self.target = target
        self.contract = contract
        self.use_uint8 = use_uint8
        self.discover_tensor_names = discover_tensor_names
        self._signature = None if discover_tensor_names else request_signature(contract, use_uint8)
        self._checked_version: int | None = None
        self._differences: list[str] = []

    @property
    def signature(self) -> Signature:
        """The signature requests go to (known once the tensor names are discovered, when they have to be)."""
        if self._signature is None:
            raise GatewayError("not_ready", "the model's tensor names have not been read from the model server yet")
        return self._signature

    def resolve_signature(self, timeout: float) -> Signature:
        """The request signature, reading the tensor names from the model server first when still unknown."""
        if self._signature is None:
            self._adopt(self.signature_defs(timeout))
        return self.signature

    @abstractmethod
    def predict(self, images: list[np.ndarray], timeout: float) -> np.ndarray:
        """Run the signature on `images` (each H x W x 3) as one batch; returns the output array, a row per image.

        Empties `images` once the request is built, so that their arrays are freed while the model runs.
        """

    @abstractmethod
    def model_versions(self, timeout: float) -> list[tuple[int, str]]:
        """(version, state name) of every version of the model the server knows; GatewayError when it cannot say."""

    @abstractmethod
    def signature_defs(self, timeout: float) -> Mapping[str, Any]:
        """The served signatures (name -> SignatureDef proto); GatewayError when they cannot be read."""

    @abstractmethod
    def close(self) -> None:
        """Release connections (a later call opens new ones)."""

    def _adopt(self, signature_defs: Mapping[str, Any]) -> list[str]:
        """Discover the tensor names when asked to (GatewayError when impossible); then every difference between
        the contract and the served signatures."""
        if self.discover_tensor_names:
            self.contract = discover_tensor_names(self.contract, signature_defs)
            self._signature = request_signature(self.contract, self.use_uint8)
        return contract_differences(self.contract, signature_defs)

    def readiness(self, timeout: float = 3.0) -> Readiness:
        """Whether a version of the model is AVAILABLE; on a version not seen before, the contract is checked against
        the served signatures (differences are logged and reported)."""
        try:
            versions = self.model_versions(timeout)
        except GatewayError as exc:
            return Readiness(False, f"model server {self.target}: {exc.message}")
        available = [version for version, state in versions if state == "AVAILABLE"]
        if not available:
            states = ", ".join(f"{version}: {state}" for version, state in versions)
            return Readiness(False, f'model "{self.contract.name}" has no AVAILABLE version ({states or "none"})')
        version = max(available)
        if version != self._checked_version:
            try:
                signature_defs = self.signature_defs(timeout)
            except GatewayError as exc:
                return Readiness(False, f"reading the model's signatures failed: {exc.message}")
            try:
                differences = self._adopt(signature_defs)
            except GatewayError as exc:
                differences = [exc.message]
            self._checked_version, self._differences = version, differences
            if differences:
                log.error("model contract does not match the served model: %s", "; ".join(differences))
        if self._differences:
            return Readiness(False, "model contract does not match the served model: " + "; ".join(self._differences))
        return Readiness(True, f'model "{self.contract.name}" version {version} is AVAILABLE')

    def _checked_outputs(self, outputs: np.ndarray, rows: int) -> np.ndarray:
        if outputs.dtype.kind not in "fiu":
            raise GatewayError("model_error", f"the model returned {outputs.dtype} values, not scores")
        if outputs.ndim == 0 or outputs.shape[0] != rows:
            raise GatewayError("model_error", f"the model returned shape {list(outputs.shape)} for a batch of {rows}")
        return outputs


class ModelServerClient(PredictorClient):
    """Predict, model status and metadata over TF Serving's gRPC API (PredictionService, ModelService)."""

    def __init__(
        self,
        target: str,
        contract: ModelContract,
        *,
        use_uint8: bool = True,
        discover_tensor_names: bool = False,
        lb_policy: str = "pick_first",
        max_attempts: int = 3,
        backoff_seconds: float = 0.1,
        on_retry: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(target, contract, use_uint8=use_uint8, discover_tensor_names=discover_tensor_names)
        self.lb_policy = lb_policy
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.on_retry = on_retry
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._pid = 0
        self._predict: grpc.UnaryUnaryMultiCallable | None = None
        self._prediction: prediction_service_pb2_grpc.PredictionServiceStub | None = None
        self._models: model_service_pb2_grpc.ModelServiceStub | None = None

    def _stubs(
        self,
    ) -> tuple[
        grpc.UnaryUnaryMultiCallable,
        prediction_service_pb2_grpc.PredictionServiceStub,
        model_service_pb2_grpc.ModelServiceStub,
    ]:
        """(Predict taking serialized requests, PredictionService, ModelService) on this process's channel."""
        with self._lock:
            if self._channel is None or self._pid != os.getpid():
                options = list(CHANNEL_OPTIONS)
                if self.lb_policy == "round_robin":
                    options.append(("grpc.service_config", ROUND_ROBIN_SERVICE_CONFIG))
                self._channel = grpc.insecure_channel(self.target, options=options)
                self._pid = os.getpid()
                self._predict = self._channel.unary_unary(
                    PREDICT_METHOD,
                    request_serializer=None,
                    response_deserializer=predict_pb2.PredictResponse.FromString,
                    _registered_method=True,
                )
                self._prediction = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
                self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
            assert self._predict is not None
            assert self._prediction is not None
            assert self._models is not None
            return self._predict, self._prediction, self._models

    def close(self) -> None:
        """Close the channel (a later call opens a new one)."""
        with self._lock:
            if self._channel is not None and self._pid == os.getpid():
                self._channel.close()
            self._channel = self._predict = self._prediction = self._models = None

    def _call(self, method: Callable[..., Any], request: Any, timeout: float) -> Any:
        """Call with a deadline of `timeout` seconds, retrying RETRIED_CODES with jittered exponential backoff."""
        deadline = time.monotonic() + timeout
        for attempt in range(self.max_attempts):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                return method(request, timeout=remaining)
            except grpc.RpcError as exc:
                code = exc.code()
                if code not in RETRIED_CODES or attempt == self.max_attempts - 1:
                    raise
                pause = self.backoff_seconds * 2**attempt * random.uniform(0.5, 1.0)  # noqa: S311 (jitter)
                if time.monotonic() + pause >= deadline:
                    raise
                log.info("model server %s, retrying in %.2f s", code.name, pause, extra={"details": exc.details()})
                if self.on_retry is not None:
                    self.on_retry()
                time.sleep(pause)
        raise GatewayError("deadline_exceeded", f"the model server did not answer within {timeout:g} s")

    def _status_call(self, method: Callable[..., Any], request: Any, timeout: float) -> Any:
        """A ModelService or metadata call; a failure is a GatewayError carrying the server's code and details."""
        try:
            return self._call(method, request, timeout)
        except grpc.RpcError as exc:
            raise GatewayError(rpc_error(exc, timeout).code, f"{exc.code().name}: {exc.details()}") from None

    def predict(self, images: list[np.ndarray], timeout: float) -> np.ndarray:
        """Run the signature on `images` with one Predict call (see PredictorClient.predict)."""
        predict, _, _ = self._stubs()
        signature = self.signature
        rows = len(images)
        request = encode_predict_request(
            self.contract.name, signature.name, signature.input_name, images, [signature.output_name]
        )
        images.clear()
        try:
            response = self._call(predict, request, timeout)
        except grpc.RpcError as exc:
            raise rpc_error(exc, timeout) from None
        if signature.output_name not in response.outputs:
            raise GatewayError(
                "model_error",
                f'the model server answered without output "{signature.output_name}" '
                f"(got: {', '.join(sorted(response.outputs)) or 'none'})",
            )
        try:
            outputs = to_ndarray(response.outputs[signature.output_name])
        except TensorError as exc:
            raise GatewayError("model_error", f"cannot read the model output: {exc}") from None
        return self._checked_outputs(outputs, rows)

    def model_versions(self, timeout: float) -> list[tuple[int, str]]:
        """`ModelService/GetModelStatus`: every version of the model and its state."""
        _, _, models = self._stubs()
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.contract.name
        status = self._status_call(models.GetModelStatus, request, timeout)
        return [
            (v.version, get_model_status_pb2.ModelVersionStatus.State.Name(v.state))
            for v in status.model_version_status
        ]

    def signature_defs(self, timeout: float) -> Mapping[str, Any]:
        """`PredictionService/GetModelMetadata`: the served signatures."""
        _, prediction, _ = self._stubs()
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = self.contract.name
        request.metadata_field.append("signature_def")
        response = self._status_call(prediction.GetModelMetadata, request, timeout)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        if "signature_def" not in response.metadata or not response.metadata["signature_def"].Unpack(signature_map):
            raise GatewayError("model_error", "the model server's metadata has no signature_def")
        return signature_map.signature_def


def rpc_error(exc: grpc.RpcError, timeout: float) -> GatewayError:
    """The client-facing error for a failed Predict (server details are logged, not returned, when unavailable)."""
    code = exc.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return GatewayError("deadline_exceeded", f"the model server did not answer within {timeout:g} s")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED):
        log.warning("model server unavailable: %s: %s", code.name, exc.details())
        return GatewayError("model_unavailable", f"the model server is unavailable ({code.name}); retry later")
    details = (exc.details() or "")[:500]
    return GatewayError("model_error", f"the model server answered {code.name}: {details}")
