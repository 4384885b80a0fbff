"""The OpenAPI 3 document served at /openapi.json: a table of the gateway's operations, the schemas they use (built from
the configuration: labels, batch limit, model name) and the error table, so every status and error code the gateway
can return is documented."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clothing_gateway.config import Config
from clothing_gateway.errors import ERROR_CODES
from clothing_gateway.fetch import MAX_URL_LENGTH
from model_interface.preprocessing import PREPROCESSINGS

# Statuses each kind of endpoint can answer besides its success.
PREDICT_ERRORS = (400, 413, 415, 422, 500, 502, 503, 504)
KSERVE_PREDICT_ERRORS = (400, 404, 413, 415, 422, 500, 502, 503, 504)
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff")
RAW_MEDIA_TYPES = (*IMAGE_MEDIA_TYPES, "application/octet-stream")
_REQUEST_ID = {
    "description": "The request id (the client's X-Request-ID when valid, else a generated one); logs carry it.",
    "schema": {"type": "string"},
}
_RETRY_AFTER = {"description": "Seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 0}}
_MODEL_READY_FIELDS: dict[str, Any] = {"name": {"type": "string"}, "ready": {"type": "boolean"}}
_PREPROCESSING: dict[str, Any] = {
    "type": "object",
    "properties": {name: {"type": "string", "enum": list(PREPROCESSINGS)} for name in ("serving", "validated")},
}


@dataclass(frozen=True)
class Operation:
    """One endpoint: its success response, the error statuses it can answer, its parameters and body."""

    path: str
    method: str
    operation_id: str
    summary: str
    success: dict[str, Any]
    errors: tuple[int, ...]
    parameters: tuple[dict[str, Any], ...] = ()
    body: dict[str, Any] | None = None
    error_fields: dict[str, Any] | None = None  # extra top-level fields of its 503 body

    def document(self) -> dict[str, Any]:
        operation: dict[str, Any] = {"operationId": self.operation_id, "summary": self.summary}
        if self.parameters:
            operation["parameters"] = list(self.parameters)
        if self.body is not None:
            operation["requestBody"] = self.body
        responses = {"200": {**self.success, "headers": {"X-Request-ID": _REQUEST_ID}}}
        for status in self.errors:
            responses[str(status)] = _error_response(status, self.error_fields if status == 503 else None)
        operation["responses"] = responses
        return operation


def _error_response(status: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    codes = sorted(code for code, (code_status, _) in ERROR_CODES.items() if code_status == status)
    description = "; ".join(f"`{code}`: {ERROR_CODES[code][1]}" for code in codes)
    headers: dict[str, Any] = {"X-Request-ID": _REQUEST_ID}
    if status == 503:
        headers["Retry-After"] = _RETRY_AFTER
    error: dict[str, Any] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            **(extra or {}),
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string", "enum": codes}, "message": {"type": "string"}},
            },
        },
    }
    return {"description": description, "headers": headers, "content": {"application/json": {"schema": error}}}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _one_of_fields(**fields: dict[str, Any]) -> dict[str, Any]:
    """An object with exactly one of the fields."""
    return {
        "oneOf": [
            {"type": "object", "required": [name], "properties": {name: schema}, "additionalProperties": False}
            for name, schema in fields.items()
        ]
    }


def _object(**properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": list(properties), "properties": properties}


_URL = {"type": "string", "minLength": 1, "maxLength": MAX_URL_LENGTH, "description": "http(s) URL of an image."}
_B64 = {
    "type": "string",
    "format": "byte",
    "minLength": 1,
    "description": "Base64-encoded image bytes (standard alphabet, padded).",
}
_BINARY = {"type": "string", "format": "binary"}
_PREDICT_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": _one_of_fields(url=_URL, image_b64=_B64)},
        "multipart/form-data": {"schema": _object(image=_BINARY)},
        **{media: {"schema": _BINARY} for media in RAW_MEDIA_TYPES},
    },
}


def _scores(labels: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Raw model score per label (labels in contract order; with top_k, the best first).",
        "properties": {label: {"type": "number"} for label in labels},
        "additionalProperties": False,
    }


def _path_name(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


def _operations(config: Config) -> list[Operation]:
    default = config.default_contract
    scores = _scores(list(default.labels))
    any_scores = _scores(list(dict.fromkeys(label for contract in config.contracts for label in contract.labels)))
    top_k = {
        "name": "top_k",
        "in": "query",
        "required": False,
        "description": "Return only the top_k labels, best first.",
        "schema": {"type": "integer", "minimum": 1, "maximum": len(default.labels)},
    }
    exclude = {
        "name": "exclude",
        "in": "query",
        "required": False,
        "description": "`models`: check and report the models but answer 200 whatever their state (the pod's readiness "
        "probe, so a model server outage is answered with 503 model_unavailable rather than refused connections).",
        "schema": {"type": "string", "enum": ["models"]},
    }
    names = [contract.name for contract in config.contracts]
    model_name = _path_name(
        "name", "A served model's name (others: 404 model_not_found).", {"type": "string", "enum": names}
    )
    version = _path_name(
        "version", "A version number the model server serves (others: 404 version_not_found).", {"type": "integer"}
    )
    label = _path_name(
        "label",
        "A version label of the model server's config (others: 404 version_not_found).",
        {"type": "string", "pattern": "^[^/:]+$"},
    )
    instances = {
        "type": "array",
        "minItems": 1,
        "maxItems": config.max_batch,
        "items": _one_of_fields(url=_URL, b64=_B64),
    }
    kserve_body = {"required": True, "content": {"application/json": {"schema": _object(instances=instances)}}}
    predictions = _object(predictions={"type": "array", "items": any_scores})
    models_readiness = {
        "type": "object",
        "additionalProperties": _object(
            ready={"type": "boolean"}, detail={"type": "string"}, preprocessing=_PREPROCESSING
        ),
    }
    exposition = {
        "description": "Prometheus text exposition format.",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    return [
        Operation(
            "/predict", "post", "predict", "Classify one image: a URL (the book's format), an upload, or base64.",
            _json(scores, "Scores per label."), PREDICT_ERRORS, (top_k,), _PREDICT_BODY,
        ),
        Operation(
            "/v1/models/{name}:predict", "post", "kservePredict",
            "KServe V1 predict: classify a batch of images in one call to the model's latest version.",
            _json(predictions, "Scores per instance, in order."), KSERVE_PREDICT_ERRORS, (model_name,), kserve_body,
        ),
        Operation(
            "/v1/models/{name}/versions/{version}:predict", "post", "versionPredict",
            "Classify a batch of images with one version of the model (TF Serving's path).",
            _json(predictions, "Scores per instance, in order."), KSERVE_PREDICT_ERRORS, (model_name, version),
            kserve_body,
        ),
        Operation(
            "/v1/models/{name}/labels/{label}:predict", "post", "labelPredict",
            "Classify a batch of images with the version a label of TF Serving's config names (TF Serving's path).",
            _json(predictions, "Scores per instance, in order."), KSERVE_PREDICT_ERRORS, (model_name, label),
            kserve_body,
        ),
        Operation(
            "/v1/models/{name}", "get", "kserveModelReady", "KServe V1 model readiness.",
            _json(_object(**_MODEL_READY_FIELDS), "The model is ready."), (404, 500, 503), (model_name,),
            error_fields=_MODEL_READY_FIELDS,
        ),
        Operation(
            "/healthz", "get", "healthz", "Liveness: the process answers.",
            _json({"type": "object", "properties": {"status": {"type": "string"}}}, "Alive."), (500,),
        ),
        Operation(
            "/readyz", "get", "readyz",
            "Readiness: the model server reports every model AVAILABLE, each matching its contract.",
            _json(
                _object(ready={"type": "boolean"}, models=models_readiness),
                "Ready (with exclude=models: answered, `ready` tells whether every model is); per model, the "
                "preprocessing served and the one its contract says it was validated with.",
            ),
            (400, 500, 503), (exclude,), error_fields={"models": models_readiness},
        ),
        Operation(
            "/metrics", "get", "metrics", "Prometheus metrics (all gunicorn workers).",
            exposition, (500,),
        ),
        Operation(
            "/openapi.json", "get", "openapi", "This document.",
            _json({"type": "object"}, "The OpenAPI document."), (500,),
        ),
    ]  # fmt: skip


def openapi_document(config: Config) -> dict[str, Any]:
    """The OpenAPI 3.0 document for a gateway running with `config`."""
    names = ", ".join(f'"{contract.name}"' for contract in config.contracts)
    paths: dict[str, dict[str, Any]] = {}
    for operation in _operations(config):
        paths.setdefault(operation.path, {})[operation.method] = operation.document()
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "clothing-model gateway",
            "version": "1",
            "description": (
                f"Classifies clothing images with the models {names} served by TF Serving "
                f'(`/predict`: "{config.default_contract.name}"). '
                'Every error is JSON: {"error": {"code": ..., "message": ...}}.'
            ),
        },
        "paths": paths,
    }
