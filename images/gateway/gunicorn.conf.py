"""Gunicorn settings for the gateway: `gunicorn -c images/gateway/gunicorn.conf.py` (what the image's entrypoint execs).

- gthread workers: each worker serves GATEWAY_THREADS requests at once, most of their time spent waiting on image
  downloads and the model server (I/O), so threads are cheaper than more processes.
- The app is created in each worker after the fork (no preload), so every worker opens its own gRPC channel.
- SIGTERM drains: workers stop accepting, finish in-flight requests for up to GATEWAY_GRACEFUL_TIMEOUT seconds
  (keep it below the pod's terminationGracePeriodSeconds), then exit.
- Prometheus multiprocess mode: PROMETHEUS_MULTIPROC_DIR defaults to a fresh directory under /tmp, so /metrics
  shows all workers; dead workers' live gauges are dropped.
- The configuration is validated once in the master before any worker starts: an invalid variable stops gunicorn
  with a one-line error and exit code 1.
- No control socket and the heartbeat file in /dev/shm when it exists: a read-only root filesystem is fine.
- glibc malloc is told to keep freed memory for reuse (clothing_gateway.allocator).
"""

import os
import shutil
import sys
import tempfile
from typing import Any

from clothing_gateway.allocator import tune_malloc
from clothing_gateway.config import LOG_LEVELS, Config, ConfigError


def _int_env(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name, "").strip() or str(default)
    if not raw.isdigit() or int(raw) < minimum:
        sys.exit(f"gateway: invalid configuration: {name} must be an integer >= {minimum}, got {raw!r}")
    return int(raw)


bind = os.environ.get("GATEWAY_BIND", "0.0.0.0:9696")
workers = _int_env("GATEWAY_WORKERS", 2)
worker_class = "gthread"
threads = _int_env("GATEWAY_THREADS", 8)
wsgi_app = "clothing_gateway.app:create_app()"
timeout = 30  # heartbeat: a worker whose main loop is stuck this long is restarted (requests run in threads)
graceful_timeout = _int_env("GATEWAY_GRACEFUL_TIMEOUT", 25, minimum=0)
keepalive = 75  # longer than the idle timeout of the usual load balancers (60 s), so they close first
accesslog = None  # and gunicorn.access is silenced in logconfig_dict below
control_socket_disable = True
_SHM = "/dev/shm"  # noqa: S108 (tmpfs: gunicorn's advice for the heartbeat file, and writable when / is read-only)
worker_tmp_dir = _SHM if os.path.isdir(_SHM) and os.access(_SHM, os.W_OK) else None
proc_name = "clothing-gateway"

_level = os.environ.get("GATEWAY_LOG_LEVEL", "INFO").strip().upper()
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "clothing_gateway.logs.JsonFormatter"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
    "root": {"level": _level if _level in LOG_LEVELS else "INFO", "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
        # Off: the app logs one JSON line per request, with its request id and outcome.
        "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
        # Its warnings say a connection was closed rather than kept idle past the pools' bound: by design.
        "urllib3.connectionpool": {"level": "ERROR", "handlers": [], "propagate": True},
    },
}


tune_malloc()  # in the master, so that the forked workers inherit it
_metrics_dir_created = ""
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _metrics_dir_created = tempfile.mkdtemp(prefix="gateway-metrics-", dir="/tmp")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir_created


def on_starting(server: Any) -> None:
    """Validate the configuration and start from an empty metrics directory."""
    try:
        Config.from_env(os.environ)
    except ConfigError as exc:
        sys.exit(f"gateway: invalid configuration: {exc}")
    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(metrics_dir, exist_ok=True)
    for name in os.listdir(metrics_dir):
        if name.endswith(".db"):
            os.unlink(os.path.join(metrics_dir, name))


def worker_exit(server: Any, worker: Any) -> None:
    """Close the worker's gRPC channel and download threads after it has drained."""
    gateway = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("clothing_gateway")
    if gateway is not None:
        gateway.close()


def child_exit(server: Any, worker: Any) -> None:
    """Drop the exited worker's live gauges (in-flight requests) from /metrics."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    """Remove the metrics directory this config created."""
    if _metrics_dir_created:
        shutil.rmtree(_metrics_dir_created, ignore_errors=True)
