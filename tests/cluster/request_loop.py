"""A bounded request loop against the gateway, for the local cluster's end-to-end test (tests/cluster/e2e.sh).

python3 tests/cluster/request_loop.py --url http://10.244.0.1:30696/predict --image tests/data/pants.jpg \
    --expect pants --workers 2 --until-file STOP --max-seconds 600 [--count N]

POSTs the image (Content-Type: image/jpeg) from WORKERS threads, one request after another each, until STOP exists
(or MAX_SECONDS pass, or COUNT requests were sent). Prints one JSON line: total, ok, errors (by kind, with the
first few messages), the answers by the version label that gave them (the gateway's X-Model-Version-Label header,
under a traffic policy), and exits 1 if any request failed or answered another top label. Standard library only.
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
    args = parser.parse_args()

    body = args.image.read_bytes()
    lock = threading.Lock()
    outcomes: Counter[str] = Counter()
    labels: Counter[str] = Counter()
    samples: list[str] = []
    sent = 0
    deadline = time.monotonic() + args.max_seconds

    def take() -> bool:
        nonlocal sent
        with lock:
            if args.count and sent >= args.count:
                return False
            sent += 1
            return True

    def record(outcome: str, detail: str = "") -> None:
        with lock:
            outcomes[outcome] += 1
            if detail and len(samples) < 10:
                samples.append(f"{outcome}: {detail}")

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
                record(f"http_{exc.code}", exc.read().decode("utf-8", "replace")[:200])
            except (OSError, ValueError) as exc:
                record("connection", str(exc)[:200])

    started = time.monotonic()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = sum(outcomes.values())
    errors = total - outcomes["ok"]
    report = {
        "total": total,
        "ok": outcomes["ok"],
        "errors": errors,
        "by_outcome": dict(outcomes),
        "by_version_label": dict(labels),
        "seconds": round(time.monotonic() - started, 1),
        "samples": samples,
    }
    print(json.dumps(report))
    return 1 if errors or total == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
