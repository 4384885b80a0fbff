"""Gateway configuration, read from the environment and validated once at start-up.

Every problem is reported as one `ConfigError` line naming the variable, the value and what is expected.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from clothing_gateway.contract import ContractError, ModelContract, load_contract, parse_contract

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LB_POLICIES = ("pick_first", "round_robin")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
# host:port, [v6]:port, or a gRPC target with a resolver scheme (dns:///host:port, ipv4:a.b.c.d:port, unix:path).
_HOST_PORT = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):\d{1,5}$")
_SCHEMED_TARGET = re.compile(r"^(?:dns:(?://[^/]*)?/|ipv4:|ipv6:|unix:|unix-abstract:)\S+$")


class ConfigError(ValueError):
    """An environment variable is missing or invalid; the message is one line naming it."""


@dataclass(frozen=True)
class Config:
    """Everything the gateway needs to run, already validated."""

    contract: ModelContract
    model_server: str = "localhost:8500"
    lb_policy: str = "pick_first"
    deadline_seconds: float = 20.0
    max_download_bytes: int = 10 * 1024 * 1024
    max_request_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 25_000_000
    download_timeout_seconds: float = 10.0
    max_redirects: int = 3
    allowed_networks: tuple[IPNetwork, ...] = ()
    max_batch: int = 8
    log_level: str = "INFO"
    use_uint8: bool = True

    @property
    def uses_uint8_signature(self) -> bool:
        """Whether requests go to the contract's uint8 signature (pixels scaled in-graph, 4x smaller requests)."""
        return self.use_uint8 and self.contract.uint8 is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Config:
        """Build and validate the configuration from environment variables (table: images/gateway/README.md)."""
        reader = _EnvReader(environ)
        config = cls(
            contract=_contract(environ),
            model_server=_model_server(environ.get("TF_SERVING_HOST", "localhost:8500").strip()),
            lb_policy=reader.choice("GATEWAY_LB_POLICY", "pick_first", LB_POLICIES),
            deadline_seconds=reader.number("GATEWAY_DEADLINE_SECONDS", 20.0, maximum=600),
            max_download_bytes=reader.integer("GATEWAY_MAX_DOWNLOAD_BYTES", 10 * 1024 * 1024),
            max_request_bytes=reader.integer("GATEWAY_MAX_REQUEST_BYTES", 32 * 1024 * 1024),
            max_pixels=reader.integer("GATEWAY_MAX_PIXELS", 25_000_000),
            download_timeout_seconds=reader.number("GATEWAY_DOWNLOAD_TIMEOUT_SECONDS", 10.0, maximum=600),
            max_redirects=reader.integer("GATEWAY_MAX_REDIRECTS", 3, minimum=0, maximum=20),
            allowed_networks=_networks(environ.get("GATEWAY_ALLOWED_NETWORKS", "")),
            max_batch=reader.integer("GATEWAY_MAX_BATCH", 8, maximum=1024),
            log_level=reader.choice("GATEWAY_LOG_LEVEL", "INFO", LOG_LEVELS, upper=True),
            use_uint8=reader.boolean("GATEWAY_USE_UINT8", True),
        )
        if config.max_request_bytes < config.max_download_bytes:
            raise ConfigError(
                f"GATEWAY_MAX_REQUEST_BYTES ({config.max_request_bytes}) must be at least "
                f"GATEWAY_MAX_DOWNLOAD_BYTES ({config.max_download_bytes}), or uploads of allowed sizes are refused"
            )
        return config


class _EnvReader:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def _raw(self, name: str) -> str | None:
        value = self.environ.get(name, "").strip()
        return value or None

    def number(self, name: str, default: float, maximum: float) -> float:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not 0 < value <= maximum:
            raise ConfigError(f"{name} must be a number of seconds in (0, {maximum:g}], got {raw!r}")
        return value

    def integer(self, name: str, default: int, minimum: int = 1, maximum: int = 2**53) -> int:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = int(raw.replace("_", ""))
        except ValueError:
            value = minimum - 1
        if not minimum <= value <= maximum:
            raise ConfigError(f"{name} must be an integer in [{minimum}, {maximum}], got {raw!r}")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...], upper: bool = False) -> str:
        raw = self._raw(name)
        if raw is None:
            return default
        value = raw.upper() if upper else raw.lower()
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        raw = self._raw(name)
        if raw is None:
            return default
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _contract(environ: Mapping[str, str]) -> ModelContract:
    path = environ.get("GATEWAY_MODEL_CONTRACT_FILE", "").strip()
    inline = environ.get("GATEWAY_MODEL_CONTRACT", "").strip()
    if path and inline:
        raise ConfigError("set only one of GATEWAY_MODEL_CONTRACT_FILE and GATEWAY_MODEL_CONTRACT")
    try:
        if path:
            return load_contract(path)
        if inline:
            try:
                data = json.loads(inline)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"GATEWAY_MODEL_CONTRACT is not valid JSON: {exc}") from None
            return parse_contract(data)
    except ContractError as exc:
        raise ConfigError(str(exc)) from None
    raise ConfigError(
        "no model contract: set GATEWAY_MODEL_CONTRACT_FILE to the JSON that `model-tools inspect` writes "
        "(or GATEWAY_MODEL_CONTRACT to that JSON inline)"
    )


def _model_server(target: str) -> str:
    if "://" in target and not target.startswith("dns:"):
        raise ConfigError(f"TF_SERVING_HOST is a gRPC target like host:8500 or dns:///host:8500, not a URL: {target!r}")
    if _HOST_PORT.match(target) or _SCHEMED_TARGET.match(target):
        if target.startswith("dns:") and not _HOST_PORT.match(target.rsplit("/", 1)[-1]):
            raise ConfigError(f"TF_SERVING_HOST must end with host:port, got {target!r}")
        return target
    raise ConfigError(f"TF_SERVING_HOST must be host:port (e.g. tf-serving:8500) or dns:///host:port, got {target!r}")


def _networks(raw: str) -> tuple[IPNetwork, ...]:
    networks = []
    for item in raw.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(
                f"GATEWAY_ALLOWED_NETWORKS: {item!r} is not a CIDR like 10.1.0.0/16 or fd00::/8"
            ) from None
    return tuple(networks)
