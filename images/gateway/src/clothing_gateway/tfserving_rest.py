"""REST client for TF Serving's HTTP API: the API KServe's stock `kserve-tensorflow-serving` runtime gives a transformer
(`http://<isvc>-predictor.<ns>` port 80 -> TF Serving's `--rest_api_port=8080`).

- Predict: `POST /v1/models/<name>:predict` in the columnar format, `{"signature_name": ..., "inputs": {<input>:
  <nested list>}}`, answered by `{"outputs": ...}`.
- Readiness: `GET /v1/models/<name>` (a version AVAILABLE), then `GET /v1/models/<name>/metadata` (the signatures,
  checked against the contract, or read for the tensor names).

Request size: JSON has no binary numbers (TF Serving's `{"b64": ...}` is for string tensors only), so the most
compact request is the uint8 signature's pixels as integers, about 1.1 MB for a 299x299 image, chosen whenever the
contract has a uint8 signature (GATEWAY_USE_UINT8). Floats are written as their shortest float32 form (about 3 MB,
where Python's own floats take 5.7 MB, what the book's transformer sends). gRPC sends the same image in 268 KB.

One connection pool per process, created on first use after the fork. Connection failures and HTTP 503 are retried
twice with jittered exponential backoff within the request's deadline, as UNAVAILABLE is over gRPC.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import urllib3
from google.protobuf import json_format
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ProtocolError, ReadTimeoutError

from clothing_gateway import USER_AGENT
from clothing_gateway.errors import GatewayError
from clothing_gateway.tfserving import PredictorClient
from model_interface.contract import ModelContract
from model_interface.tfs_protos.tensorflow_serving.apis import get_model_metadata_pb2

log = logging.getLogger(__name__)

MAX_CONNECT_SECONDS = 5.0
MAX_ERROR_CHARS = 500
# TF Serving's HTTP statuses (http_rest_api_handler's mapping of gRPC codes) -> the gateway's error codes.
_UNAVAILABLE_STATUSES = frozenset({404, 429, 503})  # NOT_FOUND, RESOURCE_EXHAUSTED, UNAVAILABLE


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
        log.warning("model server unavailable: HTTP %d: %s", status, detail)
        return GatewayError(code, f"the model server is unavailable (HTTP {status}); retry later")
    if code == "deadline_exceeded":
        return GatewayError(code, f"the model server did not answer within {timeout:g} s")
    return GatewayError(code, f"the model server answered HTTP {status}: {detail}")


class RestModelServerClient(PredictorClient):
    """Predict, model status and metadata over TF Serving's REST API at `base_url` (`http://host[:port]`)."""

    def __init__(
        self,
        base_url: str,
        contract: ModelContract,
        *,
        use_uint8: bool = True,
        discover_tensor_names: bool = False,
        max_attempts: int = 3,
        backoff_seconds: float = 0.1,
        max_connections: int = 16,
        on_retry: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(base_url, contract, use_uint8=use_uint8, discover_tensor_names=discover_tensor_names)
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.max_connections = max_connections
        self.on_retry = on_retry
        self._lock = threading.Lock()
        self._pool: urllib3.PoolManager | None = None
        self._pid = 0

    def _connections(self) -> urllib3.PoolManager:
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                self._pool = urllib3.PoolManager(
                    num_pools=2, maxsize=self.max_connections, retries=False, headers={"User-Agent": USER_AGENT}
                )
                self._pid = os.getpid()
            return self._pool

    def close(self) -> None:
        """Close the pooled connections (a later call opens new ones)."""
        with self._lock:
            if self._pool is not None and self._pid == os.getpid():
                self._pool.clear()
            self._pool = None

    def _request(self, method: str, path: str, body: bytes | None, timeout: float) -> tuple[int, bytes]:
        """(status, body) of one call within `timeout` seconds; connection failures and 503 are retried."""
        deadline = time.monotonic() + timeout
        headers = {"Content-Type": "application/json"} if body is not None else {}
        failure: tuple[str, str] | None = None  # (kind, details) of the last connection failure
        unavailable_answer: tuple[int, bytes] | None = None
        for attempt in range(self.max_attempts):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                response = self._connections().request(
                    method,
                    self.target + path,
                    body=body,
                    headers=headers,
                    timeout=urllib3.Timeout(connect=min(MAX_CONNECT_SECONDS, remaining), read=remaining),
                    redirect=False,
                )
            except ReadTimeoutError:
                raise GatewayError(
                    "deadline_exceeded", f"the model server did not answer within {timeout:g} s"
                ) from None
            except (NewConnectionError, ConnectTimeoutError, ProtocolError) as exc:
                failure, unavailable_answer = (type(exc).__name__, str(exc)), None
            else:
                if response.status != 503:
                    return response.status, response.data
                failure, unavailable_answer = None, (response.status, response.data)
            pause = self.backoff_seconds * 2**attempt * random.uniform(0.5, 1.0)  # noqa: S311 (jitter)
            if attempt == self.max_attempts - 1 or time.monotonic() + pause >= deadline:
                break
            details = failure[1] if failure else f"HTTP 503: {_error_text(response.data)}"
            log.info("model server unavailable, retrying in %.2f s", pause, extra={"details": details})
            if self.on_retry is not None:
                self.on_retry()
            time.sleep(pause)
        if unavailable_answer is not None:
            return unavailable_answer
        if failure is None:
            raise GatewayError("deadline_exceeded", f"the model server did not answer within {timeout:g} s")
        kind, details = failure
        log.log(logging.WARNING if body is not None else logging.INFO, "model server unavailable: %s", details)
        raise GatewayError("model_unavailable", f"the model server is unavailable ({kind}); retry later")

    def _get_json(self, path: str, timeout: float) -> Any:
        status, data = self._request("GET", path, None, timeout)
        if status != 200:
            raise GatewayError(_error_code(status), f"HTTP {status}: {_error_text(data)}")
        try:
            return json.loads(data)
        except ValueError:
            raise GatewayError("model_error", f"the model server answered {path} with invalid JSON") from None

    def predict(self, images: list[np.ndarray], timeout: float) -> np.ndarray:
        """Run the signature on `images` with one columnar predict request (see PredictorClient.predict)."""
        signature = self.signature
        rows = len(images)
        body = b'{"signature_name":%s,"inputs":{%s:%s}}' % (
            json.dumps(signature.name).encode(),
            json.dumps(signature.input_name).encode(),
            json_tensor(np.stack(images)),
        )
        images.clear()
        status, data = self._request("POST", f"/v1/models/{self.contract.name}:predict", body, timeout)
        if status != 200:
            raise _predict_error(status, data, timeout)
        try:
            outputs = json.loads(data)["outputs"]
        except (ValueError, KeyError, TypeError):
            raise GatewayError("model_error", "the model server's answer has no outputs") from None
        if isinstance(outputs, dict):  # a signature with several outputs answers each by name
            if signature.output_name not in outputs:
                got = ", ".join(sorted(outputs)) or "none"
                raise GatewayError(
                    "model_error", f'the model server answered without output "{signature.output_name}" (got: {got})'
                )
            outputs = outputs[signature.output_name]
        try:
            array = np.asarray(outputs, dtype=np.float32)
        except (ValueError, TypeError):
            raise GatewayError("model_error", "cannot read the model output: not an array of numbers") from None
        return self._checked_outputs(array, rows)

    def model_versions(self, timeout: float) -> list[tuple[int, str]]:
        """`GET /v1/models/<name>`: every version of the model and its state."""
        answer = self._get_json(f"/v1/models/{self.contract.name}", timeout)
        try:
            return [(int(item["version"]), str(item["state"])) for item in answer["model_version_status"]]
        except (KeyError, TypeError, ValueError):
            raise GatewayError("model_error", "the model server's status answer has no model_version_status") from None

    def signature_defs(self, timeout: float) -> Mapping[str, Any]:
        """`GET /v1/models/<name>/metadata`: the served signatures, as the protos the gRPC API returns."""
        answer = self._get_json(f"/v1/models/{self.contract.name}/metadata", timeout)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        try:
            json_format.ParseDict(answer["metadata"]["signature_def"], signature_map, ignore_unknown_fields=True)
        except (KeyError, TypeError, json_format.ParseError):
            raise GatewayError("model_error", "the model server's metadata has no readable signature_def") from None
        return signature_map.signature_def
