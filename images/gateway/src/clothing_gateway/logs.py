"""Structured logs: one JSON object per line on stderr, carrying the request id of the request being handled."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from typing import Any

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
# LogRecord attributes that are not "extra" fields.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def new_request_id(given: str) -> str:
    """The client's X-Request-ID when it is a sane one, else a fresh id."""
    return given if _REQUEST_ID.match(given) else uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    """Format a record as JSON: time, level, logger, message, request_id, any `extra` fields, and the traceback
    (logs only; never sent to clients)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        current = request_id.get()
        if current:
            entry["request_id"] = current
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    """Send the root logger's records to stderr as JSON lines at `level` (idempotent)."""
    root = logging.getLogger()
    root.setLevel(level)
    if not any(isinstance(handler.formatter, JsonFormatter) for handler in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
