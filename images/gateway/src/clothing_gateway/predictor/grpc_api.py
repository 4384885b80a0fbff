"""TF Serving's gRPC API (`PredictionService`, `ModelService`) on the vendored protos, no TensorFlow.

One channel per process, created on first use: gunicorn workers create theirs after the fork (a gRPC channel must
never cross a fork). UNAVAILABLE (server restarting, connection refused, batch queue full) and CANCELLED (this client
never cancels, so it comes from a server that is shutting down with the call queued) are retried within the deadline:
Predict is idempotent. Nothing else is.

Load balancing: by default (`pick_first`) the channel holds one HTTP/2 connection, so behind a ClusterIP Service
all of a worker's requests go to one TF Serving replica. With `round_robin` and a target that resolves to every
replica (a headless Service, e.g. `dns:///tf-serving-headless.ns.svc.cluster.local:8500`), the channel connects to
each address and spreads calls across them without a mesh. Caveat: gRPC's DNS resolver re-resolves only when a
connection breaks or fails (not on a timer, and by default at most once per 30 s: lowered to 1 s here), so a
replica added later gets no traffic from this channel until then. The fix is server-side: run TF Serving with
`--grpc_channel_arguments=grpc.max_connection_age_ms=30000`, which makes it close connections periodically (after
in-flight calls), so clients reconnect and re-resolve (and removed replicas drop out as their connections close).

The channel is renewed once no call has succeeded for `RENEW_AFTER_SECONDS` of UNAVAILABLE answers. gRPC's DNS
resolver backs off after each failed resolution (1 s, x1.6 per failure, up to 120 s; not configurable): after every
TF Serving pod was gone for a minute (the headless Service's name did not resolve), a channel would not look the name
up again for up to half a minute after the new pods were ready, answering 503 meanwhile. A new channel resolves at
once. Calls in flight on the old channel end CANCELLED and are retried on the new one.

Every call is made as a future and waited for (`method.future(...).result()`), never as a blocking call: under
gevent, grpcio runs a blocking call's wait on a native thread of gevent's pool (10 threads) for the call's whole
duration, so a slow model would fill the pool and leave image decodes and DNS lookups queued behind model calls.
A future's completion comes through the channel's one polling thread; the waiting greenlet holds no thread.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from clothing_gateway.errors import GatewayError
from clothing_gateway.per_process import PerProcess
from clothing_gateway.predictor.base import (
    LATEST,
    UNKNOWN_LABEL,
    EncodedBatch,
    Predictor,
    Retryable,
    VersionChoice,
    deadline_exceeded,
    missing_output,
    unavailable,
    version_not_found,
)
from clothing_gateway.predictor.signature import ResolvedContract
from model_interface.contract import ModelContract
from model_interface.tensors import TensorError, encode_predict_request, to_ndarray
from model_interface.tfs_protos.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
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
    # Re-resolve at most once a second, not once per 30 s: a replica replaced under load is otherwise missed for up to
    # 30 s (the resolution when its predecessor's connection broke saw the replacement not ready yet), and all calls
    # go to the survivors; a SIGKILL of the last of them then fails every call (the e2e's faults).
    ("grpc.dns_min_time_between_resolutions_ms", 1_000),
]
RENEW_AFTER_SECONDS = 5.0
ROUND_ROBIN_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
# Predict takes the request already serialized (tensors.encode_predict_request), so no request serializer.
PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
RETRIED_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
_UNAVAILABLE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED}
)


@dataclass(frozen=True)
class Stubs:
    """One process's channel to TF Serving and the stubs on it."""

    channel: grpc.Channel
    predict: grpc.UnaryUnaryMultiCallable  # takes serialized requests
    prediction: prediction_service_pb2_grpc.PredictionServiceStub
    models: model_service_pb2_grpc.ModelServiceStub


def _connect(target: str, lb_policy: str) -> Stubs:
    options = list(CHANNEL_OPTIONS)
    if lb_policy == "round_robin":
        options.append(("grpc.service_config", ROUND_ROBIN_SERVICE_CONFIG))
    channel = grpc.insecure_channel(target, options=options)
    predict = channel.unary_unary(
        PREDICT_METHOD,
        request_serializer=None,
        response_deserializer=predict_pb2.PredictResponse.FromString,
        _registered_method=True,
    )
    return Stubs(
        channel,
        predict,
        prediction_service_pb2_grpc.PredictionServiceStub(channel),
        model_service_pb2_grpc.ModelServiceStub(channel),
    )


class Connection:
    """A channel per process to TF Serving at `target`, shared by the predictors of all the models it serves, and
    renewed after `renew_after` seconds in which calls were UNAVAILABLE and none succeeded (see the module's doc)."""

    def __init__(self, target: str, lb_policy: str = "pick_first", renew_after: float = RENEW_AFTER_SECONDS) -> None:
        self.target = target
        self._stubs = PerProcess(lambda: _connect(target, lb_policy), lambda stubs: stubs.channel.close())
        self._renew_after = renew_after
        self._unavailable_since: float | None = None

    def stubs(self) -> Stubs:
        return self._stubs.get()

    def answered(self, code: grpc.StatusCode) -> None:
        """Record a call's outcome: any answer from the server shows the channel works; UNAVAILABLE may not."""
        if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
            return
        if code != grpc.StatusCode.UNAVAILABLE:
            self._unavailable_since = None
            return
        now = time.monotonic()
        if self._unavailable_since is None:
            self._unavailable_since = now
        elif now - self._unavailable_since >= self._renew_after:
            log.warning("no call to %s succeeded for %.0f s: renewing the channel", self.target, self._renew_after)
            self._unavailable_since = now
            self._stubs.close()

    def close(self) -> None:
        self._stubs.close()


def rpc_error(exc: grpc.RpcError, timeout: float) -> GatewayError:
    """The client-facing error for a failed call (server details are logged, not returned, when unavailable)."""
    code = exc.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return deadline_exceeded(timeout)
    if code in _UNAVAILABLE_CODES:
        return unavailable(code.name, exc.details() or "")
    return GatewayError("model_error", f"the model server answered {code.name}: {(exc.details() or '')[:500]}")


def _names_no_version(exc: grpc.RpcError, choice: VersionChoice) -> bool:
    """Whether TF Serving refused the call because the version or label the client chose does not exist."""
    if choice.number is not None:
        return exc.code() == grpc.StatusCode.NOT_FOUND
    return bool(choice.label) and (exc.details() or "").startswith(UNKNOWN_LABEL)


def _model_spec(resolved: ResolvedContract, choice: VersionChoice) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=resolved.contract.name, signature_name=resolved.signature.name)
    if choice.number is not None:
        spec.version.value = choice.number
    elif choice.label:
        spec.version_label = choice.label
    return spec


def _spec_field(resolved: ResolvedContract, choice: VersionChoice) -> bytes:
    """PredictRequest.model_spec as it starts a serialized request."""
    return predict_pb2.PredictRequest(model_spec=_model_spec(resolved, choice)).SerializeToString()


class GrpcPredictor(Predictor):
    """Predict, model status and metadata over TF Serving's gRPC API at `target` (host:port or a gRPC target URI),
    on its own channel or on one `shared` with the predictors of the other models TF Serving serves."""

    def __init__(
        self,
        target: str,
        contract: ModelContract,
        *,
        lb_policy: str = "pick_first",
        shared: Connection | None = None,
        **options: Any,
    ) -> None:
        super().__init__(target, contract, **options)
        self._connection = shared or Connection(target, lb_policy)

    def close(self) -> None:
        self._connection.close()

    def _retried(self, method: Callable[[Stubs], grpc.UnaryUnaryMultiCallable], request: Any, timeout: float) -> Any:
        """One call of `method` (on the current channel's stubs) within `timeout` seconds, retried on RETRIED_CODES;
        grpc.RpcError when it fails."""

        def attempt(remaining: float) -> Any:
            try:
                response = self._start(method, request, remaining).result()
            except grpc.RpcError as exc:
                self._connection.answered(exc.code())
                if exc.code() in RETRIED_CODES:
                    raise Retryable(exc, exc.code().name, exc.details() or "") from None
                raise
            self._connection.answered(grpc.StatusCode.OK)
            return response

        return self._with_retries(attempt, timeout)

    def _start(self, method: Callable[[Stubs], grpc.UnaryUnaryMultiCallable], request: Any, timeout: float) -> Any:
        """The call, started on the current channel; on its successor if a renewal closed it in between."""
        try:
            return method(self._connection.stubs()).future(request, timeout=timeout)
        except ValueError:  # "Cannot invoke RPC: Channel closed!"
            return method(self._connection.stubs()).future(request, timeout=timeout)

    def encode(
        self, resolved: ResolvedContract, images: Sequence[np.ndarray], choice: VersionChoice = LATEST
    ) -> EncodedBatch:
        signature = resolved.signature
        body = encode_predict_request(
            _model_spec(resolved, choice), signature.input_name, images, [signature.output_name]
        )
        return EncodedBatch(body, len(images), choice)

    def with_choice(self, resolved: ResolvedContract, batch: EncodedBatch, choice: VersionChoice) -> EncodedBatch:
        """The model spec is the serialized request's first field: only it changes."""
        old, new = (_spec_field(resolved, c) for c in (batch.choice, choice))
        return EncodedBatch(new + memoryview(batch.body)[len(old) :], batch.rows, choice)

    def send(self, resolved: ResolvedContract, batch: EncodedBatch, timeout: float) -> np.ndarray:
        try:
            response = self._retried(lambda stubs: stubs.predict, batch.body, timeout)
        except grpc.RpcError as exc:
            if _names_no_version(exc, batch.choice):
                raise version_not_found(resolved.contract.name, batch.choice) from None
            raise rpc_error(exc, timeout) from None
        output_name = resolved.signature.output_name
        if output_name not in response.outputs:
            raise missing_output(output_name, list(response.outputs))
        try:
            return to_ndarray(response.outputs[output_name])
        except TensorError as exc:
            raise GatewayError("model_error", f"cannot read the model output: {exc}") from None

    def model_versions(self, timeout: float) -> list[tuple[int, str]]:
        """`ModelService/GetModelStatus`: every version of the model and its state."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.contract.name
        status = self._status_call(lambda stubs: stubs.models.GetModelStatus, request, timeout)
        return [
            (v.version, get_model_status_pb2.ModelVersionStatus.State.Name(v.state))
            for v in status.model_version_status
        ]

    def signature_defs(self, timeout: float, choice: VersionChoice = LATEST) -> Mapping[str, Any]:
        """`PredictionService/GetModelMetadata`: the signatures of the chosen version."""
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = self.contract.name
        if choice.number is not None:
            request.model_spec.version.value = choice.number
        elif choice.label:
            request.model_spec.version_label = choice.label
        request.metadata_field.append("signature_def")
        response = self._status_call(lambda stubs: stubs.prediction.GetModelMetadata, request, timeout)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        if "signature_def" not in response.metadata or not response.metadata["signature_def"].Unpack(signature_map):
            raise GatewayError("model_error", "the model server's metadata has no signature_def")
        return signature_map.signature_def

    def _status_call(
        self, method: Callable[[Stubs], grpc.UnaryUnaryMultiCallable], request: Any, timeout: float
    ) -> Any:
        """A ModelService or metadata call: its failures name the server's code and details (readiness shows them)."""
        try:
            return self._retried(method, request, timeout)
        except grpc.RpcError as exc:
            code = rpc_error(exc, timeout).code
            raise GatewayError(code, f"{exc.code().name}: {exc.details()}") from None
