"""`python -m bench.book_model OUT_DIR`: a model with the book's architecture, served like the product's models.

The book's classifier: Xception (ImageNet architecture, no top) at 299x299, global average pooling, Dense(100, relu),
Dropout, Dense(10) logits, saved by tf.keras as .h5. Its trained weights cannot be downloaded here and do not change
how fast it runs, so the weights are random (seeded). The .h5 is converted by `model-tools convert --uint8-signature`
into OUT_DIR/clothing-model/1, as users convert the book's model. Prints the contract path.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from model_interface.contract import BOOK_LABELS

LABELS = ",".join(BOOK_LABELS)


def build(out: Path) -> Path:
    """Write the .h5 and its converted SavedModel under `out`; returns the model's contract path."""
    import tf_keras as keras

    keras.utils.set_random_seed(42)
    base = keras.applications.Xception(weights=None, include_top=False, input_shape=(299, 299, 3))
    inputs = keras.Input(shape=(299, 299, 3))
    features = keras.layers.GlobalAveragePooling2D()(base(inputs, training=False))
    inner = keras.layers.Dropout(0.2)(keras.layers.Dense(100, activation="relu")(features))
    h5 = out / "xception-book-architecture.h5"
    keras.Model(inputs, keras.layers.Dense(10)(inner)).save(h5)
    command = [sys.executable, "-m", "model_tools.cli", "convert", str(h5), "--out", str(out / "models"),
               "--name", "clothing-model", "--labels", LABELS, "--uint8-signature"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    return out / "models" / "clothing-model" / "1" / "assets.extra" / "model-contract.json"


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
