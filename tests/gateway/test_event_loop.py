"""The event-loop lag watcher in a real gevent loop (a subprocess: the test process itself is not monkey-patched)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

# Runs in a fresh interpreter patched as gunicorn's gevent worker patches itself; prints what it saw as JSON.
_WATCHING = """
from gevent import monkey
monkey.patch_all()
import json, time
import gevent
from clothing_gateway.event_loop import LoopLag

reports = []
lag = LoopLag(reports.append, interval=0.01, readings=3, idle_after=0.3)
lag.start()
gevent.sleep(0.3)
seen = {"never_arrived": len(reports)}
for _ in range(20):  # predictions arriving for 0.2 s
    lag.arrived()
    gevent.sleep(0.01)
seen["while_arriving"] = len(reports)
for _ in range(8):  # a standing queue: each turn of the loop takes 50 ms of CPU
    lag.arrived()
    busy_until = time.perf_counter() + 0.05
    while time.perf_counter() < busy_until:
        pass
    gevent.sleep(0.001)
seen["lag_when_saturated"] = lag.seconds
gevent.sleep(0.6)  # past idle_after without an arrival
settled = len(reports)
gevent.sleep(0.5)
seen.update(idle_reports=len(reports) - settled, idle_lag=lag.seconds, last_report=reports[-1])
print(json.dumps(seen))
"""


def test_the_loop_lag_is_measured_while_predictions_arrive_and_an_idle_worker_sleeps() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _WATCHING], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["never_arrived"] == 1, seen  # one 0 reading, then asleep until a prediction arrives
    assert seen["while_arriving"] >= 8, seen  # ~20 readings in 0.2 s at a 10 ms interval
    assert seen["lag_when_saturated"] > 0.02, seen  # every one of the last readings woke tens of ms late
    assert seen["idle_reports"] == 0, seen
    assert (seen["idle_lag"], seen["last_report"]) == (0.0, 0.0), seen
