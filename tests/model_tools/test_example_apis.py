"""The stand-in's TF1 path, as a real process: a SavedModel of TF1 graph signatures on tf.Example input (TF Serving's
own test model is one: half_plus_two), served with TF Serving's lenient input shapes and its Classify, Regress and
MultiInference APIs over gRPC and REST."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from model_interface.tensors import to_ndarray
from model_interface.tfs_protos.tensorflow.core.example import example_pb2
from model_interface.tfs_protos.tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tests.model_tools.conftest import ServerProcess, start_server
from tests.model_tools.test_server import predict_request, rest, rpc_error

CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"


def export_half_plus_two(version_dir: Path) -> None:
    """A TF1 graph computing y = 0.5 x + 2 from `x` (a [-1, 1] tensor, or parsed from tf.Examples' feature "x"),
    saved with predict, classify and regress signatures, plus `sum_pair` (a [-1, 2] input times a [2, 1] matrix)."""
    import tensorflow as tf

    v1 = tf.compat.v1
    with tf.Graph().as_default():
        examples = v1.placeholder(tf.string, [None], name="tf_example")
        x = tf.identity(v1.io.parse_example(examples, {"x": v1.io.FixedLenFeature([1], tf.float32)})["x"], name="x")
        y = tf.add(v1.Variable(0.5, name="a") * x, v1.Variable(2.0, name="b"), name="y")
        labels = tf.tile(tf.constant([["low", "high"]]), [tf.shape(x)[0], 1])
        pair = v1.placeholder(tf.float32, [None, 2], name="pair")
        info, signature = v1.saved_model.utils.build_tensor_info, v1.saved_model.signature_def_utils.build_signature_def
        signatures = {
            "serving_default": signature({"x": info(x)}, {"y": info(y)}, "tensorflow/serving/predict"),
            "classify_x_to_y": signature({"inputs": info(examples)}, {"scores": info(y)}, CLASSIFY),
            "classify_x_to_labels": signature(
                {"inputs": info(examples)}, {"classes": info(labels), "scores": info(tf.concat([-y, y], 1))}, CLASSIFY
            ),
            "regress_x_to_y": signature({"inputs": info(examples)}, {"outputs": info(y)}, REGRESS),
            "sum_pair": signature(
                {"pair": info(pair)}, {"sum": info(tf.matmul(pair, tf.ones([2, 1])))}, "tensorflow/serving/predict"
            ),
        }
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(version_dir))
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signatures)
            builder.save()


@pytest.fixture(scope="module")
def half_plus_two_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("half_plus_two")
    export_half_plus_two(base / "00000123")
    return base


@pytest.fixture(scope="module")
def half_plus_two(half_plus_two_base: Path) -> Iterator[ServerProcess]:
    server = start_server(half_plus_two_base, "default", half_plus_two_base.parent / "half_plus_two.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stub(half_plus_two: ServerProcess) -> Iterator[Any]:
    with grpc.insecure_channel(half_plus_two.grpc_address) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def example(**features: float) -> example_pb2.Example:
    value = example_pb2.Example()
    for name, number in features.items():
        value.features.feature[name].float_list.value.append(number)
    return value


def classification(signature: str, *examples: example_pb2.Example) -> classification_pb2.ClassificationRequest:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = "default", signature
    request.input.example_list.examples.extend(examples)
    return request


def test_predict_feeds_a_shape_the_signature_does_not_declare(stub: Any, half_plus_two: ServerProcess) -> None:
    """x is declared [-1, 1]; TF Serving feeds [3] all the same, and so do gRPC, REST rows and REST columns here."""
    response = stub.Predict(predict_request("default", x=np.array([2.0, 3.0, 4.0], np.float32)), timeout=30)
    assert to_ndarray(response.outputs["y"]).tolist() == [3.0, 3.5, 4.0]
    assert response.model_spec.version.value == 123
    assert rest(half_plus_two, "/v1/models/default:predict", {"instances": [2.0, 3.0, 4.0]}) == (
        200,
        {"predictions": [3.0, 3.5, 4.0]},
    )
    assert rest(half_plus_two, "/v1/models/default:predict", {"inputs": [[2.0], [3.0]]}) == (
        200,
        {"outputs": [[3.0], [3.5]]},
    )


def test_a_shape_the_kernel_cannot_take_is_the_kernels_error(stub: Any, half_plus_two: ServerProcess) -> None:
    """No shape check before the graph runs: MatMul's own INVALID_ARGUMENT is the answer, over gRPC and REST."""
    error = rpc_error(stub.Predict, predict_request("default", "sum_pair", pair=np.ones((2, 3), np.float32)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Matrix size-incompatible: In[0]: [2,3], In[1]: [2,1]" in error.details()
    status, body = rest(half_plus_two, "/v1/models/default:predict", {"signature_name": "sum_pair", "inputs": [1.0]})
    assert status == 400
    assert "In[0] ndims must be >= 2" in body["error"]


def test_classify_scores_every_example(stub: Any) -> None:
    response = stub.Classify(classification("classify_x_to_y", example(x=2.0), example(x=4.0)), timeout=30)
    assert [[(c.label, c.score) for c in row.classes] for row in response.result.classifications] == [
        [("", 3.0)],
        [("", 4.0)],
    ]
    assert (response.model_spec.name, response.model_spec.signature_name) == ("default", "classify_x_to_y")
    assert response.model_spec.version.value == 123


def test_classify_returns_labels_with_their_scores(stub: Any) -> None:
    response = stub.Classify(classification("classify_x_to_labels", example(x=2.0)), timeout=30)
    assert [(c.label, c.score) for c in response.result.classifications[0].classes] == [("low", -3.0), ("high", 3.0)]


def test_a_context_is_merged_into_every_example(stub: Any) -> None:
    """The context's features reach each example; an example's own feature of the same name wins."""
    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = "default", "regress_x_to_y"
    request.input.example_list_with_context.context.CopyFrom(example(x=10.0))
    request.input.example_list_with_context.examples.extend([example(), example(x=2.0)])
    response = stub.Regress(request, timeout=30)
    assert [r.value for r in response.result.regressions] == [7.0, 3.0]


def test_multi_inference_runs_every_task_on_the_same_examples(stub: Any) -> None:
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (("regress_x_to_y", REGRESS), ("classify_x_to_labels", CLASSIFY)):
        task = request.tasks.add(method_name=method)
        task.model_spec.name, task.model_spec.signature_name = "default", signature
    request.input.example_list.examples.extend([example(x=2.0), example(x=6.0)])
    response = stub.MultiInference(request, timeout=30)
    assert [r.value for r in response.results[0].regression_result.regressions] == [3.0, 5.0]
    classes = response.results[1].classification_result.classifications[1].classes
    assert [(c.label, c.score) for c in classes] == [("low", -5.0), ("high", 5.0)]
    assert [r.model_spec.signature_name for r in response.results] == ["regress_x_to_y", "classify_x_to_labels"]


def _multi(*tasks: tuple[str, str, str]) -> inference_pb2.MultiInferenceRequest:
    request = inference_pb2.MultiInferenceRequest()
    for name, signature, method in tasks:
        task = request.tasks.add(method_name=method)
        task.model_spec.name, task.model_spec.signature_name = name, signature
    request.input.example_list.examples.append(example(x=1.0))
    return request


@pytest.mark.parametrize(
    ("call", "request_message", "code", "message"),
    [
        ("Classify", classification("classify_x_to_y"), grpc.StatusCode.INVALID_ARGUMENT, "Input is empty."),
        (
            "Classify",
            classification("nope", example(x=1.0)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "No signature was found with the name: nope",
        ),
        (
            "Classify",
            classification("", example(x=1.0)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "No classification inputs found in SignatureDef: ",
        ),
        (
            "Classify",
            classification("regress_x_to_y", example(x=1.0)),
            grpc.StatusCode.INVALID_ARGUMENT,
            'Expected classification signature outputs to contain at least one of "classes" or "scores".',
        ),
        (
            "Classify",
            classification("classify_x_to_y", example(z=1.0)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Feature: x (data type: float) is required but could not be found.",
        ),
        (
            "MultiInference",
            _multi(("default", "regress_x_to_y", REGRESS), ("other", "classify_x_to_y", CLASSIFY)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "All ModelSpecs in a MultiInferenceRequest must access the same model name.",
        ),
        (
            "MultiInference",
            _multi(("default", "regress_x_to_y", REGRESS), ("default", "regress_x_to_y", REGRESS)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Duplicate evaluation of signature: regress_x_to_y",
        ),
        (
            "MultiInference",
            _multi(("default", "serving_default", "tensorflow/serving/predict")),
            grpc.StatusCode.UNIMPLEMENTED,
            "Unsupported signature method_name: tensorflow/serving/predict",
        ),
        (
            "MultiInference",
            _multi(("missing", "regress_x_to_y", REGRESS)),
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Latest(missing)",
        ),
    ],
)
def test_example_api_errors_match_tf_serving(
    stub: Any, call: str, request_message: Any, code: grpc.StatusCode, message: str
) -> None:
    error = rpc_error(getattr(stub, call), request_message)
    assert (error.code(), message in error.details()) == (code, True), error.details()


def test_rest_classify_and_regress(half_plus_two: ServerProcess) -> None:
    assert rest(
        half_plus_two, "/v1/models/default:classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
    ) == (200, {"results": [[["", 3.0]]]})
    assert rest(
        half_plus_two,
        "/v1/models/default/versions/123:regress",
        {"signature_name": "regress_x_to_y", "context": {"x": 10.0}, "examples": [{}, {"x": [2.0]}]},
    ) == (200, {"results": [7.0, 3.0]})
    assert (
        rest(
            half_plus_two,
            "/v1/models/default:classify",
            {"signature_name": "classify_x_to_labels", "examples": [{"x": 2}]},
        )[0]
        == 400
    )  # an integer is an int64 feature: the graph's float feature refuses it, as in TF Serving


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"signature_name": "regress_x_to_y"}, "When method is classify, key 'examples' is expected and was not found"),
        ({"examples": {"x": 1.0}}, "Expecting 'examples' value to be an list/array"),
        ({"examples": []}, "'examples' value is an empty array"),
        ({"signature_name": 1, "examples": [{"x": 1.0}]}, "'signature_name' key must be a string value."),
        ({"examples": [[1.0]]}, "Example must be JSON object but got JSON Array"),
        ({"examples": [{"x": [1, 2.5]}]}, "Unexpected element type in feature: x expecting type: int64"),
        ({"examples": [{"x": None}]}, "Feature: x has element with unexpected JSON type: Null"),
        ({"examples": [{"x": [[1.0]]}]}, "Feature: x has element with unexpected JSON type: Array"),
        ({"examples": [{"x": 2**63}]}, "Feature: x has uint64_t element. Only int64_t is supported."),
    ],
)
def test_rest_example_body_errors_match_tf_serving(half_plus_two: ServerProcess, body: Any, message: str) -> None:
    status, answer = rest(half_plus_two, "/v1/models/default:regress", body)
    assert (status, message in answer["error"]) == (400, True), answer


def test_batching_takes_any_shape_with_a_batch_dimension(half_plus_two_base: Path, tmp_path: Path) -> None:
    """With --enable_batching, inputs are merged along dimension 0 whatever their declared shape; a scalar has no
    dimension 0 and gets TF Serving's batching error."""
    server = start_server(half_plus_two_base, "default", tmp_path / "batching.log", "--enable_batching")
    try:
        with grpc.insecure_channel(server.grpc_address) as channel:
            batching = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            response = batching.Predict(predict_request("default", x=np.array([2.0, 3.0, 4.0], np.float32)), timeout=30)
            assert to_ndarray(response.outputs["y"]).tolist() == [3.0, 3.5, 4.0]
            error = rpc_error(batching.Predict, predict_request("default", x=np.array(2.0, np.float32)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == "Batching Run() input tensors must have at least one dimension"
    finally:
        server.stop()
