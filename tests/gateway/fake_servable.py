"""A TEST SERVABLE, not a model: what model-tools' stand-in of TF Serving serves in the gateway's tests, without
TensorFlow.

The stand-in (`model_tools.server`) loads each version directory with a Loader; in production that is
`load_version`, which loads a SavedModel with TensorFlow. Here `load_fake` "loads" `<base_path>/<N>/fake-servable.json`
(a model contract plus test settings, written by `write_version`) and answers with `fake_logits`: a fixed linear map
of each image's mean colour, so tests can compute the expected scores and different images get different winners.
Everything the gateway talks to (flags, ports, gRPC and REST APIs, status, versions, error texts) is the stand-in's
own code: the gateway's tests meet the same implementation of TF Serving's API as model-tools' tests.

    python -m tests.gateway.fake_servable --port=8500 --rest_api_port=0 --model_name=clothing-model \\
        --model_base_path=DIR [--fake_contract=contract.json [--fake_latency=0.5]]

serves DIR/<N>/fake-servable.json; with --fake_contract it first writes version 1 of that contract if DIR has no
version (TF Serving ignores flags it does not know, and so does the stand-in).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from model_interface.contract import ModelContract, parse_contract
from model_interface.tensors import dtype_enum
from model_interface.tfs_protos.tensorflow.core.framework import types_pb2
from model_interface.tfs_protos.tensorflow.core.protobuf import meta_graph_pb2
from model_tools import server
from model_tools.servable import LoadedVersion

SETTINGS_FILE = "fake-servable.json"


def fake_logits(batch: np.ndarray, num_labels: int) -> np.ndarray:
    """Fake logits (N, num_labels) from a batch (N, H, W, 3): a fixed linear map of each image's mean colour.

    uint8 pixels are first scaled like Xception (x / 127.5 - 1), so both signatures give the same scores.
    """
    x = batch.astype(np.float64)
    if batch.dtype == np.uint8:
        x = x / 127.5 - 1.0
    means = x.reshape(x.shape[0], -1, 3).mean(axis=1)
    weights = np.random.default_rng(0).normal(size=(3, num_labels)) * 4.0
    bias = np.linspace(0.5, -0.5, num_labels)
    return (means @ weights + bias).astype(np.float32)


def write_version(
    base_path: Path,
    contract: dict[str, Any],
    version: int = 1,
    latency: float = 0.0,
    output_size: int = 0,
    offset: float = 0.0,
) -> Path:
    """Write a fake version: the contract's signatures; each Predict sleeps `latency` seconds and answers
    `output_size` scores per image (default: one per label), each `offset` more than fake_logits (so versions can
    answer differently)."""
    directory = base_path / str(version)
    directory.mkdir(parents=True, exist_ok=True)
    settings = {"contract": contract, "latency": latency, "outputSize": output_size, "offset": offset}
    (directory / SETTINGS_FILE).write_text(json.dumps(settings))
    return directory


def _tensor_info(name: str, dtype: int, *dims: int) -> meta_graph_pb2.TensorInfo:
    info = meta_graph_pb2.TensorInfo(name=name, dtype=dtype)
    for size in dims:
        info.tensor_shape.dim.add(size=size)
    return info


def _signature_def(
    contract: ModelContract, name: str, tensors: tuple[str, str], dtype: str, output_size: int
) -> meta_graph_pb2.SignatureDef:
    input_name, output_name = tensors
    height, width = contract.input_size
    signature_def = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    signature_def.inputs[input_name].CopyFrom(
        _tensor_info(f"{name}_{input_name}:0", dtype_enum(dtype), -1, height, width, 3)
    )
    signature_def.outputs[output_name].CopyFrom(
        _tensor_info("StatefulPartitionedCall:0", types_pb2.DT_FLOAT, -1, output_size)
    )
    return signature_def


def load_fake(version_dir: Path) -> LoadedVersion:
    """The Loader for a fake version directory (see write_version): each signature's one input is fed to
    fake_logits, whatever output is fetched."""
    settings = json.loads((version_dir / SETTINGS_FILE).read_text())
    contract = parse_contract(settings["contract"])
    output_size = settings["outputSize"] or len(contract.labels)
    specs = [(contract.signature_name, (contract.input_name, contract.output_name), contract.input_dtype)]
    if contract.uint8 is not None:
        uint8 = contract.uint8
        specs.append((uint8.signature_name, (uint8.input_name, uint8.output_name), "uint8"))
    signature_defs = {
        name: _signature_def(contract, name, tensors, dtype, output_size) for name, tensors, dtype in specs
    }

    def session_run(feeds: dict[str, np.ndarray], fetches: list[str]) -> list[np.ndarray]:
        time.sleep(settings["latency"])
        (batch,) = feeds.values()
        logits = fake_logits(batch, len(contract.labels))[:, :output_size] + np.float32(settings["offset"])
        padding = output_size - logits.shape[1]
        return [np.pad(logits, ((0, 0), (0, padding))) if padding else logits for _ in fetches]

    return LoadedVersion(int(version_dir.name), version_dir, signature_defs, session_run)


def main(argv: list[str]) -> int:
    """The stand-in with load_fake, after writing version 1 of --fake_contract if asked to."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--model_base_path", type=Path, required=True)
    parser.add_argument("--fake_contract", type=Path)
    parser.add_argument("--fake_latency", type=float, default=0.0)
    args, _ = parser.parse_known_args(argv)
    if args.fake_contract and not any(args.model_base_path.glob(f"*/{SETTINGS_FILE}")):
        write_version(args.model_base_path, json.loads(args.fake_contract.read_text()), latency=args.fake_latency)
    return server.main(argv, loader=load_fake)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
