"""A TF-Serving-compatible model server: a STAND-IN for development, tests and local clusters.

TF Serving's C++ binary and its `tensorflow/serving` image cannot be obtained on this project's build machines, so
this server reproduces the parts of its external behaviour that the gateway and the chart rely on, read from TF
Serving's sources (2.20.0): the same command-line flags and `MODEL_NAME`/`MODEL_BASE_PATH` env as the image's
entrypoint, or a `--model_config_file` (models, version policies, version labels; re-read every
`--model_config_file_poll_wait_seconds`, or replaced with `HandleReloadConfigRequest`: see server_core), ports opened
only after the models load (exit code 255 if a first load fails), gRPC `PredictionService` (Predict, Classify,
Regress, MultiInference, GetModelMetadata), `ModelService` (GetModelStatus, HandleReloadConfigRequest), the optional
`grpc.health.v1` service, the REST API (`/v1/models/<name>[/versions/<n>|/labels/<l>]`, `:predict`, `:classify`,
`:regress`, `/metadata`), Prometheus metrics, batching with TF
Serving's parameters file, warmup replay, new versions picked up without a restart, and TF Serving's error texts and
codes. The production path remains the real `tensorflow/serving` image
(images/tf-serving/Dockerfile); the chart passes both the same arguments.

Run: `python -m model_tools.server --port=8500 --rest_api_port=8501 --model_name=clothing-model
--model_base_path=model-tools/models/clothing-model`.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import os
import re
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf import text_format

from model_interface.tfs_protos.tensorflow_serving.config import model_server_config_pb2
from model_tools import config_protos
from model_tools.config_protos import BATCHING_INT64_FIELDS
from model_tools.grpc_api import add_services
from model_tools.rest_api import make_handler
from model_tools.servable import (
    BatchingParameters,
    LoadedVersion,
    Loader,
    ServableManager,
    ServingError,
    load_version,
    predict,
)
from model_tools.server_core import ServerCore, single_model_config

log = logging.getLogger("model_tools.server")
T = TypeVar("T")
INT32_MAX = 2**31 - 1


@dataclass
class Flags:
    """The TF Serving flags this server implements, with the values the `tensorflow/serving` image passes."""

    port: int = 8500
    rest_api_port: int = 8501
    model_name: str = "model"
    model_base_path: str = "/models/model"
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: int = 0
    allow_version_labels_for_unavailable_models: bool = False
    enable_batching: bool = False
    batching_parameters_file: str = ""
    monitoring_config_file: str = ""
    enable_grpc_healthcheck_service: bool = False
    grpc_channel_arguments: str = ""
    grpc_socket_path: str = ""
    file_system_poll_wait_seconds: int = 1
    rest_api_timeout_in_ms: int = 30000
    enable_model_warmup: bool = True
    rest_api_num_threads: int = 0
    grpc_max_threads: int = 0


class FlagError(ValueError):
    """A flag has a value of the wrong type (TF Serving exits 255)."""


def parse_flags(argv: list[str], environ: dict[str, str]) -> Flags:
    """Parse `--flag=value` arguments like TF Serving: last duplicate wins, unknown flags are ignored, booleans may
    be bare. Defaults come from the image's entrypoint: `--model_name=$MODEL_NAME
    --model_base_path=$MODEL_BASE_PATH/$MODEL_NAME`."""
    flags = Flags()
    flags.model_name = environ.get("MODEL_NAME", "model")
    flags.model_base_path = f"{environ.get('MODEL_BASE_PATH', '/models')}/{flags.model_name}"
    types = {name: type(value) for name, value in vars(flags).items()}
    for arg in argv:
        match = re.fullmatch(r"--?([A-Za-z0-9_]+)(?:=(.*))?", arg, re.DOTALL)
        if not match or match.group(1) not in types:
            continue  # TF Serving ignores arguments it does not know
        name, value = match.group(1), match.group(2)
        kind = types[name]
        if kind is bool:
            if value is None or value.lower() in ("true", "1"):
                setattr(flags, name, True)
            elif value.lower() in ("false", "0"):
                setattr(flags, name, False)
            else:
                raise FlagError(f"Illegal value '{value}' specified for bool flag '{name}'")
        elif value is None:
            raise FlagError(f"flag '{name}' needs a value (--{name}=...)")
        elif kind is int:
            try:
                setattr(flags, name, int(value))
            except ValueError:
                raise FlagError(f"Illegal value '{value}' specified for int flag '{name}'") from None
        else:
            setattr(flags, name, value)
    return flags


def parse_batching_parameters(text: str) -> BatchingParameters:
    """Parse TF Serving's BatchingParameters text proto; its rules on allowed_batch_sizes are checked."""
    proto: Any = config_protos.parse("BatchingParameters", text)
    values = {name: getattr(proto, name).value for name in BATCHING_INT64_FIELDS if proto.HasField(name)}
    allowed = list(proto.allowed_batch_sizes)
    params = BatchingParameters(
        **values, allowed_batch_sizes=tuple(allowed), pad_variable_length_inputs=proto.pad_variable_length_inputs
    )
    if allowed and (allowed != sorted(allowed) or allowed[-1] != params.max_batch_size):
        raise ValueError("allowed_batch_sizes must be increasing and end with max_batch_size")
    return params


def parse_monitoring_config(text: str) -> str | None:
    """The Prometheus metrics path if the MonitoringConfig text proto enables it, else None."""
    config: Any = config_protos.parse("MonitoringConfig", text)
    prometheus = config.prometheus_config
    if not prometheus.enable:
        return None
    return prometheus.path or "/monitoring/prometheus/metrics"


def read_model_config(path: str) -> model_server_config_pb2.ModelServerConfig:
    """The ModelServerConfig text proto in `path`, parsed with TF Serving's own message."""
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(Path(path).read_text(), config)
    except text_format.ParseError as exc:
        raise FlagError(f"Error parsing text-format {config.DESCRIPTOR.full_name}: {exc}") from None
    return config


def parse_channel_arguments(text: str) -> list[tuple[str, Any]]:
    """`--grpc_channel_arguments=k=v,k=v`; integer values are passed as ints, as TF Serving does."""
    options: list[tuple[str, Any]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        options.append((key, int(value) if re.fullmatch(r"-?\d+", value) else value))
    return options


class Metrics:
    """TF Serving's Prometheus metrics under its exported names (internal `/a/b` is exported as `:a:b`)."""

    BUCKETS_US = (100, 500, 1000, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 5000000)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.request_count: dict[tuple[str, str], int] = defaultdict(int)
        # per (model, API, entrypoint): a count per bucket (the last one +Inf), and the sum in microseconds
        self.latency: dict[tuple[str, str, str], tuple[list[int], list[float]]] = defaultdict(
            lambda: ([0] * (len(self.BUCKETS_US) + 1), [0.0])
        )
        self.load_attempts: dict[tuple[str, str], int] = defaultdict(int)
        self.batch_sizes: dict[int, int] = defaultdict(int)

    def record_request(self, model: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        """Count one request, and its latency if it succeeded (TF Serving times successful requests only)."""
        with self._lock:
            self.request_count[(model, status)] += 1
            if status == "OK":
                counts, total = self.latency[(model, api, entrypoint)]
                micros = seconds * 1e6
                counts[bisect.bisect_left(self.BUCKETS_US, micros)] += 1
                total[0] += micros

    def record_load(self, path: str, ok: bool) -> None:
        """Count one SavedModel load attempt."""
        with self._lock:
            self.load_attempts[(path, "success" if ok else "fail")] += 1

    def record_batch(self, size: int) -> None:
        """Count one processed batch by its size."""
        with self._lock:
            self.batch_sizes[size] += 1

    def render(self) -> str:
        """The Prometheus text exposition."""
        lines = ["# TYPE :tensorflow:serving:request_count counter"]
        with self._lock:
            for (model, status), count in sorted(self.request_count.items()):
                lines.append(f':tensorflow:serving:request_count{{model_name="{model}",status="{status}"}} {count}')
            lines.append("# TYPE :tensorflow:serving:request_latency histogram")
            for (model, api, entry), (counts, total) in sorted(self.latency.items()):
                labels = f'model_name="{model}",API="{api}",entrypoint="{entry}"'
                for bound, within in zip((*self.BUCKETS_US, "+Inf"), itertools.accumulate(counts), strict=True):
                    lines.append(f':tensorflow:serving:request_latency_bucket{{{labels},le="{bound}"}} {within}')
                lines.append(f":tensorflow:serving:request_latency_sum{{{labels}}} {total[0]:.1f}")
                lines.append(f":tensorflow:serving:request_latency_count{{{labels}}} {sum(counts)}")
            lines.append("# TYPE :tensorflow:cc:saved_model:load_attempt_count counter")
            for (path, status), count in sorted(self.load_attempts.items()):
                lines.append(
                    f':tensorflow:cc:saved_model:load_attempt_count{{model_path="{path}",status="{status}"}} {count}'
                )
            lines.append("# TYPE :tensorflow:serving:batching_session:processed_batch_size counter")
            for size, count in sorted(self.batch_sizes.items()):
                lines.append(
                    f':tensorflow:serving:batching_session:processed_batch_size{{batch_size="{size}"}} {count}'
                )
        return "\n".join(lines) + "\n"


class ModelServer:
    """The running server: its ServerCore (a ServableManager per model) plus gRPC and REST front ends."""

    def __init__(self, flags: Flags, loader: Loader = load_version) -> None:
        self.flags = flags
        self.metrics = Metrics()
        batching = None
        if flags.batching_parameters_file and not flags.enable_batching:
            raise FlagError("--batching_parameters_file requires --enable_batching")
        if flags.enable_batching:
            text = Path(flags.batching_parameters_file).read_text() if flags.batching_parameters_file else ""
            batching = parse_batching_parameters(text)
        self.metrics_path = None
        if flags.monitoring_config_file:
            self.metrics_path = parse_monitoring_config(Path(flags.monitoring_config_file).read_text())
        self.models = ServerCore(
            lambda entry: ServableManager(
                entry.name,
                entry.base_path,
                policy=entry.policy,
                batching=batching,
                warmup=flags.enable_model_warmup,
                on_batch=self.metrics.record_batch,
                on_load=self.metrics.record_load,
                loader=loader,
            ),
            allow_labels_for_unavailable=flags.allow_version_labels_for_unavailable_models,
        )
        if flags.model_config_file:
            self.models.reload(read_model_config(flags.model_config_file))
        else:
            self.models.reload(single_model_config(flags.model_name, flags.model_base_path))
        self.grpc_server: grpc.Server | None = None
        self.rest_server: ThreadingHTTPServer | None = None
        self._stop = threading.Event()

    # --- the request path shared by gRPC and REST -------------------------------------------------------------
    def call(
        self,
        api: str,
        entrypoint: str,
        name: str,
        version: int | None,
        label: str | None,
        run: Callable[[LoadedVersion], T],
    ) -> tuple[LoadedVersion, T]:
        """Resolve the version a request addresses and run the request on it; records request metrics as TF Serving
        labels them (gRPC: API "Predict", entrypoint "GRPC"; REST: API "predict", entrypoint "REST")."""
        started, status = time.monotonic(), "OK"
        try:
            loaded = self.models.resolve(name, version, label)
            return loaded, run(loaded)
        except ServingError as exc:
            status = exc.code.name
            raise
        finally:
            self.metrics.record_request(name, api, entrypoint, status, time.monotonic() - started)

    def predict(
        self,
        name: str,
        version: int | None,
        label: str | None,
        signature_name: str,
        inputs: dict[str, np.ndarray],
        output_filter: list[str],
        entrypoint: str,
    ) -> tuple[LoadedVersion, dict[str, np.ndarray]]:
        """Resolve, validate and run one Predict."""
        return self.call(
            "Predict" if entrypoint == "GRPC" else "predict",
            entrypoint,
            name,
            version,
            label,
            lambda loaded: predict(loaded, signature_name, inputs, output_filter),
        )

    # --- lifecycle --------------------------------------------------------------------------------------------
    def wait_for_model(self) -> None:
        """Block until every model has a version AVAILABLE, like TF Serving's start-up; a failed first load raises."""
        while self.models.waiting():
            failed = self.models.poll()
            if failed:
                status = self.models.by_name[failed[0]].status.values()
                error = [s for s in status if s.state == "END"][-1].error_message
                raise RuntimeError(f"{len(failed)} model(s) did not become available: {error}")
            if self.models.waiting():
                self._stop.wait(max(self.flags.file_system_poll_wait_seconds, 1))
                if self._stop.is_set():
                    raise RuntimeError("stopped before the model became available")

    def start(self) -> None:
        """Load the model, then open the gRPC and REST ports."""
        self.wait_for_model()
        options = [
            ("grpc.max_receive_message_length", INT32_MAX),
            ("grpc.max_send_message_length", INT32_MAX),
            *parse_channel_arguments(self.flags.grpc_channel_arguments),
        ]
        threads = self.flags.grpc_max_threads or 4 * (os.cpu_count() or 1)
        self.grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=options)
        add_services(self.grpc_server, self)
        if self.grpc_server.add_insecure_port(f"0.0.0.0:{self.flags.port}") == 0:
            raise RuntimeError(f"Failed to BuildAndStart gRPC server on port {self.flags.port}")
        if (
            self.flags.grpc_socket_path
            and self.grpc_server.add_insecure_port(f"unix:{self.flags.grpc_socket_path}") == 0
        ):
            raise RuntimeError(f"Failed to BuildAndStart gRPC server on UNIX socket {self.flags.grpc_socket_path}")
        self.grpc_server.start()
        log.info("Running gRPC ModelServer at 0.0.0.0:%d ...", self.flags.port)
        if self.flags.grpc_socket_path:
            log.info("Running gRPC ModelServer at UNIX socket %s ...", self.flags.grpc_socket_path)
        if self.flags.rest_api_port and self.flags.rest_api_port != self.flags.port:
            self.rest_server = ThreadingHTTPServer(("0.0.0.0", self.flags.rest_api_port), make_handler(self))
            self.rest_server.daemon_threads = True
            threading.Thread(target=self.rest_server.serve_forever, name="rest", daemon=True).start()
            log.info("Exporting HTTP/REST API at:localhost:%d ...", self.flags.rest_api_port)
        threading.Thread(target=self._poll_versions, name="version-poller", daemon=True).start()
        if self.flags.model_config_file and self.flags.model_config_file_poll_wait_seconds > 0:
            threading.Thread(target=self._poll_config, name="config-poller", daemon=True).start()

    def _poll_versions(self) -> None:
        interval = self.flags.file_system_poll_wait_seconds
        while interval > 0 and not self._stop.wait(interval):
            try:
                self.models.poll()
            except Exception:
                log.exception("polling the models' base paths failed")

    def _poll_config(self) -> None:
        """Re-read and apply `--model_config_file`, as TF Serving's PollFilesystemAndReloadConfig does."""
        while not self._stop.wait(self.flags.model_config_file_poll_wait_seconds):
            try:
                config = read_model_config(self.flags.model_config_file)
            except (FlagError, OSError) as exc:
                log.error("Failed to read ModelServerConfig file: %s", exc)
                continue
            try:
                self.models.reload(config)
            except ServingError as exc:
                log.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", exc.message)

    def stop(self, grace: float = 5.0) -> None:
        """Stop polling, finish in-flight requests (up to grace seconds), close the ports."""
        self._stop.set()
        if self.rest_server is not None:
            self.rest_server.shutdown()
            self.rest_server.server_close()
        if self.grpc_server is not None:
            self.grpc_server.stop(grace).wait()


def main(argv: list[str] | None = None, loader: Loader = load_version) -> int:
    """Entry point: `python -m model_tools.server --port=8500 --rest_api_port=8501 ...`."""
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        flags = parse_flags(sys.argv[1:] if argv is None else argv, dict(os.environ))
        server = ModelServer(flags, loader)
    except (FlagError, ValueError, OSError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 255
    except ServingError as exc:
        print(f"Failed to start server. Error: {exc.code.name}: {exc.message}", file=sys.stderr)
        return 255
    try:
        server.start()  # SIGTERM while the first version loads ends the process at once, as TF Serving's does
    except RuntimeError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 255
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    while not stopping.wait(0.5):  # a timed wait: the signal handler always gets a bytecode boundary to run at
        pass
    log.info("stopping: draining in-flight requests")
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
