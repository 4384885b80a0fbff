"""Gateway configuration, read from the environment and validated once at start-up.

Every problem is reported as one `ConfigError` line naming the variable, the value and what is expected.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from clothing_gateway.traffic import TrafficError, TrafficPolicy, parse_traffic
from model_interface.contract import NAME_PATTERN, ContractError, ModelContract, load_contracts, parse_contracts
from model_interface.preprocessing import PREPROCESSINGS

if TYPE_CHECKING:  # fetch imports urllib3 and ssl, which gunicorn's master must not import before gevent patches
    from clothing_gateway.fetch import IPNetwork

LB_POLICIES = ("pick_first", "round_robin")
PREDICTOR_PROTOCOLS = ("grpc", "rest")
DEFAULT_TARGETS = {"grpc": "localhost:8500", "rest": "localhost:8501"}
# The book's transformer env: KERAS_MODEL_NAME -> the pixel scaling keras_image_helper applies for that family.
KERAS_SCALINGS = {"xception": "xception", "inception_v3": "xception", "resnet50": "caffe", "vgg16": "caffe"}
BOOK_ENV = ("MODEL_INPUT_SIZE", "KERAS_MODEL_NAME", "MODEL_LABELS")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_MAX_IN_FLIGHT = 512
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
# host:port, [v6]:port, or a gRPC target with a resolver scheme (dns:///host:port, ipv4:a.b.c.d:port, unix:path).
_HOST_PORT = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):\d{1,5}$")
_SCHEMED_TARGET = re.compile(r"^(?:dns:(?://[^/]*)?/|ipv4:|ipv6:|unix:|unix-abstract:)\S+$")
# TF Serving's REST address: host, host:port or an http(s) URL without a path.
_REST_TARGET = re.compile(r"^(?:(https?)://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+)(?::(\d{1,5}))?/?$")


class ConfigError(ValueError):
    """An environment variable is missing or invalid; the message is one line naming it."""


@dataclass(frozen=True)
class Config:
    """Everything the gateway needs to run, already validated."""

    contracts: tuple[ModelContract, ...]  # the models served; the first is the default (`/predict`)
    traffic: Mapping[str, TrafficPolicy] = field(default_factory=dict)  # by model name (traffic.py)
    model_server: str = "localhost:8500"
    predictor_protocol: str = "grpc"
    discover_tensor_names: bool = False
    lb_policy: str = "pick_first"
    deadline_seconds: float = 20.0
    max_download_bytes: int = 10 * 1024 * 1024
    max_request_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 25_000_000
    preprocessing: str | None = None  # for every model's images; None: what each model's contract says
    max_concurrent_decodes: int = 2
    download_timeout_seconds: float = 10.0
    max_redirects: int = 3
    allowed_networks: tuple[IPNetwork, ...] = ()
    max_batch: int = 8
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    max_queue_seconds: float = 2.0
    max_loop_lag_seconds: float = 0.1
    max_downloads: int = DEFAULT_MAX_IN_FLIGHT
    max_downloads_per_host: int = 128
    log_level: str = "INFO"
    use_uint8: bool = True
    max_shadow_in_flight: int = 32

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Config:
        """Build and validate the configuration from environment variables (table: images/gateway/README.md)."""
        reader = _EnvReader(environ)
        protocol = reader.choice("GATEWAY_PREDICTOR_PROTOCOL", "grpc", PREDICTOR_PROTOCOLS)
        target = environ.get("TF_SERVING_HOST", "").strip() or DEFAULT_TARGETS[protocol]
        contracts, discover = _contracts(environ)
        config = cls(
            contracts=contracts,
            model_server=_model_server(target) if protocol == "grpc" else rest_base_url(target),
            predictor_protocol=protocol,
            discover_tensor_names=discover,
            lb_policy=reader.choice("GATEWAY_LB_POLICY", "pick_first", LB_POLICIES),
            deadline_seconds=reader.number("GATEWAY_DEADLINE_SECONDS", 20.0, maximum=600),
            max_download_bytes=reader.integer("GATEWAY_MAX_DOWNLOAD_BYTES", 10 * 1024 * 1024),
            max_request_bytes=reader.integer("GATEWAY_MAX_REQUEST_BYTES", 32 * 1024 * 1024),
            max_pixels=reader.integer("GATEWAY_MAX_PIXELS", 25_000_000),
            preprocessing=reader.optional_choice("GATEWAY_PREPROCESSING", PREPROCESSINGS),
            max_concurrent_decodes=reader.integer("GATEWAY_MAX_CONCURRENT_DECODES", 2, maximum=64),
            download_timeout_seconds=reader.number("GATEWAY_DOWNLOAD_TIMEOUT_SECONDS", 10.0, maximum=600),
            max_redirects=reader.integer("GATEWAY_MAX_REDIRECTS", 3, minimum=0, maximum=20),
            allowed_networks=_networks(environ.get("GATEWAY_ALLOWED_NETWORKS", "")),
            max_batch=reader.integer("GATEWAY_MAX_BATCH", 8, maximum=1024),
            max_in_flight=reader.integer("GATEWAY_MAX_IN_FLIGHT", DEFAULT_MAX_IN_FLIGHT, maximum=10_000),
            max_queue_seconds=reader.number("GATEWAY_MAX_QUEUE_SECONDS", 2.0, maximum=600),
            max_loop_lag_seconds=reader.number("GATEWAY_MAX_LOOP_LAG_SECONDS", 0.1, maximum=60),
            max_downloads=reader.integer("GATEWAY_MAX_DOWNLOADS", DEFAULT_MAX_IN_FLIGHT, maximum=10_000),
            max_downloads_per_host=reader.integer("GATEWAY_MAX_DOWNLOADS_PER_HOST", 128, maximum=10_000),
            log_level=reader.choice("GATEWAY_LOG_LEVEL", "INFO", LOG_LEVELS, upper=True),
            use_uint8=reader.boolean("GATEWAY_USE_UINT8", True),
            traffic=_traffic(environ.get("GATEWAY_TRAFFIC", ""), contracts),
            max_shadow_in_flight=reader.integer("GATEWAY_MAX_SHADOW_IN_FLIGHT", 32, maximum=10_000),
        )
        if config.max_request_bytes < config.max_download_bytes:
            raise ConfigError(
                f"GATEWAY_MAX_REQUEST_BYTES ({config.max_request_bytes}) must be at least "
                f"GATEWAY_MAX_DOWNLOAD_BYTES ({config.max_download_bytes}), or uploads of allowed sizes are refused"
            )
        return config

    @property
    def default_contract(self) -> ModelContract:
        """The contract of the default model, the one `/predict` classifies with."""
        return self.contracts[0]

    def preprocessing_of(self, contract: ModelContract) -> str:
        """The preprocessing a model's images get: GATEWAY_PREPROCESSING, else the one its contract was validated
        with."""
        return self.preprocessing or contract.preprocessing


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

    def optional_choice(self, name: str, choices: tuple[str, ...]) -> str | None:
        return None if self._raw(name) is None else self.choice(name, "", choices)

    def boolean(self, name: str, default: bool) -> bool:
        raw = self._raw(name)
        if raw is None:
            return default
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _contracts(environ: Mapping[str, str]) -> tuple[tuple[ModelContract, ...], bool]:
    """The model contracts (one JSON object, or a list of them for several models), and whether the tensor names are
    still to be read from the model server's metadata (the book's transformer env gives everything else).
    GATEWAY_MODEL_NAME (KServe's --model_name) replaces the name of a single model."""
    path = environ.get("GATEWAY_MODEL_CONTRACT_FILE", "").strip()
    inline = environ.get("GATEWAY_MODEL_CONTRACT", "").strip()
    name = environ.get("GATEWAY_MODEL_NAME", "").strip()
    if name and not NAME_PATTERN.match(name):
        raise ConfigError(f"GATEWAY_MODEL_NAME must be a model name like clothing-model, got {name!r}")
    if path and inline:
        raise ConfigError("set only one of GATEWAY_MODEL_CONTRACT_FILE and GATEWAY_MODEL_CONTRACT")
    try:
        if path:
            contracts = load_contracts(path)
        elif inline:
            try:
                data = json.loads(inline)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"GATEWAY_MODEL_CONTRACT is not valid JSON: {exc}") from None
            contracts = parse_contracts(data)
        elif any(environ.get(variable, "").strip() for variable in BOOK_ENV):
            return (_book_contract(environ, name),), True
        else:
            raise ConfigError(
                "no model contract: set GATEWAY_MODEL_CONTRACT_FILE to the JSON that `model-tools inspect` writes "
                "(or GATEWAY_MODEL_CONTRACT to that JSON inline, or the book's MODEL_INPUT_SIZE, KERAS_MODEL_NAME "
                "and MODEL_LABELS)"
            )
    except ContractError as exc:
        raise ConfigError(str(exc)) from None
    if name and len(contracts) > 1:
        raise ConfigError("GATEWAY_MODEL_NAME renames a single model; the contracts list several")
    return ((replace(contracts[0], name=name),) if name else contracts), False


def _traffic(raw: str, contracts: tuple[ModelContract, ...]) -> dict[str, TrafficPolicy]:
    if not raw.strip():
        return {}
    try:
        return parse_traffic(json.loads(raw), [contract.name for contract in contracts])
    except json.JSONDecodeError as exc:
        raise ConfigError(f"GATEWAY_TRAFFIC is not valid JSON: {exc}") from None
    except TrafficError as exc:
        raise ConfigError(str(exc)) from None


def _book_contract(environ: Mapping[str, str], name: str) -> ModelContract:
    """A contract from the book's transformer env. Both dimensions of MODEL_INPUT_SIZE="height,width" are used (the
    book's transformer resized to width x width); the signature is serving_default, its tensor names come later."""
    missing = [variable for variable in BOOK_ENV if not environ.get(variable, "").strip()]
    if missing:
        raise ConfigError(f"the book's transformer env is incomplete: set {', '.join(missing)} as well")
    if not name:
        raise ConfigError("the book's transformer env needs the model name: GATEWAY_MODEL_NAME or --model_name")
    raw_size = environ["MODEL_INPUT_SIZE"].strip()
    size = [part.strip() for part in raw_size.split(",")]
    if len(size) != 2 or not all(part.isdigit() and 1 <= int(part) <= 8192 for part in size):
        raise ConfigError(f'MODEL_INPUT_SIZE must be "height,width" like "299,299", got {raw_size!r}')
    family = environ["KERAS_MODEL_NAME"].strip().lower()
    if family not in KERAS_SCALINGS:
        raise ConfigError(f"KERAS_MODEL_NAME must be one of {', '.join(KERAS_SCALINGS)}, got {family!r}")
    labels = [label.strip() for label in environ["MODEL_LABELS"].split(",")]
    if not all(labels) or len(set(labels)) != len(labels):
        raise ConfigError("MODEL_LABELS must be a comma-separated list of unique, non-empty labels")
    return ModelContract(
        name=name,
        signature_name="serving_default",
        input_name="",
        output_name="",
        input_size=(int(size[0]), int(size[1])),
        labels=tuple(labels),
        scaling=KERAS_SCALINGS[family],
        preprocessing="exact",  # the book's transformer preprocesses with keras_image_helper
    )


def _model_server(target: str) -> str:
    if "://" in target and not target.startswith("dns:"):
        raise ConfigError(f"TF_SERVING_HOST is a gRPC target like host:8500 or dns:///host:8500, not a URL: {target!r}")
    if _HOST_PORT.match(target) or _SCHEMED_TARGET.match(target):
        if target.startswith("dns:") and not _HOST_PORT.match(target.rsplit("/", 1)[-1]):
            raise ConfigError(f"TF_SERVING_HOST must end with host:port, got {target!r}")
        return target
    raise ConfigError(f"TF_SERVING_HOST must be host:port (e.g. tf-serving:8500) or dns:///host:port, got {target!r}")


def rest_base_url(target: str) -> str:
    """TF Serving's REST address as a base URL: `host`, `host:port` or `http(s)://host[:port]`; without a port,
    80 (or 443 for https), the port of KServe's `--predictor_host`."""
    match = _REST_TARGET.match(target)
    if not match or (match.group(3) and not 0 < int(match.group(3)) < 65536):
        raise ConfigError(
            f"TF_SERVING_HOST must be host, host:port or http(s)://host[:port] with GATEWAY_PREDICTOR_PROTOCOL=rest, "
            f"got {target!r}"
        )
    scheme, host, port = match.group(1) or "http", match.group(2), match.group(3)
    return f"{scheme}://{host}:{port}" if port else f"{scheme}://{host}"


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
