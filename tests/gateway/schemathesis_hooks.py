"""Schemathesis hooks for the gateway's OpenAPI run (loaded via SCHEMATHESIS_HOOKS).

Tests may only send traffic to loopback, and a generated string could be a real http(s) URL. Every such URL is
rewritten to one on 127.0.0.1 before the call; the gateway under test does not allow loopback, so it answers 422
blocked_url without connecting anywhere.
"""

from __future__ import annotations

from typing import Any

import schemathesis

LOOPBACK_URL = "http://127.0.0.1:9/blocked.jpg"


def _confine(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower().startswith(("http:", "https:")):
        return LOOPBACK_URL
    return value


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Point every http(s) URL in the body at loopback."""
    body = case.body
    if isinstance(body, dict):
        if "url" in body:
            body["url"] = _confine(body["url"])
        instances = body.get("instances")
        if isinstance(instances, list):
            for item in instances:
                if isinstance(item, dict) and "url" in item:
                    item["url"] = _confine(item["url"])
