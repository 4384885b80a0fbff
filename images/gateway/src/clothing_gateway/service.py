"""The classification pipeline behind every predict endpoint: images (URLs or bytes) -> one batched Predict call
(gRPC or REST) to one of the served models -> `{label: score}` per image."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np

from clothing_gateway.config import Config
from clothing_gateway.errors import GatewayError
from clothing_gateway.event_loop import off_the_event_loop
from clothing_gateway.fetch import CachedResolver, ConnectionPools, DownloadSlots, FetchPolicy, fetch_image
from clothing_gateway.metrics import Metrics
from clothing_gateway.per_process import PerProcess
from clothing_gateway.postprocessing import label_scores
from clothing_gateway.predictor.base import LATEST, Predictor, VersionChoice
from clothing_gateway.predictor.signature import ResolvedContract
from clothing_gateway.traffic import TrafficPolicy
from model_interface.preprocessing import ImageError, ImageTooLargeError, image_pixels, scale

log = logging.getLogger(__name__)
# An image to classify: a URL to download (str) or the encoded image itself (bytes).
ImageSource = str | bytes
MAX_PARALLEL_DOWNLOADS = 8


@contextmanager
def _naming_item(prefix: str | None, index: int) -> Iterator[None]:
    """Prefix a GatewayError's message with the batch item it concerns ("instances[2]: ...")."""
    try:
        yield
    except GatewayError as exc:
        if prefix:
            raise exc.with_context(f"{prefix}[{index}]") from None
        raise


class DecodeSlots:
    """The worker's decode slots (GATEWAY_MAX_CONCURRENT_DECODES) and the queue in front of them.

    Full-size decoded images are the biggest buffers (4 bytes per pixel, up to max_pixels): at most `slots` exist at
    once per worker, whatever the number of requests; decoding is CPU-bound, so more would not help. An image waits
    for a slot at most `max_wait` seconds (GATEWAY_MAX_QUEUE_SECONDS). When the queue already holds more than half
    that much work, a new prediction is refused at admission instead (`refusal()`, asked by admission.py before the
    download): an overloaded worker answers 503 in milliseconds, not after max_wait. The work queued is the images
    waiting x the recent interval between two slots freed while images waited (how fast the worker really gets
    through its queue, event loop and CPU contention included), or before any queue has formed, x the time a slot is
    held / slots.
    """

    def __init__(self, slots: int, max_wait: float, metrics: Metrics) -> None:
        self.slots = slots
        self.max_wait = max_wait
        self.metrics = metrics
        self._semaphore = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self._waiting = 0
        self._seconds_held = 0.0  # moving average of how long a slot is held
        self._seconds_between = 0.0  # moving average of the interval between two slots freed while images waited
        self._last_freed_with_queue = 0.0  # when a slot was last freed while images waited (0: not the last one)

    def expected_wait(self) -> float:
        """Seconds an image queued now would wait for a slot, by the recent decodes."""
        return self._waiting * (self._seconds_between or self._seconds_held / self.slots)

    def refusal(self) -> str | None:
        """Why a new image is refused now, or None. It is refused when the queue already holds more than half of
        max_wait of work: the other half is the estimate's margin, so that an image admitted rarely waits max_wait
        only to be refused then."""
        expected = self.expected_wait()
        if expected <= self.max_wait / 2:
            return None
        return (
            f"about {expected:.1f} s of decoding is queued in this worker "
            f"(GATEWAY_MAX_QUEUE_SECONDS: {self.max_wait:g})"
        )

    @contextmanager
    def hold(self) -> Iterator[None]:
        """One slot for the block's duration, after at most max_wait seconds in the queue. An image is not refused
        here for the queue's length: admission (`refusal()`) did that before its download, and refusing it now would
        throw that download away, the very work an overloaded worker is short of."""
        with self._lock:
            self._waiting += 1
        self.metrics.queued.inc()
        try:
            acquired = self._semaphore.acquire(timeout=self.max_wait)
        finally:
            self.metrics.queued.dec()
            with self._lock:
                self._waiting -= 1
        if not acquired:
            self.metrics.shed.labels("decode_queue").inc()
            raise GatewayError(
                "overloaded", f"no decode slot free within {self.max_wait:g} s (GATEWAY_MAX_QUEUE_SECONDS)"
            )
        started = time.perf_counter()
        try:
            yield
        finally:
            self._semaphore.release()
            self._freed(time.perf_counter() - started)

    def _freed(self, held: float) -> None:
        """Learn from a freed slot. The interval since the previous one counts only when images waited at both: then
        the queue stood all along and slots were freed as fast as the worker could go, not after idle time."""
        now = time.perf_counter()
        self._seconds_held = _moving_average(self._seconds_held, held)
        if self._waiting and self._last_freed_with_queue:
            self._seconds_between = _moving_average(self._seconds_between, now - self._last_freed_with_queue)
        self._last_freed_with_queue = now if self._waiting else 0.0


class Shadows:
    """Shadow copies in flight in this worker, bounded; each compares its answer with the client's."""

    def __init__(self, max_in_flight: int, timeout: float, metrics: Metrics) -> None:
        self.timeout = timeout
        self.metrics = metrics
        self._slots = threading.BoundedSemaphore(max_in_flight)

    def send(self, model: str, call: Callable[[float], np.ndarray], answered: np.ndarray) -> None:
        """Run `call(timeout)` in the background (a greenlet under gevent) and compare its output with `answered`;
        past the bound, drop it. Returns at once."""
        if not self._slots.acquire(blocking=False):
            self.metrics.shadow_requests.labels(model, "dropped").inc()
            return
        threading.Thread(target=self._run, args=(model, call, answered), name="shadow", daemon=True).start()

    def _run(self, model: str, call: Callable[[float], np.ndarray], answered: np.ndarray) -> None:
        try:
            shadowed = call(self.timeout)
        except GatewayError as exc:
            self.metrics.shadow_requests.labels(model, exc.code).inc()
            return
        except Exception:  # a shadow must never take the worker down: count and log it
            log.exception("shadow request failed")
            self.metrics.shadow_requests.labels(model, "internal_error").inc()
            return
        finally:
            self._slots.release()
        self.metrics.shadow_requests.labels(model, "ok").inc()
        if shadowed.shape != answered.shape:
            self.metrics.shadow_agreement.labels(model, "different").inc(len(answered))
            return
        same = np.argmax(shadowed, axis=-1) == np.argmax(answered, axis=-1)
        self.metrics.shadow_agreement.labels(model, "same").inc(int(same.sum()))
        self.metrics.shadow_agreement.labels(model, "different").inc(int((~same).sum()))
        for row in np.abs(shadowed.astype(np.float64) - answered).max(axis=-1):
            self.metrics.shadow_difference.labels(model).observe(float(row))


def _moving_average(average: float, sample: float) -> float:
    return sample if not average else average + 0.2 * (sample - average)


@dataclass(frozen=True)
class ServedModel:
    """A model this gateway serves: its predictor (which holds its contract), the preprocessing its images get and
    its traffic policy, if any."""

    predictor: Predictor
    preprocessing: str
    traffic: TrafficPolicy | None = None

    @property
    def name(self) -> str:
        return self.predictor.contract.name

    def route(self, key: str | None) -> VersionChoice:
        """The version a request that names none goes to: the traffic policy's choice, else the latest."""
        return self.traffic.choose(key) if self.traffic else LATEST

    def metric_label(self, choice: VersionChoice) -> str:
        """`choice` as a metric label value, bounded: a policy's label, `latest`, or `other`."""
        if choice == LATEST:
            return "latest"
        return choice.label if self.traffic and choice.label in self.traffic.labels() else "other"


def _pixels(data: bytes, model: ServedModel, resolved: ResolvedContract, max_pixels: int) -> np.ndarray:
    """Decode, resize and scale one image as the model's signature expects it (pure: runs on any thread)."""
    try:
        pixels = image_pixels(data, resolved.contract.input_size, model.preprocessing, max_pixels)
    except ImageTooLargeError as exc:
        raise GatewayError("too_many_pixels", str(exc)) from None
    except ImageError as exc:
        raise GatewayError("not_an_image", str(exc)) from None
    return pixels if resolved.signature.input_dtype == "uint8" else scale(pixels, resolved.contract.scaling)


class Classifier:
    """Download, preprocess, predict and label a batch of images within a deadline, for any of the served models:
    downloads, decode slots and connections to image servers are the worker's, shared by every model."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self._downloads = PerProcess(
            lambda: ThreadPoolExecutor(
                max_workers=min(MAX_PARALLEL_DOWNLOADS, config.max_batch), thread_name_prefix="download"
            ),
            lambda executor: executor.shutdown(wait=False, cancel_futures=True),
        )
        self.decodes = DecodeSlots(config.max_concurrent_decodes, config.max_queue_seconds, metrics)
        self._download_slots = DownloadSlots(config.max_downloads, config.max_downloads_per_host, metrics)
        self._connections = ConnectionPools()  # keep-alive connections to image servers
        self._resolver = CachedResolver()
        self.shadows = Shadows(config.max_shadow_in_flight, config.deadline_seconds, metrics)

    def classify(
        self,
        model: ServedModel,
        images: Sequence[ImageSource],
        deadline: float,
        *,
        top_k: int | None = None,
        item_prefix: str | None = None,
        choice: VersionChoice = LATEST,
        shadow: VersionChoice | None = None,
    ) -> list[dict[str, float]]:
        """Scores for each image, in order, by `choice` of the model's versions (and a copy of the request to the
        `shadow` version, compared in the background). `deadline` is a time.monotonic() value; `item_prefix` (e.g.
        "instances") names the failing item in error messages: "instances[2]: ..."."""
        predictor = model.predictor
        resolved = predictor.resolve(max(0.001, deadline - time.monotonic()))
        image_data = self._map(
            [partial(self._download_item, image, deadline, item_prefix, i) for i, image in enumerate(images)]
        )
        arrays = []
        for i, data in enumerate(image_data):
            with _naming_item(item_prefix, i):
                arrays.append(self._preprocess(data, model, resolved))
        del image_data
        self.metrics.batch_size.observe(len(arrays))
        batch = predictor.encode(resolved, arrays, choice)
        del arrays  # the request holds the pixels now: free the arrays while the model runs
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise GatewayError("deadline_exceeded", f"the {self.config.deadline_seconds:g} s request deadline passed")
        started = time.perf_counter()
        outcome = "ok"
        try:
            outputs = predictor.predict(resolved, batch, remaining)
        except GatewayError as exc:
            outcome = exc.code
            raise
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.model_latency.labels(model.name, model.metric_label(choice), outcome).observe(elapsed)
        if shadow is not None:
            copy = predictor.with_choice(resolved, batch, shadow)
            self.shadows.send(model.name, partial(predictor.predict, resolved, copy), outputs)
        return label_scores(outputs, resolved.contract.labels, top_k)

    def _map(self, tasks: list[Callable[[], bytes]]) -> list[bytes]:
        """Run the tasks, in parallel when there are several; re-raise the first failure in task order."""
        if len(tasks) == 1:
            return [tasks[0]()]
        executor = self._downloads.get()
        futures = [executor.submit(task) for task in tasks]
        return [future.result() for future in futures]

    def _download_item(self, image: ImageSource, deadline: float, item_prefix: str | None, index: int) -> bytes:
        with _naming_item(item_prefix, index):
            return self._download(image, deadline)

    def _download(self, image: ImageSource, deadline: float) -> bytes:
        if isinstance(image, bytes):
            if len(image) > self.config.max_download_bytes:
                raise GatewayError(
                    "image_too_large",
                    f"the image is {len(image)} bytes, more than the {self.config.max_download_bytes} allowed",
                )
            return image
        remaining = deadline - time.monotonic()
        policy = FetchPolicy(
            max_bytes=self.config.max_download_bytes,
            timeout_seconds=max(0.001, min(self.config.download_timeout_seconds, remaining)),
            max_redirects=self.config.max_redirects,
            allowed_networks=self.config.allowed_networks,
        )
        started = time.perf_counter()
        outcome = "ok"
        try:
            return fetch_image(image, policy, self._connections, self._download_slots, self._resolver)
        except GatewayError as exc:
            outcome = exc.code
            raise
        finally:
            self.metrics.download_latency.labels(outcome).observe(time.perf_counter() - started)

    def _preprocess(self, data: bytes, model: ServedModel, resolved: ResolvedContract) -> np.ndarray:
        started = time.perf_counter()
        with self.decodes.hold():
            array = off_the_event_loop(_pixels, data, model, resolved, self.config.max_pixels)
        self.metrics.preprocess_latency.observe(time.perf_counter() - started)
        return array

    def close(self) -> None:
        """Stop the download threads and close kept-alive image server connections."""
        self._downloads.close()
        self._connections.close()
