"""`model-tools evaluate`: top-1 and per-class accuracy of a SavedModel on a labelled folder (`<class>/<image>`),
with each of the gateway's preprocessings.

The images go through `model_interface.preprocessing.image_pixels` and `scale`, the functions the gateway serves
with, then the model's serving_default signature; so the accuracy printed is the accuracy served.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_interface.preprocessing import image_pixels, scale
from model_tools.convert import ConvertError
from model_tools.inspect_model import inspect, version_dir

BATCH = 64


@dataclass(frozen=True)
class Accuracy:
    """Correct answers of one preprocessing, overall and per class."""

    preprocessing: str
    correct: dict[str, int]
    total: dict[str, int]

    @property
    def top1(self) -> float:
        return sum(self.correct.values()) / max(1, sum(self.total.values()))

    def of(self, label: str) -> float:
        return self.correct[label] / self.total[label]


def labelled_images(folder: Path, labels: tuple[str, ...]) -> list[tuple[Path, str]]:
    """Every file under `<folder>/<class>/`, sorted; a class folder the model does not know is an error."""
    classes = sorted(path for path in folder.iterdir() if path.is_dir()) if folder.is_dir() else []
    if not classes:
        raise ConvertError(f"{folder}: expected one folder per class, <class>/<image>")
    unknown = [path.name for path in classes if path.name not in labels]
    if unknown:
        raise ConvertError(f"{folder}: class folder(s) {', '.join(unknown)} not among the model's labels")
    return [(image, path.name) for path in classes for image in sorted(path.iterdir()) if image.is_file()]


def evaluate(saved_model: Path, folder: Path, preprocessings: list[str]) -> list[Accuracy]:
    """Accuracy of the model on the folder with each preprocessing, in the order given."""
    import tensorflow as tf

    _, contract = inspect(saved_model)
    images = labelled_images(folder, contract.labels)
    serve = tf.saved_model.load(str(version_dir(saved_model))).signatures[contract.signature_name]
    results = []
    for preprocessing in preprocessings:
        correct = {label: 0 for _, label in images}
        total = dict.fromkeys(correct, 0)
        for start in range(0, len(images), BATCH):
            batch = images[start : start + BATCH]
            pixels = np.stack(
                [image_pixels(path.read_bytes(), contract.input_size, preprocessing) for path, _ in batch]
            )
            x = pixels if contract.input_dtype == "uint8" else scale(pixels, contract.scaling)
            logits = serve(**{contract.input_name: tf.constant(x)})[contract.output_name].numpy()
            for (_, label), index in zip(batch, np.argmax(logits, axis=1), strict=True):
                total[label] += 1
                correct[label] += int(contract.labels[index] == label)
        results.append(Accuracy(preprocessing, correct, total))
    return results


def table(results: list[Accuracy]) -> str:
    """Per-class and top-1 accuracy, one column per preprocessing."""
    labels = list(results[0].total)
    lines = [f"{'class':<14}{'images':>8}" + "".join(f"{r.preprocessing:>10}" for r in results)]
    for label in labels:
        cells = "".join(f"{100 * r.of(label):>9.1f}%" for r in results)
        lines.append(f"{label:<14}{results[0].total[label]:>8}{cells}")
    lines.append(
        f"{'top-1':<14}{sum(results[0].total.values()):>8}" + "".join(f"{100 * r.top1:>9.2f}%" for r in results)
    )
    return "\n".join(lines) + "\n"
