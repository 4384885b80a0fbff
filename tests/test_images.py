"""The images' Dockerfiles against the repository: both build with the repository root as the context, whose
.dockerignore lets through only what they copy, and every base they start FROM is a build argument defaulting to a
pinned public image. (The e2e builds both with buildah, FROM local stand-ins, and runs them on pods.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

DOCKERFILES = [REPO / "images" / "gateway" / "Dockerfile", REPO / "images" / "tf-serving" / "Dockerfile"]


def copied_sources(dockerfile: Path) -> list[str]:
    """The context paths a Dockerfile COPYs (not those copied from another stage), build arguments at their
    defaults."""
    sources, defaults = [], {}
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words[:1] == ["ARG"] and "=" in words[1]:
            name, _, value = words[1].partition("=")
            defaults[name] = value
        if words[:1] == ["COPY"] and not any(word.startswith("--from=") for word in words):
            copied = [word for word in words[1:] if not word.startswith("--")][:-1]
            sources += [re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], word) for word in copied]
    return sources


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.parent.name)
def test_every_copied_path_exists_and_passes_the_dockerignore(dockerfile: Path) -> None:
    rules = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in rules  # everything else is left out of the context
    allowed = [rule[1:].rstrip("/") for rule in rules if rule.startswith("!")]
    sources = copied_sources(dockerfile)
    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert any(source == path or source.startswith(path + "/") for path in allowed), source


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.parent.name)
def test_every_base_is_a_build_argument_defaulting_to_a_pinned_public_image(dockerfile: Path) -> None:
    lines = [line.split() for line in dockerfile.read_text().splitlines()]
    first = next(i for i, words in enumerate(lines) if words[:1] == ["FROM"])
    defaults = dict(words[1].split("=", 1) for words in lines[:first] if words[:1] == ["ARG"] and "=" in words[1])
    stages, bases = {"scratch"}, []
    for words in lines[first:]:
        if words[:1] == ["FROM"]:
            base = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], words[1])
            if base not in stages:  # an image, not an earlier stage
                bases.append((words[1], base))
            if "AS" in words:
                stages.add(words[-1])
    assert bases
    for written, image in bases:
        assert re.fullmatch(r"(\$\{\w+\}:?)+", written), f"FROM {written}: the base is not a build argument"
        assert re.fullmatch(r"[a-z/]+:\d+\.\d+\.\d+[\w.-]*", image), f"FROM {written}: {image} is not pinned"


def test_compose_mounts_what_exists_and_runs_tf_serving_as_amd64() -> None:
    services = yaml.safe_load((REPO / "docker-compose.yaml").read_text())["services"]
    assert services["tf-serving"]["platform"] == "linux/amd64"  # tensorflow/serving has no arm64 image
    assert (REPO / services["gateway"]["build"]["dockerfile"]).is_file()
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (REPO / source).exists(), f"docker-compose.yaml mounts {source}, which does not exist"
