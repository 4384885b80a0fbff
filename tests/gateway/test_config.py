"""Configuration from the environment: defaults, and one clear line for every invalid value."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from clothing_gateway.config import Config, ConfigError
from clothing_gateway.predictor.signature import request_signature
from tests.gateway.conftest import CONTRACT, write_contract


@pytest.fixture
def contract_env(tmp_path: Path) -> dict[str, str]:
    return {"GATEWAY_MODEL_CONTRACT_FILE": str(write_contract(tmp_path / "contract.json"))}


def test_defaults(contract_env: dict[str, str]) -> None:
    config = Config.from_env(contract_env)
    assert config.model_server == "localhost:8500"
    assert config.deadline_seconds == 20.0
    assert config.lb_policy == "pick_first"
    assert config.allowed_networks == ()
    assert config.default_contract.name == "clothing-model"
    assert config.default_contract.labels[4] == "pants"
    assert config.preprocessing is None  # each model's contract says: the book's model, keras_image_helper's
    assert config.preprocessing_of(config.default_contract) == "exact"
    assert (
        request_signature(config.default_contract, config.use_uint8).input_dtype == "float32"
    )  # the test contract has no uint8


def test_everything_set(contract_env: dict[str, str]) -> None:
    config = Config.from_env(
        {
            **contract_env,
            "TF_SERVING_HOST": "dns:///tf-serving-headless.models.svc.cluster.local:8500",
            "GATEWAY_LB_POLICY": "round_robin",
            "GATEWAY_DEADLINE_SECONDS": "2.5",
            "GATEWAY_MAX_DOWNLOAD_BYTES": "1_000_000",
            "GATEWAY_MAX_PIXELS": "1000",
            "GATEWAY_MAX_CONCURRENT_DECODES": "4",
            "GATEWAY_DOWNLOAD_TIMEOUT_SECONDS": "3",
            "GATEWAY_MAX_REDIRECTS": "0",
            "GATEWAY_ALLOWED_NETWORKS": "10.1.0.0/16, fd00::/8",
            "GATEWAY_MAX_BATCH": "32",
            "GATEWAY_MAX_IN_FLIGHT": "64",
            "GATEWAY_MAX_QUEUE_SECONDS": "0.5",
            "GATEWAY_MAX_LOOP_LAG_SECONDS": "0.25",
            "GATEWAY_MAX_DOWNLOADS": "100",
            "GATEWAY_MAX_DOWNLOADS_PER_HOST": "10",
            "GATEWAY_LOG_LEVEL": "debug",
            "GATEWAY_USE_UINT8": "false",
            "GATEWAY_PREPROCESSING": "Fast",
        }
    )
    assert config.model_server.startswith("dns:///")
    assert config.lb_policy == "round_robin"
    assert config.deadline_seconds == 2.5
    assert config.max_download_bytes == 1_000_000
    assert config.max_redirects == 0
    assert config.max_concurrent_decodes == 4
    assert config.max_in_flight == 64
    assert config.max_queue_seconds == 0.5
    assert (config.max_downloads, config.max_downloads_per_host) == (100, 10)
    assert config.max_loop_lag_seconds == 0.25
    assert config.allowed_networks == (ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("fd00::/8"))
    assert config.log_level == "DEBUG"
    assert config.use_uint8 is False
    assert config.preprocessing == "fast"


def test_the_contracts_preprocessing_is_served_unless_the_env_says_otherwise() -> None:
    validated_fast = {**CONTRACT, "preprocessing": "fast"}
    config = Config.from_env({"GATEWAY_MODEL_CONTRACT": json.dumps(validated_fast)})
    assert config.preprocessing_of(config.default_contract) == "fast"
    without = {key: value for key, value in CONTRACT.items() if key != "preprocessing"}
    config = Config.from_env({"GATEWAY_MODEL_CONTRACT": json.dumps(without)})
    assert config.preprocessing_of(config.default_contract) == "fast"
    overridden = Config.from_env(
        {"GATEWAY_MODEL_CONTRACT": json.dumps(validated_fast), "GATEWAY_PREPROCESSING": "exact"}
    )
    assert (overridden.preprocessing_of(overridden.default_contract), overridden.default_contract.preprocessing) == (
        "exact",
        "fast",
    )


def test_a_list_of_contracts_serves_several_models_the_first_by_default(tmp_path: Path) -> None:
    exact = {**CONTRACT, "name": "book-model", "preprocessing": "exact"}
    fast = {**CONTRACT, "name": "retrained", "preprocessing": "fast", "labels": ["a", "b"]}
    path = tmp_path / "contracts.json"
    path.write_text(json.dumps([exact, fast]))
    config = Config.from_env({"GATEWAY_MODEL_CONTRACT_FILE": str(path)})
    assert [contract.name for contract in config.contracts] == ["book-model", "retrained"]
    assert config.default_contract.name == "book-model"
    assert [config.preprocessing_of(contract) for contract in config.contracts] == ["exact", "fast"]
    assert config.contracts[1].labels == ("a", "b")


@pytest.mark.parametrize(
    ("contracts", "message"),
    [
        ([], "model contracts: the list is empty"),
        ([CONTRACT, CONTRACT], "each model is listed once, but clothing-model appear"),
        ([CONTRACT, {**CONTRACT, "name": "x", "labels": "a"}], "[1] model contract: labels"),
    ],
)
def test_a_bad_list_of_contracts_is_refused_naming_the_entry(contracts: list[Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"GATEWAY_MODEL_CONTRACT": json.dumps(contracts)})
    assert message in str(caught.value)


def test_the_model_name_env_renames_only_a_single_model() -> None:
    two = json.dumps([CONTRACT, {**CONTRACT, "name": "other"}])
    with pytest.raises(ConfigError, match="renames a single model"):
        Config.from_env({"GATEWAY_MODEL_CONTRACT": two, "GATEWAY_MODEL_NAME": "x"})


def test_inline_contract_and_uint8_signature() -> None:
    contract = {**CONTRACT, "uint8": {"signatureName": "serving_uint8", "inputName": "pixels"}}
    config = Config.from_env({"GATEWAY_MODEL_CONTRACT": json.dumps(contract)})
    assert request_signature(config.default_contract, config.use_uint8).name == "serving_uint8"
    no_uint8 = Config.from_env({"GATEWAY_MODEL_CONTRACT": json.dumps(contract), "GATEWAY_USE_UINT8": "0"})
    assert request_signature(no_uint8.default_contract, no_uint8.use_uint8).name == "serving_default"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TF_SERVING_HOST": "http://tf-serving:8501"}, "not a URL"),
        ({"TF_SERVING_HOST": "tf-serving"}, "host:port"),
        ({"TF_SERVING_HOST": "dns:///tf-serving"}, "must end with host:port"),
        ({"GATEWAY_LB_POLICY": "random"}, "GATEWAY_LB_POLICY must be one of pick_first, round_robin"),
        ({"GATEWAY_DEADLINE_SECONDS": "abc"}, "GATEWAY_DEADLINE_SECONDS must be a number"),
        ({"GATEWAY_DEADLINE_SECONDS": "0"}, "GATEWAY_DEADLINE_SECONDS"),
        ({"GATEWAY_DEADLINE_SECONDS": "nan"}, "GATEWAY_DEADLINE_SECONDS"),
        ({"GATEWAY_MAX_DOWNLOAD_BYTES": "-5"}, "GATEWAY_MAX_DOWNLOAD_BYTES must be an integer"),
        ({"GATEWAY_MAX_BATCH": "1.5"}, "GATEWAY_MAX_BATCH"),
        ({"GATEWAY_MAX_IN_FLIGHT": "0"}, "GATEWAY_MAX_IN_FLIGHT"),
        ({"GATEWAY_MAX_QUEUE_SECONDS": "0"}, "GATEWAY_MAX_QUEUE_SECONDS"),
        ({"GATEWAY_MAX_DOWNLOADS": "0"}, "GATEWAY_MAX_DOWNLOADS must be"),
        ({"GATEWAY_MAX_LOOP_LAG_SECONDS": "-1"}, "GATEWAY_MAX_LOOP_LAG_SECONDS"),
        ({"GATEWAY_MAX_DOWNLOADS_PER_HOST": "many"}, "GATEWAY_MAX_DOWNLOADS_PER_HOST"),
        ({"GATEWAY_MAX_REDIRECTS": "50"}, "GATEWAY_MAX_REDIRECTS"),
        ({"GATEWAY_MAX_CONCURRENT_DECODES": "0"}, "GATEWAY_MAX_CONCURRENT_DECODES"),
        ({"GATEWAY_ALLOWED_NETWORKS": "10.0.0.0/33"}, "GATEWAY_ALLOWED_NETWORKS: '10.0.0.0/33' is not a CIDR"),
        ({"GATEWAY_LOG_LEVEL": "loud"}, "GATEWAY_LOG_LEVEL"),
        ({"GATEWAY_USE_UINT8": "maybe"}, "GATEWAY_USE_UINT8 must be true or false"),
        ({"GATEWAY_PREPROCESSING": "quick"}, "GATEWAY_PREPROCESSING must be one of fast, exact"),
        (
            {"GATEWAY_MAX_DOWNLOAD_BYTES": "100", "GATEWAY_MAX_REQUEST_BYTES": "10"},
            "at least GATEWAY_MAX_DOWNLOAD_BYTES",
        ),
    ],
)
def test_invalid_values(contract_env: dict[str, str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        Config.from_env({**contract_env, **env})
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "no model contract"),
        ({"GATEWAY_MODEL_CONTRACT_FILE": "/nonexistent/contract.json"}, "cannot read"),
        ({"GATEWAY_MODEL_CONTRACT": "{not json"}, "not valid JSON"),
        ({"GATEWAY_MODEL_CONTRACT": json.dumps({**CONTRACT, "labels": []})}, "labels"),
        ({"GATEWAY_MODEL_CONTRACT": json.dumps({**CONTRACT, "preprocessing": "lossy"})}, "preprocessing must be"),
        ({"GATEWAY_MODEL_CONTRACT": "{}", "GATEWAY_MODEL_CONTRACT_FILE": "x"}, "only one"),
    ],
)
def test_contract_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.from_env(env)


@pytest.mark.parametrize(
    ("target", "base_url"),
    [
        ("", "http://localhost:8501"),
        ("clothing-predictor.models", "http://clothing-predictor.models"),  # KServe's --predictor_host: port 80
        ("tf-serving:8501", "http://tf-serving:8501"),
        ("https://tf-serving.example.com/", "https://tf-serving.example.com"),
        ("[::1]:8501", "http://[::1]:8501"),
    ],
)
def test_rest_predictor_address(contract_env: dict[str, str], target: str, base_url: str) -> None:
    config = Config.from_env({**contract_env, "GATEWAY_PREDICTOR_PROTOCOL": "REST", "TF_SERVING_HOST": target})
    assert (config.predictor_protocol, config.model_server) == ("rest", base_url)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GATEWAY_PREDICTOR_PROTOCOL": "http"}, "GATEWAY_PREDICTOR_PROTOCOL must be one of grpc, rest"),
        ({"GATEWAY_PREDICTOR_PROTOCOL": "rest", "TF_SERVING_HOST": "ftp://x"}, "TF_SERVING_HOST must be host"),
        ({"GATEWAY_PREDICTOR_PROTOCOL": "rest", "TF_SERVING_HOST": "x/v1/models"}, "must be host"),
        ({"GATEWAY_MODEL_NAME": "bad name"}, "GATEWAY_MODEL_NAME"),
    ],
)
def test_invalid_predictor_settings(contract_env: dict[str, str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.from_env({**contract_env, **env})


def test_model_name_replaces_the_contracts(contract_env: dict[str, str]) -> None:
    config = Config.from_env({**contract_env, "GATEWAY_MODEL_NAME": "clothing"})
    assert config.default_contract.name == "clothing"
    assert config.default_contract.input_name == "input_8"
    assert not config.discover_tensor_names


BOOK_ENV = {
    "GATEWAY_MODEL_NAME": "clothing-model",
    "MODEL_INPUT_SIZE": "224,320",
    "KERAS_MODEL_NAME": "resnet50",
    "MODEL_LABELS": "dress, hat,longsleeve , outwear",
}


def test_books_transformer_env_makes_a_contract() -> None:
    config = Config.from_env(BOOK_ENV)
    contract = config.default_contract
    assert config.discover_tensor_names
    assert contract.name == "clothing-model"
    assert contract.input_size == (224, 320)  # height, width: both honoured
    assert contract.scaling == "caffe"
    assert contract.labels == ("dress", "hat", "longsleeve", "outwear")
    assert contract.signature_name == "serving_default"
    assert config.preprocessing_of(contract) == "exact"  # what the book's transformer (keras_image_helper) does


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"MODEL_LABELS": ""}, "incomplete: set MODEL_LABELS"),
        ({"GATEWAY_MODEL_NAME": ""}, "needs the model name"),
        ({"MODEL_INPUT_SIZE": "299"}, 'MODEL_INPUT_SIZE must be "height,width"'),
        ({"MODEL_INPUT_SIZE": "299,0"}, "MODEL_INPUT_SIZE"),
        ({"KERAS_MODEL_NAME": "mobilenet"}, "KERAS_MODEL_NAME must be one of xception, inception_v3, resnet50, vgg16"),
        ({"MODEL_LABELS": "a,,b"}, "MODEL_LABELS"),
        ({"MODEL_LABELS": "a, a"}, "unique"),
    ],
)
def test_books_transformer_env_errors(changes: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.from_env({**BOOK_ENV, **changes})


def test_a_contract_wins_over_the_books_env(contract_env: dict[str, str]) -> None:
    config = Config.from_env({**contract_env, **BOOK_ENV})
    assert not config.discover_tensor_names
    assert config.default_contract.input_size == (299, 299)
