"""One gateway, several models of one TF Serving: routing by model name, by version and by version label (TF
Serving's paths), per-model readiness, the errors for what is not served, and traffic policies (a weighted canary,
sticky by key; a bounded shadow compared with the client's answer). The stand-in serves a model config (three
versions of the clothing model labelled stable, canary and slow, and a second model), over gRPC and REST."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from clothing_gateway.app import create_app
from clothing_gateway.config import Config, ConfigError
from model_tools import server as stand_in
from tests.conftest import DATA, free_port
from tests.gateway.conftest import CONTRACT, GATEWAY_PYTHON, InProcessGateway
from tests.gateway.fake_servable import load_fake, write_version

SHOES = {**CONTRACT, "name": "shoes", "labels": ["boot", "sandal", "sneaker"]}
CANARY_OFFSET = 1.0  # version 2 of the clothing model answers every score this much higher
SLOW_SECONDS = 0.5  # version 3 of the clothing model takes this long to answer


@pytest.fixture(scope="module")
def tf_serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stand_in.ModelServer]:
    """The stand-in with a model config: clothing-model versions 1 (stable), 2 (canary) and 3 (slow), and shoes."""
    models = tmp_path_factory.mktemp("models")
    write_version(models / "clothing-model", CONTRACT, version=1)
    write_version(models / "clothing-model", CONTRACT, version=2, offset=CANARY_OFFSET)
    write_version(models / "clothing-model", CONTRACT, version=3, latency=SLOW_SECONDS)
    write_version(models / "shoes", SHOES, version=1)
    config = models / "models.config"
    config.write_text(
        "model_config_list {\n"
        f'  config {{ name: "clothing-model" base_path: "{models / "clothing-model"}" model_platform: "tensorflow"\n'
        "    model_version_policy { specific { versions: 1 versions: 2 versions: 3 } }\n"
        '    version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 2 }\n'
        '    version_labels { key: "slow" value: 3 } }\n'
        f'  config {{ name: "shoes" base_path: "{models / "shoes"}" model_platform: "tensorflow" }}\n'
        "}\n"
    )
    flags = stand_in.Flags(
        port=free_port(),
        rest_api_port=free_port(),
        model_config_file=str(config),
        allow_version_labels_for_unavailable_models=True,
    )
    server = stand_in.ModelServer(flags, load_fake)
    server.start()
    yield server
    server.stop(grace=0)


def _client(tf_serving: stand_in.ModelServer, protocol: str, contracts: list[dict[str, Any]]) -> InProcessGateway:
    port = tf_serving.flags.port if protocol == "grpc" else tf_serving.flags.rest_api_port
    env = {
        "TF_SERVING_HOST": f"127.0.0.1:{port}",
        "GATEWAY_PREDICTOR_PROTOCOL": protocol,
        "GATEWAY_MODEL_CONTRACT": json.dumps(contracts),
    }
    return InProcessGateway(create_app(Config.from_env(env)))


@pytest.fixture(scope="module", params=["grpc", "rest"])
def client(request: pytest.FixtureRequest, tf_serving: stand_in.ModelServer) -> Iterator[InProcessGateway]:
    client = _client(tf_serving, request.param, [CONTRACT, SHOES])
    yield client
    client.app.extensions["clothing_gateway"].close()


def _scores(client: InProcessGateway, path: str, image: bytes) -> dict[str, float]:
    response = client.post_json(path, {"instances": [{"b64": base64.b64encode(image).decode()}]})
    assert response.status == 200, response.json()
    (scores,) = response.json()["predictions"]
    return scores


def _values(scores: dict[str, float]) -> np.ndarray:
    return np.array(list(scores.values()))


def test_versions_and_labels_reach_the_versions_tf_serving_maps_them_to(
    client: InProcessGateway, pants_jpeg: bytes
) -> None:
    version_1 = _scores(client, "/v1/models/clothing-model/versions/1:predict", pants_jpeg)
    version_2 = _scores(client, "/v1/models/clothing-model/versions/2:predict", pants_jpeg)
    np.testing.assert_allclose(_values(version_2) - _values(version_1), CANARY_OFFSET, rtol=1e-5)
    assert _scores(client, "/v1/models/clothing-model/labels/stable:predict", pants_jpeg) == version_1
    assert _scores(client, "/v1/models/clothing-model/labels/canary:predict", pants_jpeg) == version_2
    latest = _scores(client, "/v1/models/clothing-model/versions/3:predict", pants_jpeg)
    assert _scores(client, "/v1/models/clothing-model:predict", pants_jpeg) == latest
    book = client.request("POST", "/predict", pants_jpeg, {"Content-Type": "image/jpeg"})
    assert book.json() == latest  # the book's endpoint: the default (first) model, its latest version


def test_each_model_answers_with_its_own_labels(client: InProcessGateway, pants_jpeg: bytes) -> None:
    assert list(_scores(client, "/v1/models/shoes:predict", pants_jpeg)) == SHOES["labels"]
    assert list(_scores(client, "/v1/models/clothing-model:predict", pants_jpeg)) == CONTRACT["labels"]


@pytest.mark.parametrize(
    ("path", "code", "message"),
    [
        ("/v1/models/clothing-model/versions/7:predict", "version_not_found", 'version 7 of model "clothing-model"'),
        ("/v1/models/clothing-model/labels/beta:predict", "version_not_found", 'version label "beta"'),
        ("/v1/models/shirts:predict", "model_not_found", 'serves the models "clothing-model", "shoes", not "shirts"'),
        ("/v1/models/shirts/labels/stable:predict", "model_not_found", 'not "shirts"'),
    ],
)
def test_what_is_not_served_is_a_404_naming_it(
    client: InProcessGateway, pants_jpeg: bytes, path: str, code: str, message: str
) -> None:
    response = client.post_json(path, {"instances": [{"b64": base64.b64encode(pants_jpeg).decode()}]})
    assert (response.status, response.json()["error"]["code"]) == (404, code)
    assert message in response.json()["error"]["message"]


def test_readiness_is_per_model_and_all_of_them(client: InProcessGateway, tf_serving: stand_in.ModelServer) -> None:
    ready = client.request("GET", "/readyz").json()
    assert ready["ready"] is True
    assert set(ready["models"]) == {"clothing-model", "shoes"}
    assert client.request("GET", "/v1/models/shoes").json() == {"name": "shoes", "ready": True}
    protocol = client.app.extensions["clothing_gateway"].config.predictor_protocol
    missing = _client(tf_serving, protocol, [CONTRACT, {**SHOES, "name": "hats"}])
    try:
        answer = missing.request("GET", "/readyz")
        assert (answer.status, answer.json()["error"]["code"]) == (503, "not_ready")
        assert answer.json()["models"]["clothing-model"]["ready"] is True
        assert answer.json()["models"]["hats"]["ready"] is False
        assert answer.json()["error"]["message"].startswith("hats: ")
        assert missing.request("GET", "/v1/models/clothing-model").status == 200
        assert missing.request("GET", "/v1/models/hats").status == 503
        registry = missing.app.extensions["clothing_gateway"].metrics.registry
        ready = {
            name: registry.get_sample_value("gateway_model_ready", {"model": name})
            for name in ("clothing-model", "hats")
        }
        assert ready == {"clothing-model": 1.0, "hats": 0.0}  # what the ModelNotAvailable alert watches
    finally:
        missing.app.extensions["clothing_gateway"].close()


def test_the_openapi_document_names_every_model(client: InProcessGateway) -> None:
    document = client.request("GET", "/openapi.json").json()
    operation = document["paths"]["/v1/models/{name}/labels/{label}:predict"]["post"]
    (name,) = [parameter for parameter in operation["parameters"] if parameter["name"] == "name"]
    assert name["schema"]["enum"] == ["clothing-model", "shoes"]
    scores = operation["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["predictions"]
    assert set(scores["items"]["properties"]) == set(CONTRACT["labels"]) | set(SHOES["labels"])


def test_metrics_name_the_model(client: InProcessGateway, pants_jpeg: bytes) -> None:
    _scores(client, "/v1/models/shoes:predict", pants_jpeg)
    registry = client.app.extensions["clothing_gateway"].metrics.registry
    labels = {"model": "shoes", "version_label": "latest", "outcome": "ok"}
    assert registry.get_sample_value("gateway_model_duration_seconds_count", labels)


def test_the_chart_smoke_check_asks_each_model_and_label(
    make_gateway: Any, tf_serving: stand_in.ModelServer, pants_jpeg: bytes
) -> None:
    """What the chart's test pods run with `models`: one classification per model and per version label, through a
    real gunicorn gateway; the top label is checked only where asked."""
    gateway = make_gateway(
        {
            "TF_SERVING_HOST": f"127.0.0.1:{tf_serving.flags.port}",
            "GATEWAY_MODEL_CONTRACT": json.dumps([CONTRACT, SHOES]),
        }
    )
    smoke = [str(GATEWAY_PYTHON), "-m", "clothing_gateway.smoke", "--endpoint", gateway.base, "--timeout", "10"]
    image = ["--image", str(DATA / "pants.jpg")]
    canary = subprocess.run(
        [*smoke, *image, "--kserve-model", "clothing-model", "--version-label", "canary"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert canary.returncode == 0, canary.stderr
    assert set(canary.stdout.split()) >= set(CONTRACT["labels"])
    shoes = subprocess.run([*smoke, *image, "--kserve-model", "shoes"], capture_output=True, text=True, timeout=30)
    assert shoes.returncode == 0, shoes.stderr
    assert "sneaker" in shoes.stdout
    unknown = subprocess.run(
        [*smoke, *image, "--kserve-model", "clothing-model", "--version-label", "beta"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert unknown.returncode == 1
    assert "version_not_found" in unknown.stderr


# --- traffic policies ---------------------------------------------------------------------------------------------


def _traffic_client(tf_serving: stand_in.ModelServer, policy: dict[str, Any], **env: str) -> InProcessGateway:
    config = Config.from_env(
        {
            "TF_SERVING_HOST": f"127.0.0.1:{tf_serving.flags.port}",
            "GATEWAY_MODEL_CONTRACT": json.dumps([CONTRACT, SHOES]),
            "GATEWAY_TRAFFIC": json.dumps({"clothing-model": policy}),
            **env,
        }
    )
    return InProcessGateway(create_app(config))


def _answered_by(client: InProcessGateway, image: bytes, **headers: str) -> str:
    response = client.request("POST", "/predict", image, {"Content-Type": "image/jpeg", **headers})
    assert response.status == 200, response.json()
    return response.headers["X-Model-Version-Label"]


def test_a_canary_gets_its_weight_of_the_requests_and_the_rest_go_to_stable(
    tf_serving: stand_in.ModelServer, pants_jpeg: bytes
) -> None:
    client = _traffic_client(tf_serving, {"canary": {"label": "canary", "weight": 20}})
    try:
        answered = Counter(_answered_by(client, pants_jpeg) for _ in range(1000))
        assert set(answered) == {"stable", "canary"}
        assert 150 <= answered["canary"] <= 250, answered  # 20 % +/- 5 points (4 standard deviations)
        sticky = {_answered_by(client, pants_jpeg, **{"X-Canary-Key": "user-42"}) for _ in range(20)}
        assert len(sticky) == 1  # one client keeps meeting one version
        by_key = Counter(_answered_by(client, pants_jpeg, **{"X-Canary-Key": f"user-{i}"}) for i in range(400))
        assert 60 <= by_key["canary"] <= 100, by_key  # keys spread by their hash
        explicit = client.post_json(
            "/v1/models/clothing-model/labels/canary:predict",
            {"instances": [{"b64": base64.b64encode(pants_jpeg).decode()}]},
        )
        assert explicit.headers["X-Model-Version-Label"] == "canary"  # a path naming a label bypasses the policy
        registry = client.app.extensions["clothing_gateway"].metrics.registry
        labels = {"model": "clothing-model", "version_label": "canary", "outcome": "ok"}
        assert registry.get_sample_value("gateway_model_duration_seconds_count", labels) >= answered["canary"]
    finally:
        client.app.extensions["clothing_gateway"].close()


def _wait_for(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.05)


def test_a_shadow_copy_is_compared_with_the_answer_the_client_got(
    tf_serving: stand_in.ModelServer, pants_jpeg: bytes
) -> None:
    """Stable (version 1) answers; every request is copied to canary (version 2: the same winner, every score 1.0
    higher): the comparisons say the top-1 labels agree and the scores differ by 1.0."""
    client = _traffic_client(tf_serving, {"shadow": {"label": "canary", "percent": 100}})
    registry = client.app.extensions["clothing_gateway"].metrics.registry

    def sample(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, {"model": "clothing-model", **labels}) or 0.0

    try:
        assert {_answered_by(client, pants_jpeg) for _ in range(10)} == {"stable"}
        _wait_for(lambda: sample("gateway_shadow_requests_total", outcome="ok") == 10)
        assert sample("gateway_shadow_comparisons_total", top1="same") == 10
        assert sample("gateway_shadow_comparisons_total", top1="different") == 0
        assert sample("gateway_shadow_score_difference_count") == 10
        assert sample("gateway_shadow_score_difference_bucket", le="0.5") == 0
        assert sample("gateway_shadow_score_difference_sum") == pytest.approx(10 * CANARY_OFFSET, rel=1e-4)
        both = _traffic_client(
            tf_serving,
            {"canary": {"label": "canary", "weight": 100}, "shadow": {"label": "canary", "percent": 100}},
        )
        try:
            assert _answered_by(both, pants_jpeg) == "canary"
            time.sleep(0.2)
            shadows = both.app.extensions["clothing_gateway"].metrics.registry
            assert (
                shadows.get_sample_value("gateway_shadow_requests_total", {"model": "clothing-model", "outcome": "ok"})
                is None
            )
        finally:
            both.app.extensions["clothing_gateway"].close()
    finally:
        client.app.extensions["clothing_gateway"].close()


def test_a_shadow_never_delays_or_fails_the_client_and_is_bounded(
    tf_serving: stand_in.ModelServer, pants_jpeg: bytes
) -> None:
    """The shadow label's version takes SLOW_SECONDS, one shadow may run at a time: clients are answered at stable's
    speed, the copies past the bound are dropped and counted; a shadow label TF Serving lacks fails only the copy."""
    client = _traffic_client(
        tf_serving, {"shadow": {"label": "slow", "percent": 100}}, GATEWAY_MAX_SHADOW_IN_FLIGHT="1"
    )
    registry = client.app.extensions["clothing_gateway"].metrics.registry
    try:
        for _ in range(5):
            started = time.monotonic()
            assert _answered_by(client, pants_jpeg) == "stable"
            assert time.monotonic() - started < SLOW_SECONDS / 2
        outcome = {"model": "clothing-model"}
        assert registry.get_sample_value("gateway_shadow_requests_total", {**outcome, "outcome": "dropped"}) == 4
        _wait_for(lambda: registry.get_sample_value("gateway_shadow_requests_total", {**outcome, "outcome": "ok"}) == 1)
    finally:
        client.app.extensions["clothing_gateway"].close()
    missing = _traffic_client(tf_serving, {"shadow": {"label": "beta", "percent": 100}})
    registry = missing.app.extensions["clothing_gateway"].metrics.registry
    try:
        assert _answered_by(missing, pants_jpeg) == "stable"
        labels = {"model": "clothing-model", "outcome": "version_not_found"}
        _wait_for(lambda: registry.get_sample_value("gateway_shadow_requests_total", labels) == 1)
    finally:
        missing.app.extensions["clothing_gateway"].close()


@pytest.mark.parametrize(
    ("traffic", "message"),
    [
        ({"hats": {}}, "GATEWAY_TRAFFIC['hats']: not a served model"),
        ({"shoes": {"canary": {"label": "canary", "weight": 120}}}, "weight must be a percentage from 0 to 100"),
        ({"shoes": {"canary": {"label": "a/b", "weight": 5}}}, "canary.label must be a version label"),
        ({"shoes": {"shadow": {"label": "canary"}}}, "shadow must be {label, percent}"),
    ],
)
def test_a_bad_traffic_policy_is_refused_at_start(traffic: dict[str, Any], message: str) -> None:
    env = {"GATEWAY_MODEL_CONTRACT": json.dumps([CONTRACT, SHOES]), "GATEWAY_TRAFFIC": json.dumps(traffic)}
    with pytest.raises(ConfigError) as caught:
        Config.from_env(env)
    assert message in str(caught.value)


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_readiness_needs_every_label_of_the_traffic_policy(tf_serving: stand_in.ModelServer, protocol: str) -> None:
    """A policy's labels must each name an AVAILABLE version matching the contract: a canary label TF Serving does
    not know keeps the gateway unready (and says which), the others make it ready."""
    port = tf_serving.flags.port if protocol == "grpc" else tf_serving.flags.rest_api_port
    env = {"TF_SERVING_HOST": f"127.0.0.1:{port}", "GATEWAY_PREDICTOR_PROTOCOL": protocol}
    for canary, ready in (("canary", True), ("beta", False)):
        policy = {"clothing-model": {"canary": {"label": canary, "weight": 10}}}
        config = Config.from_env({**env, "GATEWAY_MODEL_CONTRACT": json.dumps([CONTRACT]),
                                  "GATEWAY_TRAFFIC": json.dumps(policy)})  # fmt: skip
        client = InProcessGateway(create_app(config))
        try:
            answer = client.request("GET", "/v1/models/clothing-model")
            assert (answer.status == 200) is ready, answer.json()
            detail = client.request("GET", "/readyz").json()["models"]["clothing-model"]["detail"]
            assert ("its labels canary, stable name AVAILABLE versions" in detail) is ready, detail
            assert ('version label "beta"' in detail) is not ready, detail
        finally:
            client.app.extensions["clothing_gateway"].close()
