"""What the classifier needs from TF Serving, whatever the transport: the resolved contract, Predict, readiness.

`Predictor` owns what both transports share: deadlines, retries with jittered exponential backoff, the contract
check on every new model version, tensor-name discovery, and the client-facing errors. A transport (`grpc_api`,
`rest_api`) implements six methods: `encode`, `with_choice`, `send`, `model_versions`, `signature_defs` and
`close`; its
connections live in a `PerProcess` (created after gunicorn's fork).

A request goes: `resolve()` -> `encode(resolved, images, choice)` (the caller may then free the images) ->
`predict(resolved, batch, timeout)`. `resolve()` returns an immutable `ResolvedContract` that the whole request uses,
even if a readiness check discovers new tensor names meanwhile.
"""

from __future__ import annotations

import logging
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from clothing_gateway.errors import GatewayError
from clothing_gateway.predictor.signature import ResolvedContract, contract_differences, discover_tensor_names, resolve
from model_interface.contract import ModelContract

log = logging.getLogger(__name__)
T = TypeVar("T")
UNKNOWN_LABEL = "Unrecognized servable version label"  # TF Serving's INVALID_ARGUMENT text for a label it lacks


@dataclass(frozen=True)
class Readiness:
    """Whether the model server reports the model AVAILABLE and matching the contract, and why (not)."""

    ready: bool
    detail: str


@dataclass(frozen=True)
class VersionChoice:
    """The version of the model a request goes to, chosen as TF Serving's ModelSpec chooses it: the latest version
    when neither field is set, else a version number or a version label (TF Serving's config maps labels)."""

    number: int | None = None
    label: str | None = None

    def __str__(self) -> str:
        if self.number is not None:
            return f"version {self.number}"
        return f'version label "{self.label}"' if self.label else "the latest version"


LATEST = VersionChoice()


@dataclass(frozen=True)
class EncodedBatch:
    """A Predict request body, ready to send, the number of images in it and the version it goes to."""

    body: bytes
    rows: int
    choice: VersionChoice = LATEST


def version_not_found(name: str, choice: VersionChoice) -> GatewayError:
    return GatewayError("version_not_found", f'the model server does not serve {choice} of model "{name}"')


class Retryable(Exception):
    """Raised by one attempt of a call that may be tried again: `cause` is what the call raises when no attempt is
    left, `reason` names the failure in the retry log line."""

    def __init__(self, cause: Exception, reason: str, details: str = "") -> None:
        super().__init__(reason)
        self.cause = cause
        self.reason = reason
        self.details = details


def deadline_exceeded(timeout: float) -> GatewayError:
    return GatewayError("deadline_exceeded", f"the model server did not answer within {timeout:g} s")


def unavailable(what: str, details: str, *, quiet: bool = False) -> GatewayError:
    """`model_unavailable`; the server's details are logged, not returned to the client."""
    log.log(logging.INFO if quiet else logging.WARNING, "model server unavailable: %s: %s", what, details)
    return GatewayError("model_unavailable", f"the model server is unavailable ({what}); retry later")


def missing_output(name: str, got: Sequence[str]) -> GatewayError:
    return GatewayError(
        "model_error", f'the model server answered without output "{name}" (got: {", ".join(sorted(got)) or "none"})'
    )


class Predictor(ABC):
    """TF Serving at `target`, serving the model the contract describes.

    With `discover_tensor_names` (the book's transformer env gives no tensor names), the input and output names and
    the input dtype are read from the served signature, which must have one input and one output; this happens on
    the first readiness check or request, and again whenever a new model version is served.
    """

    def __init__(
        self,
        target: str,
        contract: ModelContract,
        *,
        use_uint8: bool = True,
        discover_tensor_names: bool = False,
        max_attempts: int = 3,
        backoff_seconds: float = 0.1,
        on_retry: Callable[[], None] | None = None,
    ) -> None:
        self.target = target
        self.contract = contract  # as configured; the served model's is in resolve()
        self.use_uint8 = use_uint8
        self.discover_tensor_names = discover_tensor_names
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.on_retry = on_retry
        self._resolved = None if discover_tensor_names else resolve(contract, use_uint8)
        self._checked: tuple[int, list[str]] | None = None  # (version, differences) of the last contract check

    # --- the transport's part ------------------------------------------------------------------------------------

    @abstractmethod
    def encode(
        self, resolved: ResolvedContract, images: Sequence[np.ndarray], choice: VersionChoice = LATEST
    ) -> EncodedBatch:
        """The Predict request for `images` (each H x W x 3, one dtype and shape) as one batch, to `choice`."""

    @abstractmethod
    def with_choice(self, resolved: ResolvedContract, batch: EncodedBatch, choice: VersionChoice) -> EncodedBatch:
        """The same request to another version (a shadow copy), without encoding the images again."""

    @abstractmethod
    def send(self, resolved: ResolvedContract, batch: EncodedBatch, timeout: float) -> np.ndarray:
        """Send a Predict request; the output array (GatewayError when there is none)."""

    @abstractmethod
    def model_versions(self, timeout: float) -> list[tuple[int, str]]:
        """(version, state name) of every version of the model the server knows; GatewayError when it cannot say."""

    @abstractmethod
    def signature_defs(self, timeout: float, choice: VersionChoice = LATEST) -> Mapping[str, Any]:
        """The signatures (name -> SignatureDef proto) of the version `choice` names; GatewayError when they cannot
        be read."""

    @abstractmethod
    def close(self) -> None:
        """Release this process's connections (a later call opens new ones)."""

    # --- shared ---------------------------------------------------------------------------------------------------

    def resolve(self, timeout: float) -> ResolvedContract:
        """The contract and request signature, reading the tensor names from the model server first when unknown."""
        resolved = self._resolved
        if resolved is None:
            resolved, _ = self._adopt(self.signature_defs(timeout))
        return resolved

    def predict(self, resolved: ResolvedContract, batch: EncodedBatch, timeout: float) -> np.ndarray:
        """Run the request signature on the batch: the output array, one row per image."""
        outputs = self.send(resolved, batch, timeout)
        if outputs.dtype.kind not in "fiu":
            raise GatewayError("model_error", f"the model returned {outputs.dtype} values, not scores")
        if outputs.ndim == 0 or outputs.shape[0] != batch.rows:
            raise GatewayError(
                "model_error", f"the model returned shape {list(outputs.shape)} for a batch of {batch.rows}"
            )
        return outputs

    def readiness(self, timeout: float = 3.0, labels: Iterable[str] = ()) -> Readiness:
        """Whether a version of the model is AVAILABLE; on a version not seen before, the contract is checked against
        the served signatures (differences are logged and reported). Each of `labels` (a traffic policy's) must name
        an AVAILABLE version matching the contract too."""
        try:
            versions = self.model_versions(timeout)
        except GatewayError as exc:
            return Readiness(False, f"model server {self.target}: {exc.message}")
        available = [version for version, state in versions if state == "AVAILABLE"]
        if not available:
            states = ", ".join(f"{version}: {state}" for version, state in versions)
            return Readiness(False, f'model "{self.contract.name}" has no AVAILABLE version ({states or "none"})')
        version = max(available)
        if self._checked is None or self._checked[0] != version:
            try:
                signature_defs = self.signature_defs(timeout)
            except GatewayError as exc:
                return Readiness(False, f"reading the model's signatures failed: {exc.message}")
            try:
                _, differences = self._adopt(signature_defs)
            except GatewayError as exc:  # the tensor names cannot be discovered
                differences = [exc.message]
            self._checked = (version, differences)
            if differences:
                log.error("model contract does not match the served model: %s", "; ".join(differences))
        differences = self._checked[1]
        if differences:
            return Readiness(False, "model contract does not match the served model: " + "; ".join(differences))
        contract = self._resolved.contract if self._resolved else self.contract  # tensor names discovered
        for label in sorted(labels):
            try:
                labelled = contract_differences(contract, self.signature_defs(timeout, VersionChoice(label=label)))
            except GatewayError as exc:
                return Readiness(False, f'version label "{label}": {exc.message}')
            if labelled:
                return Readiness(False, f'version label "{label}" does not match the contract: ' + "; ".join(labelled))
        detail = f'model "{self.contract.name}" version {version} is AVAILABLE'
        if labels:
            detail += f"; its labels {', '.join(sorted(labels))} name AVAILABLE versions matching the contract"
        return Readiness(True, detail)

    def _adopt(self, signature_defs: Mapping[str, Any]) -> tuple[ResolvedContract, list[str]]:
        """The resolved contract for these served signatures (tensor names discovered when asked to: GatewayError
        when impossible), kept for later requests, and every difference between them and the contract."""
        contract = self.contract
        if self.discover_tensor_names:
            contract = discover_tensor_names(contract, signature_defs)
        self._resolved = resolve(contract, self.use_uint8)
        return self._resolved, contract_differences(contract, signature_defs)

    def _with_retries(self, attempt: Callable[[float], T], timeout: float) -> T:
        """`attempt(remaining seconds)` within `timeout`: one that raises Retryable is tried again after a jittered
        exponential backoff, at most `max_attempts` times in all; then its cause is raised."""
        deadline = time.monotonic() + timeout
        for number in range(self.max_attempts):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                return attempt(remaining)
            except Retryable as retry:
                pause = self.backoff_seconds * 2**number * random.uniform(0.5, 1.0)  # noqa: S311 (jitter)
                if number == self.max_attempts - 1 or time.monotonic() + pause >= deadline:
                    raise retry.cause from None
                log.info("model server %s, retrying in %.2f s", retry.reason, pause, extra={"details": retry.details})
                if self.on_retry is not None:
                    self.on_retry()
                time.sleep(pause)
        raise deadline_exceeded(timeout)
