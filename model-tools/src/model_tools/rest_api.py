"""REST front end of the stand-in model server, following TF Serving's http_rest_api_handler.cc: the same routes
(case-insensitive `/v1/...`), JSON formats (row `instances` / columnar `inputs`), status codes and error texts."""

from __future__ import annotations

import base64
import json
import re
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from google.protobuf import json_format

from model_interface.tfs_protos.tensorflow.core.example import example_pb2, feature_pb2
from model_interface.tfs_protos.tensorflow_serving.apis import classification_pb2, input_pb2, regression_pb2
from model_tools import inference
from model_tools.servable import ServingError, Signature, status_code

if TYPE_CHECKING:
    from model_tools.server import ModelServer

PREDICT_ROUTE = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)"
)
STATUS_ROUTE = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?")
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
FEATURE_KINDS = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}
NOT_FOUND_HTML = b"<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n</BODY></HTML>\n"


def jsonable(array: np.ndarray) -> Any:
    """A numpy array as JSON values: bytes as text (or {"b64": ...} for `_bytes` aliases is the caller's job)."""
    if array.dtype.kind in "OS":
        return np.vectorize(lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else v, otypes=[object])(
            array
        ).tolist()
    return array.tolist()


def dumps(data: Any) -> bytes:
    """JSON like TF Serving writes it (NaN and Infinity as raw tokens)."""
    return json.dumps(data, allow_nan=True, separators=(",", ":")).encode()


def _bad(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _decode_value(value: Any) -> Any:
    """{"b64": "..."} -> bytes, recursively; everything else as is."""
    if isinstance(value, dict) and set(value) == {"b64"}:
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (ValueError, TypeError):
            raise _bad("Unable to base64 decode") from None
    if isinstance(value, list):
        return [_decode_value(v) for v in value]
    return value


def _to_array(value: Any, signature: Signature, alias: str) -> np.ndarray:
    info = signature.inputs[alias]
    dtype = info.numpy_dtype
    value = _decode_value(value)
    try:
        array = np.array(value, dtype=object)
    except ValueError:
        raise _bad(f"Failed to process input {alias}: values must form a rectangular array") from None
    flat = array.reshape(-1)
    type_name = "string" if dtype.kind == "O" else {"f": "float", "u": "uint", "i": "int", "b": "bool"}[dtype.kind]
    for item in flat:
        ok = (
            isinstance(item, bytes | str)
            if dtype.kind == "O"
            else isinstance(item, int | float) and not isinstance(item, bool)
            if dtype.kind in "fiu"
            else isinstance(item, bool)
        )
        if not ok:
            raise _bad(
                f"JSON Value: {json.dumps(item, default=str)} Type: {type(item).__name__} "
                f"is not of expected type: {type_name}"
            )
    if dtype.kind == "O":
        return np.array([v.encode() if isinstance(v, str) else v for v in flat], dtype=object).reshape(array.shape)
    return array.astype(dtype)


def parse_predict_body(body: dict[str, Any], signature: Signature) -> tuple[dict[str, np.ndarray], bool]:
    """Inputs from a :predict body; returns (inputs, row_format)."""
    has_instances, has_inputs = "instances" in body, "inputs" in body
    if has_instances == has_inputs:
        raise _bad(
            "Missing 'inputs' or 'instances' key"
            if not has_instances
            else "Not both 'instances' and 'inputs' can be specified"
        )
    names = sorted(signature.inputs)
    if has_inputs:
        columns = body["inputs"]
        if isinstance(columns, dict) and set(columns) != {"b64"}:
            missing = [n for n in names if n not in columns]
            if missing:
                raise _bad(f"Missing named input: {missing[0]} in 'inputs' object.")
            return {n: _to_array(columns[n], signature, n) for n in names}, False
        if len(names) != 1:
            raise _bad("inputs is a plain value but the signature has more than one input")
        return {names[0]: _to_array(columns, signature, names[0])}, False
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise _bad("'instances' must be a non-empty list")
    rows: dict[str, list[Any]] = {n: [] for n in names}
    for index, item in enumerate(instances):
        if isinstance(item, dict) and set(item) != {"b64"}:
            for key in item:
                if key not in signature.inputs:
                    raise _bad(
                        f"Failed to process element: {index} key: {key} of 'instances' list. Error: INVALID_ARGUMENT: "
                        f"JSON object: does not have named input: {key}"
                    )
            for n in names:
                if n not in item:
                    raise _bad(
                        f"Failed to process element: {index} of 'instances' list. Error: INVALID_ARGUMENT: "
                        f"JSON object: does not have named input: {n}"
                    )
                rows[n].append(item[n])
        elif len(names) == 1:
            rows[names[0]].append(item)
        else:
            raise _bad(
                f"Failed to process element: {index} of 'instances' list. "
                "JSON object expected for multi-input signature"
            )
    return {n: _to_array(rows[n], signature, n) for n in names}, True


def _output_json(outputs: dict[str, np.ndarray], row_format: bool) -> dict[str, Any]:
    def encode(alias: str, array: np.ndarray) -> Any:
        if alias.endswith("_bytes") and array.dtype.kind == "O":
            return np.vectorize(lambda v: {"b64": base64.b64encode(v).decode()}, otypes=[object])(array).tolist()
        return jsonable(array)

    if row_format:
        if len(outputs) == 1:
            ((alias, array),) = outputs.items()
            return {"predictions": encode(alias, array)}
        count = next(iter(outputs.values())).shape[0]
        return {"predictions": [{a: encode(a, v[i]) for a, v in outputs.items()} for i in range(count)]}
    if len(outputs) == 1:
        ((alias, array),) = outputs.items()
        return {"outputs": encode(alias, array)}
    return {"outputs": {a: encode(a, v) for a, v in outputs.items()}}


def make_handler(server: ModelServer) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to a ModelServer."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "clothing-model-server"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, exc: ServingError) -> None:
            self._send(HTTP_STATUS.get(exc.code, 500), dumps({"error": exc.message}))

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

        def _route(self, method: str) -> None:
            path = self.path.split("?", 1)[0]
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if server.metrics_path and path == server.metrics_path and method == "GET":
                return self._send(200, server.metrics.render().encode(), "text/plain; version=0.0.4")
            if not re.match(r"(?i)/v1/", path):
                return self._send(404, NOT_FOUND_HTML, "text/html")
            try:
                if method == "POST" and (match := PREDICT_ROUTE.fullmatch(path)):
                    return self._predict(match, body)
                if method == "GET" and (match := STATUS_ROUTE.fullmatch(path)):
                    return self._status(match)
                raise _bad(f"Malformed request: {method} {path}")
            except ServingError as exc:
                return self._error(exc)

        def _status(self, match: re.Match[str]) -> None:
            name, version, label, metadata = match.groups()
            if not name:
                raise _bad("Missing model name in request.")
            if metadata:
                loaded = server.models.resolve(name, int(version) if version else None, label)
                defs = {
                    k: json_format.MessageToDict(
                        v, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
                    )
                    for k, v in loaded.signature_defs.items()
                }
                return self._send(
                    200,
                    dumps(
                        {
                            "model_spec": {"name": name, "signature_name": "", "version": str(loaded.version)},
                            "metadata": {"signature_def": {"signature_def": defs}},
                        }
                    ),
                )
            statuses = server.models.model_status(name, int(version) if version else None)
            return self._send(
                200,
                dumps(
                    {
                        "model_version_status": [
                            {
                                "version": str(s.version),
                                "state": s.state,
                                "status": {
                                    "error_code": grpc.StatusCode.OK.name
                                    if s.error_code == 0
                                    else status_code(s.error_code).name,
                                    "error_message": s.error_message,
                                },
                            }
                            for s in statuses
                        ]
                    }
                ),
            )

        def _predict(self, match: re.Match[str], raw: bytes) -> None:
            name, version_text, label, verb = match.groups()
            version = int(version_text) if version_text else None
            if not raw.strip():
                raise _bad("JSON Parse error: The document is empty")
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise _bad(f"JSON Parse error: {exc.msg if hasattr(exc, 'msg') else exc}") from None
            if not isinstance(body, dict):
                raise _bad("JSON Parse error: the request body must be a JSON object")
            if verb.lower() != "predict":
                return self._send(200, dumps(_infer(server, verb.lower(), name, version, label, body)))
            loaded = server.models.resolve(name, version, label)
            key = body.get("signature_name") or "serving_default"
            signature = loaded.signatures.get(key)
            if signature is None:
                raise _bad(f'Serving signature name: "{key}" not found in signature def')
            inputs, row_format = parse_predict_body(body, signature)
            _, outputs = server.predict(name, version, label, key, inputs, [], "REST")
            return self._send(200, dumps(_output_json(outputs, row_format)))

    return Handler


def _infer(
    server: ModelServer, verb: str, name: str, version: int | None, label: str | None, body: dict[str, Any]
) -> dict[str, Any]:
    """A :classify or :regress call: the body's examples run as the gRPC request TF Serving makes of them."""
    signature_name, examples = parse_examples_body(body)
    request_class = classification_pb2.ClassificationRequest if verb == "classify" else regression_pb2.RegressionRequest
    request = request_class(input=examples)
    request.model_spec.name = name
    request.model_spec.signature_name = signature_name
    if verb == "classify":
        _, response = server.call(
            verb, "REST", name, version, label, lambda loaded: inference.classify(loaded, request)
        )
        return {
            "results": [
                [[entry.label, entry.score] for entry in classifications.classes]
                for classifications in response.result.classifications
            ]
        }
    _, response = server.call(verb, "REST", name, version, label, lambda loaded: inference.regress(loaded, request))
    return {"results": [regression.value for regression in response.result.regressions]}


def _json_type(value: Any) -> str:
    """The JSON type's name as TF Serving's errors give it."""
    if value is None or isinstance(value, bool):
        return str(value).replace("None", "Null")
    names: dict[type, str] = {dict: "Object", list: "Array", str: "String"}
    return names.get(type(value), "Number")


def _add_to_feature(value: Any, name: str, feature: feature_pb2.Feature) -> None:
    """One JSON value appended to a tf.train.Feature as TF Serving's AddValueToFeature does."""
    append: int | float | bytes
    if isinstance(value, bool):
        kind, append = "int64_list", int(value)
    elif isinstance(value, str):
        kind, append = "bytes_list", value.encode()
    elif isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        kind, append = "bytes_list", _decode_value(value)
    elif isinstance(value, float):
        kind, append = "float_list", value
    elif isinstance(value, int):
        if value >= 2**63:
            raise _bad(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
        kind, append = "int64_list", value
    else:
        raise _bad(f"Feature: {name} has element with unexpected JSON type: {_json_type(value)}")
    existing = feature.WhichOneof("kind")
    if existing not in (None, kind):
        raise _bad(f"Unexpected element type in feature: {name} expecting type: {FEATURE_KINDS[existing]}")
    getattr(feature, kind).value.append(append)


def _example(value: Any) -> example_pb2.Example:
    if not isinstance(value, dict):
        raise _bad(f"Example must be JSON object but got JSON {_json_type(value)}")
    example = example_pb2.Example()
    for name, content in value.items():
        feature = example.features.feature[name]
        for item in content if isinstance(content, list) else [content]:
            _add_to_feature(item, name, feature)
    return example


def parse_examples_body(body: dict[str, Any]) -> tuple[str, input_pb2.Input]:
    """The signature name and the Input of a :classify or :regress body ({"signature_name", "context", "examples"}),
    with TF Serving's error texts (FillClassifyRegressRequestFromJson)."""
    document = json.dumps(body, separators=(",", ":"))
    signature_name = body.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise _bad(f"JSON Value: {document} not formatted correctly. 'signature_name' key must be a string value.")
    request_input = input_pb2.Input()
    if "context" in body:
        request_input.example_list_with_context.context.CopyFrom(_example(body["context"]))
    if "examples" not in body:  # TF Serving says "classify" for :regress too
        raise _bad(f"JSON Value: {document} When method is classify, key 'examples' is expected and was not found")
    examples = body["examples"]
    if not isinstance(examples, list):
        raise _bad(f"JSON Value: {document} Expecting 'examples' value to be an list/array")
    if not examples:
        raise _bad(f"JSON Value: {document} 'examples' value is an empty array")
    parsed = [_example(value) for value in examples]
    if "context" in body:
        request_input.example_list_with_context.examples.extend(parsed)
    else:
        request_input.example_list.examples.extend(parsed)
    return signature_name, request_input
