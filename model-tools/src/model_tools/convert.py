"""Keras model (.h5 via tf_keras, or Keras 3 .keras) -> SavedModel laid out for TF Serving as
`<out>/<model-name>/<version>/`, with an explicit `serving_default` signature and optional extra signatures:

- `serving_uint8`: uint8 pixels in, the contract's scaling done in-graph (4x smaller requests);
- `serving_bytes`: encoded image bytes in, decode + NEAREST resize + scaling in-graph.

Weights are stored once: every signature calls the same model object. The contract (labels, scaling, size) is
written next to the model as `assets.extra/model-contract.json` so that `inspect` can report it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from model_interface.contract import ModelContract, Uint8Signature, parse_contract
from model_interface.preprocessing import CAFFE_MEAN_BGR

CONTRACT_FILE = Path("assets.extra") / "model-contract.json"


class ConvertError(Exception):
    """A user-facing conversion error (bad input file, labels mismatch, unwritable output)."""


def load_keras_model(path: Path) -> Any:
    """Load a .h5 (legacy tf.keras, through tf_keras) or .keras (Keras 3) model without compiling it."""
    if not path.is_file():
        raise ConvertError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in (".h5", ".hdf5", ".keras"):
        raise ConvertError(f"{path}: expected a .h5/.hdf5 or .keras file")
    try:
        if suffix in (".h5", ".hdf5"):
            import tf_keras

            return tf_keras.models.load_model(str(path), compile=False)
        import keras

        return keras.saving.load_model(str(path), compile=False)
    except Exception as exc:  # noqa: BLE001 - any loader failure means "not a Keras model we can read"
        raise ConvertError(f"{path}: not a readable Keras model ({type(exc).__name__}: {exc})") from None


def _io_names(model: Any) -> tuple[str, str, tuple[int, int], int]:
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ConvertError("expected a model with one image input and one output")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[3] != 3 or shape[1] is None or shape[2] is None:
        raise ConvertError(f"expected an image input of shape (batch, height, width, 3), got {shape}")
    input_name = getattr(model, "input_names", None) or [model.inputs[0].name.split(":")[0]]
    output_name = getattr(model, "output_names", None) or [model.outputs[0].name.split("/")[0]]
    return input_name[0], output_name[0], (int(shape[1]), int(shape[2])), int(model.outputs[0].shape[-1])


def convert(
    source: Path,
    out: Path,
    name: str,
    version: int,
    labels: list[str],
    scaling: str = "xception",
    uint8_signature: bool = False,
    bytes_signature: bool = False,
) -> tuple[Path, ModelContract]:
    """Convert and write `<out>/<name>/<version>/` atomically; returns the version dir and the model contract."""
    target = out / name / str(version)
    if target.exists():
        raise ConvertError(f"{target} already exists; choose another --version")
    model = load_keras_model(source)
    input_name, output_name, size, classes = _io_names(model)
    if len(labels) != classes:
        raise ConvertError(f"{len(labels)} labels given but the model outputs {classes} values")
    import tensorflow as tf

    contract = parse_contract(
        {
            "name": name,
            "signatureName": "serving_default",
            "inputName": input_name,
            "outputName": output_name,
            "inputDtype": "float32",
            "inputSize": list(size),
            "scaling": scaling,
            "labels": labels,
            "uint8": {"signatureName": "serving_uint8", "inputName": "pixels", "outputName": output_name}
            if uint8_signature
            else None,
        }
    )
    height, width = size

    def scale_in_graph(pixels: Any) -> Any:
        x = tf.cast(pixels, tf.float32)
        if scaling == "xception":
            return x / 127.5 - 1.0
        if scaling == "caffe":
            return x[..., ::-1] - tf.constant(CAFFE_MEAN_BGR)
        return x

    module = tf.Module()
    module.model = model

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32, name=input_name)])
    def serving_default(x: Any) -> Any:
        return {output_name: model(x, training=False)}

    signatures = {"serving_default": serving_default}
    if uint8_signature:
        uint8 = contract.uint8
        assert isinstance(uint8, Uint8Signature)

        @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.uint8, name=uint8.input_name)])
        def serving_uint8(pixels: Any) -> Any:
            return {output_name: model(scale_in_graph(pixels), training=False)}

        signatures["serving_uint8"] = serving_uint8
    if bytes_signature:

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serving_bytes(images: Any) -> Any:
            def decode(data: Any) -> Any:
                image = tf.io.decode_image(data, channels=3, expand_animations=False)
                return tf.image.resize(image, (height, width), method="nearest")

            pixels = tf.map_fn(decode, images, fn_output_signature=tf.TensorSpec([height, width, 3], tf.uint8))
            return {output_name: model(scale_in_graph(pixels), training=False)}

        signatures["serving_bytes"] = serving_bytes

    with staged(target) as staging:
        tf.saved_model.save(module, str(staging), signatures=signatures)
        (staging / CONTRACT_FILE).parent.mkdir(exist_ok=True)
        (staging / CONTRACT_FILE).write_text(contract.to_json())
    return target, contract


@contextmanager
def staged(target: Path) -> Iterator[Path]:
    """A staging directory beside `target`, renamed to `target` when the block succeeds; on any failure it is
    removed with the empty parent directories made for it, so nothing half-written is left."""
    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    except OSError as exc:
        raise ConvertError(f"cannot write to {target.parent}: {exc.strerror}") from None
    try:
        yield staging
        staging.chmod(0o755)  # mkdtemp makes it 0700: a non-root model server must be able to read it
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for directory in created:  # innermost first: only the empty directories this call made
            directory.rmdir()
        raise


def read_contract_file(version_dir: Path) -> dict[str, Any] | None:
    """The contract stored by `convert`, if any."""
    path = version_dir / CONTRACT_FILE
    return json.loads(path.read_text()) if path.exists() else None
