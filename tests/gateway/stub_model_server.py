"""TEST STUB, not a model server: a tiny gRPC (and optionally REST) server speaking TF Serving's API with
deterministic fake logits.

It serves `PredictionService/Predict` and `GetModelMetadata` and `ModelService/GetModelStatus` from the vendored
protos, described by a model contract JSON (model name, signatures, tensor names, input size, labels). The
"model" is `stub_logits`: a fixed linear function of each image's mean colour, so tests can compute the expected
scores, and different images get different winners. It is also the zero-latency model stub the benchmark uses.
With --rest-port it also answers TF Serving's REST routes (`GET /v1/models/<name>`, `.../metadata`,
`POST /v1/models/<name>:predict` in the row `instances` or columnar `inputs` format), strict about types as TF
Serving is: a uint8 input takes integers only.

    python tests/gateway/stub_model_server.py --port=8500 --contract=contract.json [--rest-port=8501]
        [--latency=0.5] [--tensor-content] [--output-size=N] [--status=AVAILABLE|LOADING]

Reads its input independently of the gateway's tensors module (raw tensor_content bytes), so a bug there is not
mirrored here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format

from model_interface.tfs_protos.tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from model_interface.tfs_protos.tensorflow.core.protobuf import meta_graph_pb2
from model_interface.tfs_protos.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

_NUMPY: dict[int, np.dtype] = {types_pb2.DT_FLOAT: np.dtype("<f4"), types_pb2.DT_UINT8: np.dtype("u1")}
_HTTP_STATUS = {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 400}
_REST_ROUTE = re.compile(r"/v1/models/([^/:]+)(/metadata|:predict)?")


class Rejected(Exception):
    """A request the stub refuses, with the gRPC status TF Serving would give."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def stub_logits(batch: np.ndarray, num_labels: int) -> np.ndarray:
    """Fake logits (N, num_labels) from a batch (N, H, W, 3): a fixed linear map of each image's mean colour.

    uint8 pixels are first scaled like Xception (x / 127.5 - 1), so both signatures give the same scores.
    """
    x = batch.astype(np.float64)
    if batch.dtype == np.uint8:
        x = x / 127.5 - 1.0
    means = x.reshape(x.shape[0], -1, 3).mean(axis=1)
    weights = np.random.default_rng(0).normal(size=(3, num_labels)) * 4.0
    bias = np.linspace(0.5, -0.5, num_labels)
    return (means @ weights + bias).astype(np.float32)


def _shape(*dims: int) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims])


class StubModel(prediction_service_pb2_grpc.PredictionServiceServicer, model_service_pb2_grpc.ModelServiceServicer):
    """The servicer; `signatures` maps signature name -> (input name, output name, input dtype enum)."""

    def __init__(self, contract: dict, latency: float, tensor_content: bool, output_size: int, status: str) -> None:
        self.name = contract["name"]
        self.height, self.width = contract["inputSize"]
        self.num_labels = len(contract["labels"])
        self.output_size = output_size or self.num_labels
        self.latency = latency
        self.tensor_content = tensor_content
        self.status = status
        self.predict_calls = 0
        dtype = types_pb2.DT_UINT8 if contract.get("inputDtype") == "uint8" else types_pb2.DT_FLOAT
        self.signatures = {contract["signatureName"]: (contract["inputName"], contract["outputName"], dtype)}
        if contract.get("uint8"):
            uint8 = contract["uint8"]
            output = uint8.get("outputName") or contract["outputName"]
            self.signatures[uint8["signatureName"]] = (uint8["inputName"], output, types_pb2.DT_UINT8)

    def _check_model(self, name: str) -> None:
        if name != self.name:
            raise Rejected(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({name})")

    def run(self, model: str, signature: str, inputs: dict[str, np.ndarray]) -> tuple[str, np.ndarray]:
        """(output name, logits) for a predict request, or Rejected."""
        self.predict_calls += 1
        self._check_model(model)
        signature = signature or "serving_default"
        if signature not in self.signatures:
            raise Rejected(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{signature}" not found.')
        input_name, output_name, dtype = self.signatures[signature]
        if set(inputs) != {input_name}:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"input size does not match signature: {list(inputs)}")
        batch = inputs[input_name]
        if batch.dtype != _NUMPY[dtype]:
            raise Rejected(
                grpc.StatusCode.INVALID_ARGUMENT, f"Expects arg[0] to be {dtype} but {batch.dtype} is provided"
            )
        if batch.ndim != 4 or batch.shape[1:] != (self.height, self.width, 3):
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"bad input shape {list(batch.shape)}")
        if self.latency:
            time.sleep(self.latency)
        logits = stub_logits(batch, self.num_labels)[:, : self.output_size]
        if logits.shape[1] < self.output_size:
            logits = np.pad(logits, ((0, 0), (0, self.output_size - logits.shape[1])))
        return output_name, logits

    def Predict(self, request, context):
        inputs = {}
        for name, tensor in request.inputs.items():
            if tensor.dtype not in _NUMPY:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unsupported dtype {tensor.dtype}")
            dims = [d.size for d in tensor.tensor_shape.dim]
            inputs[name] = np.frombuffer(tensor.tensor_content, dtype=_NUMPY[tensor.dtype]).reshape(dims)
        try:
            output_name, logits = self.run(request.model_spec.name, request.model_spec.signature_name, inputs)
        except Rejected as exc:
            context.abort(exc.code, exc.message)
        out = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=_shape(*logits.shape))
        if self.tensor_content:
            out.tensor_content = logits.astype("<f4").tobytes()
        else:
            out.float_val.extend(logits.ravel().tolist())
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.name
        response.model_spec.version.value = 1
        response.model_spec.signature_name = request.model_spec.signature_name or "serving_default"
        response.outputs[output_name].CopyFrom(out)
        return response

    def signature_map(self) -> get_model_metadata_pb2.SignatureDefMap:
        """The signatures, as GetModelMetadata reports them."""
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for signature, (input_name, output_name, dtype) in self.signatures.items():
            definition = signature_map.signature_def[signature]
            definition.method_name = "tensorflow/serving/predict"
            definition.inputs[input_name].CopyFrom(
                meta_graph_pb2.TensorInfo(
                    name=f"{signature}_{input_name}:0", dtype=dtype, tensor_shape=_shape(-1, self.height, self.width, 3)
                )
            )
            definition.outputs[output_name].CopyFrom(
                meta_graph_pb2.TensorInfo(
                    name="StatefulPartitionedCall:0",
                    dtype=types_pb2.DT_FLOAT,
                    tensor_shape=_shape(-1, self.output_size),
                )
            )
        return signature_map

    def GetModelMetadata(self, request, context):
        if request.model_spec.name != self.name:
            context.abort(
                grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({request.model_spec.name})"
            )
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = self.name
        response.model_spec.version.value = 1
        response.metadata["signature_def"].Pack(self.signature_map())
        return response

    def GetModelStatus(self, request, context):
        if request.model_spec.name != self.name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {request.model_spec.name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        status = response.model_version_status.add()
        status.version = 1
        status.state = get_model_status_pb2.ModelVersionStatus.State.Value(self.status)
        return response


def _rest_array(value: Any, dtype: int, name: str) -> np.ndarray:
    """A JSON input value as an array of the signature's dtype; a uint8 input takes integers only, like TF Serving."""
    array = np.array(value)
    if array.dtype == object or array.dtype.kind not in "iuf":
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"input {name}: not a rectangular array of numbers")
    if dtype == types_pb2.DT_UINT8 and array.dtype.kind == "f":
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"input {name}: JSON Value is not of expected type: uint8")
    return array.astype(_NUMPY[dtype])


class RestHandler(BaseHTTPRequestHandler):
    """TF Serving's REST routes for the stub: status, metadata, predict (rows or columns)."""

    protocol_version = "HTTP/1.1"
    server: RestServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def _send(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._route("GET", b"")

    def do_POST(self) -> None:
        self._route("POST", self.rfile.read(int(self.headers.get("Content-Length") or 0)))

    def _route(self, method: str, body: bytes) -> None:
        model = self.server.model
        match = _REST_ROUTE.fullmatch(self.path)
        try:
            if match is None or (method == "POST") != (match.group(2) == ":predict"):
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"Malformed request: {method} {self.path}")
            name, action = match.groups()
            if action == ":predict":
                return self._send(200, self._predict(name, body))
            if name != model.name:
                raise Rejected(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {name}")
            if action == "/metadata":
                signature_def = json_format.MessageToDict(model.signature_map(), preserving_proto_field_name=True)
                spec = {"name": name, "signature_name": "", "version": "1"}
                return self._send(200, {"model_spec": spec, "metadata": {"signature_def": signature_def}})
            status = {"error_code": "OK", "error_message": ""}
            return self._send(
                200, {"model_version_status": [{"version": "1", "state": model.status, "status": status}]}
            )
        except Rejected as exc:
            return self._send(_HTTP_STATUS.get(exc.code, 400), {"error": exc.message})

    def _predict(self, name: str, raw: bytes) -> dict[str, Any]:
        model = self.server.model
        try:
            body = json.loads(raw)
            signature = body.get("signature_name") or "serving_default"
            columnar = "inputs" in body
            value = body["inputs"] if columnar else body["instances"]
        except (ValueError, KeyError, AttributeError):
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "JSON Parse error or no 'inputs'/'instances'") from None
        if signature not in model.signatures:
            raise Rejected(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{signature}" not found.')
        input_name, _, dtype = model.signatures[signature]
        if columnar and isinstance(value, dict):
            inputs = {key: _rest_array(item, dtype, key) for key, item in value.items()}
        else:
            inputs = {input_name: _rest_array(value, dtype, input_name)}
        self.server.requests.append({"format": "inputs" if columnar else "instances", "bytes": len(raw)})
        _, logits = model.run(name, signature, inputs)
        return {"outputs" if columnar else "predictions": logits.tolist()}


class RestServer(ThreadingHTTPServer):
    """The stub's REST front end; `requests` records each predict's format and size."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], model: StubModel) -> None:
        super().__init__(address, RestHandler)
        self.model = model
        self.requests: list[dict[str, Any]] = []


def serve_rest(port: int, model: StubModel, host: str = "127.0.0.1") -> RestServer:
    """Start the stub's REST API on host:port in a daemon thread (stop it with .shutdown())."""
    server = RestServer((host, port), model)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def serve(port: int, model: StubModel, host: str = "127.0.0.1") -> grpc.Server:
    """Start the stub on host:port (returns the started server)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=[("grpc.so_reuseport", 0)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(model, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(model, server)
    if server.add_insecure_port(f"{host}:{port}") != port:
        raise OSError(f"cannot bind {host}:{port}")
    server.start()
    return server


def main(argv: list[str] | None = None) -> None:
    """Run the stub until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description="TEST STUB of TF Serving's gRPC API with fake logits")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rest-port", type=int, default=0, help="also serve TF Serving's REST API on this port")
    parser.add_argument("--contract", type=Path, required=True, help="model contract JSON")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds each Predict sleeps")
    parser.add_argument("--tensor-content", action="store_true", help="answer in tensor_content, not float_val")
    parser.add_argument("--output-size", type=int, default=0, help="scores per image (default: labels count)")
    parser.add_argument("--status", default="AVAILABLE", choices=["AVAILABLE", "LOADING", "END"])
    args = parser.parse_args(argv)
    model = StubModel(
        json.loads(args.contract.read_text()), args.latency, args.tensor_content, args.output_size, args.status
    )
    server = serve(args.port, model)
    if args.rest_port:
        serve_rest(args.rest_port, model)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"stub model server listening on 127.0.0.1:{args.port}", flush=True)
    stop.wait()
    server.stop(grace=0)
    os._exit(0)  # do not wait for handler threads still sleeping in --latency


if __name__ == "__main__":
    main()
