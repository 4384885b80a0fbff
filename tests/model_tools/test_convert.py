"""model-tools convert / inspect / verify / warmup through the real CLI on a real tf_keras .h5."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.model_tools.conftest import LABELS, PANTS, run_cli


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """Our error lines on stderr (TensorFlow's C++ start-up log lines cannot be silenced and are left out)."""
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


REPO = Path(__file__).resolve().parents[2]
SAMPLES = [PANTS, *sorted((REPO / "tests" / "data").glob("*.png"))]


def test_convert_writes_a_versioned_savedmodel_with_discovered_names(converted: Path) -> None:
    version = converted / "1"
    assert (version / "saved_model.pb").is_file()
    assert version.stat().st_mode & 0o777 == 0o755  # readable by a non-root model server
    assert (version / "variables" / "variables.index").is_file()
    contract = json.loads(run_cli("inspect", converted, "--format", "json").stdout)
    assert contract["inputName"] == "input_1"  # Keras-generated, discovered rather than typed
    assert contract["outputName"] == "dense"
    assert contract["inputSize"] == [48, 48]
    assert contract["labels"] == LABELS.split(",")
    assert contract["uint8"] == {"signatureName": "serving_uint8", "inputName": "pixels", "outputName": "dense"}
    assert contract["preprocessing"] == "fast"
    exact = json.loads(run_cli("inspect", converted, "--format", "json", "--preprocessing", "exact").stdout)
    assert exact["preprocessing"] == "exact"


def test_weights_are_stored_once_for_all_signatures(converted: Path, mini_h5: Path) -> None:
    variables = sum(p.stat().st_size for p in (converted / "1" / "variables").iterdir())
    assert variables < 1.5 * mini_h5.stat().st_size


def _signature_blocks(text: str) -> str:
    """The serving signature blocks of saved_model_cli's output (its init-op block and op list left out)."""
    text = text.split("Concrete Functions")[0]
    blocks = re.split(r"\n(?=signature_def\[)", text.strip())
    kept = [re.sub(r"(Method name is: .*)\n[\s\S]*", r"\1", b) for b in blocks if b.startswith("signature_def[")]
    return "\n".join(b.strip() for b in kept if "__saved_model_init_op" not in b)


def test_inspect_agrees_with_saved_model_cli(converted: Path) -> None:
    cli = Path(sys.executable).with_name("saved_model_cli")
    theirs = subprocess.run(
        [cli, "show", "--dir", converted / "1", "--all"], capture_output=True, text=True, check=True
    )
    ours = run_cli("inspect", converted)
    assert ours.returncode == 0, ours.stderr
    assert _signature_blocks(ours.stdout) == _signature_blocks(theirs.stdout)
    assert "signature_def['serving_uint8']" in ours.stdout


def test_inspect_writes_values_and_env_snippets(converted: Path) -> None:
    values = run_cli("inspect", converted, "--format", "values").stdout
    assert values.splitlines()[0] == "model:"
    assert '  inputName: "input_1"' in values
    env = run_cli("inspect", converted, "--format", "env").stdout
    assert env.startswith("GATEWAY_MODEL_CONTRACT='{")
    assert json.loads(env.split("=", 1)[1].strip().strip("'"))["outputName"] == "dense"


def test_inspect_writes_an_entry_of_the_charts_models_list(converted: Path, tmp_path: Path) -> None:
    """`--format models`: the contract, every version under the base dir and a stable label on the highest, valid
    against the chart's schema for a `models` entry."""
    import shutil

    import jsonschema
    import yaml

    base = tmp_path / "mini"
    for version in ("1", "2"):
        shutil.copytree(converted / "1", base / version)
    entries = yaml.safe_load(run_cli("inspect", base, "--format", "models").stdout)["models"]
    assert [(entry["name"], entry["versions"], entry["versionLabels"]) for entry in entries] == [
        ("mini", [1, 2], {"stable": 2})
    ]
    chart_schema = json.loads((REPO / "charts" / "clothing-model" / "schema" / "chart.json").read_text())
    entry_schema = {**chart_schema["$defs"]["modelEntry"], "$defs": chart_schema["$defs"]}
    jsonschema.Draft202012Validator(entry_schema).validate(entries[0])


def test_verify_reports_parity_of_every_signature(converted: Path, mini_h5: Path) -> None:
    result = run_cli("verify", mini_h5, converted, *SAMPLES)
    assert result.returncode == 0, result.stderr
    deltas = dict(re.findall(r"^(\w+): max \|delta logit\| = (\S+)$", result.stdout, re.MULTILINE))
    assert set(deltas) == {"serving_default", "serving_uint8", "serving_bytes"}
    assert float(deltas["serving_default"]) < 1e-4
    assert float(deltas["serving_uint8"]) < 1e-4
    assert "top-1 agreement: 100%" in result.stdout


def test_verify_fails_beyond_the_tolerance(converted: Path, mini_h5: Path) -> None:
    result = run_cli("verify", mini_h5, converted, PANTS, "--tolerance", "-1")
    assert result.returncode == 1
    assert "FAIL" in result.stderr


def test_warmup_writes_tf_serving_warmup_records(converted: Path, tmp_path: Path) -> None:
    import shutil

    import tensorflow as tf

    from model_interface.tfs_protos.tensorflow_serving.apis import prediction_log_pb2

    copy = tmp_path / "mini"
    shutil.copytree(converted, copy)
    result = run_cli("warmup", copy, PANTS, "--batch-sizes", "1,4")
    assert result.returncode == 0, result.stderr
    records = [
        prediction_log_pb2.PredictionLog.FromString(r.numpy())
        for r in tf.data.TFRecordDataset(str(copy / "1" / "assets.extra" / "tf_serving_warmup_requests"))
    ]
    assert [(r.predict_log.request.model_spec.signature_name) for r in records] == [
        "serving_default",
        "serving_uint8",
        "serving_default",
        "serving_uint8",
    ]
    shapes = [list(d.size for d in r.predict_log.request.inputs["input_1"].tensor_shape.dim) for r in records[::2]]
    assert shapes == [[1, 48, 48, 3], [4, 48, 48, 3]]


def test_missing_source_is_one_clear_error(tmp_path: Path) -> None:
    result = run_cli("convert", tmp_path / "nope.h5", "--out", tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope.h5'}: no such file"]  # TF not imported


def test_a_file_that_is_not_a_keras_model_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "model.h5"
    bogus.write_bytes(b"not hdf5")
    result = run_cli("convert", bogus, "--out", tmp_path / "out")
    assert result.returncode == 2
    [line] = error_lines(result)
    assert line.startswith(f"error: {bogus}: not a readable Keras model")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))


def test_labels_count_must_match_the_output_size(mini_h5: Path, tmp_path: Path) -> None:
    result = run_cli("convert", mini_h5, "--out", tmp_path, "--labels", "a,b,c")
    assert result.returncode == 2
    assert error_lines(result) == ["error: 3 labels given but the model outputs 10 values"]
    assert not any(tmp_path.rglob("saved_model.pb"))


def test_unwritable_output_leaves_nothing_behind(mini_h5: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should go")
    result = run_cli("convert", mini_h5, "--out", blocker)
    assert result.returncode == 2
    [line] = error_lines(result)
    assert line.startswith("error: cannot write to")
    assert blocker.read_text() == "a file where a directory should go"


def test_an_existing_version_is_never_overwritten(converted: Path, mini_h5: Path) -> None:
    before = (converted / "1" / "saved_model.pb").read_bytes()
    result = run_cli("convert", mini_h5, "--out", converted.parent, "--name", "mini")
    assert result.returncode == 2
    [line] = error_lines(result)
    assert line.endswith("already exists; choose another --version")
    assert (converted / "1" / "saved_model.pb").read_bytes() == before


def test_a_keras3_model_converts_too(tmp_path: Path) -> None:
    import os

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(3, name="scores")(x)).save(tmp_path / "model.keras")
    result = run_cli("convert", tmp_path / "model.keras", "--out", tmp_path / "out", "--labels", "a,b,c")
    assert result.returncode == 0, result.stderr
    contract = json.loads(run_cli("inspect", tmp_path / "out" / "clothing-model", "--format", "json").stdout)
    assert (contract["inputSize"], contract["labels"]) == ([32, 32], ["a", "b", "c"])
    verified = run_cli("verify", tmp_path / "model.keras", tmp_path / "out" / "clothing-model", PANTS)
    assert verified.returncode == 0, verified.stdout + verified.stderr
