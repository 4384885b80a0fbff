"""The model contract: the one description of what the served model expects and returns.

`model-tools inspect` writes it (JSON) from the SavedModel itself, the chart carries it as its `model:` values
block, and the gateway reads it at start-up. Keys are camelCase so that the JSON pastes into values.yaml as is.

Example::

    {"name": "clothing-model", "signatureName": "serving_default", "inputName": "input_8",
     "outputName": "dense_7", "inputDtype": "float32", "inputSize": [299, 299], "scaling": "xception",
     "labels": ["dress", "hat", ...], "preprocessing": "fast",
     "uint8": {"signatureName": "serving_uint8", "inputName": "pixels"}}

`preprocessing` is the decoding the model was validated with (`model-tools evaluate` measures both; see
model_interface.preprocessing) and the one the gateway serves it with unless GATEWAY_PREPROCESSING says otherwise.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from model_interface.preprocessing import PREPROCESSINGS, SCALINGS

INPUT_DTYPES = ("float32", "uint8")
# A model, signature or tensor name.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.\-/:]+$")
# The classes of the book's clothing dataset, in the order of the model's outputs: the default labels.
BOOK_LABELS = ("dress", "hat", "longsleeve", "outwear", "pants", "shirt", "shoes", "shorts", "skirt", "t-shirt")


class ContractError(ValueError):
    """The contract is missing a field or has an invalid value; the message names the field."""


@dataclass(frozen=True)
class Uint8Signature:
    """An optional extra signature taking uint8 pixels, with the scaling done in-graph (4x smaller requests)."""

    signature_name: str
    input_name: str
    output_name: str


@dataclass(frozen=True)
class ModelContract:
    """Model name, signature, tensor names, input size and dtype, preprocessing and labels."""

    name: str
    signature_name: str
    input_name: str
    output_name: str
    input_size: tuple[int, int]
    labels: tuple[str, ...]
    input_dtype: str = "float32"
    scaling: str = "xception"
    preprocessing: str = "fast"
    uint8: Uint8Signature | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        """The camelCase JSON form (what `model-tools inspect` writes and values.yaml's `model:` holds)."""
        data = asdict(self)
        out: dict[str, Any] = {_camel(key): value for key, value in data.items() if key != "uint8"}
        out["inputSize"] = list(self.input_size)
        out["labels"] = list(self.labels)
        out["uint8"] = {_camel(k): v for k, v in data["uint8"].items()} if self.uint8 else None
        return out

    def to_json(self) -> str:
        """Pretty JSON with a trailing newline."""
        return json.dumps(self.to_dict(), indent=2) + "\n"


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.title() for part in rest)


def _string(data: dict[str, Any], key: str, where: str = "") -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value or not NAME_PATTERN.match(value):
        raise ContractError(f"model contract: {where}{key} must be a non-empty name, got {value!r}")
    return value


def parse_contract(data: Any) -> ModelContract:
    """Validate a decoded contract (dict) and build a ModelContract; raises ContractError naming the field."""
    if not isinstance(data, dict):
        raise ContractError("model contract: expected a JSON object")
    known = {
        "name",
        "signatureName",
        "inputName",
        "outputName",
        "inputDtype",
        "inputSize",
        "scaling",
        "labels",
        "preprocessing",
        "uint8",
    }
    unknown = sorted(set(data) - known)
    if unknown:
        raise ContractError(f"model contract: unknown field(s) {', '.join(unknown)}")
    size = data.get("inputSize")
    if (
        not isinstance(size, list | tuple)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 8192 for v in size)
    ):
        raise ContractError(f"model contract: inputSize must be [height, width] of positive integers, got {size!r}")
    labels = data.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(v, str) and v for v in labels):
        raise ContractError("model contract: labels must be a non-empty list of strings")
    if len(set(labels)) != len(labels):
        raise ContractError("model contract: labels must be unique")
    dtype = data.get("inputDtype", "float32")
    if dtype not in INPUT_DTYPES:
        raise ContractError(f"model contract: inputDtype must be one of {', '.join(INPUT_DTYPES)}, got {dtype!r}")
    scaling = data.get("scaling", "xception")
    if scaling not in SCALINGS:
        raise ContractError(f"model contract: scaling must be one of {', '.join(SCALINGS)}, got {scaling!r}")
    preprocessing = data.get("preprocessing", "fast")
    if preprocessing not in PREPROCESSINGS:
        raise ContractError(
            f"model contract: preprocessing must be one of {', '.join(PREPROCESSINGS)}, got {preprocessing!r}"
        )
    uint8 = data.get("uint8")
    if uint8 is not None:
        if not isinstance(uint8, dict):
            raise ContractError("model contract: uint8 must be an object or null")
        uint8 = Uint8Signature(
            signature_name=_string(uint8, "signatureName", "uint8."),
            input_name=_string(uint8, "inputName", "uint8."),
            output_name=uint8.get("outputName") or _string(data, "outputName"),
        )
    return ModelContract(
        name=_string(data, "name"),
        signature_name=_string(data, "signatureName"),
        input_name=_string(data, "inputName"),
        output_name=_string(data, "outputName"),
        input_size=(size[0], size[1]),
        labels=tuple(labels),
        input_dtype=dtype,
        scaling=scaling,
        preprocessing=preprocessing,
        uint8=uint8,
    )


def parse_contracts(data: Any) -> tuple[ModelContract, ...]:
    """The models one gateway serves: one contract (a JSON object) or several (a non-empty list of them, with
    unique names); the first is the default model."""
    if not isinstance(data, list):
        return (parse_contract(data),)
    if not data:
        raise ContractError("model contracts: the list is empty")
    contracts = []
    for index, item in enumerate(data):
        try:
            contracts.append(parse_contract(item))
        except ContractError as exc:
            raise ContractError(f"[{index}] {exc}") from None
    names = [contract.name for contract in contracts]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ContractError(f"model contracts: each model is listed once, but {', '.join(repeated)} appear twice")
    return tuple(contracts)


def _read_json(path: str | Path) -> Any:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ContractError(f"model contract: cannot read {path}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ContractError(f"model contract: {path} is not valid JSON: {exc}") from None


def load_contract(path: str | Path) -> ModelContract:
    """Read and validate a contract JSON file."""
    return parse_contract(_read_json(path))


def load_contracts(path: str | Path) -> tuple[ModelContract, ...]:
    """Read and validate a JSON file holding one contract or a list of them (`parse_contracts`)."""
    return parse_contracts(_read_json(path))


# The book's own model (Xception at 299x299, saved by tf.keras as .h5, converted with model-tools): what
# `model-tools inspect` reports for it.
BOOK_CONTRACT = ModelContract(
    name="clothing-model",
    signature_name="serving_default",
    input_name="input_8",
    output_name="dense_7",
    input_size=(299, 299),
    labels=BOOK_LABELS,
    preprocessing="exact",  # trained and validated with keras_image_helper
)
