"""The request signature and the contract check: pure functions of the model contract and the served signatures
(name -> SignatureDef, as both TF Serving APIs return them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from clothing_gateway.errors import GatewayError
from model_interface.contract import INPUT_DTYPES, ModelContract
from model_interface.tensors import dtype_enum, dtype_name
from model_interface.tfs_protos.tensorflow.core.framework import types_pb2

_OUTPUT_DTYPES = (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE)


@dataclass(frozen=True)
class Signature:
    """The signature requests are sent to, and the input dtype it takes."""

    name: str
    input_name: str
    output_name: str
    input_dtype: str


def request_signature(contract: ModelContract, use_uint8: bool) -> Signature:
    """The contract's uint8 signature when asked for and present, else its main signature."""
    if use_uint8 and contract.uint8 is not None:
        uint8 = contract.uint8
        return Signature(uint8.signature_name, uint8.input_name, uint8.output_name, "uint8")
    return Signature(contract.signature_name, contract.input_name, contract.output_name, contract.input_dtype)


@dataclass(frozen=True)
class ResolvedContract:
    """The contract as the served model has it (tensor names discovered when they had to be) and the signature
    requests go to: what one request uses from start to end."""

    contract: ModelContract
    signature: Signature


def resolve(contract: ModelContract, use_uint8: bool) -> ResolvedContract:
    """The contract with its request signature."""
    return ResolvedContract(contract, request_signature(contract, use_uint8))


def _signature_differences(
    contract: ModelContract, signature: Signature, signature_defs: Mapping[str, Any]
) -> list[str]:
    where = f'signature "{signature.name}"'
    if signature.name not in signature_defs:
        return [f"{where} not found; the model has: {', '.join(sorted(signature_defs)) or 'no signatures'}"]
    definition = signature_defs[signature.name]
    differences = []
    inputs, outputs = definition.inputs, definition.outputs
    if signature.input_name not in inputs:
        differences.append(f'{where} has no input "{signature.input_name}"; inputs: {", ".join(sorted(inputs))}')
    else:
        info = inputs[signature.input_name]
        if info.dtype != dtype_enum(signature.input_dtype):
            differences.append(
                f'{where} input "{signature.input_name}" is {dtype_name(info.dtype)}, the contract says '
                f"{signature.input_dtype}"
            )
        if not info.tensor_shape.unknown_rank:
            dims = [dim.size for dim in info.tensor_shape.dim]
            height, width = contract.input_size
            if len(dims) != 4 or dims[1] not in (-1, height) or dims[2] not in (-1, width) or dims[3] not in (-1, 3):
                differences.append(
                    f'{where} input "{signature.input_name}" has shape {dims}, the contract expects '
                    f"[-1, {height}, {width}, 3]"
                )
    if signature.output_name not in outputs:
        differences.append(f'{where} has no output "{signature.output_name}"; outputs: {", ".join(sorted(outputs))}')
    else:
        info = outputs[signature.output_name]
        if info.dtype not in _OUTPUT_DTYPES:
            differences.append(f'{where} output "{signature.output_name}" is {dtype_name(info.dtype)}, not a float')
        dims = [dim.size for dim in info.tensor_shape.dim]
        if not info.tensor_shape.unknown_rank and dims and dims[-1] not in (-1, len(contract.labels)):
            differences.append(
                f'{where} output "{signature.output_name}" has {dims[-1]} scores per image, the contract has '
                f"{len(contract.labels)} labels"
            )
    return differences


def discover_tensor_names(contract: ModelContract, signature_defs: Mapping[str, Any]) -> ModelContract:
    """The contract with the input and output names and input dtype of its signature, which must have exactly one
    input and one output (GatewayError `model_error` otherwise)."""
    where = f'signature "{contract.signature_name}"'
    if contract.signature_name not in signature_defs:
        names = ", ".join(sorted(signature_defs)) or "no signatures"
        raise GatewayError("model_error", f"{where} not found; the model has: {names}")
    definition = signature_defs[contract.signature_name]
    if len(definition.inputs) != 1 or len(definition.outputs) != 1:
        raise GatewayError(
            "model_error",
            f"{where} has inputs {sorted(definition.inputs)} and outputs {sorted(definition.outputs)}: tensor names "
            "are discovered only for one input and one output; give the model contract (GATEWAY_MODEL_CONTRACT)",
        )
    ((input_name, info),) = definition.inputs.items()
    dtypes = {dtype_enum(name): name for name in INPUT_DTYPES}
    if info.dtype not in dtypes:
        raise GatewayError("model_error", f'{where} input "{input_name}" is {dtype_name(info.dtype)}, not a pixel type')
    (output_name,) = definition.outputs
    return replace(contract, input_name=input_name, output_name=output_name, input_dtype=dtypes[info.dtype])


def contract_differences(contract: ModelContract, signature_defs: Mapping[str, Any]) -> list[str]:
    """Every way the served signatures (name -> SignatureDef) differ from the contract; empty when they match."""
    differences = _signature_differences(contract, request_signature(contract, use_uint8=False), signature_defs)
    if contract.uint8 is not None:
        differences += _signature_differences(contract, request_signature(contract, use_uint8=True), signature_defs)
    return differences
