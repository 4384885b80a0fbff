"""Model outputs -> {label: score} exactly like the book's gateway (raw floats, every label)."""

from __future__ import annotations

import numpy as np
import pytest

from clothing_gateway.errors import GatewayError
from clothing_gateway.postprocessing import label_scores
from tests.gateway.conftest import LABELS

BOOK_LOGITS = [-1.868, -4.761, -2.316, -1.062, 9.887, -2.812, -3.666, 3.2, -2.602, -4.835]


def test_book_format() -> None:
    outputs = np.array([BOOK_LOGITS], dtype=np.float32)
    [scores] = label_scores(outputs, LABELS)
    assert list(scores) == LABELS
    assert scores == {label: float(np.float32(v)) for label, v in zip(LABELS, BOOK_LOGITS, strict=True)}
    assert all(type(value) is float for value in scores.values())
    assert max(scores, key=lambda label: scores[label]) == "pants"


def test_top_k_keeps_the_best_first() -> None:
    [scores] = label_scores(np.array([BOOK_LOGITS], dtype=np.float32), LABELS, top_k=3)
    assert list(scores) == ["pants", "shorts", "outwear"]


def test_batch_rows_stay_in_order() -> None:
    outputs = np.eye(3, len(LABELS), dtype=np.float32)
    result = label_scores(outputs, LABELS, top_k=1)
    assert result == [{"dress": 1.0}, {"hat": 1.0}, {"longsleeve": 1.0}]


def test_wrong_output_size_is_a_model_error() -> None:
    with pytest.raises(GatewayError, match="5 scores per image, the contract has 10 labels") as caught:
        label_scores(np.zeros((1, 5), dtype=np.float32), LABELS)
    assert caught.value.code == "model_error"


def test_non_finite_scores_are_a_model_error() -> None:
    outputs = np.zeros((1, len(LABELS)), dtype=np.float32)
    outputs[0, 3] = np.nan
    with pytest.raises(GatewayError, match="non-finite"):
        label_scores(outputs, LABELS)
