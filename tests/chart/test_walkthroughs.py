"""The chart README's install walk-throughs (EKS, minikube, microk8s) checked against what the chart renders, so the
docs cannot drift from the chart: the images a walk-through builds are the images its values file runs, pushed or
never pulled as its cluster needs; the Dockerfiles and values files it names exist; it installs with --wait before
`helm test`, the order the local cluster's e2e (tests/cluster/e2e.sh) proves on real pods; and its kubectl commands
read the Service the chart makes. EKS, minikube and microk8s themselves cannot run here.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest

from tests.chart.conftest import CHART, objects
from tests.conftest import REPO

README = CHART / "README.md"
WALKTHROUGHS = {"Amazon EKS": "values/eks.yaml", "minikube": "values/minikube.yaml", "microk8s": "values/microk8s.yaml"}
# Which Dockerfile builds the image of which Deployment's first container.
DOCKERFILES = {"images/gateway/Dockerfile": "gateway", "images/tf-serving/Dockerfile": "tf-serving"}


def commands(heading: str) -> list[list[str]]:
    """The shell commands of the first ```sh block under `### heading`: continuation lines joined, comments and
    `&&`-chains split, environment variables set by `export NAME=value` substituted."""
    text = README.read_text()
    section = text[text.index(f"### {heading}\n") :]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block, f"no ```sh block under ### {heading}"
    env: dict[str, str] = {}
    result = []
    for line in block.group(1).replace("\\\n", " ").splitlines():
        for command in line.split("&&"):
            words = shlex.split(command, comments=True)
            if words[:1] == ["export"] and "$(" not in command:
                name, _, value = words[1].partition("=")
                env[name] = value
            elif words:
                result.append([re.sub(r"\$(\w+)", lambda m: env.get(m.group(1), m.group(0)), w) for w in words])
    return result


def option(words: list[str], flag: str) -> str:
    """The value after `flag` in a command's words."""
    assert flag in words, f"{flag} missing from: {shlex.join(words)}"
    return words[words.index(flag) + 1]


def built_images(steps: list[list[str]]) -> dict[str, str]:
    """Component -> the image reference a walk-through builds for it (`docker build` or `minikube image build`)."""
    images = {}
    for words in steps:
        if "build" in words and "-f" in words:
            dockerfile = option(words, "-f")
            assert (REPO / dockerfile).is_file(), f"{dockerfile} does not exist"
            assert words[-1] == ".", f"the build context is the repository root: {shlex.join(words)}"
            images[DOCKERFILES[dockerfile]] = option(words, "-t")
    return images


def deployment_container(manifest: str, component: str) -> dict[str, Any]:
    for obj in objects(manifest):
        if obj["kind"] == "Deployment" and obj["metadata"]["labels"]["app.kubernetes.io/component"] == component:
            return obj["spec"]["template"]["spec"]["containers"][0]
    raise AssertionError(f"no {component} Deployment rendered")


def install_step(steps: list[list[str]]) -> tuple[int, list[str]]:
    for index, words in enumerate(steps):
        if "install" in words and "charts/clothing-model" in words:
            return index, words
    raise AssertionError("no helm install of charts/clothing-model")


@pytest.mark.parametrize("heading", WALKTHROUGHS)
def test_a_walkthrough_installs_its_values_file_with_wait_before_helm_test(heading: str) -> None:
    steps = commands(heading)
    index, install = install_step(steps)
    assert option(install, "-f") == WALKTHROUGHS[heading]
    assert (REPO / WALKTHROUGHS[heading]).is_file()
    assert install[install.index("install") + 1] == "clothing"
    assert option(install, "-n") == "models"
    assert "--wait" in install, "helm test right after an install without --wait fails on slow starts"
    test = next(i for i, words in enumerate(steps) if words[-4:] == ["test", "clothing", "-n", "models"])
    assert test > index, "helm test must come after the install"


@pytest.mark.parametrize("heading", WALKTHROUGHS)
def test_a_walkthrough_builds_the_images_its_values_file_runs(heading: str, renders: dict[str, str]) -> None:
    steps = commands(heading)
    images = built_images(steps)
    assert set(images) == set(DOCKERFILES.values()), f"{heading} builds {sorted(images)}"
    manifest = renders[WALKTHROUGHS[heading]]
    pushed = {option(words, "push") for words in steps if "push" in words}
    for component, image in images.items():
        container = deployment_container(manifest, component)
        assert container["image"] == image, f"{heading}: {component} runs {container['image']}, the docs build {image}"
        if container["imagePullPolicy"] != "Never":
            assert image in pushed, f"{heading}: {image} is pulled by the cluster but never pushed"


def test_the_eks_images_are_built_for_the_nodes_architecture() -> None:
    for words in commands("Amazon EKS"):
        if "build" in words and "-f" in words:
            assert option(words, "--platform") == "linux/amd64", shlex.join(words)


@pytest.mark.parametrize("heading", WALKTHROUGHS)
def test_a_walkthrough_reads_the_address_of_the_service_the_chart_makes(heading: str, renders: dict[str, str]) -> None:
    services = {
        obj["metadata"]["name"]: obj["spec"]["type"]
        for obj in objects(renders[WALKTHROUGHS[heading]])
        if obj["kind"] == "Service"
    }
    names = [words[words.index("svc") + 1] for words in commands(heading) if "svc" in words]
    assert names, f"{heading} never reads the gateway Service"
    for name in names:
        assert services.get(name) == "LoadBalancer", f"{heading} reads svc {name}; the chart renders {services}"


def test_every_file_the_calling_examples_send_exists() -> None:
    for path in re.findall(r"--data-binary @(\S+)", README.read_text()):
        assert (REPO / path).is_file(), f"the README sends {path}, which does not exist"
