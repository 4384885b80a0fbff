"""Admission: a prediction is admitted within its worker's bounds or refused at once, before Flask handles it.

The bounds, checked in this order:
- the event loop's lag (GATEWAY_MAX_LOOP_LAG_SECONDS): past it the worker's CPU is saturated, and admitted work,
  this refusal included, would only wait;
- the decode queue (GATEWAY_MAX_QUEUE_SECONDS of work already queued, service.DecodeSlots);
- predictions in flight (GATEWAY_MAX_IN_FLIGHT).

A refusal is 503 `overloaded` with Retry-After and the usual JSON body, built here without Flask's request handling:
under overload most requests are refused, so a refusal must cost far less than the work it avoids. Refusals are
counted in gateway_requests_total and gateway_shed_requests_total{bound} and logged at DEBUG only: thousands of
identical lines a second would be one more load. Health, readiness, metrics and the OpenAPI document are never
refused: the kubelet must not restart a pod because it is busy.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, RequestRedirect

from clothing_gateway.errors import ERROR_CODES, error_body, error_headers
from clothing_gateway.logs import new_request_id
from clothing_gateway.views import Gateway

log = logging.getLogger("clothing_gateway")
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Admission:
    """WSGI middleware in front of the Flask app: the bounds above for the `predictions` blueprint's routes."""

    def __init__(self, app: WsgiApp, url_map: Map, gateway: Gateway) -> None:
        self.app = app
        self.url_map = url_map
        self.config = gateway.config
        self.metrics = gateway.metrics
        self.loop_lag = gateway.loop_lag
        self.decodes = gateway.classifier.decodes
        self.in_flight = threading.BoundedSemaphore(gateway.config.max_in_flight)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        route = self._prediction_route(environ)
        if route is None:
            return self.app(environ, start_response)
        self.loop_lag.arrived()
        refusal = self._refusal()
        if refusal is not None:
            return self._refuse(route, *refusal, environ, start_response)
        try:
            return self.app(environ, start_response)  # Flask has built the whole body when it returns
        finally:
            self.in_flight.release()

    def _prediction_route(self, environ: dict[str, Any]) -> str | None:
        """The rule of a `predictions` route this request goes to, else None (Flask answers 404/405 itself)."""
        if environ.get("REQUEST_METHOD") != "POST":  # predictions are POSTs: probes and scrapes are not matched twice
            return None
        try:
            rule, _ = self.url_map.bind_to_environ(environ).match(return_rule=True)
        except (HTTPException, RequestRedirect):
            return None
        return rule.rule if rule.endpoint.startswith("predictions.") else None

    def _refusal(self) -> tuple[str, str] | None:
        """(bound, message) when a bound refuses the prediction; otherwise it holds an in-flight slot now."""
        lag, max_lag = self.loop_lag.seconds, self.config.max_loop_lag_seconds
        if lag > max_lag:
            return (
                "event_loop",
                f"this worker runs {lag * 1000:.0f} ms late (GATEWAY_MAX_LOOP_LAG_SECONDS: {max_lag:g})",
            )
        if reason := self.decodes.refusal():
            return "decode_queue", reason
        if not self.in_flight.acquire(blocking=False):
            return (
                "in_flight",
                f"this worker already handles {self.config.max_in_flight} predictions (GATEWAY_MAX_IN_FLIGHT)",
            )
        return None

    def _refuse(
        self, route: str, bound: str, message: str, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        self.metrics.shed.labels(bound).inc()
        self.metrics.requests.labels(route, "POST", "503", "overloaded").inc()
        log.debug("refused", extra={"path": environ.get("PATH_INFO"), "outcome": "overloaded", "bound": bound})
        body = json.dumps(error_body("overloaded", message)).encode()
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("X-Request-ID", new_request_id(environ.get("HTTP_X_REQUEST_ID", ""))),
            *error_headers("overloaded").items(),
        ]
        start_response(f"{ERROR_CODES['overloaded'][0]} SERVICE UNAVAILABLE", headers)
        return [body]
