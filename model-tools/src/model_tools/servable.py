"""Model loading, version management, Predict and batching for the TF-Serving-compatible model server.

Mirrors TF Serving's observable behaviour (tensorflow_serving master 9d981c5c / 2.20.0): numeric version
directories served by a version policy (latest N, all, specific), new versions loaded before old ones are unloaded,
status that keeps every version seen (END ones included, newest first), warmup replayed before a version becomes
AVAILABLE, and the exact error texts and codes of its Predict path. A Loader turns a version directory into a
LoadedVersion: `load_version` (TensorFlow, SavedModels) in production; the gateway's tests pass a TensorFlow-free one.
The models of a server and their version labels are server_core's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from model_interface.tensors import dtype_enum, numpy_dtype, tf_name
from model_interface.tfs_protos.tensorflow.core.framework import types_pb2
from model_interface.tfs_protos.tensorflow.core.protobuf import meta_graph_pb2

log = logging.getLogger("model_tools.server")

MAX_WARMUP_RECORDS = 1000
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"


class ServingError(Exception):
    """A request error with TF Serving's gRPC status code and message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class TensorInfo:
    """One signature input or output: its alias, feed/fetch name, dtype enum and shape (-1 = any)."""

    alias: str
    name: str
    dtype: int
    shape: tuple[int, ...] | None

    @property
    def numpy_dtype(self) -> np.dtype:
        return numpy_dtype(self.dtype)


# One version's Session::Run, as TF Serving calls it: feeds and fetches by tensor name, outputs in fetch order.
SessionRun = Callable[[dict[str, np.ndarray], list[str]], list[np.ndarray]]


@dataclass
class Signature:
    """A signature of a loaded version: its inputs and outputs by alias, run through the version's SessionRun."""

    name: str
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    session_run: SessionRun

    @classmethod
    def from_def(cls, name: str, signature_def: meta_graph_pb2.SignatureDef, session_run: SessionRun) -> Signature:
        """A signature whose inputs and outputs are those its SignatureDef declares."""
        return cls(
            name=name,
            inputs={alias: _tensor_info(alias, info) for alias, info in signature_def.inputs.items()},
            outputs={alias: _tensor_info(alias, info) for alias, info in signature_def.outputs.items()},
            session_run=session_run,
        )

    def run(self, inputs: dict[str, np.ndarray], output_filter: list[str] | None = None) -> dict[str, np.ndarray]:
        """Feed the inputs by alias; fetch the outputs named in output_filter (all when empty), by alias."""
        aliases = sorted(set(output_filter or self.outputs))
        feeds = {self.inputs[alias].name: value for alias, value in inputs.items()}
        values = self.session_run(feeds, [self.outputs[alias].name for alias in aliases])
        return dict(zip(aliases, values, strict=True))


@dataclass
class LoadedVersion:
    """One loaded version, as TF Serving's SavedModelBundle: the SignatureDefs of its MetaGraph and the SessionRun
    that runs its graph; `signatures` are made from the two."""

    version: int
    path: Path
    signature_defs: dict[str, meta_graph_pb2.SignatureDef]
    session_run: SessionRun
    signatures: dict[str, Signature] = field(init=False)
    batchers: dict[str, Batcher] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.signatures = {
            key: Signature.from_def(key, signature_def, self.session_run)
            for key, signature_def in self.signature_defs.items()
        }


# Loads one version directory (`<base_path>/<N>/`); raises if it cannot be served.
Loader = Callable[[Path], LoadedVersion]

SERVING_TAG = "serve"
INIT_OP_KEY = "__saved_model_init_op"


def read_signature_defs(version_dir: Path) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The serving signatures stored in saved_model.pb, as `saved_model_cli show` lists them."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel.FromString((version_dir / "saved_model.pb").read_bytes())
    graph = saved_model.meta_graphs[0]
    return {
        key: meta_graph_pb2.SignatureDef.FromString(value.SerializeToString())
        for key, value in graph.signature_def.items()
        if key != INIT_OP_KEY
    }


def _tensor_info(alias: str, info: Any) -> TensorInfo:
    shape = None if info.tensor_shape.unknown_rank else tuple(d.size for d in info.tensor_shape.dim)
    return TensorInfo(alias=alias, name=info.name, dtype=info.dtype, shape=shape)


def status_code(value: int) -> grpc.StatusCode:
    """The gRPC status code with this number (TensorFlow's error codes are the same numbers)."""
    return next((code for code in grpc.StatusCode if code.value[0] == value), grpc.StatusCode.UNKNOWN)


def load_version(version_dir: Path) -> LoadedVersion:
    """Load one SavedModel version directory as TF Serving does (the production Loader): the MetaGraph tagged
    "serve" into a Session of its own (TF1 and TF2 SavedModels alike), its init op run.

    Requests run through the C++ Session::Run (TF_SessionRun), not `Session.run`: the Python wrapper refuses feeds
    whose shape differs from the placeholder's, TF Serving does not (a kernel that cannot take the shape fails, and
    its status is the answer). The session is closed when the version is no longer referenced: after its unload and
    the last request that resolved it."""
    import tensorflow as tf

    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph)
    with graph.as_default():
        meta_graph = tf.compat.v1.saved_model.load(session, [SERVING_TAG], str(version_dir))
    signature_defs = {
        key: meta_graph_pb2.SignatureDef.FromString(value.SerializeToString())
        for key, value in meta_graph.signature_def.items()
        if key != INIT_OP_KEY
    }

    def session_run(feeds: dict[str, np.ndarray], fetches: list[str]) -> list[np.ndarray]:
        try:
            outputs = [graph.get_tensor_by_name(name)._as_tf_output() for name in fetches]
            feed_dict = {graph.get_tensor_by_name(name)._as_tf_output(): value for name, value in feeds.items()}
            return list(session._call_tf_sessionrun(None, feed_dict, outputs, [], None))
        except tf.errors.OpError as exc:
            raise ServingError(status_code(exc.error_code), exc.message) from None
        except (KeyError, ValueError) as exc:  # a SignatureDef naming a tensor the graph does not have
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None

    return LoadedVersion(int(version_dir.name), version_dir, signature_defs, session_run)


def _names(values: list[str]) -> str:
    return "{" + ",".join(sorted(values)) + "}"


def validate_inputs(signature: Signature, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Check input aliases and dtypes exactly as TF Serving does (shapes are not checked: the graph's kernels take
    them or fail); return inputs cast to the signature dtypes."""
    expected, sent = set(signature.inputs), set(inputs)
    if len(sent) != len(expected):
        extra, missing = sorted(sent - expected), sorted(expected - sent)
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input size does not match signature: {len(sent)}!={len(expected)} len({_names(list(sent))}) != "
            f"len({_names(list(expected))}). Sent extra: {_names(extra)}. Missing but required: {_names(missing)}.",
        )
    for alias in sorted(expected - sent):
        info = signature.inputs[alias]
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Signature input alias: {alias}(feed name: {info.name}) not found in request and no default value "
            "provided",
        )
    cast = {}
    for index, (alias, info) in enumerate(sorted(signature.inputs.items())):
        value = inputs[alias]
        if not _same_kind(value.dtype, info.numpy_dtype):
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Expects arg[{index}] to be {tf_name(info.dtype)} but {_tf_name(value.dtype)} is provided",
            )
        cast[alias] = value if info.dtype == types_pb2.DT_STRING else value.astype(info.numpy_dtype, copy=False)
    return cast


def _same_kind(got: np.dtype, want: np.dtype) -> bool:
    return got == want or (got.kind in "OSU" and want.kind == "O")


def _tf_name(dtype: np.dtype) -> str:
    if dtype.kind in "OSU":
        return "string"
    try:
        return tf_name(dtype_enum(dtype))
    except ValueError:
        return str(dtype)


@dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's BatchingParameters (session_bundle_config.proto) with its defaults."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = 0  # 0 = number of cores
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False


@dataclass
class _Task:
    inputs: dict[str, np.ndarray]
    rows: int
    future: Future[dict[str, np.ndarray]] = field(default_factory=Future)


class Batcher:
    """Merges concurrent Predict calls on one signature into batches, as TF Serving's batching session does:
    a batch closes when it reaches max_batch_size rows or batch_timeout_micros after its first task."""

    def __init__(self, signature: Signature, params: BatchingParameters, on_batch: Callable[[int], None]) -> None:
        import os

        self.signature = signature
        self.params = params
        self.on_batch = on_batch
        self._queue: list[_Task] = []
        self._cond = threading.Condition()
        self._stopped = False
        threads = params.num_batch_threads or os.cpu_count() or 1
        self._threads = [
            threading.Thread(target=self._loop, name=f"batch-{signature.name}-{i}", daemon=True) for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Queue one request and wait for its slice of the batch result."""
        if not inputs:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Batching Run() must have at least one input tensor")
        if any(value.ndim == 0 for value in inputs.values()):
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, "Batching Run() input tensors must have at least one dimension"
            )
        sizes = {int(value.shape[0]) for value in inputs.values()}
        if len(sizes) > 1:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "Batching Run() input tensors must have equal 0th-dimension size",
            )
        rows = sizes.pop()
        if rows > self.params.max_batch_size:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Task size {rows} is larger than maximum input batch size {self.params.max_batch_size}",
            )
        task = _Task(inputs, rows)
        with self._cond:
            stopped = self._stopped
            if not stopped:
                queued = sum(t.rows for t in self._queue)
                if queued + rows > self.params.max_enqueued_batches * self.params.max_batch_size:
                    raise ServingError(
                        grpc.StatusCode.UNAVAILABLE,
                        "The batch scheduling queue to which this task was submitted is full",
                    )
                self._queue.append(task)
                self._cond.notify()
        if stopped:  # the version was unloaded after this request resolved it: it still gets its answer
            return self.signature.run(inputs)
        return task.future.result()

    def stop(self) -> None:
        """Stop the batch threads after the queued tasks are done; later submits run unbatched."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _take_batch(self) -> list[_Task] | None:
        with self._cond:
            while not self._queue:
                if self._stopped:
                    return None
                self._cond.wait()
            deadline = time.monotonic() + self.params.batch_timeout_micros / 1e6
            while sum(t.rows for t in self._queue) < self.params.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopped:
                    break
                self._cond.wait(remaining)
            batch, rows = [], 0
            while self._queue and rows + self._queue[0].rows <= self.params.max_batch_size:
                task = self._queue.pop(0)
                batch.append(task)
                rows += task.rows
            return batch

    def _loop(self) -> None:
        while (batch := self._take_batch()) is not None:
            self._run(batch)

    def _run(self, batch: list[_Task]) -> None:
        rows = sum(t.rows for t in batch)
        padded = rows
        if self.params.allowed_batch_sizes:
            padded = next((size for size in self.params.allowed_batch_sizes if size >= rows), rows)
        try:
            outputs = self.signature.run(_merged_inputs(batch, padded - rows))
            if any(value.ndim == 0 for value in outputs.values()):
                raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, "Batched output tensor has 0 dimensions")
            if any(value.shape[0] != padded for value in outputs.values()):
                raise ServingError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "Batched output tensor's 0th dimension does not equal the sum of the 0th dimension sizes of the "
                    "input tensors",
                )
        except Exception as exc:  # noqa: BLE001 - every task in the batch gets the batch's error
            for task in batch:
                task.future.set_exception(exc)
            return
        self.on_batch(padded)
        start = 0
        for task in batch:
            task.future.set_result({k: v[start : start + task.rows] for k, v in outputs.items()})
            start += task.rows


def _merged_inputs(batch: list[_Task], padding: int) -> dict[str, np.ndarray]:
    """The tasks' inputs concatenated along dimension 0, the last row repeated `padding` times."""
    merged = {}
    for alias in batch[0].inputs:
        parts = [t.inputs[alias] for t in batch]
        if padding:
            parts.append(np.repeat(parts[-1][-1:], padding, axis=0))
        try:
            merged[alias] = np.concatenate(parts, axis=0)
        except ValueError as exc:  # tasks whose inner dimensions differ cannot share a batch
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Cannot batch input {alias}: {exc}") from None
    return merged


@dataclass
class VersionStatus:
    """One line of GetModelStatus: a version's state and error."""

    version: int
    state: str
    error_code: int = 0
    error_message: str = ""


def version_dirs(base_path: Path) -> dict[int, Path]:
    """Numeric version directories under a model's base path, by the version their name parses to as TF Serving
    parses it (`0001` is version 1); non-numeric names are skipped silently, and of two spellings of one number the
    first by name is taken. Empty when the base path is not a directory."""
    if not base_path.is_dir():
        return {}
    found: dict[int, Path] = {}
    for path in sorted(base_path.iterdir()):
        if path.is_dir() and path.name.isdigit():
            found.setdefault(int(path.name), path)
    return found


@dataclass(frozen=True)
class VersionPolicy:
    """TF Serving's ServableVersionPolicy: the `latest` N versions (N at least 1), `all`, or `specific` ones."""

    kind: str = "latest"
    num_versions: int = 1
    versions: frozenset[int] = frozenset()

    def aspired(self, found: list[int]) -> list[int]:
        """The versions to serve out of those found on disk (ascending)."""
        if self.kind == "all":
            return found
        if self.kind == "specific":
            return [version for version in found if version in self.versions]
        return found[-max(self.num_versions, 1) :]


class ServableManager:
    """One model's versions under `<base_path>/<N>/`, served by its VersionPolicy as TF Serving's file system source
    and availability-preserving manager do: aspired versions load before others unload, a failed new version leaves
    the old ones serving, and a version that failed to load stays END and is not retried."""

    def __init__(
        self,
        name: str,
        base_path: Path,
        *,
        policy: VersionPolicy = VersionPolicy(),
        batching: BatchingParameters | None = None,
        warmup: bool = True,
        on_batch: Callable[[int], None] = lambda size: None,
        on_load: Callable[[str, bool], None] = lambda path, ok: None,
        loader: Loader = load_version,
    ) -> None:
        self.name = name
        self.base_path = base_path
        self.policy = policy
        self.loader = loader
        self.batching = batching
        self.warmup = warmup
        self.on_batch = on_batch
        self.on_load = on_load
        self.loaded: dict[int, LoadedVersion] = {}  # replaced, never mutated: requests read it without a lock
        self.status: dict[int, VersionStatus] = {}

    def poll(self) -> bool:
        """Load aspired versions not loaded yet, then unload the others. True if a load failed."""
        directories = version_dirs(self.base_path)
        if not directories:
            if self.loaded:
                log.info("all versions of %s were removed; unloading them", self.name)
                self.unload_all()
            elif not self.base_path.is_dir():
                log.warning("Could not find base path %s for servable %s", self.base_path, self.name)
            else:
                log.warning("No versions of servable %s found under base path %s", self.name, self.base_path)
            return False
        aspired = self.policy.aspired(sorted(directories))
        failed = False
        for version in aspired:
            if version not in self.loaded and not self._failed(version):
                failed |= not self._load(version, directories[version])
        if not aspired or any(version in self.loaded for version in aspired):
            for version in sorted(set(self.loaded) - set(aspired)):
                self._unload(version)
        return failed

    def _failed(self, version: int) -> bool:
        status = self.status.get(version)
        return status is not None and status.state == "END" and status.error_code != 0

    def _load(self, version: int, path: Path) -> bool:
        self.status[version] = VersionStatus(version, "LOADING")
        log.info("Loading servable: {name: %s version: %d}", self.name, version)
        try:
            loaded = self.loader(path)
            if self.batching is not None:
                for key, signature in loaded.signatures.items():
                    loaded.batchers[key] = Batcher(signature, self.batching, self.on_batch)
            if self.warmup:
                replay_warmup(loaded)
        except Exception as exc:  # noqa: BLE001 - any load failure is reported in status, as TF Serving does
            log.error("Loading servable %s version %d failed: %s", self.name, version, exc)
            self.status[version] = VersionStatus(version, "END", grpc.StatusCode.UNKNOWN.value[0], str(exc))
            self.on_load(str(path), False)
            return False
        self.loaded = {**self.loaded, version: loaded}
        self.status[version] = VersionStatus(version, "AVAILABLE")
        self.on_load(str(path), True)
        log.info("Successfully loaded servable version {name: %s version: %d}", self.name, version)
        return True

    def _unload(self, version: int) -> None:
        loaded = self.loaded[version]
        self.loaded = {v: other for v, other in self.loaded.items() if v != version}
        self.status[version] = VersionStatus(version, "END")
        for batcher in loaded.batchers.values():
            batcher.stop()
        log.info("Unloaded servable version {name: %s version: %d}", self.name, version)

    def unload_all(self) -> None:
        """Unload every version (the model left the config, or its versions were deleted)."""
        for version in sorted(self.loaded):
            self._unload(version)

    def resolve(self, version: int | None = None) -> LoadedVersion:
        """The highest loaded version, or the given one; TF Serving's NOT_FOUND error if there is none."""
        loaded = self.loaded
        if version is None and loaded:
            return loaded[max(loaded)]
        if version is not None and version in loaded:
            return loaded[version]
        request = f"Specific({self.name}, {version})" if version is not None else f"Latest({self.name})"
        raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request}")

    def model_status(self, version: int | None = None) -> list[VersionStatus]:
        """Status lines newest first; NOT_FOUND texts as GetModelStatus gives them."""
        if not self.status:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {self.name}")
        if version is not None:
            if version not in self.status:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find version {version} of model {self.name}")
            return [self.status[version]]
        return [self.status[v] for v in sorted(self.status, reverse=True)]


def predict(
    loaded: LoadedVersion, signature_name: str, inputs: dict[str, np.ndarray], output_filter: list[str]
) -> dict[str, np.ndarray]:
    """Run one Predict on a resolved version (batched when batching is on)."""
    key = signature_name or "serving_default"
    signature = loaded.signatures.get(key)
    if signature is None:
        raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{key}" not found.')
    for alias in output_filter:
        if alias not in signature.outputs:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"output tensor alias not found in signature: {alias}")
    inputs = validate_inputs(signature, inputs)
    batcher = loaded.batchers.get(key)
    if batcher is None:
        return signature.run(inputs, output_filter)
    outputs = batcher.submit(inputs)
    return {alias: value for alias, value in outputs.items() if not output_filter or alias in output_filter}


def replay_warmup(loaded: LoadedVersion) -> int:
    """Replay `<version>/assets.extra/tf_serving_warmup_requests` (TFRecord of PredictionLog) before the version
    becomes AVAILABLE; any error fails the load. Returns the number of records replayed."""
    path = loaded.path / WARMUP_FILE
    if not path.exists():
        return 0
    import tensorflow as tf

    from model_interface.tensors import to_ndarray
    from model_interface.tfs_protos.tensorflow_serving.apis import prediction_log_pb2

    count = 0
    for record in tf.data.TFRecordDataset(str(path)):
        count += 1
        if count > MAX_WARMUP_RECORDS:
            raise ValueError(f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}")
        log_entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        if log_entry.WhichOneof("log_type") != "predict_log":
            raise ValueError("Unsupported log_type for warmup: only predict_log is supported by this server")
        request = log_entry.predict_log.request
        inputs = {alias: to_ndarray(tensor) for alias, tensor in request.inputs.items()}
        predict(loaded, request.model_spec.signature_name, inputs, list(request.output_filter))
    log.info("Finished reading warmup data for model at %s. Number of warmup records read: %d.", path, count)
    return count
