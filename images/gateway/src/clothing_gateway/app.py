"""The Flask app: `create_app(config=None, predictors=None)`.

gunicorn calls `create_app()` in each worker (see gunicorn.conf.py): the configuration comes from the environment and
a predictor per served model (gRPC, or REST for KServe's predictor; one connection for all) from the configuration.
Tests may pass their own. The app registers
the views (views.py), one request life cycle (request id, deadline, metrics, one log line) and the error handlers
that turn every failure into the JSON body and status of its code in errors.ERROR_CODES; admission.py stands in
front of it and refuses predictions past the worker's bounds.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Sequence
from typing import IO, Any

from flask import Flask, Request, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter

from clothing_gateway.admission import Admission
from clothing_gateway.config import Config
from clothing_gateway.errors import ERROR_CODES, GatewayError, error_body, error_headers
from clothing_gateway.event_loop import LoopLag
from clothing_gateway.logs import configure_logging, new_request_id, request_id
from clothing_gateway.metrics import Metrics
from clothing_gateway.openapi import openapi_document
from clothing_gateway.predictor import grpc_api, rest_api
from clothing_gateway.predictor.base import Predictor
from clothing_gateway.predictor.grpc_api import GrpcPredictor
from clothing_gateway.predictor.rest_api import RestPredictor
from clothing_gateway.service import Classifier, ServedModel
from clothing_gateway.views import Gateway, gateway, operations, predictions

log = logging.getLogger("clothing_gateway")
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


def create_app(config: Config | None = None, predictors: Sequence[Predictor] | None = None) -> Flask:
    """Build the gateway app. Without a config, read it from the environment (raises ConfigError); without
    predictors, one per model of the configuration, of the protocol it names."""
    config = config or Config.from_env(os.environ)
    configure_logging(config.log_level)
    metrics = Metrics()
    models = {
        predictor.contract.name: ServedModel(
            predictor, config.preprocessing_of(predictor.contract), config.traffic.get(predictor.contract.name)
        )
        for predictor in predictors or _predictors(config, metrics)
    }
    app = Flask(__name__)
    app.request_class = _InMemoryRequest
    app.url_map.converters["model"] = _ModelNameConverter
    app.config["MAX_CONTENT_LENGTH"] = config.max_request_bytes
    app.config["MAX_FORM_MEMORY_SIZE"] = config.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]  # labels keep the contract's (or the score) order
    app.extensions["clothing_gateway"] = served = Gateway(
        config,
        metrics,
        models,
        Classifier(config, metrics),
        openapi_document(config),
        LoopLag(metrics.loop_lag.set),
    )
    app.register_blueprint(predictions)
    app.register_blueprint(operations)
    app.wsgi_app = Admission(app.wsgi_app, app.url_map, served)  # type: ignore[method-assign]
    app.before_request(_start_request)
    app.after_request(_finish_request)
    app.teardown_request(_end_request)
    app.register_error_handler(GatewayError, _gateway_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app


def _predictors(config: Config, metrics: Metrics) -> list[Predictor]:
    """TF Serving's gRPC API (the default), or its REST API (GATEWAY_PREDICTOR_PROTOCOL=rest, KServe's predictor):
    a predictor per model, all on one connection."""
    options: dict[str, Any] = {
        "use_uint8": config.use_uint8,
        "discover_tensor_names": config.discover_tensor_names,
        "on_retry": metrics.model_retries.inc,
    }
    if config.predictor_protocol == "rest":
        pool = rest_api.connection()
        return [RestPredictor(config.model_server, contract, shared=pool, **options) for contract in config.contracts]
    channel = grpc_api.Connection(config.model_server, config.lb_policy)
    return [GrpcPredictor(config.model_server, contract, shared=channel, **options) for contract in config.contracts]


# --- the request life cycle ------------------------------------------------------------------------------------------


def _start_request() -> None:
    g.started = time.perf_counter()
    g.deadline = time.monotonic() + gateway().config.deadline_seconds
    g.request_id = new_request_id(request.headers.get("X-Request-ID", ""))
    g.request_id_token = request_id.set(g.request_id)
    gateway().metrics.in_flight.inc()
    g.counted_in_flight = True


def _finish_request(response: Response) -> Response:
    response.headers["X-Request-ID"] = g.get("request_id", "")
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    outcome = g.get("error_code", "ok")
    elapsed = time.perf_counter() - g.get("started", time.perf_counter())
    method = request.method if request.method in _METHODS else "other"  # bounded label values
    metrics = gateway().metrics
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


def _end_request(_: BaseException | None) -> None:
    if g.pop("counted_in_flight", False):
        gateway().metrics.in_flight.dec()
    token = g.pop("request_id_token", None)
    if token is not None:
        request_id.reset(token)


# --- errors: every failure answers the JSON body and status of its code ------------------------------------------


def _error_response(code: str, message: str, fields: dict[str, Any] | None = None) -> Response:
    g.error_code = code
    response = jsonify({**(fields or {}), **error_body(code, message)})
    response.status_code = ERROR_CODES[code][0]
    response.headers.update(error_headers(code))
    return response


def _gateway_error(exc: GatewayError) -> Response:
    return _error_response(exc.code, exc.message, exc.fields)


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    code = _HTTP_ERROR_CODES.get(status, "invalid_request" if status < 500 else "internal_error")
    response = _error_response(code, exc.description or ERROR_CODES[code][1])
    if status == 405 and getattr(exc, "valid_methods", None):
        response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
    return response


def _unexpected_error(exc: Exception) -> Response:
    log.exception("unhandled error")
    return _error_response(
        "internal_error", f"internal error; the gateway's logs have the details (request id {g.request_id})"
    )
