"""Gunicorn settings for the gateway: `gunicorn -c images/gateway/gunicorn.conf.py` (what the image's entrypoint execs).

- gevent workers: a request waiting on an image host or the model server holds a greenlet (a socket and a little
  memory), not a thread, so slow image hosts cannot use up a worker. grpcio is switched to gevent's loop once the
  worker has monkey-patched the standard library (post_worker_init). The app refuses requests past
  GATEWAY_MAX_IN_FLIGHT per worker (503 overloaded); gunicorn accepts up to four times that many connections, so
  the refusal is answered at once instead of waiting in the listen backlog.
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

from gunicorn.glogging import Logger

from clothing_gateway.allocator import tune_malloc
from clothing_gateway.config import DEFAULT_MAX_IN_FLIGHT, LOG_LEVELS, Config, ConfigError


def _int_env(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name, "").strip() or str(default)
    if not raw.isdigit() or int(raw) < minimum:
        sys.exit(f"gateway: invalid configuration: {name} must be an integer >= {minimum}, got {raw!r}")
    return int(raw)


bind = os.environ.get("GATEWAY_BIND", "0.0.0.0:9696")
workers = _int_env("GATEWAY_WORKERS", 2)
worker_class = "gevent"
worker_connections = 4 * _int_env("GATEWAY_MAX_IN_FLIGHT", DEFAULT_MAX_IN_FLIGHT)
wsgi_app = "clothing_gateway.app:create_app()"
timeout = 30  # heartbeat: a worker whose event loop is blocked this long is restarted
graceful_timeout = _int_env("GATEWAY_GRACEFUL_TIMEOUT", 25, minimum=0)
keepalive = 75  # longer than the idle timeout of the usual load balancers (60 s), so they close first
accesslog = None  # and gunicorn.access is silenced in logconfig_dict below


class _NoAccessLog(Logger):
    """gunicorn's logger without its access log: the app logs one JSON line per request itself. (With a logging
    configuration gunicorn builds every request's access-log fields even when nothing logs them: ~7 % of the CPU of
    a refused request.)"""

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        """Nothing: see the class."""


logger_class = _NoAccessLog
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


def post_worker_init(worker: Any) -> None:
    """Run grpcio's I/O on gevent's loop: the worker has patched the standard library, and no channel exists yet
    (the predictor opens its channel on the first call). Start measuring the loop's lag."""
    from grpc.experimental import gevent as grpc_gevent

    grpc_gevent.init_gevent()
    worker.wsgi.extensions["clothing_gateway"].loop_lag.start()


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
