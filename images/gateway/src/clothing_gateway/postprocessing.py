"""Model outputs -> `{label: score}`, as the book's gateway returns them (raw scores, labels in contract order)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from clothing_gateway.errors import GatewayError


def label_scores(outputs: np.ndarray, labels: Sequence[str], top_k: int | None = None) -> list[dict[str, float]]:
    """One `{label: score}` dict per batch row.

    Scores are the model's raw outputs as Python floats (what `float_val` gives the book's code). Without top_k the
    labels keep the contract's order; with it, only the top_k highest scores are kept, highest first.
    """
    rows = outputs.reshape(outputs.shape[0], -1) if outputs.ndim > 0 else outputs.reshape(1, -1)
    if rows.shape[1] != len(labels):
        raise GatewayError(
            "model_error", f"the model returned {rows.shape[1]} scores per image, the contract has {len(labels)} labels"
        )
    if not np.isfinite(rows).all():
        raise GatewayError("model_error", "the model returned a non-finite score (NaN or infinity)")
    if top_k is None:
        return [dict(zip(labels, row, strict=True)) for row in rows.tolist()]
    best = np.argsort(-rows, axis=1, kind="stable")[:, :top_k]
    return [{labels[i]: float(row[i]) for i in order} for row, order in zip(rows, best.tolist(), strict=True)]
