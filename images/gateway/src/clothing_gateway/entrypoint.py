"""The image's entrypoint: turn KServe's transformer arguments into the gateway's environment, then exec gunicorn.

    python -m clothing_gateway.entrypoint [--model_name NAME] [--predictor_host HOST] [--http_port PORT]
        [--workers N] [--gunicorn-config PATH] [anything else, ignored]

KServe appends `--model_name <isvc> --predictor_host <isvc>-predictor.<ns> --http_port 8080` (and `--workers N`
when containerConcurrency is set) to the transformer container's args, so the image starts through this entrypoint
and ignores flags it does not know (they are named on stderr). Without arguments nothing changes: the gateway runs
exactly as `gunicorn -c gunicorn.conf.py` configured by its environment.

- `--model_name` -> GATEWAY_MODEL_NAME: the model name TF Serving serves and `/v1/models/<name>` answers to.
- `--predictor_host` -> TF_SERVING_HOST, and transformer mode: GATEWAY_PREDICTOR_PROTOCOL defaults to `rest` (KServe's
  predictor host is an HTTP host, port 80). With `grpc`, a host without a port gets TF Serving's gRPC port in
  KServe's runtime, 9000.
- `--http_port` -> the port of GATEWAY_BIND (its host is kept, default 0.0.0.0).
- `--workers` -> GATEWAY_WORKERS.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

# In the image, gunicorn.conf.py sits next to the package: /app/gunicorn.conf.py, /app/clothing_gateway/.
DEFAULT_GUNICORN_CONFIG = Path(__file__).resolve().parents[1] / "gunicorn.conf.py"
KSERVE_TF_SERVING_GRPC_PORT = 9000
_HAS_PORT = re.compile(r":\d{1,5}$")


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"must be a TCP port (1-65535), got {text!r}")
    return int(text)


def parser() -> argparse.ArgumentParser:
    """The flags the entrypoint understands (KServe's transformer flags plus --gunicorn-config)."""
    result = argparse.ArgumentParser(
        prog="python -m clothing_gateway.entrypoint",
        description="Start the gateway (gunicorn), taking KServe's transformer arguments.",
        allow_abbrev=False,
    )
    result.add_argument("--model_name", help="model name (GATEWAY_MODEL_NAME)")
    result.add_argument("--predictor_host", help="TF Serving's host[:port] (TF_SERVING_HOST)")
    result.add_argument("--http_port", type=_port, help="port to listen on (the port of GATEWAY_BIND)")
    result.add_argument("--workers", type=_positive_int, help="gunicorn worker processes (GATEWAY_WORKERS)")
    result.add_argument("--gunicorn-config", type=Path, default=DEFAULT_GUNICORN_CONFIG, help=argparse.SUPPRESS)
    return result


def gateway_environment(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment gunicorn runs with: `environ` with the flags' settings applied."""
    env = dict(environ)
    if args.model_name:
        env["GATEWAY_MODEL_NAME"] = args.model_name
    if args.predictor_host:
        protocol = env.get("GATEWAY_PREDICTOR_PROTOCOL", "").strip().lower() or "rest"
        env["GATEWAY_PREDICTOR_PROTOCOL"] = protocol
        host = args.predictor_host.strip()
        if protocol == "grpc" and not _HAS_PORT.search(host):
            host = f"{host}:{KSERVE_TF_SERVING_GRPC_PORT}"
        env["TF_SERVING_HOST"] = host
    if args.http_port:
        bind_host = env.get("GATEWAY_BIND", "").strip().rsplit(":", 1)[0] or "0.0.0.0"
        env["GATEWAY_BIND"] = f"{bind_host}:{args.http_port}"
    if args.workers:
        env["GATEWAY_WORKERS"] = str(args.workers)
    return env


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, then replace this process with gunicorn (same PID, so signals reach it directly)."""
    args, unknown = parser().parse_known_args(argv)
    if unknown:
        print(f"gateway: ignoring arguments it does not use: {' '.join(unknown)}", file=sys.stderr, flush=True)
    env = gateway_environment(args, os.environ)
    command = [sys.executable, "-m", "gunicorn", "-c", str(args.gunicorn_config)]
    os.execve(sys.executable, command, env)  # noqa: S606 (exec, not a shell: the arguments are ours)


if __name__ == "__main__":
    main()
