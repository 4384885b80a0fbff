"""Many models in one gateway (not a test): `make bench-models`, or `python -m bench.models [--models 50]`.

Side by side in one run, the gateway (`.venv-gateway`, its own gunicorn.conf.py) serving 1 and N model contracts
from one model server (model-tools' stand-in with a model config of N fake servables, `tests/gateway/fake_servable.py`,
the book's contract under N names): gunicorn start to the first answer, to `/readyz` 200 (every model checked
AVAILABLE and matching its contract), worker RSS after the requests, and the latency of uploads to the first and the
last model (`/v1/models/<name>:predict`). Prints a table and the JSON; all traffic stays on loopback.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    PROJECT_BIN,
    REPO,
    first_answer,
    free_port,
    gunicorn_command,
    photo_1200x800,
    running,
    worker_memory_mb,
)
from model_interface.contract import BOOK_CONTRACT
from tests.gateway.fake_servable import write_version


def _call(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, float]:
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
    status = connection.getresponse().status
    connection.close()
    return status, time.perf_counter() - started


def _ready(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while _call(port, "GET", "/readyz")[0] != 200:
        if time.monotonic() > deadline:
            raise TimeoutError("/readyz never answered 200")
        time.sleep(0.02)


def model_server_config(work: Path, count: int) -> Path:
    """N fake models (the book's contract named m00, m01, ...) and the model config listing them."""
    contract = BOOK_CONTRACT.to_dict()
    entries = []
    for index in range(count):
        name = f"m{index:02d}"
        write_version(work / "models" / name, {**contract, "name": name})
        entries.append(
            f'config {{ name: "{name}" base_path: "{work / "models" / name}" model_platform: "tensorflow" }}'
        )
    config = work / "models.config"
    config.write_text("model_config_list {\n" + "\n".join(entries) + "\n}\n")
    return config


def measure(count: int, env: dict[str, str], work: Path, requests: int) -> dict[str, Any]:
    """Start a gateway serving the first `count` models; time its start and its requests; read its workers' RSS."""
    contract = BOOK_CONTRACT.to_dict()
    contracts = [{**contract, "name": f"m{index:02d}"} for index in range(count)]
    port = free_port()
    env = {**env, "GATEWAY_BIND": f"127.0.0.1:{port}", "GATEWAY_MODEL_CONTRACT": json.dumps(contracts)}
    started = time.monotonic()
    with running(gunicorn_command("gateway", port, 2, 1), port, env, work / f"gateway-{count}.log") as (process, _):
        first_answer(port)
        answered = time.monotonic() - started
        _ready(port)
        ready = time.monotonic() - started
        body = json.dumps({"instances": [{"b64": base64.b64encode(photo_1200x800()).decode()}]}).encode()
        latency = {}
        for name in (contracts[0]["name"], contracts[-1]["name"]):
            seconds = []
            for _ in range(requests):
                status, elapsed = _call(port, "POST", f"/v1/models/{name}:predict", body)
                assert status == 200, status
                seconds.append(elapsed)
            latency[name] = round(statistics.median(seconds) * 1000, 2)
        rss = worker_memory_mb(process.pid)
    return {
        "models": count,
        "first_answer_s": round(answered, 2),
        "readyz_200_s": round(ready, 2),
        "worker_rss_mb": rss,
        "median_ms_first_model": latency[contracts[0]["name"]],
        "median_ms_last_model": latency[contracts[-1]["name"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.models", description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=50, help="models in the larger gateway")
    parser.add_argument("--requests", type=int, default=30, help="uploads per model measured")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clothing-bench-models-") as tmp:
        work = Path(tmp)
        config = model_server_config(work, args.models)
        model_port = free_port()
        model_server = [str(PROJECT_BIN / "python"), "-m", "tests.gateway.fake_servable", f"--port={model_port}",
                        "--rest_api_port=0", f"--model_config_file={config}", "--model_base_path=/unused"]  # fmt: skip
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", "/tmp"),
            "PYTHONPATH": str(REPO),
            "TF_SERVING_HOST": f"127.0.0.1:{model_port}",
            "GATEWAY_WORKERS": "2",
        }
        with running(model_server, model_port, env, work / "model-server.log", timeout=120):
            results = [measure(count, env, work, args.requests) for count in (1, args.models)]
    print(f"{'models':>8} {'1st answer s':>13} {'/readyz 200 s':>14} {'worker RSS MB':>16} "
          f"{'first model ms':>15} {'last model ms':>14}")  # fmt: skip
    for result in results:
        print(
            f"{result['models']:>8} {result['first_answer_s']:>13} {result['readyz_200_s']:>14} "
            f"{'/'.join(str(mb) for mb in result['worker_rss_mb']):>16} {result['median_ms_first_model']:>15} "
            f"{result['median_ms_last_model']:>14}"
        )
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
