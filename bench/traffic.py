"""The gateway under real traffic (not a test): `make bench-traffic`, or
`python -m bench.traffic [--seconds 8] [--clients 64] [--pin] [--json PATH]`.

Side by side in the same run, with the same workers: the gateway (its gunicorn.conf.py: gevent, from
.venv-gateway), the same gateway under gthread workers with 8 threads (its former concurrency model) and the book's
gateway code (`bench/reference_gateway.py`, gunicorn gthread, 8 threads per worker), against model-tools' stand-in of
TF Serving serving the tests' fake servable (no model time: what is measured is the gateway), on loopback. Every
request is the book's `{"url": ...}` for a 1200x800 JPEG.

- Image host latency 0, 100 and 300 ms, 64 clients: requests/s, requests/s per gateway CPU core, p50/p99, errors.
- Tarpit: while 0, 100 and 500 requests download images that drip 100 bytes every 0.5 s from 8 image hosts, 4
  clients send normal requests: their p50/p99 and errors, the largest worker's RSS, and how many dripping downloads
  were refused (503) rather than kept in flight.
- Overload: open-loop load (`bench/open_loop.py`, 2 s of warm-up, then the measured seconds) at 1x, 2x and 5x the
  gateway's capacity (its requests/s in the 0 ms row), the same rates for every column: goodput (200s completed in
  the window per second, and as a share of that capacity), the share refused with 503, p99 of the accepted
  requests and of the refusals (the time to shed), other errors.
- Refusals: the worker CPU a refused prediction costs in the gateway (one worker, every prediction refused) and in
  a bare app on the same gunicorn gevent worker answering a fixed 503 (`bench/floor_app.py`), and the goodput each
  cost leaves a saturated core at 5x: the ceiling refusals put on the 5x row.

With `--pin` the gateway runs alone on CPU 0 and the rest on the other CPUs: the pod's own capacity, without the
load generator competing for its cores (on a 2-CPU machine the load, image hosts and stub then share one core).
GATEWAY_* variables in the environment reach every gateway column (e.g. `GATEWAY_MAX_QUEUE_SECONDS=0.5`).

Prints a table and the JSON; numbers depend on the machine, compare within one run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from bench.harness import (
    PROJECT_BIN,
    cpu_seconds,
    first_answer,
    free_port,
    gunicorn_command,
    photo_1200x800,
    running,
    worker_memory_mb,
    worker_pids,
)
from bench.load import http_load
from model_interface.contract import BOOK_CONTRACT

LATENCIES_MS = (0, 100, 300)
TARPITS = (0, 100, 500)
TARPIT_HOSTS = 8
OVERLOADS = (1, 2, 5)
# The gateway as it ships (gevent), the same code under its former gthread workers, and the book's gateway.
PATHS = ("gateway", "gateway-gthread", "reference")
REFUSALS = ("gateway", "floor-refused")  # the gateway's refusals, and the least a refusal costs on its stack
REFERENCE_THREADS = 8
DRIP_BYTES, DRIP_SECONDS = 100, 0.5
GATEWAY_CPU = 0  # with --pin


class _ImageHost(BaseHTTPRequestHandler):
    """`/photo.jpg?delay_ms=N`: the photo after N ms; `/drip`: the photo, DRIP_BYTES every DRIP_SECONDS."""

    protocol_version = "HTTP/1.1"
    photo = b""
    stopping = threading.Event()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        delay_ms = float(parse_qs(url.query).get("delay_ms", ["0"])[0])
        time.sleep(delay_ms / 1000)
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(self.photo)))
        self.end_headers()
        if url.path != "/drip":
            self.wfile.write(self.photo)
            return
        for start in range(0, len(self.photo), DRIP_BYTES):
            if self.stopping.wait(DRIP_SECONDS):
                self.close_connection = True
                return
            try:
                self.wfile.write(self.photo[start : start + DRIP_BYTES])
                self.wfile.flush()
            except OSError:
                return


@contextmanager
def tarpit(port: int, bodies: list[bytes], count: int) -> Iterator[list[int]]:
    """`count` clients each keeping one dripping download in flight through the gateway at port (client i uses
    bodies[i % len(bodies)]); yields the list that counts the 503 refusals while the block runs."""
    stop = threading.Event()
    refused = [0]

    def client(body: bytes) -> None:
        while not stop.is_set():
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            try:
                connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                if response.status == 503:  # refused (overloaded): back off, as a client honouring Retry-After
                    refused[0] += 1
                    stop.wait(1)
            except (OSError, http.client.HTTPException):
                stop.wait(0.1)
            finally:
                connection.close()

    threads = [threading.Thread(target=client, args=(bodies[i % len(bodies)],), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    time.sleep(2 + count / 200)  # every one is downloading
    refused[0] = 0
    try:
        yield refused
    finally:
        stop.set()
        _ImageHost.stopping.set()  # the dripping downloads end now
        for thread in threads:
            thread.join(timeout=30)
        _ImageHost.stopping.clear()


def overload(port: int, body_file: Path, rate: float, seconds: float) -> dict[str, Any]:
    """Open-loop load at `rate` requests/s (in a process of its own), summarised."""
    command = [sys.executable, "-m", "bench.open_loop", f"--port={port}", f"--rate={rate:.1f}",
               f"--seconds={seconds}", f"--body={body_file}"]  # fmt: skip
    result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    by_status = result["by_status"]
    answered, refused = by_status.get("200", {}), by_status.get("503", {})
    return {
        "rate_per_s": round(rate, 1),
        "goodput_per_s": result["goodput_per_s"],
        "shed_share": round(refused.get("count", 0) / max(result["sent"], 1), 3),
        "accepted_p99_ms": answered.get("p99_ms"),
        "shed_p99_ms": refused.get("p99_ms"),
        "other_errors": result["sent"] - answered.get("count", 0) - refused.get("count", 0),
    }


def pinned(command: list[str], pin: bool) -> list[str]:
    """The gateway's command, run on GATEWAY_CPU alone when `pin` (--pin)."""
    return ["taskset", "--cpu-list", str(GATEWAY_CPU), *command] if pin else command


def measure(
    which: str, env: dict[str, str], args: argparse.Namespace, hosts: list[str], work: Path, capacity: float | None
) -> dict[str, Any]:
    """Start one path's gunicorn, run every row against it; the overload rows at multiples of `capacity` (or of
    this path's own 0 ms throughput when None)."""
    image_base = hosts[0]
    port = free_port()
    command = gunicorn_command(which.removesuffix("-gthread"), port, args.workers, REFERENCE_THREADS)
    if which == "gateway-gthread":  # command-line settings override gunicorn.conf.py's
        command += ["--worker-class=gthread", f"--threads={REFERENCE_THREADS}"]
    command = pinned(command, args.pin)
    env = {**env, "GATEWAY_BIND": f"127.0.0.1:{port}"}
    results: dict[str, Any] = {"latency": {}, "tarpit": {}, "overload": {}}
    with running(command, port, env, work / f"{which}.log") as (process, _):
        first_answer(port)
        workers = worker_pids(process.pid)
        for delay in LATENCIES_MS:
            body = json.dumps({"url": f"{image_base}/photo.jpg?delay_ms={delay}"}).encode()
            cpu_before, wall_before = cpu_seconds(workers), time.monotonic()
            row = http_load(port, body, "application/json", args.clients, args.seconds)
            cores = (cpu_seconds(workers) - cpu_before) / (time.monotonic() - wall_before)
            row["gateway_cores"] = round(cores, 2)
            row["per_core_per_s"] = round(row["throughput_per_s"] / max(cores, 0.01), 1)
            results["latency"][delay] = row
        normal = json.dumps({"url": f"{image_base}/photo.jpg"}).encode()
        drips = [json.dumps({"url": f"{host}/drip"}).encode() for host in hosts]
        for count in TARPITS:
            with tarpit(port, drips, count) as refused:
                row = http_load(port, normal, "application/json", 4, args.seconds)
                row["worker_rss_mb"] = max(worker_memory_mb(process.pid))
                row["tarpit_refused"] = refused[0]
            results["tarpit"][count] = row
        body_file = work / "overload-body.json"
        body_file.write_bytes(normal)
        capacity = capacity or results["latency"][0]["throughput_per_s"]
        for times in OVERLOADS:
            row = overload(port, body_file, times * capacity, args.seconds)
            row["capacity_share"] = round(row["goodput_per_s"] / capacity, 2)
            results["overload"][times] = row
    return results


def refusal_cost(which: str, env: dict[str, str], args: argparse.Namespace, hosts: list[str], work: Path) -> float:
    """Worker CPU per refused prediction (ms): one worker, 3 keep-alive clients for the measured seconds, every
    prediction refused. gateway: GATEWAY_MAX_IN_FLIGHT=1, held by one dripping download, so each prediction passes
    the other bounds and is refused by that one (gunicorn.conf.py then lets the worker take 4 connections: the
    download's and the clients'); floor-refused: bench/floor_app.py's bare app answering a fixed 503."""
    port = free_port()
    command = gunicorn_command(which, port, 1, 1)
    command = pinned(command, args.pin)
    env = {
        **env,
        "GATEWAY_BIND": f"127.0.0.1:{port}",
        "GATEWAY_WORKERS": "1",
        "GATEWAY_MAX_IN_FLIGHT": "1",
        "GATEWAY_DOWNLOAD_TIMEOUT_SECONDS": "600",  # the dripping download holds the slot throughout
        "GATEWAY_DEADLINE_SECONDS": "600",
    }
    body = json.dumps({"url": f"{hosts[0]}/photo.jpg"}).encode()
    drip = json.dumps({"url": f"{hosts[0]}/drip"}).encode()
    with running(command, port, env, work / f"{which}-refusals.log") as (process, _):
        first_answer(port)
        workers = worker_pids(process.pid)
        with tarpit(port, [drip], 1 if which == "gateway" else 0):
            before = cpu_seconds(workers)
            row = http_load(port, body, "application/json", 3, args.seconds)
            spent = cpu_seconds(workers) - before
    if row["errors"] != row["calls_made"]:
        raise RuntimeError(f"{which}: {row['calls_made'] - row['errors']} predictions were not refused")
    return round(spent * 1000 / row["calls_made"], 3)


def report(results: dict[str, Any]) -> str:
    """The table: one line per row, the gateway beside the reference."""

    def line(name: str, values: list[Any]) -> str:
        return f"{name:<52}" + "".join(f"{v!s:>22}" for v in values)

    lines = [line("", list(PATHS))]
    for delay in LATENCIES_MS:
        rows = [results[which]["latency"][delay] for which in PATHS]
        lines += [
            line(f"image host {delay} ms, {results['clients']} clients: req/s", [r["throughput_per_s"] for r in rows]),
            line("  req/s per gateway CPU core", [r["per_core_per_s"] for r in rows]),
            line("  p50 / p99 (ms)", [f"{r['p50_ms']} / {r['p99_ms']}" for r in rows]),
            line("  errors", [r["errors"] for r in rows]),
        ]
    for count in TARPITS:
        rows = [results[which]["tarpit"][count] for which in PATHS]
        lines += [
            line(
                f"{count} dripping downloads: normal requests p50 / p99 (ms)",
                [f"{r['p50_ms']} / {r['p99_ms']}" for r in rows],
            ),
            line("  answered / errors", [f"{r['calls']} / {r['errors']}" for r in rows]),
            line("  largest worker RSS (MB)", [r["worker_rss_mb"] for r in rows]),
            line("  dripping downloads refused (503) meanwhile", [r["tarpit_refused"] for r in rows]),
        ]
    for times in OVERLOADS:
        rows = [results[which]["overload"][times] for which in PATHS]
        lines += [
            line(
                f"overload {times}x ({rows[0]['rate_per_s']} req/s): goodput req/s (x capacity)",
                [f"{r['goodput_per_s']} ({r['capacity_share']})" for r in rows],
            ),
            line("  shed share (503)", [r["shed_share"] for r in rows]),
            line("  p99 accepted / p99 shed (ms)", [f"{r['accepted_p99_ms']} / {r['shed_p99_ms']}" for r in rows]),
            line("  other errors (timeouts after 30 s, resets)", [r["other_errors"] for r in rows]),
        ]
    # A saturated core at 5x its capacity C = 1000 / request_ms answers G predictions and refuses 5C - G:
    # G * request_ms + (5C - G) * refusal_ms = 1000 ms, so G / C = (1 - 5r) / (1 - r) with r = refusal_ms / request_ms.
    request_ms = 1000 / results["gateway"]["latency"][0]["per_core_per_s"]
    ratios = [results["refusal_ms"][which] / request_ms for which in REFUSALS]
    lines += [
        line("", list(REFUSALS)),
        line("refused prediction: worker CPU (ms)", [results["refusal_ms"][which] for which in REFUSALS]),
        line(f"  of a prediction's {request_ms:.2f} ms", [round(r, 3) for r in ratios]),
        line("  goodput they leave at 5x (x capacity)", [round((1 - 5 * r) / (1 - r), 2) for r in ratios]),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.traffic", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per row")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients in the latency rows")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (both paths)")
    parser.add_argument(
        "--pin",
        action="store_true",
        help=f"the gateway alone on CPU {GATEWAY_CPU}, everything else (load, image hosts, model stub) on the others, "
        "as a pod with one core of its own",
    )
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    if args.pin:  # this process, its image host threads and every process it starts next
        os.sched_setaffinity(0, os.sched_getaffinity(0) - {GATEWAY_CPU})
    _ImageHost.photo = photo_1200x800()
    hosts = []
    for _ in range(TARPIT_HOSTS):  # image hosts on ports of their own: the gateway bounds downloads per host
        image_host = ThreadingHTTPServer(("127.0.0.1", 0), _ImageHost)
        image_host.daemon_threads = True
        threading.Thread(target=image_host.serve_forever, daemon=True).start()
        hosts.append(f"http://127.0.0.1:{image_host.server_address[1]}")
    with tempfile.TemporaryDirectory(prefix="clothing-bench-traffic-") as tmp:
        work = Path(tmp)
        contract = work / "book-contract.json"
        contract.write_text(BOOK_CONTRACT.to_json())
        model_port = free_port()
        model_server = [str(PROJECT_BIN / "python"), "-m", "tests.gateway.fake_servable", f"--port={model_port}",
                        "--rest_api_port=0", f"--model_name={BOOK_CONTRACT.name}",
                        f"--model_base_path={work / 'models'}", f"--fake_contract={contract}"]  # fmt: skip
        env = {
            **{name: value for name, value in os.environ.items() if name.startswith("GATEWAY_")},  # settings to try
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", "/tmp"),
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
            "TF_SERVING_HOST": f"127.0.0.1:{model_port}",
            "GATEWAY_MODEL_CONTRACT_FILE": str(contract),
            "GATEWAY_ALLOWED_NETWORKS": "127.0.0.0/8",
            "GATEWAY_WORKERS": str(args.workers),
        }
        results: dict[str, Any] = {"clients": args.clients, "workers": args.workers, "pinned": args.pin}
        with running(model_server, model_port, env, work / "model-server.log"):
            capacity = None  # the gateway's (the first path's): every column is overloaded at the same rates
            for which in PATHS:
                print(f"loading {which} ...", flush=True)
                results[which] = measure(which, env, args, hosts, work, capacity)
                capacity = capacity or results[which]["latency"][0]["throughput_per_s"]
            results["refusal_ms"] = {which: refusal_cost(which, env, args, hosts, work) for which in REFUSALS}
    print(report(results))
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
