"""The HTTP layer: parse requests, call the classifier, answer JSON. `create_app(config)` builds the Flask app;
gunicorn calls `create_app()` in each worker (see gunicorn.conf.py), which reads the configuration from the
environment."""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import os
import re
import time
import uuid
from typing import IO, Any

from flask import Flask, Request, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter

from clothing_gateway.config import Config
from clothing_gateway.errors import ERROR_CODES, GatewayError, error_body, error_headers
from clothing_gateway.logs import configure_logging, request_id
from clothing_gateway.metrics import Metrics
from clothing_gateway.openapi import RAW_MEDIA_TYPES, openapi_document
from clothing_gateway.predictor.base import Predictor
from clothing_gateway.predictor.grpc_api import GrpcPredictor
from clothing_gateway.predictor.rest_api import RestPredictor
from clothing_gateway.service import Classifier, ImageSource

log = logging.getLogger("clothing_gateway")
READINESS_TIMEOUT_SECONDS = 3.0
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
_HTTP_ERROR_CODES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}
_QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _ModelNameConverter(BaseConverter):
    """A model name in a path: no '/' and no ':' (so `/v1/models/<name>` never swallows `x:predict`)."""

    regex = r"[^/:]+"


class _InMemoryRequest(Request):
    """Keeps multipart uploads in memory (bounded by MAX_CONTENT_LENGTH): no temp files, so a read-only root
    filesystem is fine."""

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        return io.BytesIO()


def create_app(config: Config | None = None) -> Flask:
    """Build the gateway app. Without a config, read it from the environment (raises ConfigError)."""
    config = config or Config.from_env(os.environ)
    configure_logging(config.log_level)
    metrics = Metrics()
    predictor = _predictor(config, metrics)
    classifier = Classifier(config, predictor, metrics)
    contract = config.contract

    app = Flask(__name__)
    app.request_class = _InMemoryRequest
    app.url_map.converters["model"] = _ModelNameConverter
    app.config["MAX_CONTENT_LENGTH"] = config.max_request_bytes
    app.config["MAX_FORM_MEMORY_SIZE"] = config.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]  # labels keep the contract's (or the score) order
    app.extensions["clothing_gateway"] = classifier
    document = openapi_document(config)

    def fail(code: str, message: str, **fields: Any) -> Response:
        g.error_code = code
        response = jsonify({**fields, **error_body(code, message)})
        response.status_code = ERROR_CODES[code][0]
        response.headers.update(error_headers(code))
        return response

    @app.before_request
    def start_request() -> None:
        g.started = time.perf_counter()
        g.deadline = time.monotonic() + config.deadline_seconds
        given = request.headers.get("X-Request-ID", "")
        g.request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        g.request_id_token = request_id.set(g.request_id)
        metrics.in_flight.inc()
        g.counted_in_flight = True

    @app.after_request
    def finish_request(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        outcome = g.get("error_code", "ok")
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        method = request.method if request.method in _METHODS else "other"  # bounded label values
        metrics.requests.labels(route, method, str(response.status_code), outcome).inc()
        metrics.request_latency.labels(route, outcome).observe(elapsed)
        log.log(
            logging.DEBUG if route in _QUIET_ROUTES and outcome == "ok" else logging.INFO,
            "request",
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "outcome": outcome,
                "duration_ms": round(elapsed * 1000, 2),
            },
        )
        return response

    @app.teardown_request
    def end_request(_: BaseException | None) -> None:
        if g.pop("counted_in_flight", False):
            metrics.in_flight.dec()
        token = g.pop("request_id_token", None)
        if token is not None:
            request_id.reset(token)

    @app.errorhandler(GatewayError)
    def gateway_error(exc: GatewayError) -> Response:
        return fail(exc.code, exc.message)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = _HTTP_ERROR_CODES.get(status, "invalid_request" if status < 500 else "internal_error")
        response = fail(code, exc.description or ERROR_CODES[code][1])
        if status == 405 and getattr(exc, "valid_methods", None):
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception) -> Response:
        log.exception("unhandled error")
        return fail(
            "internal_error", f"internal error; the gateway's logs have the details (request id {g.request_id})"
        )

    def top_k() -> int | None:
        raw = request.args.get("top_k")
        if raw is None:
            return None
        if not raw.isdigit() or not 1 <= int(raw) <= len(contract.labels):
            raise GatewayError("invalid_request", f"top_k must be an integer from 1 to {len(contract.labels)}")
        return int(raw)

    @app.post("/predict", provide_automatic_options=False)
    def predict() -> Response:
        k = top_k()
        source = _single_image(request)
        return jsonify(classifier.classify([source], g.deadline, top_k=k)[0])

    @app.post("/v1/models/<model:name>:predict", provide_automatic_options=False)
    def kserve_predict(name: str) -> Response:
        _check_model_name(name, contract.name)
        images = _instances(request, config.max_batch)
        return jsonify({"predictions": classifier.classify(images, g.deadline, item_prefix="instances")})

    @app.get("/v1/models/<model:name>", provide_automatic_options=False)
    def kserve_model_ready(name: str) -> Response:
        _check_model_name(name, contract.name)
        readiness = predictor.readiness(READINESS_TIMEOUT_SECONDS)
        if not readiness.ready:
            return fail("not_ready", readiness.detail, name=name, ready=False)
        return jsonify({"name": name, "ready": True})

    @app.get("/healthz", provide_automatic_options=False)
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    @app.get("/readyz", provide_automatic_options=False)
    def readyz() -> Response:
        readiness = predictor.readiness(READINESS_TIMEOUT_SECONDS)
        if not readiness.ready:
            return fail("not_ready", readiness.detail)
        return jsonify({"ready": True, "detail": readiness.detail})

    @app.get("/metrics", provide_automatic_options=False)
    def metrics_endpoint() -> Response:
        payload, content_type = metrics.exposition()
        return Response(payload, content_type=content_type)

    @app.get("/openapi.json", provide_automatic_options=False)
    def openapi() -> Response:
        return jsonify(document)

    return app


def _predictor(config: Config, metrics: Metrics) -> Predictor:
    """TF Serving's gRPC API (the default), or its REST API (GATEWAY_PREDICTOR_PROTOCOL=rest, KServe's predictor)."""
    options: dict[str, Any] = {
        "use_uint8": config.use_uint8,
        "discover_tensor_names": config.discover_tensor_names,
        "on_retry": metrics.model_retries.inc,
    }
    if config.predictor_protocol == "rest":
        return RestPredictor(config.model_server, config.contract, **options)
    return GrpcPredictor(config.model_server, config.contract, lb_policy=config.lb_policy, **options)


def _check_model_name(name: str, served: str) -> None:
    if name != served:
        raise GatewayError("model_not_found", f'this gateway serves the model "{served}", not "{name}"')


def _json_object(req: Request) -> dict[str, Any]:
    try:
        body = json.loads(req.get_data(cache=False))
    except (ValueError, UnicodeDecodeError) as exc:
        raise GatewayError("invalid_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise GatewayError("invalid_json", "the body must be a JSON object")
    return body


def _one_image_field(item: Any, url_key: str, data_key: str, where: str) -> ImageSource:
    """The image an object names: `{url_key: URL}` or `{data_key: base64}`, exactly one of them."""
    if not isinstance(item, dict):
        raise GatewayError("invalid_request", f"{where} must be an object with {url_key!r} or {data_key!r}")
    unknown = sorted(set(item) - {url_key, data_key})
    if unknown:
        raise GatewayError("invalid_request", f"{where} has unknown field(s): {', '.join(unknown)}")
    if len(item) != 1:
        raise GatewayError("invalid_request", f"{where} needs exactly one of {url_key!r} and {data_key!r}")
    key, value = next(iter(item.items()))
    if not isinstance(value, str) or not value:
        raise GatewayError("invalid_request", f"{where}.{key} must be a non-empty string")
    if key == url_key:
        return value
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise GatewayError("invalid_base64", f"{where}.{key} is not valid base64") from None


def _single_image(req: Request) -> ImageSource:
    """The image of a /predict request: JSON (url or image_b64), multipart (file field `image`, else the first
    file), or a raw image body."""
    mimetype = req.mimetype
    if mimetype == "application/json" or mimetype.endswith("+json"):
        return _one_image_field(_json_object(req), "url", "image_b64", "the body")
    if mimetype == "multipart/form-data":
        upload = req.files.get("image") or next(iter(req.files.values()), None)
        if upload is None:
            raise GatewayError("invalid_request", "the multipart body has no file; send the image in the field 'image'")
        return upload.read()
    if mimetype.startswith("image/") or mimetype in RAW_MEDIA_TYPES:
        data = req.get_data(cache=False)
        if not data:
            raise GatewayError("invalid_request", "the body is empty")
        return data
    raise GatewayError(
        "unsupported_media_type",
        f'Content-Type {mimetype or "(none)"!r} is not supported: send application/json ({{"url": ...}} or '
        f"{{\"image_b64\": ...}}), multipart/form-data with a file field 'image', or the image itself (image/*)",
    )


def _instances(req: Request, max_batch: int) -> list[ImageSource]:
    if not (req.mimetype == "application/json" or req.mimetype.endswith("+json")):
        raise GatewayError("unsupported_media_type", 'send application/json: {"instances": [{"url": ...}, ...]}')
    instances = _json_object(req).get("instances")
    if not isinstance(instances, list) or not instances:
        raise GatewayError("invalid_request", "instances must be a non-empty list")
    if len(instances) > max_batch:
        raise GatewayError(
            "batch_too_large", f"{len(instances)} instances, at most {max_batch} are allowed per request"
        )
    return [_one_image_field(item, "url", "b64", f"instances[{i}]") for i, item in enumerate(instances)]
