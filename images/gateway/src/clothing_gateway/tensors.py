"""numpy <-> TensorProto without TensorFlow.

Requests carry the array's raw little-endian bytes in `tensor_content` (one memcpy, no per-element encoding).
Responses are read whether TF Serving fills the typed field (`float_val`, its default) or `tensor_content`
(`--enable_serialization_as_tensor_content`).
"""

from __future__ import annotations

import numpy as np

from clothing_gateway.tfs_protos.tensorflow.core.framework import tensor_pb2, types_pb2

_TO_DTYPE = {
    np.dtype(np.float32): types_pb2.DT_FLOAT,
    np.dtype(np.uint8): types_pb2.DT_UINT8,
}
# dtype enum -> (numpy dtype, name of the typed repeated field)
_FROM_DTYPE: dict[int, tuple[np.dtype, str]] = {
    types_pb2.DT_FLOAT: (np.dtype("<f4"), "float_val"),
    types_pb2.DT_DOUBLE: (np.dtype("<f8"), "double_val"),
    types_pb2.DT_UINT8: (np.dtype("u1"), "int_val"),
    types_pb2.DT_INT32: (np.dtype("<i4"), "int_val"),
    types_pb2.DT_INT64: (np.dtype("<i8"), "int64_val"),
}


class TensorError(ValueError):
    """A TensorProto that cannot be turned into an array (unsupported dtype, size does not match shape)."""


def dtype_name(dtype: int) -> str:
    """'DT_FLOAT' for types_pb2.DT_FLOAT, etc."""
    return str(types_pb2.DataType.Name(dtype)) if dtype in types_pb2.DataType.values() else f"dtype #{dtype}"


def fill_tensor_proto(tensor: tensor_pb2.TensorProto, array: np.ndarray) -> None:
    """Write `array` (float32 or uint8) into an empty TensorProto in place (e.g. `request.inputs[name]`), its raw
    little-endian bytes in `tensor_content`: one copy of the data, not two."""
    dtype = _TO_DTYPE.get(array.dtype)
    if dtype is None:
        raise TensorError(f"unsupported input dtype {array.dtype}; expected float32 or uint8")
    tensor.dtype = dtype
    for size in array.shape:
        tensor.tensor_shape.dim.add(size=size)
    tensor.tensor_content = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def make_tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """A new TensorProto holding `array` (float32 or uint8) in `tensor_content`."""
    tensor = tensor_pb2.TensorProto()
    fill_tensor_proto(tensor, array)
    return tensor


def tensor_to_ndarray(tensor: tensor_pb2.TensorProto) -> np.ndarray:
    """The array a numeric TensorProto holds, from `tensor_content` or the typed repeated field.

    As in TensorFlow, a typed field with a single value fills the whole shape.
    """
    if tensor.dtype not in _FROM_DTYPE:
        raise TensorError(f"unsupported output dtype {dtype_name(tensor.dtype)}")
    np_dtype, field = _FROM_DTYPE[tensor.dtype]
    shape = tuple(dim.size for dim in tensor.tensor_shape.dim)
    if any(size < 0 for size in shape):
        raise TensorError(f"output shape {list(shape)} is not fully defined")
    count = int(np.prod(shape, dtype=np.int64))
    if tensor.tensor_content:
        if len(tensor.tensor_content) != count * np_dtype.itemsize:
            raise TensorError(
                f"tensor_content has {len(tensor.tensor_content)} bytes, shape {list(shape)} needs "
                f"{count * np_dtype.itemsize}"
            )
        return np.frombuffer(tensor.tensor_content, dtype=np_dtype).reshape(shape)
    values = np.asarray(getattr(tensor, field), dtype=np_dtype)
    if values.size == count:
        return values.reshape(shape)
    if values.size == 1:
        return np.full(shape, values[0], dtype=np_dtype)
    raise TensorError(f"{field} has {values.size} values, shape {list(shape)} needs {count}")
