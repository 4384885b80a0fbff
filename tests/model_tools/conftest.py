"""Fixtures for model-tools: a small tf_keras model of the book's architecture family, saved as a legacy .h5,
converted by the real CLI, and the stand-in model server run as a real process on free loopback ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from model_interface.contract import BOOK_LABELS
from tests.conftest import REPO, free_port

PANTS = REPO / "tests" / "data" / "pants.jpg"
LABELS = ",".join(BOOK_LABELS)


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run `python -m model_tools ...` as a user would; never raises on a non-zero exit."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-m", "model_tools", *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )


def build_mini_xception(path: Path, size: int = 48) -> None:
    """A miniature Xception (entry conv, separable-conv residual blocks, GAP, logits), Keras-named layers
    (`input_1`, `dense`), saved as a legacy tf.keras HDF5 file like the book's model."""
    import tf_keras as keras
    from tf_keras import layers

    keras.utils.set_random_seed(7)
    inputs = keras.Input((size, size, 3))
    x = layers.Conv2D(8, 3, strides=2, use_bias=False)(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    for filters in (16, 32):
        residual = layers.BatchNormalization()(layers.Conv2D(filters, 1, strides=2, padding="same")(x))
        x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        x = layers.add([x, residual])
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(10)(x)
    keras.Model(inputs, outputs).save(path)


@pytest.fixture(scope="session")
def mini_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keras") / "mini-xception.h5"
    build_mini_xception(path)
    return path


@pytest.fixture(scope="session")
def converted(mini_h5: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The mini model converted by the CLI with every extra signature: returns the model base dir."""
    out = tmp_path_factory.mktemp("models")
    result = run_cli("convert", mini_h5, "--out", out, "--name", "mini", "--uint8-signature", "--bytes-signature")
    assert result.returncode == 0, result.stderr
    return out / "mini"


@dataclass
class ServerProcess:
    """A running model server: its process, addresses and log file."""

    process: subprocess.Popen[bytes]
    grpc_address: str
    rest_url: str
    log: Path

    def stop(self) -> int:
        """SIGTERM, and SIGKILL if it has not exited 30 s later (then the test fails: no process is left behind)."""
        self.process.terminate()
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"the model server ignored SIGTERM:\n{self.output()[-2000:]}") from None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(base_path: Path, name: str, log: Path, *flags: str, wait: bool = True) -> ServerProcess:
    """Start `python -m model_tools.server` with TF Serving's flags; wait until its REST port answers."""
    grpc_port, rest_port = free_port(), free_port()
    args = [f"--port={grpc_port}", f"--rest_api_port={rest_port}", f"--model_name={name}"]
    args += [f"--model_base_path={base_path}", "--file_system_poll_wait_seconds=1", *flags]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "model_tools.server", *args],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
    server = ServerProcess(process, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{rest_port}", log)
    if wait:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"model server exited {process.returncode}:\n{server.output()}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", rest_port)) == 0:
                    return server
            time.sleep(0.1)
        process.kill()
        raise AssertionError(f"model server did not open its ports:\n{server.output()}")
    return server


@pytest.fixture(scope="module")
def mini_server(converted: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The stand-in server on the mini model with batching, monitoring and the gRPC health service on."""
    config = tmp_path_factory.mktemp("config")
    (config / "batching.config").write_text(
        "max_batch_size { value: 16 }\nbatch_timeout_micros { value: 20000 }\n"
        "max_enqueued_batches { value: 100 }\nnum_batch_threads { value: 2 }\n"
    )
    (config / "monitoring.config").write_text(
        'prometheus_config: { enable: true, path: "/monitoring/prometheus/metrics" }\n'  # the colon form
    )
    server = start_server(
        converted,
        "mini",
        config / "server.log",
        "--enable_batching",
        f"--batching_parameters_file={config / 'batching.config'}",
        f"--monitoring_config_file={config / 'monitoring.config'}",
        "--enable_grpc_healthcheck_service",
    )
    yield server
    server.stop()
