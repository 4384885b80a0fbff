"""The endpoints, as two blueprints: `predictions` (the book's `/predict` for the default model, KServe's V1
protocol for any served model, and TF Serving's version and label paths) and `operations` (health, readiness,
metrics, the OpenAPI document). Each view parses its request (payloads), calls the classifier or
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
from clothing_gateway.predictor.base import Readiness, VersionChoice
from clothing_gateway.service import Classifier, ServedModel
from clothing_gateway.traffic import STICKY_HEADER

READINESS_TIMEOUT_SECONDS = 3.0
VERSION_LABEL_HEADER = "X-Model-Version-Label"


@dataclass(frozen=True)
class Gateway:
    """What the views use, built once per app (per gunicorn worker): `current_app.extensions["clothing_gateway"]`."""

    config: Config
    metrics: Metrics
    models: dict[str, ServedModel]  # by name, the default model first
    classifier: Classifier
    openapi: dict[str, Any]
    loop_lag: LoopLag  # started by gunicorn.conf.py's post_worker_init

    def model(self, name: str) -> ServedModel:
        """The served model of that name, or 404 model_not_found naming the served ones."""
        model = self.models.get(name)
        if model is None:
            served = ", ".join(f'"{served}"' for served in self.models)
            raise GatewayError("model_not_found", f'this gateway serves the models {served}, not "{name}"')
        return model

    def close(self) -> None:
        """Stop download threads and close connections (gunicorn's worker_exit)."""
        self.classifier.close()
        for model in self.models.values():
            model.predictor.close()


def gateway() -> Gateway:
    """The current app's Gateway."""
    return current_app.extensions["clothing_gateway"]


predictions = Blueprint("predictions", __name__)
operations = Blueprint("operations", __name__)


def _top_k(model: ServedModel) -> int | None:
    raw = request.args.get("top_k")
    if raw is None:
        return None
    labels = len(model.predictor.contract.labels)
    if not raw.isdigit() or not 1 <= int(raw) <= labels:
        raise GatewayError("invalid_request", f"top_k must be an integer from 1 to {labels}")
    return int(raw)


def _readiness(model: ServedModel) -> Readiness:
    labels = model.traffic.labels() if model.traffic else ()
    readiness = model.predictor.readiness(READINESS_TIMEOUT_SECONDS, labels)
    gateway().metrics.model_ready.labels(model.name).set(1 if readiness.ready else 0)
    return readiness


def _answer(body: Any, choice: VersionChoice) -> Response:
    """The JSON answer, saying which version label answered when one did."""
    response = jsonify(body)
    if choice.label:
        response.headers[VERSION_LABEL_HEADER] = choice.label
    return response


def _routed(model: ServedModel) -> tuple[VersionChoice, VersionChoice | None]:
    """The version answering a request that names none, and the shadow copy's, by the model's traffic policy."""
    choice = model.route(request.headers.get(STICKY_HEADER))
    shadow = model.traffic.shadow_choice() if model.traffic else None
    return choice, None if shadow == choice else shadow  # a copy to the version that answered compares nothing


@predictions.post("/predict", provide_automatic_options=False)
def predict() -> Response:
    model = next(iter(gateway().models.values()))
    top_k = _top_k(model)
    image = single_image(request)
    choice, shadow = _routed(model)
    scores = gateway().classifier.classify(model, [image], g.deadline, top_k=top_k, choice=choice, shadow=shadow)
    return _answer(scores[0], choice)


def _predict_instances(model: ServedModel, choice: VersionChoice, shadow: VersionChoice | None = None) -> Response:
    images = instances(request, gateway().config.max_batch)
    scores = gateway().classifier.classify(
        model, images, g.deadline, item_prefix="instances", choice=choice, shadow=shadow
    )
    return _answer({"predictions": scores}, choice)


@predictions.post("/v1/models/<model:name>:predict", provide_automatic_options=False)
def kserve_predict(name: str) -> Response:
    model = gateway().model(name)
    return _predict_instances(model, *_routed(model))


@predictions.post("/v1/models/<model:name>/versions/<int:version>:predict", provide_automatic_options=False)
def version_predict(name: str, version: int) -> Response:
    return _predict_instances(gateway().model(name), VersionChoice(number=version))


@predictions.post("/v1/models/<model:name>/labels/<model:label>:predict", provide_automatic_options=False)
def label_predict(name: str, label: str) -> Response:
    return _predict_instances(gateway().model(name), VersionChoice(label=label))


@predictions.get("/v1/models/<model:name>", provide_automatic_options=False)
def kserve_model_ready(name: str) -> Response:
    readiness = _readiness(gateway().model(name))
    if not readiness.ready:
        raise GatewayError("not_ready", readiness.detail, fields={"name": name, "ready": False})
    return jsonify({"name": name, "ready": True})


@operations.get("/healthz", provide_automatic_options=False)
def healthz() -> Response:
    return jsonify({"status": "ok"})


def _models_excluded() -> bool:
    """`?exclude=models` (the pod's readiness probe): the models are checked and reported, and the answer is 200 even
    when they are not ready, so a model server outage leaves every gateway in its Service answering 503
    model_unavailable with Retry-After instead of taking them all out (refused connections)."""
    exclude = request.args.get("exclude")
    if exclude not in (None, "models"):
        raise GatewayError("invalid_request", "exclude must be `models`")
    return exclude == "models"


@operations.get("/readyz", provide_automatic_options=False)
def readyz() -> Response:
    excluded, config, models = _models_excluded(), gateway().config, {}
    for name, model in gateway().models.items():
        readiness = _readiness(model)
        validated = model.predictor.contract.preprocessing
        models[name] = {
            "ready": readiness.ready,
            "detail": readiness.detail,
            "preprocessing": {"serving": config.preprocessing_of(model.predictor.contract), "validated": validated},
        }
    waiting = [f"{name}: {model['detail']}" for name, model in models.items() if not model["ready"]]
    if waiting and not excluded:
        raise GatewayError("not_ready", "; ".join(waiting), fields={"models": models})
    return jsonify({"ready": not waiting, "models": models})


@operations.get("/metrics", provide_automatic_options=False)
def metrics() -> Response:
    payload, content_type = gateway().metrics.exposition()
    return Response(payload, content_type=content_type)


@operations.get("/openapi.json", provide_automatic_options=False)
def openapi() -> Response:
    return jsonify(gateway().openapi)
