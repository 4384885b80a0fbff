"""The committed trained model: it says pants for the book's pants photo, through the model server; `model-tools
evaluate` measures it on a labelled folder with both preprocessings."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from model_interface.contract import load_contract
from model_interface.preprocessing import preprocess
from model_interface.tensors import to_ndarray, to_tensor_proto
from model_interface.tfs_protos.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tests.model_tools.conftest import PANTS, REPO, ServerProcess, run_cli, start_server

MODEL = REPO / "model-tools" / "models" / "clothing-model"
CONTRACT = MODEL / "1" / "assets.extra" / "model-contract.json"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(MODEL, "clothing-model", tmp_path_factory.mktemp("committed") / "server.log")
    yield server
    server.stop()


def test_the_committed_model_says_pants_with_a_clear_margin(served: ServerProcess) -> None:
    contract = load_contract(CONTRACT)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = contract.name
    request.model_spec.signature_name = contract.signature_name
    x = preprocess(PANTS.read_bytes(), contract.input_size, contract.scaling, preprocessing=contract.preprocessing)
    x = x[np.newaxis]
    request.inputs[contract.input_name].CopyFrom(to_tensor_proto(x))
    with grpc.insecure_channel(served.grpc_address) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    logits = to_ndarray(response.outputs[contract.output_name])[0]
    ranked = sorted(zip(contract.labels, logits, strict=True), key=lambda pair: -pair[1])
    assert ranked[0][0] == "pants"
    assert ranked[0][1] - ranked[1][1] > 3.0, ranked


def test_the_warmup_file_was_replayed_at_load(served: ServerProcess) -> None:
    assert "Number of warmup records read: 2." in served.output()


def test_evaluate_prints_per_class_and_top1_accuracy_for_each_preprocessing(tmp_path: Path) -> None:
    for label in ("pants", "hat"):  # the pants photo, once labelled right and once wrong
        (tmp_path / label).mkdir()
        (tmp_path / label / "photo.jpg").write_bytes(PANTS.read_bytes())
    result = run_cli("evaluate", MODEL, tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()}
    assert rows["class"] == ["images", "fast", "exact"]
    assert rows["hat"] == ["1", "0.0%", "0.0%"]
    assert rows["pants"] == ["1", "100.0%", "100.0%"]
    assert rows["top-1"] == ["2", "50.00%", "50.00%"]
    only_exact = run_cli("evaluate", MODEL, tmp_path, "--preprocessing", "exact")
    assert only_exact.stdout.splitlines()[0].split() == ["class", "images", "exact"]


def test_evaluate_refuses_a_class_the_model_does_not_know(tmp_path: Path) -> None:
    (tmp_path / "socks").mkdir()
    (tmp_path / "socks" / "photo.jpg").write_bytes(PANTS.read_bytes())
    result = run_cli("evaluate", MODEL, tmp_path)
    assert result.returncode == 2
    assert "error: " in result.stderr
    assert "socks not among the model's labels" in result.stderr


def test_the_committed_contract_records_the_preprocessing_it_was_validated_with() -> None:
    report = json.loads((MODEL.parent / "training-report.json").read_text())
    by_preprocessing = report["val_accuracy_by_preprocessing"]
    assert load_contract(CONTRACT).preprocessing == "fast"
    assert by_preprocessing["fast"] >= by_preprocessing["exact"] - 0.005


def test_the_training_report_meets_the_accuracy_target() -> None:
    report = json.loads((MODEL.parent / "training-report.json").read_text())
    assert report["val_accuracy"] >= 0.75
    assert report["labels"] == list(load_contract(CONTRACT).labels)


def test_training_runs_end_to_end_on_a_tiny_dataset(tmp_path: Path) -> None:
    from PIL import Image

    from model_tools.train import LABELS, train

    rng = np.random.default_rng(0)
    for split in ("train", "validation"):
        for index, label in enumerate(LABELS):
            (tmp_path / "data" / split / label).mkdir(parents=True)
            for n in range(2):
                pixels = np.full((40, 30, 3), index * 25, np.uint8) + rng.integers(0, 5, (40, 30, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "data" / split / label / f"{n}.jpg")
    report = train(tmp_path / "data", tmp_path / "out", size=32, epochs=1, batch_size=8, seed=1)
    assert (tmp_path / "out" / "clothing-model.h5").stat().st_size > 0
    assert report["train_images"] == 20
    assert 0.0 <= float(report["val_accuracy"]) <= 1.0  # type: ignore[arg-type]
