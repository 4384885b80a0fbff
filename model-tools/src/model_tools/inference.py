"""Classify, Regress and MultiInference: TF Serving's tf.Example APIs on a loaded version, as its classifier.cc,
regressor.cc and multi_inference.cc (tensorflow_serving master 9d981c5c) run them.

The request's Input becomes one string tensor of serialized tf.Examples (with a context, the context's bytes before
each example's: protobuf merges the two when the graph parses them), fed to the signature's `inputs` tensor; the
`classes` and/or `scores` tensors ([batch, num_classes]) or the `outputs` tensor ([batch] or [batch, 1]) come back as
results. Signatures are checked as TF Serving checks them with its default flags (the method name is not), with its
error texts; every error is INVALID_ARGUMENT unless a kernel fails with its own code.
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
from google.protobuf import text_format

from model_interface.tensors import dtype_enum
from model_interface.tfs_protos.tensorflow.core.framework import types_pb2
from model_interface.tfs_protos.tensorflow.core.protobuf import meta_graph_pb2
from model_interface.tfs_protos.tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    input_pb2,
    model_pb2,
    regression_pb2,
)
from model_tools.servable import LoadedVersion, ServingError

CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
DEFAULT_SIGNATURE = "serving_default"


def _invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def serialized_examples(request_input: input_pb2.Input) -> np.ndarray:
    """The Input as TF Serving feeds it: a [num_examples] string tensor of serialized tf.Examples."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        examples = [example.SerializeToString() for example in request_input.example_list.examples]
    elif kind == "example_list_with_context":
        with_context = request_input.example_list_with_context
        context = with_context.context.SerializeToString()
        examples = [context + example.SerializeToString() for example in with_context.examples]
    else:
        examples = []
    if not examples:
        raise _invalid("Input is empty.")
    return np.array(examples, dtype=object)


def _debug_string(signature: meta_graph_pb2.SignatureDef) -> str:
    return text_format.MessageToString(signature)


def classification_tensors(signature: meta_graph_pb2.SignatureDef) -> tuple[str, list[str]]:
    """The input tensor and the classes/scores tensors of a classification signature (PreProcessClassification)."""
    if len(signature.inputs) != 1:
        raise _invalid("Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise _invalid(f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if "inputs" not in signature.inputs:
        raise _invalid(f"No classification inputs found in SignatureDef: {_debug_string(signature)}")
    outputs = [signature.outputs[key].name for key in ("classes", "scores") if key in signature.outputs]
    if not outputs:
        raise _invalid(
            'Expected classification signature outputs to contain at least one of "classes" or "scores". '
            f"Signature was: {_debug_string(signature)}"
        )
    return signature.inputs["inputs"].name, outputs


def regression_tensors(signature: meta_graph_pb2.SignatureDef) -> tuple[str, list[str]]:
    """The input tensor and the outputs tensor of a regression signature (PreProcessRegression)."""
    if len(signature.inputs) != 1:
        raise _invalid("Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise _invalid("Expected one output Tensor.")
    if "inputs" not in signature.inputs:
        raise _invalid(f"No regression inputs found in SignatureDef: {_debug_string(signature)}")
    if "outputs" not in signature.outputs:
        raise _invalid(f"No regression outputs found in SignatureDef: {_debug_string(signature)}")
    return signature.inputs["inputs"].name, [signature.outputs["outputs"].name]


def _shape(tensor: np.ndarray) -> str:
    return "[" + ",".join(str(size) for size in tensor.shape) + "]"


def _dtype_name(tensor: np.ndarray) -> str:
    return "DT_STRING" if tensor.dtype.kind in "OSU" else types_pb2.DataType.Name(dtype_enum(tensor.dtype))


def _classification_matrix(kind: str, tensor: np.ndarray, want: str, num_examples: int) -> None:
    if tensor.ndim != 2:
        raise _invalid(f"Expected Tensor shape: [batch_size num_classes] but got {_shape(tensor)}")
    if _dtype_name(tensor) != want:
        raise _invalid(f"Expected {kind} Tensor of {want}. Got: {_dtype_name(tensor)}")
    if tensor.shape[0] != num_examples:
        raise _invalid(f"Expected {kind} output batch size of {num_examples}. Got: {tensor.shape[0]}")


def classification_result(
    signature: meta_graph_pb2.SignatureDef, num_examples: int, fetched: dict[str, np.ndarray]
) -> classification_pb2.ClassificationResult:
    """The classes and scores tensors as a ClassificationResult (PostProcessClassificationResult)."""
    classes = fetched.get(signature.outputs["classes"].name) if "classes" in signature.outputs else None
    scores = fetched.get(signature.outputs["scores"].name) if "scores" in signature.outputs else None
    if classes is not None:
        _classification_matrix("classes", classes, "DT_STRING", num_examples)
    if scores is not None:
        _classification_matrix("scores", scores, "DT_FLOAT", num_examples)
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise _invalid(
            f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. {scores.shape[1]}"
        )
    num_classes = next(tensor.shape[1] for tensor in (classes, scores) if tensor is not None)
    result = classification_pb2.ClassificationResult()
    for row in range(num_examples):
        classifications = result.classifications.add()
        for column in range(num_classes):
            entry = classifications.classes.add()
            if classes is not None:
                entry.label = bytes(classes[row, column]).decode("utf-8", "replace")
            if scores is not None:
                entry.score = float(scores[row, column])
    return result


def regression_result(
    signature: meta_graph_pb2.SignatureDef, num_examples: int, fetched: dict[str, np.ndarray]
) -> regression_pb2.RegressionResult:
    """The outputs tensor as a RegressionResult (PostProcessRegressionResult)."""
    tensor = fetched[signature.outputs["outputs"].name]
    if not (tensor.ndim == 1 or (tensor.ndim == 2 and tensor.shape[1] == 1)):
        raise _invalid(
            f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got {_shape(tensor)}"
        )
    if tensor.shape[0] != num_examples:
        raise _invalid(f"Input batch size did not match output batch size: {num_examples} vs. {tensor.shape[0]}")
    if _dtype_name(tensor) != "DT_FLOAT":
        raise _invalid(f"Expected output Tensor of DT_FLOAT.  Got: {_dtype_name(tensor)}")
    result = regression_pb2.RegressionResult()
    for value in tensor.reshape(-1):
        result.regressions.add(value=float(value))
    return result


def _signature(loaded: LoadedVersion, name: str, not_found: str) -> meta_graph_pb2.SignatureDef:
    signature = loaded.signature_defs.get(name or DEFAULT_SIGNATURE)
    if signature is None:
        raise _invalid(not_found + (name or DEFAULT_SIGNATURE))
    return signature


def _run(
    loaded: LoadedVersion, request_input: input_pb2.Input, inputs: set[str], outputs: list[str]
) -> tuple[int, dict[str, np.ndarray]]:
    """The examples fed to every input tensor in one Session::Run: their number, and the fetched tensors by name."""
    examples = serialized_examples(request_input)
    fetches = sorted(set(outputs))
    values = loaded.session_run(dict.fromkeys(sorted(inputs), examples), fetches)
    return len(examples), dict(zip(fetches, values, strict=True))


def _model_spec(name: str, signature_name: str, version: int) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=name, signature_name=signature_name or DEFAULT_SIGNATURE)
    spec.version.value = version
    return spec


# Per method: how a signature's input and output tensors are found, the result made of the fetched tensors, and the
# field of MultiInference's InferenceResult it goes in.
METHODS: dict[str, tuple[Any, Any, str]] = {
    CLASSIFY: (classification_tensors, classification_result, "classification_result"),
    REGRESS: (regression_tensors, regression_result, "regression_result"),
}


def _run_one(loaded: LoadedVersion, request: Any, method: str, response: Any) -> Any:
    spec = request.model_spec
    signature = _signature(loaded, spec.signature_name, "No signature was found with the name: ")
    tensors, result, _ = METHODS[method]
    input_name, output_names = tensors(signature)
    num_examples, fetched = _run(loaded, request.input, {input_name}, output_names)
    response.model_spec.CopyFrom(_model_spec(spec.name, spec.signature_name, loaded.version))
    response.result.CopyFrom(result(signature, num_examples, fetched))
    return response


def classify(
    loaded: LoadedVersion, request: classification_pb2.ClassificationRequest
) -> classification_pb2.ClassificationResponse:
    """One Classify call on a resolved version (RunClassify)."""
    return _run_one(loaded, request, CLASSIFY, classification_pb2.ClassificationResponse())


def regress(loaded: LoadedVersion, request: regression_pb2.RegressionRequest) -> regression_pb2.RegressionResponse:
    """One Regress call on a resolved version (RunRegress)."""
    return _run_one(loaded, request, REGRESS, regression_pb2.RegressionResponse())


def _task_tensors(
    loaded: LoadedVersion, task: inference_pb2.InferenceTask, model_name: str, seen: set[str]
) -> tuple[meta_graph_pb2.SignatureDef, str, list[str]]:
    """One task's checks, in TF Serving's order, and its signature's input and output tensors."""
    if not task.model_spec.name:
        raise _invalid("Found ModelSpec with an empty model name.")
    if task.model_spec.name != model_name:
        raise _invalid("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
    signature_name = task.model_spec.signature_name or DEFAULT_SIGNATURE
    if signature_name in seen:
        raise _invalid(f"Duplicate evaluation of signature: {signature_name}")
    seen.add(signature_name)
    signature = _signature(loaded, signature_name, "Requested signature not found in model graph: ")
    if task.method_name not in METHODS:
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"Unsupported signature method_name: {task.method_name}")
    return signature, *METHODS[task.method_name][0](signature)


def multi_inference(
    loaded: LoadedVersion, request: inference_pb2.MultiInferenceRequest
) -> inference_pb2.MultiInferenceResponse:
    """Every task's signature run in one Session::Run on the same examples (TensorFlowMultiInferenceRunner); the
    version is the one the first task's ModelSpec resolved to."""
    model_name = request.tasks[0].model_spec.name if request.tasks else ""
    inputs: set[str] = set()
    outputs: list[str] = []
    signatures: list[meta_graph_pb2.SignatureDef] = []
    seen: set[str] = set()
    for task in request.tasks:
        signature, input_name, output_names = _task_tensors(loaded, task, model_name, seen)
        inputs.add(input_name)
        outputs += output_names
        signatures.append(signature)
    num_examples, fetched = _run(loaded, request.input, inputs, outputs)
    response = inference_pb2.MultiInferenceResponse()
    for task, signature in zip(request.tasks, signatures, strict=True):
        result = response.results.add()
        _, make_result, field = METHODS[task.method_name]
        getattr(result, field).CopyFrom(make_result(signature, num_examples, fetched))
        spec = task.model_spec
        result.model_spec.CopyFrom(_model_spec(spec.name, spec.signature_name, loaded.version))
    return response
