"""TensorProto building (tensor_content) and reading (float_val or tensor_content), without TensorFlow."""

from __future__ import annotations

import numpy as np
import pytest

from clothing_gateway.tensors import TensorError, make_tensor_proto, tensor_to_ndarray
from clothing_gateway.tfs_protos.tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2


def _shape(*dims: int) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims])


@pytest.mark.parametrize(("dtype", "enum"), [(np.float32, types_pb2.DT_FLOAT), (np.uint8, types_pb2.DT_UINT8)])
def test_make_tensor_proto_uses_tensor_content(dtype: type, enum: int) -> None:
    array: np.ndarray = (np.arange(2 * 3 * 4 * 3) % 251).astype(dtype).reshape(2, 3, 4, 3)
    proto = make_tensor_proto(array)
    assert proto.dtype == enum
    assert [d.size for d in proto.tensor_shape.dim] == [2, 3, 4, 3]
    assert proto.tensor_content == array.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    assert not proto.float_val
    assert not proto.int_val
    np.testing.assert_array_equal(tensor_to_ndarray(proto), array)


def test_make_tensor_proto_takes_non_contiguous_arrays() -> None:
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)[:, ::2, :]
    np.testing.assert_array_equal(tensor_to_ndarray(make_tensor_proto(array)), array)


def test_make_tensor_proto_refuses_other_dtypes() -> None:
    with pytest.raises(TensorError, match="float64"):
        make_tensor_proto(np.zeros(3, dtype=np.float64))


def test_wire_format_matches_tensorflow() -> None:
    """The serialized proto equals what tf.make_tensor_proto produces (what the book's gateway sends)."""
    tf = pytest.importorskip("tensorflow")
    array = np.random.default_rng(1).random((1, 5, 5, 3), dtype=np.float32)
    assert make_tensor_proto(array).SerializeToString() == tf.make_tensor_proto(array).SerializeToString()


def test_read_float_val() -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=_shape(2, 3))
    proto.float_val.extend([1.5, -2.0, 3.25, 0.0, 9.887, -4.835])
    result = tensor_to_ndarray(proto)
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, np.array([[1.5, -2.0, 3.25], [0.0, 9.887, -4.835]], dtype=np.float32))


def test_read_tensor_content() -> None:
    values = np.array([[1.5, -2.0], [3.0, 4.0]], dtype="<f4")
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=_shape(2, 2), tensor_content=values.tobytes())
    np.testing.assert_array_equal(tensor_to_ndarray(proto), values)


def test_read_double_and_single_value_fill() -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_DOUBLE, tensor_shape=_shape(2, 2), double_val=[7.0])
    np.testing.assert_array_equal(tensor_to_ndarray(proto), np.full((2, 2), 7.0))


@pytest.mark.parametrize(
    ("proto", "message"),
    [
        (tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=_shape(1)), "DT_STRING"),
        (tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=_shape(2, 3), float_val=[1, 2]), "needs 6"),
        (tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=_shape(2), tensor_content=b"abc"), "needs 8"),
        (tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=_shape(-1, 2)), "not fully defined"),
    ],
)
def test_read_errors(proto: tensor_pb2.TensorProto, message: str) -> None:
    with pytest.raises(TensorError, match=message):
        tensor_to_ndarray(proto)
