"""The models one stand-in server serves and their version labels, as TF Serving's ServerCore keeps them.

A ModelServerConfig (built from `--model_name`/`--model_base_path`, read from `--model_config_file` and re-read every
`--model_config_file_poll_wait_seconds`, or sent with ModelService/HandleReloadConfigRequest) is checked and applied
in the order of TF Serving's `server_core.cc` (2.20.0), with its error codes and texts:

1. only a model_config_list; each model listed once, with an absolute base path and `model_platform: "tensorflow"`;
2. version labels, checked against the versions' states *before* anything loads: a label may point only at an
   AVAILABLE version. `--allow_version_labels_for_unavailable_models` relaxes this for a new label, or one that keeps
   its version, but never for a label moved to a version that is not AVAILABLE; a refused config changes nothing;
3. models new to the config load (a failure is "N model(s) did not become available"), models that left it unload
   (their END status stays visible), the others take their new base path and version policy.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import grpc

from model_interface.tfs_protos.tensorflow_serving.config import model_server_config_pb2
from model_tools.servable import LoadedVersion, ServableManager, ServingError, VersionPolicy, VersionStatus

log = logging.getLogger("model_tools.server")


@dataclass(frozen=True)
class ModelEntry:
    """One model of a config: its name, base path, version policy and version labels."""

    name: str
    base_path: Path
    policy: VersionPolicy
    labels: dict[str, int]


def single_model_config(name: str, base_path: str) -> model_server_config_pb2.ModelServerConfig:
    """The config TF Serving builds from `--model_name` and `--model_base_path`."""
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.config.add(name=name, base_path=base_path, model_platform="tensorflow")
    return config


def model_entries(config: model_server_config_pb2.ModelServerConfig) -> list[ModelEntry]:
    """The config's models, or TF Serving's error for a config it refuses."""
    if config.WhichOneof("config") != "model_config_list":
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "ServerModelConfig type not supported. Only ModelConfigList is currently supported",
        )
    entries: list[ModelEntry] = []
    for model in config.model_config_list.config:
        if any(entry.name == model.name for entry in entries):
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, f"Illegal to list model {model.name} multiple times in config list"
            )
        if not PurePosixPath(model.base_path).is_absolute():
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Expected model {model.name} to have an absolute path or URI; got base_path()={model.base_path}",
            )
        if model.model_platform != "tensorflow":
            message = (
                f"Model {model.name} requests unsupported platform {model.model_platform}"
                if model.model_platform
                else "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
                "ModelServerConfig::model_platform."
            )
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)
        entries.append(ModelEntry(model.name, Path(model.base_path), _policy(model), dict(model.version_labels)))
    return entries


def _policy(model: model_server_config_pb2.ModelConfig) -> VersionPolicy:
    policy = model.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy("all")
    if choice == "specific":
        return VersionPolicy("specific", versions=frozenset(policy.specific.versions))
    return VersionPolicy("latest", num_versions=policy.latest.num_versions or 1)


class ServerCore:
    """Every model of the current config by name, the version labels, and the requests' side: resolve (by version
    or label) and model_status."""

    def __init__(
        self, make_manager: Callable[[ModelEntry], ServableManager], *, allow_labels_for_unavailable: bool = False
    ) -> None:
        self.make_manager = make_manager
        self.allow_labels_for_unavailable = allow_labels_for_unavailable
        self.by_name: dict[str, ServableManager] = {}  # replaced, never mutated: requests read it without a lock
        self.removed: dict[str, ServableManager] = {}
        self.labels: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()  # one reload or poll at a time

    # --- requests ---------------------------------------------------------------------------------------------
    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> LoadedVersion:
        """The version a request addresses; a label is looked up first, as TF Serving does."""
        if label:
            version = self.labels.get(name, {}).get(label)
            if version is None:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Unrecognized servable version label: {label}")
        manager = self.by_name.get(name)
        if manager is None:
            request = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request}")
        return manager.resolve(version)

    def model_status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """Status lines newest first, for a model of the config or one that left it (all END)."""
        manager = self.by_name.get(name) or self.removed.get(name)
        if manager is None:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {name}")
        return manager.model_status(version)

    # --- config and versions ----------------------------------------------------------------------------------
    def reload(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """Apply a config (the first one included); a ServingError leaves the served models as they were, except
        that models loaded before a failure stay loaded."""
        entries = model_entries(config)
        with self._lock:
            self.labels = self._checked_labels(entries)
            first = not self.by_name and not self.removed
            managers = {}
            for entry in entries:
                manager = self.by_name.get(entry.name) or self.removed.pop(entry.name, None) or self.make_manager(entry)
                manager.base_path, manager.policy = entry.base_path, entry.policy
                managers[entry.name] = manager
            for name in set(self.by_name) - set(managers):
                log.info("model %s left the config; unloading it", name)
                self.by_name[name].unload_all()
                self.removed[name] = self.by_name[name]
            new = [name for name in managers if name not in self.by_name]
            self.by_name = managers
            if first:
                return  # the server's start-up waits for the first models
            failed = [name for name, manager in managers.items() if manager.poll() and name in new]
        if failed:
            raise ServingError(grpc.StatusCode.UNKNOWN, f"{len(failed)} model(s) did not become available: {failed}")

    def _checked_labels(self, entries: list[ModelEntry]) -> dict[str, dict[str, int]]:
        labels: dict[str, dict[str, int]] = {}
        for entry in entries:
            manager = self.by_name.get(entry.name) or self.removed.get(entry.name)
            for label, version in entry.labels.items():
                kept = self.labels.get(entry.name, {}).get(label, version) == version
                status = manager.status.get(version) if manager else None
                if not (self.allow_labels_for_unavailable and kept) and (status is None or status.state != "AVAILABLE"):
                    raise ServingError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"Request to assign label to version {version} of model {entry.name}, which is not currently "
                        "available for inference",
                    )
                labels.setdefault(entry.name, {})[label] = version
        return labels

    def poll(self) -> list[str]:
        """Poll every model's base path; the names of those where a load failed."""
        with self._lock:
            return [name for name, manager in self.by_name.items() if manager.poll()]

    def waiting(self) -> list[str]:
        """The models with no version loaded yet."""
        return [name for name, manager in self.by_name.items() if not manager.loaded]
