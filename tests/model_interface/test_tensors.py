"""PredictRequest encoding and TensorProto reading (float_val or tensor_content), without TensorFlow."""

from __future__ import annotations

import numpy as np
import pytest

from model_interface.tensors import TensorError, encode_predict_request, to_ndarray
from model_interface.tfs_protos.tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from model_interface.tfs_protos.tensorflow_serving.apis import model_pb2, predict_pb2


def _shape(*dims: int) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims])


SPEC = model_pb2.ModelSpec(name="clothing-model", signature_name="serving_default")


def _proto_request(
    array: np.ndarray, input_name: str = "input_8", spec: model_pb2.ModelSpec = SPEC
) -> predict_pb2.PredictRequest:
    """The same request built field by field (what encode_predict_request must serialize to)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = spec.name
    request.model_spec.signature_name = spec.signature_name
    if spec.HasField("version"):
        request.model_spec.version.value = spec.version.value
    if spec.version_label:
        request.model_spec.version_label = spec.version_label
    tensor = request.inputs[input_name]
    tensor.dtype = {np.dtype(np.float32): types_pb2.DT_FLOAT, np.dtype(np.uint8): types_pb2.DT_UINT8}[array.dtype]
    tensor.tensor_shape.CopyFrom(_shape(*array.shape))
    tensor.tensor_content = array.astype(array.dtype.newbyteorder("<")).tobytes()
    request.output_filter.append("dense_7")
    return request


def _encode(array: np.ndarray, input_name: str = "input_8", spec: model_pb2.ModelSpec = SPEC) -> bytes:
    return encode_predict_request(spec, input_name, list(array), ["dense_7"])


@pytest.mark.parametrize(
    "array",
    [
        (np.arange(2 * 3 * 4 * 3) % 251).astype(np.float32).reshape(2, 3, 4, 3),
        (np.arange(2 * 3 * 4 * 3) % 251).astype(np.uint8).reshape(2, 3, 4, 3),
        np.random.default_rng(0).random((1, 299, 299, 3), dtype=np.float32),  # lengths of 3-byte varints
        np.arange(24, dtype=np.float32).reshape(2, 3, 4)[:, ::2, :],  # not contiguous
    ],
    ids=["float32", "uint8", "299x299", "non-contiguous"],
)
def test_encoded_request_is_the_serialized_proto(array: np.ndarray) -> None:
    encoded = _encode(array)
    assert encoded == _proto_request(array).SerializeToString(deterministic=True)
    parsed = predict_pb2.PredictRequest.FromString(encoded)
    assert parsed.model_spec.signature_name == "serving_default"
    assert list(parsed.output_filter) == ["dense_7"]
    np.testing.assert_array_equal(to_ndarray(parsed.inputs["input_8"]), array)


def test_encoded_request_takes_any_input_name() -> None:
    array = np.zeros((1, 2, 2, 3), dtype=np.uint8)
    name = "x" * 200 + "/ünïcode:0"  # a key longer than 127 bytes has a 2-byte length
    assert _encode(array, name) == _proto_request(array, name).SerializeToString(deterministic=True)


@pytest.mark.parametrize(
    "spec",
    [
        model_pb2.ModelSpec(name="clothing-model", signature_name="serving_uint8", version={"value": 2}),
        model_pb2.ModelSpec(name="clothing-model", version_label="canary"),
    ],
    ids=["version", "version-label"],
)
def test_encoded_request_carries_the_version_choice(spec: model_pb2.ModelSpec) -> None:
    array = np.zeros((1, 2, 2, 3), dtype=np.uint8)
    encoded = _encode(array, spec=spec)
    assert encoded == _proto_request(array, spec=spec).SerializeToString(deterministic=True)
    assert predict_pb2.PredictRequest.FromString(encoded).model_spec == spec


def test_encoding_refuses_other_dtypes_and_mixed_batches() -> None:
    with pytest.raises(TensorError, match="float64"):
        _encode(np.zeros((1, 2, 2, 3), dtype=np.float64))
    with pytest.raises(TensorError, match="one shape and dtype"):
        encode_predict_request(
            model_pb2.ModelSpec(name="m"), "i", [np.zeros((2, 2, 3), np.uint8), np.zeros((2, 3, 3), np.uint8)], ["o"]
        )
    with pytest.raises(TensorError, match="at least one image"):
        encode_predict_request(model_pb2.ModelSpec(name="m"), "i", [], ["o"])


def test_wire_format_matches_tensorflow() -> None:
    """The tensor's bytes equal what tf.make_tensor_proto produces (what the book's gateway sends)."""
    tf = pytest.importorskip("tensorflow")
    array = np.random.default_rng(1).random((1, 5, 5, 3), dtype=np.float32)
    request = predict_pb2.PredictRequest.FromString(_encode(array))
    assert request.inputs["input_8"].SerializeToString() == tf.make_tensor_proto(array).SerializeToString()


def test_read_float_val() -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=_shape(2, 3))
    proto.float_val.extend([1.5, -2.0, 3.25, 0.0, 9.887, -4.835])
    result = to_ndarray(proto)
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, np.array([[1.5, -2.0, 3.25], [0.0, 9.887, -4.835]], dtype=np.float32))


def test_read_tensor_content() -> None:
    values = np.array([[1.5, -2.0], [3.0, 4.0]], dtype="<f4")
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=_shape(2, 2), tensor_content=values.tobytes())
    np.testing.assert_array_equal(to_ndarray(proto), values)


def test_read_double_and_single_value_fill() -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_DOUBLE, tensor_shape=_shape(2, 2), double_val=[7.0])
    np.testing.assert_array_equal(to_ndarray(proto), np.full((2, 2), 7.0))


@pytest.mark.parametrize(
    ("proto", "message"),
    [
        (tensor_pb2.TensorProto(dtype=types_pb2.DT_COMPLEX64, tensor_shape=_shape(1)), "DT_COMPLEX64"),
        (tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=_shape(2, 3), float_val=[1, 2]), "needs 6"),
        (tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=_shape(2), tensor_content=b"abc"), "needs 8"),
        (tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=_shape(-1, 2)), "not fully defined"),
    ],
)
def test_read_errors(proto: tensor_pb2.TensorProto, message: str) -> None:
    with pytest.raises(TensorError, match=message):
        to_ndarray(proto)
