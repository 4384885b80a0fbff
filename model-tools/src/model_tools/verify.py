"""`model-tools verify`: run the source Keras model and the SavedModel on the same images (preprocessed by the
gateway's own preprocessing) and compare logits and top-1 classes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_interface.preprocessing import load_image, resize_pixels, scale
from model_tools.convert import load_keras_model
from model_tools.inspect_model import inspect, version_dir


@dataclass(frozen=True)
class Report:
    """Parity between two models over a set of images."""

    images: int
    max_abs_delta: float
    top1_agreement: float
    signatures: dict[str, float]

    def ok(self, tolerance: float) -> bool:
        """True when every logit delta is within tolerance and every top-1 class agrees."""
        return self.max_abs_delta <= tolerance and self.top1_agreement == 1.0


def verify(source: Path, saved_model: Path, images: list[Path]) -> Report:
    """Compare the source model and every image signature of the SavedModel on the given images."""
    import tensorflow as tf

    _, contract = inspect(saved_model)
    pixels = np.stack([resize_pixels(load_image(p.read_bytes()), contract.input_size) for p in images])
    x = scale(pixels, contract.scaling)
    expected = np.asarray(load_keras_model(source)(x, training=False))
    loaded = tf.saved_model.load(str(version_dir(saved_model)))
    default = loaded.signatures["serving_default"]
    got = default(**{contract.input_name: tf.constant(x)})[contract.output_name].numpy()
    deltas = {"serving_default": float(np.max(np.abs(got - expected)))}
    if contract.uint8 is not None:
        uint8 = loaded.signatures[contract.uint8.signature_name]
        out = uint8(**{contract.uint8.input_name: tf.constant(pixels)})[contract.uint8.output_name].numpy()
        deltas[contract.uint8.signature_name] = float(np.max(np.abs(out - expected)))
    if "serving_bytes" in loaded.signatures:
        data = tf.constant([p.read_bytes() for p in images])
        out = loaded.signatures["serving_bytes"](image_bytes=data)[contract.output_name].numpy()
        deltas["serving_bytes"] = float(np.max(np.abs(out - expected)))
    agreement = float(np.mean(np.argmax(got, axis=1) == np.argmax(expected, axis=1)))
    # serving_bytes decodes JPEG with TensorFlow's decoder, not PIL's: reported, but not held to the tolerance.
    exact = max(delta for name, delta in deltas.items() if name != "serving_bytes")
    return Report(len(images), exact, agreement, deltas)
