"""The classification pipeline behind every predict endpoint: images (URLs or bytes) -> one batched Predict call
(gRPC or REST) -> `{label: score}` per image."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial

import numpy as np

from clothing_gateway.config import Config
from clothing_gateway.errors import GatewayError
from clothing_gateway.fetch import ConnectionPools, FetchPolicy, fetch_image
from clothing_gateway.metrics import Metrics
from clothing_gateway.per_process import PerProcess
from clothing_gateway.postprocessing import label_scores
from clothing_gateway.predictor.base import Predictor
from clothing_gateway.predictor.signature import ResolvedContract
from model_interface.preprocessing import ImageError, ImageTooLargeError, load_image, resize_pixels, scale

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


class Classifier:
    """Download, preprocess, predict and label a batch of images within a deadline."""

    def __init__(self, config: Config, predictor: Predictor, metrics: Metrics) -> None:
        self.config = config
        self.predictor = predictor
        self.metrics = metrics
        self._downloads = PerProcess(
            lambda: ThreadPoolExecutor(
                max_workers=min(MAX_PARALLEL_DOWNLOADS, config.max_batch), thread_name_prefix="download"
            ),
            lambda executor: executor.shutdown(wait=False, cancel_futures=True),
        )
        # Full-size decoded images are the biggest buffers (4 bytes per pixel, up to max_pixels): at most this many
        # per worker exist at once, whatever the number of threads. Decoding is CPU-bound, so more would not help.
        self._decode_slots = threading.BoundedSemaphore(config.max_concurrent_decodes)
        self._connections = ConnectionPools()  # keep-alive connections to image servers

    def classify(
        self, images: Sequence[ImageSource], deadline: float, top_k: int | None = None, item_prefix: str | None = None
    ) -> list[dict[str, float]]:
        """Scores for each image, in order. `deadline` is a time.monotonic() value; `item_prefix` (e.g.
        "instances") names the failing item in error messages: "instances[2]: ..."."""
        resolved = self.predictor.resolve(max(0.001, deadline - time.monotonic()))
        image_data = self._map(
            [partial(self._download_item, image, deadline, item_prefix, i) for i, image in enumerate(images)]
        )
        arrays = []
        for i, data in enumerate(image_data):
            with _naming_item(item_prefix, i):
                arrays.append(self._preprocess(data, resolved))
        del image_data
        self.metrics.batch_size.observe(len(arrays))
        batch = self.predictor.encode(resolved, arrays)
        del arrays  # the request holds the pixels now: free the arrays while the model runs
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise GatewayError("deadline_exceeded", f"the {self.config.deadline_seconds:g} s request deadline passed")
        started = time.perf_counter()
        outcome = "ok"
        try:
            outputs = self.predictor.predict(resolved, batch, remaining)
        except GatewayError as exc:
            outcome = exc.code
            raise
        finally:
            self.metrics.model_latency.labels(outcome).observe(time.perf_counter() - started)
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
            return fetch_image(image, policy, self._connections)
        except GatewayError as exc:
            outcome = exc.code
            raise
        finally:
            self.metrics.download_latency.labels(outcome).observe(time.perf_counter() - started)

    def _preprocess(self, data: bytes, resolved: ResolvedContract) -> np.ndarray:
        started = time.perf_counter()
        with self._decode_slot():
            try:
                image = load_image(data, self.config.max_pixels)
            except ImageTooLargeError as exc:
                raise GatewayError("too_many_pixels", str(exc)) from None
            except ImageError as exc:
                raise GatewayError("not_an_image", str(exc)) from None
            pixels = resize_pixels(image, resolved.contract.input_size)
            image.close()
        array = pixels if resolved.signature.input_dtype == "uint8" else scale(pixels, resolved.contract.scaling)
        self.metrics.preprocess_latency.observe(time.perf_counter() - started)
        return array

    @contextmanager
    def _decode_slot(self) -> Iterator[None]:
        """Hold one of the worker's decode slots; waiting longer than GATEWAY_MAX_QUEUE_SECONDS for it is refused
        (503 overloaded): past that the worker has more images to decode than it can in time."""
        self.metrics.queued.inc()
        try:
            acquired = self._decode_slots.acquire(timeout=self.config.max_queue_seconds)
        finally:
            self.metrics.queued.dec()
        if not acquired:
            self.metrics.shed.labels("decode_queue").inc()
            raise GatewayError(
                "overloaded",
                f"no decode slot free within {self.config.max_queue_seconds:g} s (GATEWAY_MAX_QUEUE_SECONDS)",
            )
        try:
            yield
        finally:
            self._decode_slots.release()

    def close(self) -> None:
        """Stop the download threads, close kept-alive image server connections and the model server channel."""
        self._downloads.close()
        self._connections.close()
        self.predictor.close()
