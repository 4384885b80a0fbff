"""gRPC front end of the stand-in model server: TF Serving's PredictionService and ModelService, and optionally
the standard grpc.health.v1 service (`--enable_grpc_healthcheck_service`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import grpc

from model_interface.tensors import to_ndarray, to_typed_tensor_proto
from model_interface.tfs_protos.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from model_tools import inference
from model_tools.servable import ServingError

if TYPE_CHECKING:
    from model_tools.server import ModelServer

log = logging.getLogger("model_tools.server")
# google.protobuf.Any type URL that TF Serving uses for the metadata field "signature_def".
_SIGNATURE_DEF_MAP_URL = "type.googleapis.com/tensorflow.serving.SignatureDefMap"
_STATE_ENUM = get_model_status_pb2.ModelVersionStatus.State


def _abort(context: grpc.ServicerContext, exc: ServingError) -> Any:
    context.abort(exc.code, exc.message)


def _version(spec: Any) -> tuple[int | None, str | None]:
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return spec.version.value, None
    if choice == "version_label":
        return None, spec.version_label
    return None, None


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict, Classify, Regress, MultiInference and GetModelMetadata."""

    def __init__(self, server: ModelServer) -> None:
        self.server = server

    def Predict(self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext) -> Any:
        version, label = _version(request.model_spec)
        try:
            inputs = {alias: to_ndarray(tensor) for alias, tensor in request.inputs.items()}
        except ValueError as exc:
            return _abort(context, ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)))
        try:
            loaded, outputs = self.server.predict(
                request.model_spec.name,
                version,
                label,
                request.model_spec.signature_name,
                inputs,
                list(request.output_filter),
                "GRPC",
            )
        except ServingError as exc:
            return _abort(context, exc)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = loaded.version
        response.model_spec.signature_name = request.model_spec.signature_name or "serving_default"
        for alias, value in outputs.items():
            response.outputs[alias].CopyFrom(to_typed_tensor_proto(value))
        return response

    def Classify(self, request: classification_pb2.ClassificationRequest, context: grpc.ServicerContext) -> Any:
        return self._infer("Classify", request.model_spec, lambda loaded: inference.classify(loaded, request), context)

    def Regress(self, request: regression_pb2.RegressionRequest, context: grpc.ServicerContext) -> Any:
        return self._infer("Regress", request.model_spec, lambda loaded: inference.regress(loaded, request), context)

    def MultiInference(self, request: inference_pb2.MultiInferenceRequest, context: grpc.ServicerContext) -> Any:
        spec = request.tasks[0].model_spec if request.tasks else model_pb2.ModelSpec()
        return self._infer("MultiInference", spec, lambda loaded: inference.multi_inference(loaded, request), context)

    def _infer(self, api: str, spec: Any, run: Any, context: grpc.ServicerContext) -> Any:
        version, label = _version(spec)
        try:
            return self.server.call(api, "GRPC", spec.name, version, label, run)[1]
        except ServingError as exc:
            return _abort(context, exc)

    def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.ServicerContext
    ) -> Any:
        version, label = _version(request.model_spec)
        try:
            if list(request.metadata_field) != ["signature_def"]:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT, "Metadata field signature_def must be the only field requested"
                )
            loaded = self.server.models.resolve(request.model_spec.name, version, label)
        except ServingError as exc:
            return _abort(context, exc)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = loaded.version
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature_def in loaded.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(signature_def)
        response.metadata["signature_def"].Pack(signature_map)
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus, and HandleReloadConfigRequest (a new ModelServerConfig applied as server_core applies one)."""

    def __init__(self, server: ModelServer) -> None:
        self.server = server

    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.ServicerContext) -> Any:
        version, _ = _version(request.model_spec)
        try:
            statuses = self.server.models.model_status(request.model_spec.name, version)
        except ServingError as exc:
            return _abort(context, exc)
        response = get_model_status_pb2.GetModelStatusResponse()
        for status in statuses:
            line = response.model_version_status.add(version=status.version, state=_STATE_ENUM.Value(status.state))
            line.status.error_code = status.error_code
            line.status.error_message = status.error_message
        return response

    def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context: grpc.ServicerContext
    ) -> Any:
        try:
            self.server.models.reload(request.config)
        except ServingError as exc:
            log.error("ReloadConfig failed: %s", exc.message)
            return _abort(context, exc)
        return model_management_pb2.ReloadConfigResponse()


def add_services(server: grpc.Server, model_server: ModelServer) -> None:
    """Register the TF Serving services (and health, when enabled) on a grpc.Server."""
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(model_server), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(model_server), server)
    if model_server.flags.enable_grpc_healthcheck_service:
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc

        servicer = health.HealthServicer()
        for service in ("", "ModelService", "PredictionService"):
            servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
