"""Request bodies -> the images to classify: every accepted format, and the errors for everything else.

`/predict` takes one image: JSON `{"url": ...}` or `{"image_b64": ...}`, multipart (file field `image`, else the first
file), or the image itself (image/* or application/octet-stream). KServe's V1 predict takes
`{"instances": [{"url": ...} | {"b64": ...}, ...]}`.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from flask import Request

from clothing_gateway.errors import GatewayError
from clothing_gateway.openapi import RAW_MEDIA_TYPES
from clothing_gateway.service import ImageSource


def _is_json(req: Request) -> bool:
    return req.mimetype == "application/json" or req.mimetype.endswith("+json")


def json_object(req: Request) -> dict[str, Any]:
    """The body as a JSON object."""
    try:
        body = json.loads(req.get_data(cache=False))
    except (ValueError, UnicodeDecodeError) as exc:
        raise GatewayError("invalid_json", f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise GatewayError("invalid_json", "the body's JSON is nested too deeply") from None
    if not isinstance(body, dict):
        raise GatewayError("invalid_json", "the body must be a JSON object")
    return body


def image_field(item: Any, url_key: str, data_key: str, where: str) -> ImageSource:
    """The image an object names: `{url_key: URL}` or `{data_key: base64}`, exactly one of them."""
    if not isinstance(item, dict):
        raise GatewayError("invalid_request", f"{where} must be an object with {url_key!r} or {data_key!r}")
    unknown = sorted(set(item) - {url_key, data_key})
    if unknown:
        raise GatewayError("invalid_request", f"{where} has unknown field(s): {', '.join(unknown)}")
    if len(item) != 1:
        raise GatewayError("invalid_request", f"{where} needs exactly one of {url_key!r} and {data_key!r}")
    key, value = next(iter(item.items()))
    if not isinstance(value, str) or not value:
        raise GatewayError("invalid_request", f"{where}.{key} must be a non-empty string")
    if key == url_key:
        return value
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise GatewayError("invalid_base64", f"{where}.{key} is not valid base64") from None


def single_image(req: Request) -> ImageSource:
    """The image of a /predict request."""
    mimetype = req.mimetype
    if _is_json(req):
        return image_field(json_object(req), "url", "image_b64", "the body")
    if mimetype == "multipart/form-data":
        upload = req.files.get("image") or next(iter(req.files.values()), None)
        if upload is None:
            raise GatewayError("invalid_request", "the multipart body has no file; send the image in the field 'image'")
        return upload.read()
    if mimetype.startswith("image/") or mimetype in RAW_MEDIA_TYPES:
        data = req.get_data(cache=False)
        if not data:
            raise GatewayError("invalid_request", "the body is empty")
        return data
    raise GatewayError(
        "unsupported_media_type",
        f'Content-Type {mimetype or "(none)"!r} is not supported: send application/json ({{"url": ...}} or '
        f"{{\"image_b64\": ...}}), multipart/form-data with a file field 'image', or the image itself (image/*)",
    )


def instances(req: Request, max_batch: int) -> list[ImageSource]:
    """The images of a KServe V1 predict request, at most `max_batch`."""
    if not _is_json(req):
        raise GatewayError("unsupported_media_type", 'send application/json: {"instances": [{"url": ...}, ...]}')
    items = json_object(req).get("instances")
    if not isinstance(items, list) or not items:
        raise GatewayError("invalid_request", "instances must be a non-empty list")
    if len(items) > max_batch:
        raise GatewayError("batch_too_large", f"{len(items)} instances, at most {max_batch} are allowed per request")
    return [image_field(item, "url", "b64", f"instances[{i}]") for i, item in enumerate(items)]
