"""Smoke check of a running gateway (the Helm chart's test hooks run it). Standard library only.

python -m clothing_gateway.smoke --endpoint http://HOST:PORT --ready-only [--timeout S]
    polls /readyz until it answers 200 (exit 0) or the timeout passes (exit 1).
python -m clothing_gateway.smoke --endpoint http://HOST:PORT --image PATH [--expect LABEL] [--timeout S]
    POSTs the image (Content-Type: image/jpeg) to /predict, prints the scores, exits 1 unless the answer has scores
    (and LABEL, when given, is on top).

With --kserve-model NAME both speak KServe's V1 protocol instead (a transformer or a gateway): readiness is
GET /v1/models/NAME, and the image is POSTed as {"instances": [{"b64": ...}]} to /v1/models/NAME:predict, or with
--version-label L to the gateway's /v1/models/NAME/labels/L:predict.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def _get(url: str, timeout: float) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (the endpoint is an argument)
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def wait_ready(endpoint: str, timeout: float, kserve_model: str | None = None) -> bool:
    """Poll GET /readyz (or KServe's GET /v1/models/<name>) until 200 or `timeout` seconds; prints the last answer."""
    path = f"/v1/models/{kserve_model}" if kserve_model else "/readyz"
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        try:
            status, body = _get(f"{endpoint}{path}", timeout=min(5.0, max(0.5, deadline - time.monotonic())))
            if status == 200:
                print(f"ready: {body.strip()}")
                return True
            last = f"HTTP {status}: {body.strip()}"
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
        if time.monotonic() >= deadline:
            print(f"not ready after {timeout:g} s: {last}", file=sys.stderr)
            return False
        time.sleep(1.0)


def classify(
    endpoint: str, image: Path, timeout: float, kserve_model: str | None = None, version_label: str | None = None
) -> dict[str, float]:
    """POST the image to /predict (or KServe's /v1/models/<name>[/labels/<label>]:predict); the {label: score}
    answer (raises on a non-200 answer)."""
    if kserve_model:
        labelled = f"/labels/{version_label}" if version_label else ""
        url = f"{endpoint}/v1/models/{kserve_model}{labelled}:predict"
        data = json.dumps({"instances": [{"b64": base64.b64encode(image.read_bytes()).decode()}]}).encode()
        content_type = "application/json"
    else:
        url, data, content_type = f"{endpoint}/predict", image.read_bytes(), "image/jpeg"
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            answer = json.load(response)
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"HTTP {exc.code}: {exc.read().decode('utf-8', 'replace').strip()}") from None
    scores: dict[str, float] = answer["predictions"][0] if kserve_model else answer
    return scores


def main(argv: list[str] | None = None) -> int:
    """Run the smoke check; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m clothing_gateway.smoke", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--endpoint", required=True, help="gateway base URL, e.g. http://gateway:80")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--ready-only", action="store_true", help="only wait for GET /readyz to answer 200")
    mode.add_argument("--image", type=Path, help="image to POST to /predict")
    parser.add_argument("--expect", help="label that must have the top score (with --image)")
    parser.add_argument("--version-label", metavar="LABEL", help="with --kserve-model: the version label to ask for")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument("--kserve-model", metavar="NAME", help="speak KServe's V1 protocol to the model NAME")
    args = parser.parse_args(argv)
    endpoint = args.endpoint.rstrip("/")
    if args.ready_only:
        return 0 if wait_ready(endpoint, args.timeout, args.kserve_model) else 1
    if args.version_label and not args.kserve_model:
        parser.error("--version-label needs --kserve-model NAME")
    try:
        scores = classify(endpoint, args.image, args.timeout, args.kserve_model, args.version_label)
    except (OSError, RuntimeError, ValueError, KeyError, IndexError, TypeError) as exc:
        print(f"predict failed: {exc}", file=sys.stderr)
        return 1
    for label, score in sorted(scores.items(), key=lambda item: -item[1]):
        print(f"{label:>12} {score:9.3f}")
    top = max(scores, key=lambda label: scores[label]) if scores else None
    if top is None or (args.expect and top != args.expect):
        print(f"FAIL: top label is {top!r}, expected {args.expect!r}", file=sys.stderr)
        return 1
    print(f"OK: top label is {top!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
