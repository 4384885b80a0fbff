"""`model-tools warmup`: write TF Serving's warmup file (`<version>/assets.extra/tf_serving_warmup_requests`),
a TFRecord of PredictionLog records that TF Serving replays while loading a version, so the first real request
does not pay for graph initialisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model_interface.preprocessing import load_image, resize_pixels, scale
from model_interface.tensors import to_tensor_proto
from model_interface.tfs_protos.tensorflow_serving.apis import predict_pb2, prediction_log_pb2
from model_tools.inspect_model import inspect, version_dir
from model_tools.servable import MAX_WARMUP_RECORDS, WARMUP_FILE


def warmup_requests(saved_model: Path, images: list[Path], batch_sizes: list[int]) -> list[predict_pb2.PredictRequest]:
    """One PredictRequest per (batch size, signature) built from the images (cycled to fill a batch)."""
    _, contract = inspect(saved_model)
    pixels = [resize_pixels(load_image(p.read_bytes()), contract.input_size) for p in images]
    requests = []
    for size in batch_sizes:
        batch = np.stack([pixels[i % len(pixels)] for i in range(size)])
        request = predict_pb2.PredictRequest()
        request.model_spec.name = contract.name
        request.model_spec.signature_name = contract.signature_name
        request.inputs[contract.input_name].CopyFrom(to_tensor_proto(scale(batch, contract.scaling)))
        requests.append(request)
        if contract.uint8 is not None:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = contract.name
            request.model_spec.signature_name = contract.uint8.signature_name
            request.inputs[contract.uint8.input_name].CopyFrom(to_tensor_proto(batch))
            requests.append(request)
    return requests


def write_warmup(saved_model: Path, images: list[Path], batch_sizes: list[int]) -> tuple[Path, int]:
    """Write the warmup file into the version dir; returns its path and record count."""
    import tensorflow as tf

    requests = warmup_requests(saved_model, images, batch_sizes)
    if len(requests) > MAX_WARMUP_RECORDS:
        raise ValueError(f"{len(requests)} warmup records; TF Serving accepts at most {MAX_WARMUP_RECORDS}")
    path = version_dir(saved_model) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".tmp")
    with tf.io.TFRecordWriter(str(staging)) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    staging.rename(path)
    return path, len(requests)
