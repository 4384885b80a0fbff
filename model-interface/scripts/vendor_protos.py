"""Vendor TF Serving's generated protobuf modules into model_interface, without TensorFlow.

`tensorflow-serving-api`'s modules import `tensorflow.core.framework.*_pb2`, which imports all of TensorFlow.
This copies the generated modules the gateway and model-tools need (and their transitive imports) from an
environment where TensorFlow and tensorflow-serving-api are installed, rewriting only the Python import paths into
`model_interface.tfs_protos`. The serialized descriptors are left byte-for-byte as generated, so the proto file
names and message names stay those of TF Serving (wire-compatible, and loadable beside TensorFlow's own copies).

Run with the project venv: `python model-interface/scripts/vendor_protos.py` (see `make vendor-protos`).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path

PACKAGE = "model_interface.tfs_protos"
ROOTS = [
    "tensorflow_serving.apis.predict_pb2",
    "tensorflow_serving.apis.prediction_service_pb2_grpc",
    "tensorflow_serving.apis.get_model_metadata_pb2",
    "tensorflow_serving.apis.get_model_status_pb2",
    "tensorflow_serving.apis.model_service_pb2_grpc",
    "tensorflow_serving.apis.prediction_log_pb2",
]
# `from pkg import module_pb2` and the public-import form `from pkg.module_pb2 import *`.
IMPORT = re.compile(r"^from ((?:tensorflow|tensorflow_serving)(?:\.\w+)*) import (\w+|\*)", re.MULTILINE)
BUILDER = re.compile(r"(BuildTopDescriptorsAndMessages\(DESCRIPTOR, ')((?:tensorflow|tensorflow_serving)\.[\w.]+)'")
HEADER = (
    "# Vendored from {dist} by model-interface/scripts/vendor_protos.py (Apache License 2.0).\n"
    "# Only import paths were rewritten; do not edit by hand.\n"
)


def _source_path(module: str) -> Path:
    """Locate a module's file without importing it (importing would pull in TensorFlow)."""
    top, _, rest = module.partition(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"error: {top} is not installed; run this with the project venv (make setup)")
    return Path(next(iter(spec.submodule_search_locations)), *rest.split(".")).with_suffix(".py")


def _distribution(module: str) -> str:
    from importlib.metadata import version

    if module.startswith("tensorflow_serving"):
        return f"tensorflow-serving-api {version('tensorflow-serving-api')}"
    return f"tensorflow {version('tensorflow')}"


def vendor(target: Path) -> list[str]:
    """Copy the import closure of ROOTS into target, return the module names written."""
    if target.exists():
        shutil.rmtree(target)
    pending, done = list(ROOTS), []
    while pending:
        module = pending.pop()
        if module in done:
            continue
        done.append(module)
        text = _source_path(module).read_text()
        for package, name in IMPORT.findall(text):
            pending.append(package if name == "*" else f"{package}.{name}")
        text = IMPORT.sub(lambda m: f"from {PACKAGE}.{m.group(1)} import {m.group(2)}", text)
        text = BUILDER.sub(lambda m: f"{m.group(1)}{PACKAGE}.{m.group(2)}'", text)
        out = target.joinpath(*module.split(".")).with_suffix(".py")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(HEADER.format(dist=_distribution(module)) + text)
    for directory in [target, *(p for p in target.rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()
    return sorted(done)


if __name__ == "__main__":
    here = Path(__file__).resolve().parent.parent / "src" / "model_interface" / "tfs_protos"
    modules = vendor(here)
    print(f"vendored {len(modules)} modules into {here}")
