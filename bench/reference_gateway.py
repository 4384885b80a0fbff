"""REFERENCE PATH for the benchmark, not part of the product: the book's gateway (chapter 9) as written there.

It imports all of TensorFlow to call `tf.make_tensor_proto`, preprocesses with keras_image_helper (which downloads
the URL with urllib, without timeout or size limit), creates its channel at import time and answers
`{label: score}` from `float_val`. Only the tensor names, input size and labels come from the same contract file
as the gateway's (the book hard-codes `input_8`, `dense_7`, 299x299), so both paths call the same model.

Run under the project venv (it has TensorFlow): `gunicorn -c images/gateway/gunicorn.conf.py
bench.reference_gateway:app`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import grpc
import tensorflow as tf
from flask import Flask, jsonify, request
from keras_image_helper import create_preprocessor
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

contract = json.loads(Path(os.environ["GATEWAY_MODEL_CONTRACT_FILE"]).read_text())
host = os.getenv("TF_SERVING_HOST", "localhost:8500")
channel = grpc.insecure_channel(host)
stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
height, width = contract["inputSize"]
preprocessor = create_preprocessor("xception", target_size=(width, height))
classes = contract["labels"]


def np_to_protobuf(data: Any) -> Any:
    """The book's conversion: all of TensorFlow for one protobuf."""
    return tf.make_tensor_proto(data, shape=data.shape)


def prepare_request(X: Any) -> Any:
    """The book's PredictRequest."""
    pb_request = predict_pb2.PredictRequest()
    pb_request.model_spec.name = contract["name"]
    pb_request.model_spec.signature_name = contract["signatureName"]
    pb_request.inputs[contract["inputName"]].CopyFrom(np_to_protobuf(X))
    return pb_request


def prepare_response(pb_response: Any) -> dict[str, float]:
    """The book's postprocessing: float_val zipped with the labels."""
    preds = pb_response.outputs[contract["outputName"]].float_val
    return dict(zip(classes, preds, strict=True))


def predict(url: str) -> dict[str, float]:
    """Download, preprocess, Predict with a 20 s deadline."""
    X = preprocessor.from_url(url)
    pb_request = prepare_request(X)
    pb_response = stub.Predict(pb_request, timeout=20.0)
    return prepare_response(pb_response)


app = Flask("gateway")


@app.route("/predict", methods=["POST"])
def predict_endpoint() -> Any:
    """POST {"url": ...} -> {label: score}."""
    data = request.get_json()
    return jsonify(predict(data["url"]))


@app.route("/healthz", methods=["GET"])
def healthz() -> Any:
    """For the benchmark's start-up measurement."""
    return jsonify({"status": "ok"})
