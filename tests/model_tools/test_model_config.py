"""The stand-in's `--model_config_file` as a real process: several models, version policies, version labels with TF
Serving's rules, a config re-read while serving, and ModelService/HandleReloadConfigRequest."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import text_format

from model_interface.tfs_protos.tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)
from tests.model_tools.conftest import ServerProcess, start_server
from tests.model_tools.test_server import predict_request, rest


def model_config(*models: str) -> str:
    """A ModelServerConfig text proto with one `config { ... }` per argument."""
    return "model_config_list {\n" + "".join(f"  config {{ {model} }}\n" for model in models) + "}\n"


def entry(name: str, base_path: Path, extra: str = "") -> str:
    return f'name: "{name}" base_path: "{base_path}" model_platform: "tensorflow" {extra}'


def labels(**versions: int) -> str:
    return " ".join(f'version_labels {{ key: "{label}" value: {version} }}' for label, version in versions.items())


@pytest.fixture
def versions(converted: Path, tmp_path: Path) -> Path:
    """A base path holding the mini model as versions 1, 2 and 3."""
    base = tmp_path / "mini"
    for version in (1, 2, 3):
        shutil.copytree(converted / "1", base / str(version))
    return base


def served_version(stub: Any, name: str, *, version: int | None = None, label: str | None = None) -> int:
    request = predict_request(name)
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    return int(stub.Predict(request, timeout=30).model_spec.version.value)


def predict_error(stub: Any, name: str, **spec: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        served_version(stub, name, **spec)
    return caught.value.code(), caught.value.details()


def statuses(server: ServerProcess, name: str) -> list[tuple[str, str]]:
    return [(s["version"], s["state"]) for s in rest(server, f"/v1/models/{name}")[1]["model_version_status"]]


def eventually(check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


@pytest.fixture
def stub_for() -> Iterator[Callable[[ServerProcess], Any]]:
    channels: list[grpc.Channel] = []

    def make(server: ServerProcess) -> Any:
        channels.append(grpc.insecure_channel(server.grpc_address))
        return prediction_service_pb2_grpc.PredictionServiceStub(channels[-1])

    yield make
    for channel in channels:
        channel.close()


def test_a_model_config_file_serves_every_model_it_lists(converted: Path, tmp_path: Path, stub_for: Any) -> None:
    for name in ("mini", "other"):
        shutil.copytree(converted, tmp_path / name)
    config = tmp_path / "models.config"
    config.write_text(
        "model_config_list {\n"
        f'  config {{ name: "mini" base_path: "{tmp_path / "mini"}" model_platform: "tensorflow" }}\n'
        f'  config: {{ name: "other", base_path: "{tmp_path / "other"}", model_platform: "tensorflow",'
        " model_version_policy { latest {} } }\n"  # the colon form, and num_versions left at 0 (means 1)
        "}\n"
    )
    server = start_server(tmp_path / "ignored", "ignored", tmp_path / "server.log", f"--model_config_file={config}")
    try:
        for name in ("mini", "other"):
            assert statuses(server, name) == [("1", "AVAILABLE")]
        stub = stub_for(server)
        assert served_version(stub, "other") == 1
        assert predict_error(stub, "ignored") == (
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Latest(ignored)",
        )
    finally:
        server.stop()


def test_version_policies_serve_the_versions_they_name(versions: Path, tmp_path: Path, stub_for: Any) -> None:
    config = tmp_path / "models.config"
    config.write_text(
        model_config(
            entry("every", versions, "model_version_policy { all {} }"),
            entry("chosen", versions, "model_version_policy { specific { versions: 1 versions: 3 versions: 9 } }"),
            entry("newest", versions, "model_version_policy { latest { num_versions: 2 } }"),
        )
    )
    server = start_server(tmp_path, "x", tmp_path / "server.log", f"--model_config_file={config}")
    try:
        assert statuses(server, "every") == [("3", "AVAILABLE"), ("2", "AVAILABLE"), ("1", "AVAILABLE")]
        assert statuses(server, "chosen") == [("3", "AVAILABLE"), ("1", "AVAILABLE")]
        assert statuses(server, "newest") == [("3", "AVAILABLE"), ("2", "AVAILABLE")]
        stub = stub_for(server)
        assert [served_version(stub, "every", version=v) for v in (1, 2, 3)] == [1, 2, 3]
        assert served_version(stub, "chosen") == 3  # Latest is the highest version served
        assert predict_error(stub, "chosen", version=2) == (
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Specific(chosen, 2)",
        )
        assert predict_error(stub, "newest", version=1)[0] == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("model_config_list { config { nme: 'x' } }", "Error parsing text-format tensorflow.serving.ModelServerConfig"),
        ("model_config_list { config { name: 'x' base_path: '/m' } }",
         "Failed to start server. Error: INVALID_ARGUMENT: Illegal setting neither ModelServerConfig::model_type "
         "(deprecated) nor ModelServerConfig::model_platform."),
        ("model_config_list { config { name: 'x' base_path: 'relative' model_platform: 'tensorflow' } }",
         "Expected model x to have an absolute path or URI; got base_path()=relative"),
        ("model_config_list { config { name: 'x' base_path: '/a' model_platform: 'tensorflow' }"
         " config { name: 'x' base_path: '/b' model_platform: 'tensorflow' } }",
         "Illegal to list model x multiple times in config list"),
        ("model_config_list { config { name: 'x' base_path: '/m' model_platform: 'tensorflow'"
         " version_labels { key: 'stable' value: 1 } } }",
         "Failed to start server. Error: FAILED_PRECONDITION: Request to assign label to version 1 of model x, "
         "which is not currently available for inference"),
    ],
    ids=["syntax", "no-platform", "relative-path", "listed-twice", "label-without-allow-flag"],
)  # fmt: skip
def test_a_config_tf_serving_refuses_exits_255(tmp_path: Path, config: str, message: str) -> None:
    path = tmp_path / "models.config"
    path.write_text(config)
    server = start_server(tmp_path, "x", tmp_path / "server.log", f"--model_config_file={path}", wait=False)
    assert server.process.wait(timeout=60) == 255
    assert message in server.output()


def test_labels_route_requests_and_a_polled_config_moves_them_without_a_failed_request(
    versions: Path, tmp_path: Path, stub_for: Any
) -> None:
    """A canary rollout as the chart drives it: versions 1 and 2 labelled stable and canary, stable moved to 2, then
    version 1 dropped, while a client keeps asking for `stable`; a label moved to a version that is not AVAILABLE
    is refused and changes nothing. Labels at start-up need `--allow_version_labels_for_unavailable_models`."""
    config = tmp_path / "models.config"
    specific = "model_version_policy { specific { versions: 1 versions: 2 } }"
    config.write_text(model_config(entry("mini", versions, f"{specific} {labels(stable=1, canary=2)}")))
    server = start_server(
        tmp_path,
        "x",
        tmp_path / "server.log",
        f"--model_config_file={config}",
        "--model_config_file_poll_wait_seconds=1",
        "--allow_version_labels_for_unavailable_models",
    )
    stub = stub_for(server)
    answered: Counter[int | str] = Counter()
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                answered[served_version(stub, "mini", label="stable")] += 1
            except grpc.RpcError as exc:
                answered[exc.details()] += 1

    try:
        assert (served_version(stub, "mini", label="stable"), served_version(stub, "mini", label="canary")) == (1, 2)
        assert rest(server, "/v1/models/mini/labels/canary/metadata")[1]["model_spec"]["version"] == "2"
        assert predict_error(stub, "mini", label="beta") == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "Unrecognized servable version label: beta",
        )
        thread = threading.Thread(target=client)
        thread.start()
        config.write_text(model_config(entry("mini", versions, f"{specific} {labels(stable=2, canary=2)}")))
        eventually(lambda: served_version(stub, "mini", label="stable") == 2)
        config.write_text(model_config(entry("mini", versions, f"{specific} {labels(stable=2, canary=3)}")))
        eventually(lambda: "Request to assign label to version 3 of model mini" in server.output())
        assert served_version(stub, "mini", label="canary") == 2
        config.write_text(
            model_config(
                entry("mini", versions, f"model_version_policy {{ specific {{ versions: 2 }} }} {labels(stable=2)}")
            )
        )
        eventually(lambda: statuses(server, "mini") == [("2", "AVAILABLE"), ("1", "END")])
        time.sleep(1)
        stop.set()
        thread.join(timeout=30)
        assert set(answered) == {1, 2}, answered  # every request answered, by version 1 and then by version 2
        assert predict_error(stub, "mini", label="canary")[0] == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        stop.set()
        server.stop()


def test_reloads_add_and_remove_models_and_refuse_bad_configs(versions: Path, tmp_path: Path, stub_for: Any) -> None:
    """HandleReloadConfigRequest: a model that leaves the config is unloaded (its END status stays), a new one is
    loaded before the call returns, and a config TF Serving refuses is answered with its error and changes nothing."""
    server = start_server(versions, "mini", tmp_path / "server.log")
    channel = grpc.insecure_channel(server.grpc_address)
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    stub = stub_for(server)

    def reload(text: str) -> Any:
        request = model_management_pb2.ReloadConfigRequest()
        text_format.Parse(text, request.config)
        return models.HandleReloadConfigRequest(request, timeout=60)

    try:
        reload(model_config(entry("other", versions, "model_version_policy { specific { versions: 2 } }")))
        assert served_version(stub, "other") == 2
        assert statuses(server, "mini") == [("3", "END")]
        assert predict_error(stub, "mini")[0] == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as caught:
            reload(model_config(entry("a", versions), entry("a", versions)))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details() == "Illegal to list model a multiple times in config list"
        with pytest.raises(grpc.RpcError) as caught:
            reload(model_config(entry("other", versions, labels(stable=3))))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert served_version(stub, "other") == 2
    finally:
        channel.close()
        server.stop()
