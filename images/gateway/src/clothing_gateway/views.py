"""The endpoints, as two blueprints: `predictions` (the book's `/predict` and KServe's V1 protocol) and `operations`
(health, readiness, metrics, the OpenAPI document). Each view parses its request (payloads), calls the classifier or
the predictor of the app's `Gateway`, and answers JSON; errors are raised as GatewayError and answered by app.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request

from clothing_gateway.config import Config
from clothing_gateway.errors import GatewayError
from clothing_gateway.event_loop import LoopLag
from clothing_gateway.metrics import Metrics
from clothing_gateway.payloads import instances, single_image
from clothing_gateway.predictor.base import Predictor, Readiness
from clothing_gateway.service import Classifier

READINESS_TIMEOUT_SECONDS = 3.0


@dataclass(frozen=True)
class Gateway:
    """What the views use, built once per app (per gunicorn worker): `current_app.extensions["clothing_gateway"]`."""

    config: Config
    metrics: Metrics
    predictor: Predictor
    classifier: Classifier
    openapi: dict[str, Any]
    loop_lag: LoopLag  # started by gunicorn.conf.py's post_worker_init

    def close(self) -> None:
        """Stop download threads and close connections (gunicorn's worker_exit)."""
        self.classifier.close()


def gateway() -> Gateway:
    """The current app's Gateway."""
    return current_app.extensions["clothing_gateway"]


predictions = Blueprint("predictions", __name__)
operations = Blueprint("operations", __name__)


def _top_k() -> int | None:
    raw = request.args.get("top_k")
    if raw is None:
        return None
    labels = len(gateway().config.contract.labels)
    if not raw.isdigit() or not 1 <= int(raw) <= labels:
        raise GatewayError("invalid_request", f"top_k must be an integer from 1 to {labels}")
    return int(raw)


def _check_model_name(name: str) -> None:
    served = gateway().config.contract.name
    if name != served:
        raise GatewayError("model_not_found", f'this gateway serves the model "{served}", not "{name}"')


def _readiness() -> Readiness:
    return gateway().predictor.readiness(READINESS_TIMEOUT_SECONDS)


@predictions.post("/predict", provide_automatic_options=False)
def predict() -> Response:
    top_k = _top_k()
    image = single_image(request)
    return jsonify(gateway().classifier.classify([image], g.deadline, top_k=top_k)[0])


@predictions.post("/v1/models/<model:name>:predict", provide_automatic_options=False)
def kserve_predict(name: str) -> Response:
    _check_model_name(name)
    images = instances(request, gateway().config.max_batch)
    return jsonify({"predictions": gateway().classifier.classify(images, g.deadline, item_prefix="instances")})


@predictions.get("/v1/models/<model:name>", provide_automatic_options=False)
def kserve_model_ready(name: str) -> Response:
    _check_model_name(name)
    readiness = _readiness()
    if not readiness.ready:
        raise GatewayError("not_ready", readiness.detail, fields={"name": name, "ready": False})
    return jsonify({"name": name, "ready": True})


@operations.get("/healthz", provide_automatic_options=False)
def healthz() -> Response:
    return jsonify({"status": "ok"})


@operations.get("/readyz", provide_automatic_options=False)
def readyz() -> Response:
    readiness = _readiness()
    if not readiness.ready:
        raise GatewayError("not_ready", readiness.detail)
    config = gateway().config
    preprocessing = {"serving": config.preprocessing, "validated": config.contract.preprocessing}
    return jsonify({"ready": True, "detail": readiness.detail, "preprocessing": preprocessing})


@operations.get("/metrics", provide_automatic_options=False)
def metrics() -> Response:
    payload, content_type = gateway().metrics.exposition()
    return Response(payload, content_type=content_type)


@operations.get("/openapi.json", provide_automatic_options=False)
def openapi() -> Response:
    return jsonify(gateway().openapi)
