"""REST client for TF Serving's HTTP API: the API KServe's stock `kserve-tensorflow-serving` runtime gives a transformer
(`http://<isvc>-predictor.<ns>` port 80 -> TF Serving's `--rest_api_port=8080`).

- Predict: `POST /v1/models/<name>[/versions/<n>|/labels/<label>]:predict` in the columnar format,
  `{"signature_name": ..., "inputs": {<input>: <nested list>}}`, answered by `{"outputs": ...}`.
- Readiness: `GET /v1/models/<name>` (a version AVAILABLE), then `GET /v1/models/<name>/metadata` (the signatures,
  checked against the contract, or read for the tensor names).

Request size: JSON has no binary numbers (TF Serving's `{"b64": ...}` is for string tensors only), so the most
compact request is the uint8 signature's pixels as integers, about 1.1 MB for a 299x299 image, chosen whenever the
contract has a uint8 signature (GATEWAY_USE_UINT8). Floats are written as their shortest float32 form (about 3 MB,
where Python's own floats take 5.7 MB, what the book's transformer sends). gRPC sends the same image in 268 KB.

One connection pool per process (shared by the models' predictors), created on first use after the fork.
Connection failures and HTTP 503 are retried twice within the request's deadline (`Predictor`'s backoff), as
UNAVAILABLE is over gRPC.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import numpy as np
import urllib3
from google.protobuf import json_format
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ProtocolError, ReadTimeoutError

from clothing_gateway import USER_AGENT
from clothing_gateway.errors import GatewayError
from clothing_gateway.per_process import PerProcess
from clothing_gateway.predictor.base import (
    LATEST,
    UNKNOWN_LABEL,
    EncodedBatch,
    Predictor,
    Retryable,
    VersionChoice,
    deadline_exceeded,
    missing_output,
    unavailable,
    version_not_found,
)
from clothing_gateway.predictor.signature import ResolvedContract
from model_interface.contract import ModelContract
from model_interface.tfs_protos.tensorflow_serving.apis import get_model_metadata_pb2

log = logging.getLogger(__name__)

MAX_CONNECT_SECONDS = 5.0
MAX_ERROR_CHARS = 500
# TF Serving's HTTP statuses (http_rest_api_handler's mapping of gRPC codes) -> the gateway's error codes.
_UNAVAILABLE_STATUSES = frozenset({404, 429, 503})  # NOT_FOUND, RESOURCE_EXHAUSTED, UNAVAILABLE


class _Answer503(Exception):
    """TF Serving answered 503 (UNAVAILABLE) to every attempt: the last answer, for the caller to read."""

    def __init__(self, data: bytes) -> None:
        super().__init__("HTTP 503")
        self.data = data


def json_tensor(array: np.ndarray) -> bytes:
    """`array` (uint8 or float) as a JSON nested list, compactly: no spaces, floats in their shortest float32 form.

    Vectorized: each element becomes its text plus the separator that follows it (`,` or `],[` ... when it closes
    dimensions), looked up in a small table of byte strings; about 3x faster than `json.dumps(array.tolist())`.
    """
    ndim = array.ndim
    if array.dtype == np.uint8:
        texts, codes = [str(value) for value in range(256)], array.reshape(-1).astype(np.intp)
    else:
        values, inverse = np.unique(array.astype(np.float32), return_inverse=True)
        texts = [np.format_float_positional(value, unique=True, trim="0") for value in values]
        codes = inverse.reshape(-1)
    separators = [","] + ["]" * closed + "," + "[" * closed for closed in range(1, ndim)]
    entries = [(text + separator).encode() for text in texts for separator in separators]
    width = max(map(len, entries))
    table = np.zeros((len(entries), width), np.uint8)
    lengths = np.array([len(entry) for entry in entries], np.intp)
    for row, entry in enumerate(entries):
        table[row, : len(entry)] = np.frombuffer(entry, np.uint8)
    closed_dims = np.zeros(array.shape, np.intp)  # how many dimensions each element is the last one of
    for closed in range(1, ndim):
        closed_dims[(slice(None),) * (ndim - closed) + (-1,) * closed] += 1
    index = codes * ndim + closed_dims.reshape(-1)
    body = table[index][np.arange(width) < lengths[index][:, None]].tobytes()
    return b"[" * ndim + body[: len(body) - len(separators[-1])] + b"]" * ndim


def _error_text(data: bytes) -> str:
    """TF Serving's `{"error": "..."}` message, or the start of whatever the body is."""
    try:
        message = json.loads(data).get("error")
    except (ValueError, AttributeError):
        message = None
    text = message if isinstance(message, str) else data.decode("utf-8", "replace")
    return text.strip()[:MAX_ERROR_CHARS]


def _error_code(status: int) -> str:
    """The gateway's error code for a non-200 answer of TF Serving."""
    if status in _UNAVAILABLE_STATUSES:
        return "model_unavailable"
    return "deadline_exceeded" if status == 504 else "model_error"


def _predict_error(status: int, data: bytes, timeout: float) -> GatewayError:
    """The client-facing error for a failed predict (server details are logged, not returned, when unavailable)."""
    code, detail = _error_code(status), _error_text(data)
    if code == "model_unavailable":
        return unavailable(f"HTTP {status}", detail)
    if code == "deadline_exceeded":
        return deadline_exceeded(timeout)
    return GatewayError(code, f"the model server answered HTTP {status}: {detail}")


def connection(max_connections: int = 16) -> PerProcess[urllib3.PoolManager]:
    """A connection pool per process to TF Serving, shared by the predictors of all the models it serves."""
    return PerProcess(
        lambda: urllib3.PoolManager(
            num_pools=2, maxsize=max_connections, retries=False, headers={"User-Agent": USER_AGENT}
        ),
        lambda pool: pool.clear(),
    )


def _version_path(choice: VersionChoice) -> str:
    if choice.number is not None:
        return f"/versions/{choice.number}"
    return f"/labels/{quote(choice.label, safe='')}" if choice.label else ""


class RestPredictor(Predictor):
    """Predict, model status and metadata over TF Serving's REST API at `target` (`http://host[:port]`), on its own
    connection pool or on one `shared` with the predictors of the other models TF Serving serves."""

    def __init__(
        self,
        target: str,
        contract: ModelContract,
        *,
        shared: PerProcess[urllib3.PoolManager] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(target, contract, **options)
        self._pool = shared or connection()

    def close(self) -> None:
        self._pool.close()

    def _attempt(self, method: str, path: str, body: bytes | None, remaining: float) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            response = self._pool.get().request(
                method,
                self.target + path,
                body=body,
                headers=headers,
                timeout=urllib3.Timeout(connect=min(MAX_CONNECT_SECONDS, remaining), read=remaining),
                redirect=False,
            )
        except (NewConnectionError, ConnectTimeoutError, ProtocolError) as exc:
            raise Retryable(exc, type(exc).__name__, str(exc)) from None
        if response.status == 503:
            raise Retryable(_Answer503(response.data), "HTTP 503", _error_text(response.data))
        return response.status, response.data

    def _request(self, method: str, path: str, body: bytes | None, timeout: float) -> tuple[int, bytes]:
        """(status, body) of one call within `timeout` seconds; connection failures and 503 are retried."""
        try:
            return self._with_retries(lambda remaining: self._attempt(method, path, body, remaining), timeout)
        except _Answer503 as answer:
            return 503, answer.data
        except ReadTimeoutError:
            raise deadline_exceeded(timeout) from None
        except (NewConnectionError, ConnectTimeoutError, ProtocolError) as exc:
            raise unavailable(type(exc).__name__, str(exc), quiet=body is None) from None

    def _get_json(self, path: str, timeout: float) -> Any:
        status, data = self._request("GET", path, None, timeout)
        if status != 200:
            raise GatewayError(_error_code(status), f"HTTP {status}: {_error_text(data)}")
        try:
            return json.loads(data)
        except ValueError:
            raise GatewayError("model_error", f"the model server answered {path} with invalid JSON") from None

    def encode(
        self, resolved: ResolvedContract, images: Sequence[np.ndarray], choice: VersionChoice = LATEST
    ) -> EncodedBatch:
        """The columnar request: `{"signature_name": ..., "inputs": {<input>: <nested list>}}`."""
        signature = resolved.signature
        body = b'{"signature_name":%s,"inputs":{%s:%s}}' % (
            json.dumps(signature.name).encode(),
            json.dumps(signature.input_name).encode(),
            json_tensor(np.stack(images)),
        )
        return EncodedBatch(body, len(images), choice)

    def with_choice(self, resolved: ResolvedContract, batch: EncodedBatch, choice: VersionChoice) -> EncodedBatch:
        """The version is in the URL: the body stays."""
        return EncodedBatch(batch.body, batch.rows, choice)

    def send(self, resolved: ResolvedContract, batch: EncodedBatch, timeout: float) -> np.ndarray:
        name, choice = resolved.contract.name, batch.choice
        status, data = self._request("POST", f"/v1/models/{name}{_version_path(choice)}:predict", batch.body, timeout)
        if (status == 404 and choice.number is not None) or (
            status == 400 and choice.label and _error_text(data).startswith(UNKNOWN_LABEL)
        ):
            raise version_not_found(name, choice)
        if status != 200:
            raise _predict_error(status, data, timeout)
        try:
            outputs = json.loads(data)["outputs"]
        except (ValueError, KeyError, TypeError):
            raise GatewayError("model_error", "the model server's answer has no outputs") from None
        output_name = resolved.signature.output_name
        if isinstance(outputs, dict):  # a signature with several outputs answers each by name
            if output_name not in outputs:
                raise missing_output(output_name, list(outputs))
            outputs = outputs[output_name]
        try:
            return np.asarray(outputs, dtype=np.float32)
        except (ValueError, TypeError):
            raise GatewayError("model_error", "cannot read the model output: not an array of numbers") from None

    def model_versions(self, timeout: float) -> list[tuple[int, str]]:
        """`GET /v1/models/<name>`: every version of the model and its state."""
        answer = self._get_json(f"/v1/models/{self.contract.name}", timeout)
        try:
            return [(int(item["version"]), str(item["state"])) for item in answer["model_version_status"]]
        except (KeyError, TypeError, ValueError):
            raise GatewayError("model_error", "the model server's status answer has no model_version_status") from None

    def signature_defs(self, timeout: float, choice: VersionChoice = LATEST) -> Mapping[str, Any]:
        """`GET /v1/models/<name>[/versions/<n>|/labels/<l>]/metadata`: the chosen version's signatures, as the
        protos the gRPC API returns."""
        answer = self._get_json(f"/v1/models/{self.contract.name}{_version_path(choice)}/metadata", timeout)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        try:
            json_format.ParseDict(answer["metadata"]["signature_def"], signature_map, ignore_unknown_fields=True)
        except (KeyError, TypeError, json_format.ParseError):
            raise GatewayError("model_error", "the model server's metadata has no readable signature_def") from None
        return signature_map.signature_def
