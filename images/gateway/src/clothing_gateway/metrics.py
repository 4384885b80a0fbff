"""Prometheus metrics.

Under gunicorn with several workers, `PROMETHEUS_MULTIPROC_DIR` (set by gunicorn.conf.py to a fresh directory under
/tmp unless given) makes every worker write its values to files there, and `/metrics` aggregates all workers, so
one scrape shows the whole pod whichever worker answers. Without it (tests, a single process), the app's own
registry is exported.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """The gateway's metrics, registered in their own registry (so several apps can live in one process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "gateway_requests",
            "HTTP requests by route, method, status and outcome (ok or the error code).",
            ["route", "method", "status", "outcome"],
            registry=self.registry,
        )
        self.request_latency = Histogram(
            "gateway_request_duration_seconds",
            "HTTP request latency by route and outcome.",
            ["route", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.download_latency = Histogram(
            "gateway_download_duration_seconds",
            "Image download latency by outcome.",
            ["outcome"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.preprocess_latency = Histogram(
            "gateway_preprocess_duration_seconds",
            "Decode + resize + scale latency per image.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model_latency = Histogram(
            "gateway_model_duration_seconds",
            "Predict call latency (retries included) by model, version label (latest: none; other: one a client "
            "named that no traffic policy uses) and outcome.",
            ["model", "version_label", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model_retries = Counter(
            "gateway_model_retries", "Predict/status calls retried after UNAVAILABLE.", registry=self.registry
        )
        self.batch_size = Histogram(
            "gateway_batch_size", "Images per Predict call.", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.in_flight = Gauge(
            "gateway_in_flight_requests",
            "Requests being handled now.",
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        self.queued = Gauge(
            "gateway_queued_requests",
            "Predictions waiting for a decode slot now.",
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        self.loop_lag = Gauge(
            "gateway_event_loop_lag_seconds",
            "How late each worker's event loop runs what is ready (the largest of the workers).",
            multiprocess_mode="livemax",
            registry=self.registry,
        )
        self.model_ready = Gauge(
            "gateway_model_ready",
            "1 when the model server last reported the model ready (AVAILABLE, matching its contract, its traffic "
            "policy's labels too), 0 when not: set by every readiness check (the pod's readiness probe).",
            ["model"],
            multiprocess_mode="livemostrecent",
            registry=self.registry,
        )
        self.downloads = Gauge(
            "gateway_downloads_in_flight",
            "Image downloads running now.",
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        self.shadow_requests = Counter(
            "gateway_shadow_requests",
            "Shadow copies by model and outcome (ok, dropped past GATEWAY_MAX_SHADOW_IN_FLIGHT, or the error code).",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.shadow_agreement = Counter(
            "gateway_shadow_comparisons",
            "Images answered by both the client's version and the shadow, by whether their top-1 labels agree.",
            ["model", "top1"],
            registry=self.registry,
        )
        self.shadow_difference = Histogram(
            "gateway_shadow_score_difference",
            "Per image, the largest absolute difference between the client's and the shadow's scores.",
            ["model"],
            buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0),
            registry=self.registry,
        )
        self.shed = Counter(
            "gateway_shed_requests",
            "Predictions refused with 503 overloaded, by the bound they hit.",
            ["bound"],
            registry=self.registry,
        )

    def exposition(self) -> tuple[bytes, str]:
        """The text to serve on /metrics (all workers' values in multiprocess mode) and its content type."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
