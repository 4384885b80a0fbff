"""numpy <-> TensorProto without TensorFlow.

Requests carry the array's raw little-endian bytes in `tensor_content` (one memcpy, no per-element encoding), written
straight into the serialized `PredictRequest`.
Responses are read whether TF Serving fills the typed field (`float_val`, its default) or `tensor_content`
(`--enable_serialization_as_tensor_content`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from clothing_gateway.tfs_protos.tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from clothing_gateway.tfs_protos.tensorflow_serving.apis import model_pb2, predict_pb2

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


# Wire-format tags (field number << 3 | 2, length-delimited) of the fields encode_predict_request writes by hand.
_PREDICT_REQUEST_INPUTS = b"\x12"  # PredictRequest.inputs (field 2), a map: repeated {key = 1; value = 2}
_MAP_ENTRY_KEY = b"\x0a"
_MAP_ENTRY_VALUE = b"\x12"
_TENSOR_CONTENT = b"\x22"  # TensorProto.tensor_content (field 4)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_predict_request(
    model_name: str, signature_name: str, input_name: str, images: Sequence[np.ndarray], output_names: Sequence[str]
) -> bytes:
    """A serialized `PredictRequest` whose one input is the batch of `images` (float32 or uint8, one shape), in
    `tensor_content`.

    The bytes are those of `PredictRequest.SerializeToString()` for the same request (tested), but each image's data
    is copied once, straight into the message, instead of four times (stacking, `tobytes()`, the proto field, the
    serialization): for a 299x299 float32 image that is 3 MB less memory and three fewer copies per request.
    """
    if not images:
        raise TensorError("a batch needs at least one image")
    first = images[0]
    dtype = _TO_DTYPE.get(first.dtype)
    if dtype is None:
        raise TensorError(f"unsupported input dtype {first.dtype}; expected float32 or uint8")
    if any(image.dtype != first.dtype or image.shape != first.shape for image in images):
        raise TensorError("the images of a batch must have one shape and dtype")
    parts = [np.ascontiguousarray(image, dtype=first.dtype.newbyteorder("<")) for image in images]
    nbytes = sum(part.nbytes for part in parts)
    head = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature_name)
    ).SerializeToString()
    dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in (len(parts), *first.shape)]
    tensor_head = tensor_pb2.TensorProto(
        dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims)
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
