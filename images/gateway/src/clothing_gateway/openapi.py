"""The OpenAPI 3 document served at /openapi.json, built from the configuration (labels, batch limit) and from the
error table, so every status and error code the gateway can return is documented."""

from __future__ import annotations

from typing import Any

from clothing_gateway.config import Config
from clothing_gateway.errors import ERROR_CODES
from clothing_gateway.fetch import MAX_URL_LENGTH

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


def _responses(success: dict[str, Any], errors: tuple[int, ...], success_status: int = 200) -> dict[str, Any]:
    success = {**success, "headers": {"X-Request-ID": _REQUEST_ID}}
    return {str(success_status): success, **{str(status): _error_response(status) for status in errors}}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def openapi_document(config: Config) -> dict[str, Any]:
    """The OpenAPI 3.0 document for a gateway running with `config`."""
    contract = config.contract
    labels = list(contract.labels)
    scores = {
        "type": "object",
        "description": "Raw model score per label (labels in contract order; with top_k, the best first).",
        "properties": {label: {"type": "number"} for label in labels},
        "additionalProperties": False,
    }
    url = {"type": "string", "minLength": 1, "maxLength": MAX_URL_LENGTH, "description": "http(s) URL of an image."}
    b64 = {
        "type": "string",
        "format": "byte",
        "minLength": 1,
        "description": "Base64-encoded image bytes (standard alphabet, padded).",
    }
    top_k = {
        "name": "top_k",
        "in": "query",
        "required": False,
        "description": "Return only the top_k labels, best first.",
        "schema": {"type": "integer", "minimum": 1, "maximum": len(labels)},
    }
    model_name = {
        "name": "name",
        "in": "path",
        "required": True,
        "description": "The model name; only the configured model is served (others: 404 model_not_found).",
        "schema": {"type": "string", "enum": [contract.name]},
    }
    predict_body = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {
                            "type": "object",
                            "required": ["url"],
                            "properties": {"url": url},
                            "additionalProperties": False,
                        },
                        {
                            "type": "object",
                            "required": ["image_b64"],
                            "properties": {"image_b64": b64},
                            "additionalProperties": False,
                        },
                    ]
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": {"type": "string", "format": "binary"}},
                }
            },
            **{media: {"schema": {"type": "string", "format": "binary"}} for media in RAW_MEDIA_TYPES},
        },
    }
    instance = {
        "oneOf": [
            {"type": "object", "required": ["url"], "properties": {"url": url}, "additionalProperties": False},
            {"type": "object", "required": ["b64"], "properties": {"b64": b64}, "additionalProperties": False},
        ]
    }
    kserve_body = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["instances"],
                    "properties": {
                        "instances": {"type": "array", "minItems": 1, "maxItems": config.max_batch, "items": instance}
                    },
                }
            }
        },
    }
    kserve_answer = {
        "type": "object",
        "required": ["predictions"],
        "properties": {"predictions": {"type": "array", "items": scores}},
    }
    model_ready_fields: dict[str, Any] = {"name": {"type": "string"}, "ready": {"type": "boolean"}}
    model_ready = {"type": "object", "required": ["name", "ready"], "properties": model_ready_fields}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "clothing-model gateway",
            "version": "1",
            "description": (
                f'Classifies clothing images with the model "{contract.name}" served by TF Serving. '
                'Every error is JSON: {"error": {"code": ..., "message": ...}}.'
            ),
        },
        "paths": {
            "/predict": {
                "post": {
                    "operationId": "predict",
                    "summary": "Classify one image: a URL (the book's format), an upload, or base64.",
                    "parameters": [top_k],
                    "requestBody": predict_body,
                    "responses": _responses(_json(scores, "Scores per label."), PREDICT_ERRORS),
                }
            },
            "/v1/models/{name}:predict": {
                "post": {
                    "operationId": "kservePredict",
                    "summary": "KServe V1 predict: classify a batch of images in one model call.",
                    "parameters": [model_name],
                    "requestBody": kserve_body,
                    "responses": _responses(
                        _json(kserve_answer, "Scores per instance, in order."), KSERVE_PREDICT_ERRORS
                    ),
                }
            },
            "/v1/models/{name}": {
                "get": {
                    "operationId": "kserveModelReady",
                    "summary": "KServe V1 model readiness.",
                    "parameters": [model_name],
                    "responses": {
                        **_responses(_json(model_ready, "The model is ready."), (404, 500)),
                        "503": _error_response(503, model_ready_fields),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "Liveness: the process answers.",
                    "responses": _responses(
                        _json({"type": "object", "properties": {"status": {"type": "string"}}}, "Alive."), (500,)
                    ),
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Readiness: the model server reports the model AVAILABLE and it matches the contract.",
                    "responses": _responses(
                        _json(
                            {
                                "type": "object",
                                "required": ["ready", "detail"],
                                "properties": {"ready": {"type": "boolean"}, "detail": {"type": "string"}},
                            },
                            "Ready.",
                        ),
                        (500, 503),
                    ),
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics (all gunicorn workers).",
                    "responses": _responses(
                        {
                            "description": "Prometheus text exposition format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        (500,),
                    ),
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document.",
                    "responses": _responses(_json({"type": "object"}, "The OpenAPI document."), (500,)),
                }
            },
        },
    }
