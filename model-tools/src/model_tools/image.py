"""`model-tools image`: the build context of a model image, an OCI image holding one SavedModel version and nothing
else (`/<name>/<version>/` on an empty base), which the chart serves with `tfServing.modelSource.type: modelImages`.

The context is the version directory and a Dockerfile `FROM scratch`; `docker build`, `buildah bud` or `kaniko` build
it and any registry stores it, so a model ships, is pinned by digest and is rolled back like any other image, apart
from the TF Serving image.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from model_tools.convert import CONTRACT_FILE, ConvertError, read_contract_file, staged
from model_tools.inspect_model import version_dir

DOCKERFILE = """\
# A model image for the clothing-model chart: only /{name}/{version}/ (a SavedModel), on an empty base.
# Serve it with tfServing.modelSource.type: modelImages (see the chart's README).
FROM scratch
COPY {name}/{version}/ /{name}/{version}/
LABEL org.opencontainers.image.title="{name}" org.opencontainers.image.version="{version}"
"""


def write_image_context(model: Path, out: Path, name: str | None, version: int | None) -> tuple[str, int]:
    """Copy a SavedModel version (a version dir, or a base dir's latest) to `out/<name>/<version>/` and write
    `out/Dockerfile`; returns (name, version). `out` must not exist yet; nothing is left behind on failure. A new
    name is written into the copy's stored contract, so `inspect` on the copy agrees with the image."""
    source = version_dir(model)
    stored = read_contract_file(source)
    name = name or (stored or {}).get("name") or source.parent.name
    version = int(source.name) if version is None else version
    if version < 0:
        raise ConvertError(f"version must be a non-negative integer, not {version}")
    if out.exists():
        raise ConvertError(f"{out} already exists: give a new directory for the image's build context")
    with staged(out) as staging:
        target = staging / name / str(version)
        shutil.copytree(source, target)
        if stored is not None and stored.get("name") != name:
            (target / CONTRACT_FILE).write_text(json.dumps({**stored, "name": name}, indent=2) + "\n")
        (staging / "Dockerfile").write_text(DOCKERFILE.format(name=name, version=version))
    return name, version
