"""Traffic policies: which version of a model answers a request, and which gets a shadow copy of it.

A model with a policy is answered by its `stable` version label, except for the canary share (`canary.weight`
percent of requests) which goes to the canary label; a request with an `X-Canary-Key` header is assigned by a hash
of the key, so one client always meets the same version. A shadow share (`shadow.percent`) is sent again, after
the client's answer is computed, to the shadow label: the copy never delays or fails the client's request, at most
`GATEWAY_MAX_SHADOW_IN_FLIGHT` copies run at once per worker (more are dropped and counted), and each is compared
with the answer the client got (top-1 agreement, largest score difference). Labels are TF Serving's version labels
(its model config maps them to versions); paths naming a version or a label bypass the policy.

`GATEWAY_TRAFFIC` is a JSON object, model name -> `{"stableLabel": "stable", "canary": {"label": "canary",
"weight": 20}, "shadow": {"label": "canary", "percent": 100}}` (each part optional).
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Any

from clothing_gateway.predictor.base import VersionChoice

STICKY_HEADER = "X-Canary-Key"
_LABEL = re.compile(r"^[A-Za-z0-9_.\-]+$")


class TrafficError(ValueError):
    """GATEWAY_TRAFFIC is invalid; the message names the model and the field."""


@dataclass(frozen=True)
class TrafficPolicy:
    """One model's split: the label answering clients, the canary label and its share, the shadow label and its
    share (percentages)."""

    stable: str = "stable"
    canary: str | None = None
    canary_weight: float = 0.0
    shadow: str | None = None
    shadow_percent: float = 0.0

    def labels(self) -> frozenset[str]:
        """The version labels this policy sends requests to."""
        return frozenset(label for label in (self.stable, self.canary, self.shadow) if label)

    def choose(self, key: str | None) -> VersionChoice:
        """The label answering a request: the canary for its share of requests (by the key's hash when given)."""
        if self.canary and _percentile(key) < self.canary_weight:
            return VersionChoice(label=self.canary)
        return VersionChoice(label=self.stable)

    def shadow_choice(self) -> VersionChoice | None:
        """The label a copy of this request goes to, or None."""
        if self.shadow and random.uniform(0, 100) < self.shadow_percent:  # noqa: S311 (sampling, not security)
            return VersionChoice(label=self.shadow)
        return None


def _percentile(key: str | None) -> float:
    """A number in [0, 100): uniform at random, or fixed for a key."""
    if key is None:
        return random.uniform(0, 100)  # noqa: S311 (sampling, not security)
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 / 100


def parse_traffic(data: Any, models: list[str]) -> dict[str, TrafficPolicy]:
    """The policies of GATEWAY_TRAFFIC (decoded JSON), by model name; TrafficError naming what is wrong."""
    if not isinstance(data, dict):
        raise TrafficError("GATEWAY_TRAFFIC must be a JSON object: model name -> policy")
    policies = {}
    for name, spec in data.items():
        where = f"GATEWAY_TRAFFIC[{name!r}]"
        if name not in models:
            raise TrafficError(f"{where}: not a served model ({', '.join(models)})")
        if not isinstance(spec, dict) or set(spec) - {"stableLabel", "canary", "shadow"}:
            raise TrafficError(f"{where} must be an object with stableLabel, canary and/or shadow")
        canary = _part(spec.get("canary"), "weight", f"{where}.canary")
        shadow = _part(spec.get("shadow"), "percent", f"{where}.shadow")
        policies[name] = TrafficPolicy(
            stable=_label(spec.get("stableLabel", "stable"), f"{where}.stableLabel"),
            canary=canary[0],
            canary_weight=canary[1],
            shadow=shadow[0],
            shadow_percent=shadow[1],
        )
    return policies


def _part(spec: Any, share: str, where: str) -> tuple[str | None, float]:
    if spec is None:
        return None, 0.0
    if not isinstance(spec, dict) or set(spec) != {"label", share}:
        raise TrafficError(f"{where} must be {{label, {share}}}")
    value = spec[share]
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise TrafficError(f"{where}.{share} must be a percentage from 0 to 100, got {value!r}")
    return _label(spec["label"], f"{where}.label"), float(value)


def _label(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _LABEL.match(value):
        raise TrafficError(f"{where} must be a version label like canary, got {value!r}")
    return value
