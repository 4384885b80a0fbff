"""Per-request CPU time by stage, in one process, without network: `python -m bench.stages gateway|reference IMAGE`.

Run with the gateway's venv for `gateway` (proves no TensorFlow is imported) and with the project venv for
`reference`. Prints one JSON object: per-stage and total p50/p90 thread CPU milliseconds, the bytes of the
serialized PredictRequest, the import/create time of the app a gunicorn worker loads, and whether TensorFlow was
imported.
"""

from __future__ import annotations

import io
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ITERATIONS = 200
WARMUP = 20


def _measure(stages: dict[str, Callable[[Any], Any]], start: Any) -> dict[str, Any]:
    """Run the stages in order (each gets the previous one's result), ITERATIONS times; CPU ms per stage."""
    samples: dict[str, list[float]] = {name: [] for name in stages}
    totals: list[float] = []
    for iteration in range(WARMUP + ITERATIONS):
        value, total = start, 0.0
        for name, stage in stages.items():
            began = time.thread_time_ns()
            value = stage(value)
            spent = (time.thread_time_ns() - began) / 1e6
            total += spent
            if iteration >= WARMUP:
                samples[name].append(spent)
        if iteration >= WARMUP:
            totals.append(total)
    result = {name: round(statistics.median(values), 3) for name, values in samples.items()}
    result["total_p50"] = round(statistics.median(totals), 3)
    result["total_p90"] = round(statistics.quantiles(totals, n=10)[-1], 3)
    return result


def _response_bytes(labels: int) -> bytes:
    from model_interface.tfs_protos.tensorflow_serving.apis import predict_pb2

    response = predict_pb2.PredictResponse()
    tensor = response.outputs["logits"]
    tensor.dtype = 1  # DT_FLOAT
    tensor.tensor_shape.dim.add(size=1)
    tensor.tensor_shape.dim.add(size=labels)
    tensor.float_val.extend([float(i) for i in range(labels)])
    return response.SerializeToString()


def gateway(image: bytes, size: int) -> dict[str, Any]:
    """The gateway's stages, float32 and uint8 requests, `exact` and `fast` preprocessing (`fast`: under "fast"),
    with the allocator settings its gunicorn workers get."""
    from clothing_gateway.allocator import tune_malloc

    tune_malloc()
    began = time.perf_counter()
    import numpy as np

    from clothing_gateway.postprocessing import label_scores
    from model_interface.preprocessing import load_image, resize_pixels, scale
    from model_interface.tensors import encode_predict_request, to_ndarray
    from model_interface.tfs_protos.tensorflow_serving.apis import model_pb2, predict_pb2

    import_seconds = time.perf_counter() - began
    labels = [f"label{i}" for i in range(10)]
    answer = _response_bytes(len(labels))
    spec = model_pb2.ModelSpec(name="clothing-model", signature_name="serving_default")

    def request(batch: np.ndarray) -> bytes:
        return encode_predict_request(spec, "input", list(batch), ["logits"])

    def response(_: bytes) -> bytes:
        outputs = to_ndarray(predict_pb2.PredictResponse.FromString(answer).outputs["logits"])
        return json.dumps(label_scores(outputs, labels)[0]).encode()

    def measured(reduce_to: tuple[int, int] | None) -> dict[str, Any]:
        def decode(data: bytes) -> Any:
            return load_image(data, 25_000_000, reduce_to)

        def resize(img: Any) -> np.ndarray:
            return resize_pixels(img, (size, size))

        def one(pixels: np.ndarray) -> np.ndarray:
            return pixels[None]

        float32 = {"decode": decode, "resize": resize, "scale": lambda pixels: scale(one(pixels), "xception")}
        uint8 = {"decode": decode, "resize": resize, "request": lambda pixels: request(one(pixels))}
        return {
            "float32": _measure({**float32, "request": request, "response": response}, image),
            "uint8": _measure({**uint8, "response": response}, image),
        }

    exact, fast = measured(None), measured((size, size))
    pixels = resize_pixels(load_image(image), (size, size))[None]
    return {
        **exact,
        "fast": fast,
        "request_bytes_float32": len(request(scale(pixels, "xception"))),
        "request_bytes_uint8": len(request(pixels)),
        "import_seconds": round(import_seconds, 3),
        "tensorflow_imported": any(name == "tensorflow" or name.startswith("tensorflow.") for name in sys.modules),
    }


def reference(image: bytes, size: int) -> dict[str, Any]:
    """The book's stages: keras_image_helper, tf.make_tensor_proto, float_val."""
    began = time.perf_counter()
    import tensorflow as tf
    from keras_image_helper import create_preprocessor
    from PIL import Image
    from tensorflow_serving.apis import predict_pb2

    import_seconds = time.perf_counter() - began
    preprocessor = create_preprocessor("xception", target_size=(size, size))
    labels = [f"label{i}" for i in range(10)]
    answer = _response_bytes(len(labels))

    def request(batch: Any) -> bytes:
        pb = predict_pb2.PredictRequest()
        pb.model_spec.name = "clothing-model"
        pb.model_spec.signature_name = "serving_default"
        pb.inputs["input"].CopyFrom(tf.make_tensor_proto(batch, shape=batch.shape))
        return pb.SerializeToString()

    def response(_: bytes) -> bytes:
        preds = predict_pb2.PredictResponse.FromString(answer).outputs["logits"].float_val
        return json.dumps(dict(zip(labels, preds, strict=True))).encode()

    stages = {
        "preprocess": lambda data: preprocessor.convert_to_tensor(Image.open(io.BytesIO(data))),
        "request": request,
        "response": response,
    }
    batch = preprocessor.convert_to_tensor(Image.open(io.BytesIO(image)))
    transformer_json = json.dumps({"instances": [batch[0].tolist()]})  # the book's KServe transformer -> TF Serving
    return {
        "float32": _measure(stages, image),
        "request_bytes_float32": len(request(batch)),
        "transformer_json_bytes": len(transformer_json),
        "import_seconds": round(import_seconds, 3),
        "tensorflow_imported": True,
    }


def main() -> None:
    """Print the measurements of one path as JSON."""
    path, image, size = sys.argv[1], Path(sys.argv[2]).read_bytes(), int(sys.argv[3]) if len(sys.argv) > 3 else 299
    print(json.dumps(gateway(image, size) if path == "gateway" else reference(image, size)))


if __name__ == "__main__":
    main()
