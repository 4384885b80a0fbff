"""TF Serving's command line and config files as the stand-in server reads them (no TensorFlow needed)."""

from __future__ import annotations

import pytest

from model_tools.server import (
    FlagError,
    parse_batching_parameters,
    parse_channel_arguments,
    parse_flags,
    parse_monitoring_config,
)
from tests.model_tools.conftest import REPO

IMAGE = REPO / "images" / "tf-serving"


def test_defaults_follow_the_images_entrypoint_and_env() -> None:
    flags = parse_flags([], {"MODEL_NAME": "clothing-model", "MODEL_BASE_PATH": "/models"})
    assert (flags.port, flags.rest_api_port) == (8500, 8501)
    assert (flags.model_name, flags.model_base_path) == ("clothing-model", "/models/clothing-model")


def test_the_last_duplicate_wins_and_unknown_flags_are_ignored() -> None:
    flags = parse_flags(["--port=1", "--port=2", "--no_such_flag=3", "positional", "--enable_batching"], {})
    assert flags.port == 2
    assert flags.enable_batching is True
    assert parse_flags(["--enable_batching", "--enable_batching=false"], {}).enable_batching is False


@pytest.mark.parametrize("arg", ["--port=http", "--enable_batching=maybe", "--port"])
def test_a_bad_value_is_refused(arg: str) -> None:
    with pytest.raises(FlagError):
        parse_flags([arg], {})


def test_the_images_batching_and_monitoring_configs_parse() -> None:
    params = parse_batching_parameters((IMAGE / "batching.config").read_text())
    assert (params.max_batch_size, params.batch_timeout_micros, params.num_batch_threads) == (32, 2000, 2)
    assert parse_monitoring_config((IMAGE / "monitoring.config").read_text()) == "/monitoring/prometheus/metrics"
    assert parse_monitoring_config("prometheus_config { enable: false }") is None


def test_batching_parameters_are_checked_like_tf_serving() -> None:
    params = parse_batching_parameters("max_batch_size { value: 8 }\nallowed_batch_sizes: 2\nallowed_batch_sizes: 8\n")
    assert params.allowed_batch_sizes == (2, 8)
    with pytest.raises(ValueError, match="must be increasing and end with max_batch_size"):
        parse_batching_parameters("max_batch_size { value: 8 }\nallowed_batch_sizes: 4\n")
    with pytest.raises(ValueError, match=r'tensorflow.serving.BatchingParameters: 1:1 : .*"max_batch_sise"'):
        parse_batching_parameters("max_batch_sise { value: 8 }")


def test_config_files_are_text_protos_in_every_spelling_tf_serving_accepts() -> None:
    """The colon before a message field is optional in the text format; comments and separators are allowed."""
    assert parse_monitoring_config('prometheus_config: { enable: true, path: "/m" }  # on') == "/m"
    assert parse_monitoring_config("prometheus_config: {enable: true}") == "/monitoring/prometheus/metrics"
    params = parse_batching_parameters("max_batch_size: { value: 4 }; num_batch_threads {value: 1}\n# comment\n")
    assert (params.max_batch_size, params.num_batch_threads, params.max_enqueued_batches) == (4, 1, 10)


@pytest.mark.parametrize(
    "text", ["prometheus_config { enable: maybe }", "prometheus_confg { enable: true }", "prometheus_config {"]
)
def test_a_malformed_monitoring_config_is_reported_as_tf_serving_does(text: str) -> None:
    with pytest.raises(ValueError, match=r"^Error parsing text-format tensorflow.serving.MonitoringConfig: 1:"):
        parse_monitoring_config(text)


def test_channel_arguments_pass_integers_as_integers() -> None:
    assert parse_channel_arguments("grpc.max_connection_age_ms=30000,grpc.lb_policy_name=x") == [
        ("grpc.max_connection_age_ms", 30000),
        ("grpc.lb_policy_name", "x"),
    ]
