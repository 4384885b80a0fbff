"""TF Serving's monitoring and batching config messages, for protobuf's text_format.

The tensorflow-serving-api wheel (where model_interface's vendored protos come from) ships ModelServerConfig but not
these two, so they are declared here with TF Serving's message names and the fields the stand-in implements, as in
`tensorflow_serving/config/monitoring_config.proto` and `servables/tensorflow/session_bundle_config.proto`. A file is
then parsed as TF Serving parses it (text format: `a: {...}` and `a {...}`, comments, wrapper fields), and a bad one
is reported as it reports it: "Error parsing text-format tensorflow.serving.<Message>: <line>:<column> : ...".
"""

from __future__ import annotations

from functools import cache

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from google.protobuf.message import Message

PACKAGE = "tensorflow.serving"
_FIELD = descriptor_pb2.FieldDescriptorProto
# BatchingParameters' wrapped integers, in field number order from 1.
BATCHING_INT64_FIELDS = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads")


def _file() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(
        name="model_tools/tensorflow_serving_config.proto",
        package=PACKAGE,
        dependency=["google/protobuf/wrappers.proto"],
        syntax="proto3",
    )
    prometheus = file.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=_FIELD.TYPE_BOOL, label=_FIELD.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=_FIELD.TYPE_STRING, label=_FIELD.LABEL_OPTIONAL)
    monitoring = file.message_type.add(name="MonitoringConfig")
    monitoring.field.add(
        name="prometheus_config",
        number=1,
        type=_FIELD.TYPE_MESSAGE,
        type_name=f".{PACKAGE}.PrometheusConfig",
        label=_FIELD.LABEL_OPTIONAL,
    )
    batching = file.message_type.add(name="BatchingParameters")
    for number, name in enumerate(BATCHING_INT64_FIELDS, 1):
        batching.field.add(
            name=name,
            number=number,
            type=_FIELD.TYPE_MESSAGE,
            type_name=".google.protobuf.Int64Value",
            label=_FIELD.LABEL_OPTIONAL,
        )
    batching.field.add(
        name="thread_pool_name",
        number=5,
        type=_FIELD.TYPE_MESSAGE,
        type_name=".google.protobuf.StringValue",
        label=_FIELD.LABEL_OPTIONAL,
    )
    batching.field.add(name="allowed_batch_sizes", number=6, type=_FIELD.TYPE_INT64, label=_FIELD.LABEL_REPEATED)
    batching.field.add(name="pad_variable_length_inputs", number=7, type=_FIELD.TYPE_BOOL, label=_FIELD.LABEL_OPTIONAL)
    return file


@cache
def _message_classes() -> dict[str, type[Message]]:
    pool = descriptor_pool.DescriptorPool()  # our own pool: nothing is added to protobuf's default one
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(_file())
    names = ("MonitoringConfig", "BatchingParameters")
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}")) for name in names}


def parse(message_name: str, text: str) -> Message:
    """`text` parsed as the text format of tensorflow.serving.<message_name>; ValueError in TF Serving's words."""
    message = _message_classes()[message_name]()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise ValueError(f"Error parsing text-format {PACKAGE}.{message_name}: {exc}") from None
    return message
