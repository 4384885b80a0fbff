"""Every error the gateway returns: a stable snake_case code, its HTTP status, and what it means.

Clients get `{"error": {"code": "<code>", "message": "<what went wrong>"}}` and the status below. The table is
also the source of the OpenAPI document's error responses, so a new code is documented by adding it here.
"""

from __future__ import annotations

from typing import Any

RETRY_AFTER_SECONDS = 2

ERROR_CODES: dict[str, tuple[int, str]] = {
    "invalid_json": (400, "The body is not valid JSON, or not a JSON object."),
    "invalid_request": (400, "A required field is missing, or a field or query parameter has the wrong type or value."),
    "invalid_url": (400, "The image URL cannot be parsed or has no host."),
    "invalid_base64": (400, "The base64 image data cannot be decoded."),
    "batch_too_large": (400, "More instances than the configured maximum batch size (GATEWAY_MAX_BATCH)."),
    "not_found": (404, "No such endpoint."),
    "model_not_found": (404, "The path names a model this gateway does not serve."),
    "version_not_found": (404, "The path names a version, or a version label, the model server does not serve."),
    "method_not_allowed": (405, "The endpoint does not accept this HTTP method (see the Allow header)."),
    "payload_too_large": (413, "The request body is larger than the configured maximum."),
    "image_too_large": (413, "The image (downloaded or uploaded) has more bytes than the configured maximum."),
    "too_many_pixels": (413, "The image declares more pixels than allowed (decompression-bomb guard)."),
    "unsupported_media_type": (415, "The request's Content-Type is not JSON, multipart/form-data or an image."),
    "not_an_image": (415, "The bytes are not an image in a supported format (sniffed from the content)."),
    "blocked_url": (422, "The URL's scheme is not http/https, or its host resolves to a non-public address."),
    "internal_error": (500, "An unexpected error in the gateway (details are in its logs, under the request id)."),
    "download_failed": (502, "The image could not be downloaded (connection error, HTTP error, bad redirect)."),
    "model_error": (502, "The model server rejected the request or answered something the contract does not allow."),
    "model_unavailable": (503, "The model server is unreachable or the model is not loaded; retry after Retry-After."),
    "not_ready": (503, "The model server does not report the model AVAILABLE, or it does not match the contract."),
    "overloaded": (
        503,
        "The worker is at a bound: its event loop later than GATEWAY_MAX_LOOP_LAG_SECONDS, GATEWAY_MAX_IN_FLIGHT "
        "predictions, GATEWAY_MAX_DOWNLOADS downloads (in all or GATEWAY_MAX_DOWNLOADS_PER_HOST from one host), or "
        "too much decoding queued for GATEWAY_MAX_QUEUE_SECONDS; retry after Retry-After.",
    ),
    "download_timeout": (504, "The image download did not finish within the download timeout."),
    "deadline_exceeded": (504, "The model server did not answer within the request deadline."),
}


class GatewayError(Exception):
    """A failure with a client-facing code and message; the status comes from ERROR_CODES."""

    def __init__(self, code: str, message: str, fields: dict[str, Any] | None = None) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.fields = fields or {}  # extra top-level fields of the JSON body (KServe's readiness: name, ready)

    def with_context(self, prefix: str) -> GatewayError:
        """The same error with its message prefixed (e.g. by the batch item it concerns)."""
        return GatewayError(self.code, f"{prefix}: {self.message}", self.fields)


def error_body(code: str, message: str) -> dict[str, Any]:
    """The JSON body for an error."""
    return {"error": {"code": code, "message": message}}


def error_headers(code: str) -> dict[str, str]:
    """Extra response headers for an error: `Retry-After` on every 503."""
    return {"Retry-After": str(RETRY_AFTER_SECONDS)} if ERROR_CODES[code][0] == 503 else {}
