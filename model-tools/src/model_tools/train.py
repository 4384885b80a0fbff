"""Train the project's clothing classifier from the clothing dataset (small), reproducibly, on a CPU.

A compact residual CNN of depthwise-separable blocks, trained from scratch (no pretrained weights can be fetched
here) with the book's contract: float input with Xception scaling, 10 logits in the book's label order. Saved as a
legacy tf.keras `.h5`, exactly the kind of file the book's users bring, so `model-tools convert` is what turns it
into the served SavedModel.

Every training image is loaded with both of the gateway's preprocessings (`exact` and `fast`, see
model_interface.preprocessing) and each epoch shows one of the two at random, so the model does not learn the
aliasing of one decoder; the kept epoch is the one with the best mean validation accuracy of the two.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import numpy as np

from model_interface.contract import BOOK_LABELS
from model_interface.preprocessing import PREPROCESSINGS, image_pixels, scale

LABELS = list(BOOK_LABELS)


def load_split(directory: Path, size: int, preprocessing: str) -> tuple[np.ndarray, np.ndarray]:
    """Load `<directory>/<label>/*.jpg` as uint8 pixels resized to size x size, and integer labels."""
    images, targets = [], []
    for index, label in enumerate(LABELS):
        for path in sorted((directory / label).glob("*.jpg")):
            images.append(image_pixels(path.read_bytes(), (size, size), preprocessing))
            targets.append(index)
    if not images:
        raise SystemExit(f"error: no images under {directory}/<label>/*.jpg")
    return np.stack(images), np.asarray(targets, dtype=np.int32)


def build_model(size: int, width: int = 32):  # type: ignore[no-untyped-def]
    """A small residual CNN; returns an uncompiled tf_keras Model producing logits."""
    import tf_keras as keras
    from tf_keras import layers

    def block(x, filters: int, stride: int):  # type: ignore[no-untyped-def]
        shortcut = x
        y = layers.SeparableConv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        y = layers.BatchNormalization()(y)
        y = layers.ReLU()(y)
        y = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)(y)
        y = layers.BatchNormalization()(y)
        if stride != 1 or shortcut.shape[-1] != filters:
            shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False)(shortcut)
            shortcut = layers.BatchNormalization()(shortcut)
        return layers.ReLU()(layers.Add()([y, shortcut]))

    inputs = keras.Input(shape=(size, size, 3), name="input_image")
    x = layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    for multiplier, repeats in ((2, 1), (4, 2), (8, 2), (12, 2)):
        for repeat in range(repeats):
            x = block(x, width * multiplier, 2 if repeat == 0 else 1)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.3)(x)
    outputs = layers.Dense(len(LABELS), name="logits")(x)
    return keras.Model(inputs, outputs, name="clothing")


def train(data: Path, out: Path, size: int, epochs: int, batch_size: int, seed: int) -> dict[str, object]:
    """Train, keep the weights with the best validation accuracy, write `<out>/clothing-model.h5` and a report."""
    os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")
    import tensorflow as tf
    import tf_keras as keras

    random.seed(seed)
    np.random.seed(seed)
    tf.random.set_seed(seed)
    started = time.monotonic()
    load_size = size + size // 8
    x_exact, y_train = load_split(data / "train", load_size, "exact")
    x_fast, _ = load_split(data / "train", load_size, "fast")
    validation = {name: load_split(data / "validation", size, name) for name in PREPROCESSINGS}
    y_val = validation["exact"][1]
    print(f"loaded {len(y_train)} train / {len(y_val)} validation images in {time.monotonic() - started:.1f} s")

    def augment(exact, fast, label):  # type: ignore[no-untyped-def]
        pixels = tf.where(tf.random.uniform(()) < 0.5, exact, fast)
        pixels = tf.image.random_crop(pixels, (size, size, 3))
        pixels = tf.image.random_flip_left_right(pixels)
        x = tf.cast(pixels, tf.float32) / 127.5 - 1.0
        x = tf.image.random_brightness(x, 0.2)
        x = tf.image.random_contrast(x, 0.8, 1.2)
        return tf.clip_by_value(x, -1.0, 1.0), label

    train_ds = (
        tf.data.Dataset.from_tensor_slices((x_exact, x_fast, y_train))
        .shuffle(len(y_train), seed=seed, reshuffle_each_iteration=True)
        .map(augment, num_parallel_calls=2)
        .batch(batch_size)
        .prefetch(2)
    )
    val_x = {name: scale(pixels, "xception") for name, (pixels, _) in validation.items()}
    model = build_model(size)
    steps = epochs * int(np.ceil(len(y_train) / batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(3e-3, steps, warmup_target=None)
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=schedule, weight_decay=5e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    best: dict[str, object] = {"val_accuracy": -1.0}

    class KeepBest(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):  # type: ignore[no-untyped-def]
            accuracies = {
                name: float(np.mean(np.argmax(self.model.predict(x, batch_size=128, verbose=0), axis=1) == y_val))
                for name, x in val_x.items()
            }
            accuracy = float(np.mean(list(accuracies.values())))
            shown = ", ".join(f"{name} {value:.3f}" for name, value in accuracies.items())
            print(f"epoch {epoch + 1}: loss {logs['loss']:.3f} train acc {logs['accuracy']:.3f} val acc {shown}")
            if accuracy > float(best["val_accuracy"]):
                best.update(
                    val_accuracy=accuracy, val_accuracy_by_preprocessing=accuracies, epoch=epoch + 1,
                    weights=self.model.get_weights(),
                )  # fmt: skip

    model.fit(train_ds, epochs=epochs, callbacks=[KeepBest()], verbose=0)
    model.set_weights(best.pop("weights"))
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "clothing-model.h5", include_optimizer=False)
    report = {
        "val_accuracy": best["val_accuracy"],
        "best_epoch": best["epoch"],
        "epochs": epochs,
        "input_size": size,
        "val_accuracy_by_preprocessing": best["val_accuracy_by_preprocessing"],
        "train_images": len(y_train),
        "validation_images": len(y_val),
        "parameters": int(model.count_params()),
        "train_seconds": round(time.monotonic() - started, 1),
        "seed": seed,
        "tensorflow": tf.__version__,
        "labels": LABELS,
    }
    (out / "training-report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
