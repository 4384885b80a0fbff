"""numpy <-> TensorProto without TensorFlow: the one codec of the gateway, the model server stand-in and the tools.

- One dtype table: the TF DataType enum, its numpy dtype, the typed repeated field TF Serving fills when it does not
  use `tensor_content`, and TF's short name (as in TF Serving's error messages: "Expects arg[0] to be float").
- `encode_predict_request` writes a batch of images straight into a serialized `PredictRequest` (the gateway's hot
  path: each image's bytes are copied once).
- `to_ndarray` reads `tensor_content` or the typed field, whichever the server filled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from model_interface.tfs_protos.tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from model_interface.tfs_protos.tensorflow_serving.apis import model_pb2, predict_pb2


class _DType(NamedTuple):
    numpy: np.dtype
    field: str  # the typed repeated field of TensorProto
    tf_name: str


_DTYPES: dict[int, _DType] = {
    types_pb2.DT_FLOAT: _DType(np.dtype(np.float32), "float_val", "float"),
    types_pb2.DT_DOUBLE: _DType(np.dtype(np.float64), "double_val", "double"),
    types_pb2.DT_HALF: _DType(np.dtype(np.float16), "half_val", "half"),
    types_pb2.DT_INT32: _DType(np.dtype(np.int32), "int_val", "int32"),
    types_pb2.DT_UINT8: _DType(np.dtype(np.uint8), "int_val", "uint8"),
    types_pb2.DT_INT8: _DType(np.dtype(np.int8), "int_val", "int8"),
    types_pb2.DT_INT16: _DType(np.dtype(np.int16), "int_val", "int16"),
    types_pb2.DT_INT64: _DType(np.dtype(np.int64), "int64_val", "int64"),
    types_pb2.DT_BOOL: _DType(np.dtype(np.bool_), "bool_val", "bool"),
    types_pb2.DT_STRING: _DType(np.dtype(object), "string_val", "string"),
}
_BY_NUMPY = {entry.numpy: enum for enum, entry in _DTYPES.items() if enum != types_pb2.DT_STRING}


class TensorError(ValueError):
    """An array or TensorProto the codec cannot convert (unsupported dtype, size that does not match the shape)."""


def dtype_name(enum: int) -> str:
    """'DT_FLOAT' for types_pb2.DT_FLOAT, etc."""
    return str(types_pb2.DataType.Name(enum)) if enum in types_pb2.DataType.values() else f"dtype #{enum}"


def tf_name(enum: int) -> str:
    """TF's short name of a dtype ('float' for DT_FLOAT), 'unknown' for one the codec does not support."""
    return _DTYPES[enum].tf_name if enum in _DTYPES else "unknown"


def numpy_dtype(enum: int) -> np.dtype:
    """The numpy dtype of a TF DataType enum (object for DT_STRING); raises TensorError if unsupported."""
    if enum not in _DTYPES:
        raise TensorError(f"unsupported tensor dtype {dtype_name(enum)}")
    return _DTYPES[enum].numpy


def dtype_enum(dtype: np.dtype | str) -> int:
    """The TF DataType enum of a numpy dtype (or a name such as "float32"); raises TensorError if unsupported."""
    try:
        return _BY_NUMPY[np.dtype(dtype)]
    except (KeyError, TypeError):
        raise TensorError(f"unsupported dtype {dtype}") from None


def _shape(dims: Sequence[int]) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims])


def to_tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """Encode an ndarray; numeric data goes into tensor_content (raw little-endian bytes)."""
    if array.dtype.kind in "OSU":
        values = [v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1)]
        return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=_shape(array.shape), string_val=values)
    content = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return tensor_pb2.TensorProto(
        dtype=dtype_enum(array.dtype), tensor_shape=_shape(array.shape), tensor_content=content
    )


def to_typed_tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """Encode an ndarray into its typed repeated field (float_val, ...), as TF Serving answers by default."""
    if array.dtype.kind in "OSU":
        return to_tensor_proto(array)
    enum = dtype_enum(array.dtype)
    proto = tensor_pb2.TensorProto(dtype=enum, tensor_shape=_shape(array.shape))
    flat = array.reshape(-1)
    values = flat.view(np.uint16).astype(np.int32) if enum == types_pb2.DT_HALF else flat
    getattr(proto, _DTYPES[enum].field).extend(values.tolist())
    return proto


def to_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """The array a TensorProto holds, from `tensor_content` or the typed repeated field.

    As in TensorFlow, a typed field with a single value fills the whole shape. Raises TensorError for an unsupported
    dtype, a shape that is not fully defined, or a value count that does not match the shape.
    """
    dtype, field = numpy_dtype(proto.dtype), _DTYPES[proto.dtype].field
    shape = tuple(dim.size for dim in proto.tensor_shape.dim)
    if any(size < 0 for size in shape):
        raise TensorError(f"shape {list(shape)} is not fully defined")
    count = int(np.prod(shape, dtype=np.int64))
    if proto.tensor_content and proto.dtype != types_pb2.DT_STRING:
        if len(proto.tensor_content) != count * dtype.itemsize:
            raise TensorError(
                f"tensor_content has {len(proto.tensor_content)} bytes, shape {list(shape)} needs "
                f"{count * dtype.itemsize}"
            )
        little_endian = np.frombuffer(proto.tensor_content, dtype=dtype.newbyteorder("<"))
        return little_endian.reshape(shape).astype(dtype, copy=False)
    values = list(getattr(proto, field))
    if proto.dtype == types_pb2.DT_HALF:
        flat = np.asarray(values, dtype=np.uint16).view(np.float16)
    else:
        flat = np.asarray(values, dtype=dtype)
    if flat.size == 1 and count > 1:
        return np.full(shape, flat[0], dtype=dtype)
    if flat.size != count:
        raise TensorError(f"{field} has {flat.size} values, shape {list(shape)} needs {count}")
    return flat.reshape(shape)


# Wire-format tags (field number << 3 | 2, length-delimited) of the fields encode_predict_request writes by hand.
_PREDICT_REQUEST_INPUTS = b"\x12"  # PredictRequest.inputs (field 2), a map: repeated {key = 1; value = 2}
_MAP_ENTRY_KEY = b"\x0a"
_MAP_ENTRY_VALUE = b"\x12"
_TENSOR_CONTENT = b"\x22"  # TensorProto.tensor_content (field 4)
_IMAGE_DTYPES = (np.dtype(np.float32), np.dtype(np.uint8))


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_predict_request(
    model_spec: model_pb2.ModelSpec, input_name: str, images: Sequence[np.ndarray], output_names: Sequence[str]
) -> bytes:
    """A serialized `PredictRequest` for `model_spec` (name, signature, and version or version label) whose one
    input is the batch of `images` (float32 or uint8, one shape), in `tensor_content`.

    The bytes are those of `PredictRequest.SerializeToString()` for the same request (tested), but each image's data
    is copied once, straight into the message, instead of four times (stacking, `tobytes()`, the proto field, the
    serialization): for a 299x299 float32 image that is 3 MB less memory and three fewer copies per request.
    """
    if not images:
        raise TensorError("a batch needs at least one image")
    first = images[0]
    if first.dtype not in _IMAGE_DTYPES:
        raise TensorError(f"unsupported input dtype {first.dtype}; expected float32 or uint8")
    if any(image.dtype != first.dtype or image.shape != first.shape for image in images):
        raise TensorError("the images of a batch must have one shape and dtype")
    parts = [np.ascontiguousarray(image, dtype=first.dtype.newbyteorder("<")) for image in images]
    nbytes = sum(part.nbytes for part in parts)
    head = predict_pb2.PredictRequest(model_spec=model_spec).SerializeToString()
    tensor_head = tensor_pb2.TensorProto(
        dtype=dtype_enum(first.dtype), tensor_shape=_shape((len(parts), *first.shape))
    ).SerializeToString()
    content_head = _TENSOR_CONTENT + _varint(nbytes) if nbytes else b""  # proto3 omits an empty field
    tensor_size = len(tensor_head) + len(content_head) + nbytes
    key = input_name.encode()
    entry_head = _MAP_ENTRY_KEY + _varint(len(key)) + key + _MAP_ENTRY_VALUE + _varint(tensor_size)
    tail = predict_pb2.PredictRequest(output_filter=output_names).SerializeToString()
    return b"".join(
        (
            head,
            _PREDICT_REQUEST_INPUTS + _varint(len(entry_head) + tensor_size),
            entry_head,
            tensor_head,
            content_head,
            *(part.data.cast("B") for part in parts),
            tail,
        )
    )
