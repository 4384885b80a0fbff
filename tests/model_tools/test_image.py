"""`model-tools image`: a model image's build context, written by the real CLI."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

from tests.model_tools.conftest import run_cli


def _same_tree(left: Path, right: Path) -> bool:
    compared = filecmp.dircmp(left, right)
    if compared.left_only or compared.right_only or compared.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(left, right, compared.common_files, shallow=False)
    return not mismatch and not errors and all(_same_tree(left / d, right / d) for d in compared.common_dirs)


def test_image_writes_the_version_and_a_dockerfile_copying_only_it(converted: Path, tmp_path: Path) -> None:
    out = tmp_path / "image"
    result = run_cli("image", converted, "--out", out)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["Dockerfile", "mini"]
    assert _same_tree(converted / "1", out / "mini" / "1")
    instructions = [line for line in (out / "Dockerfile").read_text().splitlines() if line and line[0] != "#"]
    assert instructions[:2] == ["FROM scratch", "COPY mini/1/ /mini/1/"]
    assert "{model: mini, version: 1," in result.stdout


def test_image_renames_and_renumbers_and_inspect_agrees(converted: Path, tmp_path: Path) -> None:
    out = tmp_path / "image"
    result = run_cli("image", converted, "--out", out, "--name", "shirts", "--version", "7")
    assert result.returncode == 0, result.stderr
    assert "COPY shirts/7/ /shirts/7/" in (out / "Dockerfile").read_text()
    contract = json.loads(run_cli("inspect", out / "shirts", "--format", "json").stdout)
    assert contract["name"] == "shirts"
    entry = run_cli("inspect", out / "shirts", "--format", "models").stdout
    assert "versions: [7]" in entry
    assert (converted / "1" / "saved_model.pb").read_bytes() == (out / "shirts" / "7" / "saved_model.pb").read_bytes()
    assert json.loads((converted / "1" / "assets.extra" / "model-contract.json").read_text())["name"] == "mini"


def test_image_never_writes_into_an_existing_directory(converted: Path, tmp_path: Path) -> None:
    out = tmp_path / "image"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    result = run_cli("image", converted, "--out", out)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert "already exists" in result.stderr
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["image"]


def test_image_of_a_directory_without_a_savedmodel_is_one_clear_error(tmp_path: Path) -> None:
    result = run_cli("image", tmp_path, "--out", tmp_path / "image")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert "neither a SavedModel" in result.stderr
    assert not (tmp_path / "image").exists()
