"""`model-tools inspect`: what `saved_model_cli show --all` tells about the serving signatures, plus the model
contract as JSON, a values snippet for the chart and env for the gateway."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from model_interface.contract import ContractError, ModelContract, parse_contract
from model_interface.tfs_protos.tensorflow.core.framework import types_pb2
from model_interface.tfs_protos.tensorflow.core.protobuf import meta_graph_pb2
from model_tools.convert import ConvertError, read_contract_file
from model_tools.servable import read_signature_defs, version_dirs


def version_dir(path: Path) -> Path:
    """A version dir as given, or the highest numeric version under a model base dir."""
    if (path / "saved_model.pb").is_file():
        return path
    versions = version_dirs(path)
    if not versions:
        raise ConvertError(f"{path}: neither a SavedModel directory nor a model dir with numeric versions")
    return versions[max(versions)]


def _shape(info: meta_graph_pb2.TensorInfo) -> str:
    if info.tensor_shape.unknown_rank:
        return "unknown_rank"
    dims = [str(d.size) for d in info.tensor_shape.dim]
    return "(" + ", ".join(dims) + ")"


def describe(defs: dict[str, meta_graph_pb2.SignatureDef]) -> str:
    """The SignatureDef part of `saved_model_cli show --all`, in its exact layout."""
    lines = ["MetaGraphDef with tag-set: 'serve' contains the following SignatureDefs:", ""]
    for key in sorted(defs):
        signature = defs[key]
        lines.append(f"signature_def['{key}']:")
        for kind, tensors in (("input", signature.inputs), ("output", signature.outputs)):
            lines.append(f"  The given SavedModel SignatureDef contains the following {kind}(s):")
            for alias in sorted(tensors):
                info = tensors[alias]
                lines += [
                    f"    {kind}s['{alias}'] tensor_info:",
                    f"        dtype: {types_pb2.DataType.Name(info.dtype)}",
                    f"        shape: {_shape(info)}",
                    f"        name: {info.name}",
                ]
        lines.append(f"  Method name is: {signature.method_name}")
        lines.append("")
    return "\n".join(lines)


def contract_from_signatures(
    defs: dict[str, meta_graph_pb2.SignatureDef], name: str, labels: list[str], scaling: str, preprocessing: str
) -> ModelContract:
    """Build the contract from the `serving_default` signature (and `serving_uint8` if present)."""
    if "serving_default" not in defs:
        raise ConvertError("the SavedModel has no serving_default signature")
    default = defs["serving_default"]
    if len(default.inputs) != 1 or len(default.outputs) != 1:
        raise ConvertError("serving_default must have exactly one input and one output")
    ((input_name, input_info),) = default.inputs.items()
    ((output_name, _),) = default.outputs.items()
    dims = [d.size for d in input_info.tensor_shape.dim]
    if len(dims) != 4:
        raise ConvertError(f"serving_default input {input_name} is not a batch of images: shape {_shape(input_info)}")
    uint8 = None
    if "serving_uint8" in defs:
        ((u_input, _),) = defs["serving_uint8"].inputs.items()
        ((u_output, _),) = defs["serving_uint8"].outputs.items()
        uint8 = {"signatureName": "serving_uint8", "inputName": u_input, "outputName": u_output}
    return parse_contract(
        {
            "name": name,
            "signatureName": "serving_default",
            "inputName": input_name,
            "outputName": output_name,
            "inputDtype": "uint8" if input_info.dtype == types_pb2.DT_UINT8 else "float32",
            "inputSize": dims[1:3],
            "scaling": scaling,
            "labels": labels,
            "preprocessing": preprocessing,
            "uint8": uint8,
        }
    )


def inspect(
    path: Path,
    name: str | None = None,
    labels: list[str] | None = None,
    scaling: str | None = None,
    preprocessing: str | None = None,
) -> tuple[str, ModelContract]:
    """Describe a SavedModel; returns (saved_model_cli-style text, contract). Labels/scaling/name/preprocessing
    given here override what `convert` stored."""
    directory = version_dir(path)
    defs = read_signature_defs(directory)
    stored = read_contract_file(directory) or {}
    model_name = name or stored.get("name") or directory.parent.name
    model_labels = labels or stored.get("labels")
    if not model_labels:
        raise ConvertError("no labels: pass --labels (the SavedModel was not written by model-tools convert)")
    try:
        contract = contract_from_signatures(
            defs, model_name, list(model_labels), scaling or stored.get("scaling", "xception"),
            preprocessing or stored.get("preprocessing", "fast"),
        )  # fmt: skip
    except ContractError as exc:
        raise ConvertError(str(exc)) from None
    outputs = defs["serving_default"].outputs[contract.output_name].tensor_shape.dim
    if outputs and outputs[-1].size not in (-1, len(contract.labels)):
        raise ConvertError(f"{len(contract.labels)} labels but the model outputs {outputs[-1].size} values")
    return describe(defs), contract


def values_snippet(contract: ModelContract) -> str:
    """The chart's `model:` values block (JSON is valid YAML; one key per line for readable diffs)."""
    lines = ["model:"]
    for key, value in contract.to_dict().items():
        lines.append(f"  {key}: {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def models_entry(contract: ModelContract, path: Path) -> str:
    """One entry of the chart's `models:` list: the contract, the numeric versions under the model's base dir, and
    a `stable` label on the highest (the starting point of a canary rollout)."""
    versions = sorted(version_dirs(path)) or [int(version_dir(path).name)]
    lines = ["models:"]
    for index, (key, value) in enumerate(contract.to_dict().items()):
        lines.append(f"  {'- ' if index == 0 else '  '}{key}: {json.dumps(value)}")
    lines.append(f"    versions: {json.dumps(versions)}")
    lines.append(f"    versionLabels: {json.dumps({'stable': versions[-1]})}")
    return "\n".join(lines) + "\n"


def gateway_env(contract: ModelContract) -> str:
    """Environment for a gateway started by hand."""
    compact = json.dumps(contract.to_dict(), separators=(",", ":"))
    return f"GATEWAY_MODEL_CONTRACT={shlex.quote(compact)}\n"
