"""numpy <-> TensorProto for the model server, for every dtype a SavedModel signature may use (the gateway's
`clothing_gateway.tensors` covers only what the gateway sends and reads)."""

from __future__ import annotations

import numpy as np

from clothing_gateway.tfs_protos.tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

# TF DataType enum -> (numpy dtype, the typed repeated field TF Serving fills when it does not use tensor_content)
_DTYPES: dict[int, tuple[np.dtype, str]] = {
    types_pb2.DT_FLOAT: (np.dtype(np.float32), "float_val"),
    types_pb2.DT_DOUBLE: (np.dtype(np.float64), "double_val"),
    types_pb2.DT_HALF: (np.dtype(np.float16), "half_val"),
    types_pb2.DT_INT32: (np.dtype(np.int32), "int_val"),
    types_pb2.DT_UINT8: (np.dtype(np.uint8), "int_val"),
    types_pb2.DT_INT8: (np.dtype(np.int8), "int_val"),
    types_pb2.DT_INT16: (np.dtype(np.int16), "int_val"),
    types_pb2.DT_INT64: (np.dtype(np.int64), "int64_val"),
    types_pb2.DT_BOOL: (np.dtype(np.bool_), "bool_val"),
    types_pb2.DT_STRING: (np.dtype(object), "string_val"),
}
_BY_NUMPY = {dtype: enum for enum, (dtype, _) in _DTYPES.items() if enum != types_pb2.DT_STRING}

# TF's short dtype names, as they appear in TF Serving's error messages ("Expects arg[0] to be float").
TF_NAMES = {
    types_pb2.DT_FLOAT: "float",
    types_pb2.DT_DOUBLE: "double",
    types_pb2.DT_HALF: "half",
    types_pb2.DT_INT32: "int32",
    types_pb2.DT_UINT8: "uint8",
    types_pb2.DT_INT8: "int8",
    types_pb2.DT_INT16: "int16",
    types_pb2.DT_INT64: "int64",
    types_pb2.DT_BOOL: "bool",
    types_pb2.DT_STRING: "string",
}


def numpy_dtype(enum: int) -> np.dtype:
    """numpy dtype for a TF DataType enum (object for DT_STRING); raises ValueError if unsupported."""
    if enum not in _DTYPES:
        raise ValueError(f"unsupported tensor dtype {types_pb2.DataType.Name(enum)}")
    return _DTYPES[enum][0]


def dtype_enum(dtype: np.dtype | str) -> int:
    """TF DataType enum for a numpy dtype (or a name such as "float32"); raises ValueError if unsupported."""
    try:
        return _BY_NUMPY[np.dtype(dtype)]
    except (KeyError, TypeError):
        raise ValueError(f"unsupported dtype {dtype}") from None


def _shape(array: np.ndarray) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape])


def to_tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """Encode an ndarray; numeric data goes into tensor_content (raw little-endian bytes)."""
    if array.dtype.kind in "OSU":
        values = [v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1)]
        return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=_shape(array), string_val=values)
    content = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return tensor_pb2.TensorProto(dtype=dtype_enum(array.dtype), tensor_shape=_shape(array), tensor_content=content)


def to_typed_tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """Encode an ndarray into its typed repeated field (float_val, ...), as TF Serving answers by default."""
    if array.dtype.kind in "OSU":
        return to_tensor_proto(array)
    enum = dtype_enum(array.dtype)
    proto = tensor_pb2.TensorProto(dtype=enum, tensor_shape=_shape(array))
    flat = array.reshape(-1)
    values = flat.view(np.uint16).astype(np.int32) if enum == types_pb2.DT_HALF else flat
    getattr(proto, _DTYPES[enum][1]).extend(values.tolist())
    return proto


def to_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """Decode a TensorProto from tensor_content or its typed field (a single typed value fills the whole shape,
    as in TensorFlow)."""
    dtype = numpy_dtype(proto.dtype)
    field = _DTYPES[proto.dtype][1]
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    count = int(np.prod(shape, dtype=np.int64))
    if proto.tensor_content and proto.dtype != types_pb2.DT_STRING:
        flat = np.frombuffer(proto.tensor_content, dtype=dtype.newbyteorder("<"))
    else:
        values = list(getattr(proto, field))
        flat = (
            np.asarray(values, dtype=np.uint16).view(np.float16)
            if proto.dtype == types_pb2.DT_HALF
            else np.asarray(values, dtype=dtype)
        )
        if flat.size == 1 and count > 1:
            flat = np.full(count, flat[0], dtype=dtype)
    if flat.size != count:
        raise ValueError(f"tensor has {flat.size} values but its shape {list(shape)} needs {count}")
    return flat.reshape(shape).astype(dtype, copy=False)
