"""A bounded request loop against the gateway, for the local cluster's end-to-end test (tests/cluster/e2e.sh).

python3 tests/cluster/request_loop.py --url http://10.244.0.1:30696/predict --image tests/data/pants.jpg \
    --expect pants --workers 2 --until-file STOP --max-seconds 600 [--count N]

POSTs the image (Content-Type: image/jpeg) from WORKERS threads, one request after another each, until STOP exists
(or MAX_SECONDS pass, or COUNT requests were sent). Prints one JSON line: total, ok, errors (by kind, with the
first few messages), the answers by the version label that gave them (the gateway's X-Model-Version-Label header,
under a traffic policy), and exits 1 if any request failed or answered another top label. With
--allow-unavailable (no model server exists for a while), a 503 `model_unavailable` carrying Retry-After is counted
as `unavailable`, not as an error, and the report says when the last one came and how many OK answers followed
it. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--image", required=True, type=Path)
    parser.add_argument("--expect", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--until-file", type=Path)
    parser.add_argument("--max-seconds", type=float, default=600)
    parser.add_argument("--count", type=int, default=0, help="stop after this many requests (0: no limit)")
    parser.add_argument("--timeout", type=float, default=30)
    parser.add_argument("--allow-unavailable", action="store_true", help="503 model_unavailable is no error")
    args = parser.parse_args()

    body = args.image.read_bytes()
    lock = threading.Lock()
    outcomes: Counter[str] = Counter()
    labels: Counter[str] = Counter()
    samples: list[str] = []
    sent = 0
    started = time.monotonic()
    deadline = started + args.max_seconds
    last_unavailable = 0.0  # seconds after the start
    ok_after_unavailable = 0

    def take() -> bool:
        nonlocal sent
        with lock:
            if args.count and sent >= args.count:
                return False
            sent += 1
            return True

    def record(outcome: str, detail: str = "") -> None:
        nonlocal last_unavailable, ok_after_unavailable
        with lock:
            outcomes[outcome] += 1
            if outcome == "unavailable":
                last_unavailable, ok_after_unavailable = time.monotonic() - started, 0
            elif outcome == "ok":
                ok_after_unavailable += 1
            if detail and len(samples) < 10:
                samples.append(f"{outcome}: {detail}")

    def refused(error: urllib.error.HTTPError) -> None:
        body = error.read().decode("utf-8", "replace")
        try:
            code = json.loads(body)["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = ""
        allowed = args.allow_unavailable and error.code == 503 and code == "model_unavailable"
        if allowed and error.headers.get("Retry-After"):
            record("unavailable")
        else:
            record(f"http_{error.code}", body[:200])

    def worker() -> None:
        while time.monotonic() < deadline and not (args.until_file and args.until_file.exists()) and take():
            request = urllib.request.Request(args.url, data=body, headers={"Content-Type": "image/jpeg"}, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=args.timeout) as response:
                    scores = json.load(response)
                    label = response.headers.get("X-Model-Version-Label", "")
                with lock:
                    labels[label] += 1
                top = max(scores, key=scores.get)
                record("ok" if top == args.expect else "wrong_label", "" if top == args.expect else top)
            except urllib.error.HTTPError as exc:
                refused(exc)
            except (OSError, ValueError) as exc:
                record("connection", str(exc)[:200])

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = sum(outcomes.values())
    errors = total - outcomes["ok"] - outcomes["unavailable"]
    report = {
        "total": total,
        "ok": outcomes["ok"],
        "errors": errors,
        "by_outcome": dict(outcomes),
        "by_version_label": dict(labels),
        "seconds": round(time.monotonic() - started, 1),
        "samples": samples,
    }
    if outcomes["unavailable"]:
        report |= {"last_unavailable_at": round(last_unavailable, 1), "ok_after_last_unavailable": ok_after_unavailable}
    print(json.dumps(report))
    return 1 if errors or total == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
