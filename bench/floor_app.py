"""The least a gateway request can cost on the gateway's stack (`python -m bench` loads it; not shipped).

A bare WSGI app for gunicorn's gevent worker doing only what every `{"url": ...}` prediction must: parse the JSON
body, download the image (urllib3, a keep-alive pool), decode and resize it as the gateway does
(`model_interface.preprocessing.image_pixels`, `fast`), send one Predict over gRPC (grpcio on gevent's loop, the
request built by `model_interface.tensors.encode_predict_request`; uint8 pixels when the model has that signature,
scaled float32 otherwise, as the gateway sends) and answer a small JSON. No Flask, validation, limits, metrics, logs,
retries or thread hand-offs: the gateway's CPU per request above this app's is what all of those cost together.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

import grpc
import numpy as np
import urllib3

from model_interface.contract import load_contract
from model_interface.preprocessing import image_pixels, scale
from model_interface.tensors import encode_predict_request, to_ndarray
from model_interface.tfs_protos.tensorflow_serving.apis import model_pb2, predict_pb2


@cache
def _clients() -> tuple[Any, urllib3.PoolManager, grpc.UnaryUnaryMultiCallable]:
    """Created in the worker on the first request, after gevent has patched it (as the gateway does)."""
    from grpc.experimental import gevent as grpc_gevent

    grpc_gevent.init_gevent()
    contract = load_contract(os.environ["GATEWAY_MODEL_CONTRACT_FILE"])
    channel = grpc.insecure_channel(os.environ["TF_SERVING_HOST"])
    predict = channel.unary_unary(
        "/tensorflow.serving.PredictionService/Predict",
        request_serializer=None,
        response_deserializer=predict_pb2.PredictResponse.FromString,
    )
    return contract, urllib3.PoolManager(maxsize=64), predict


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """POST {"url": ...} -> {"top": <label>}; any GET -> 200 (the benchmark's readiness check)."""
    if environ["REQUEST_METHOD"] == "GET":
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]
    contract, pool, predict = _clients()
    url = json.loads(environ["wsgi.input"].read())["url"]
    pixels = image_pixels(pool.request("GET", url).data, contract.input_size, "fast")
    if contract.uint8:  # the smaller request, as the gateway sends when the model has the signature
        signature, tensors = contract.uint8.signature_name, (contract.uint8.input_name, contract.uint8.output_name)
    else:
        signature, tensors = contract.signature_name, (contract.input_name, contract.output_name)
        pixels = scale(pixels, contract.scaling)
    spec = model_pb2.ModelSpec(name=contract.name, signature_name=signature)
    request = encode_predict_request(spec, tensors[0], [pixels], [tensors[1]])
    scores = to_ndarray(predict.future(request, timeout=10).result().outputs[tensors[1]])
    body = json.dumps({"top": contract.labels[int(np.argmax(scores[0]))]}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def refused(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Every POST answered 503 with a fixed JSON body, its request body unread: the least a refusal can cost on the
    gateway's stack (`python -m bench.traffic` compares the gateway's refusals with it)."""
    if environ["REQUEST_METHOD"] == "GET":
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]
    body = b'{"error": {"code": "overloaded"}}'
    start_response(
        "503 SERVICE UNAVAILABLE",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Retry-After", "1")],
    )
    return [body]
