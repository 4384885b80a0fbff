"""SSRF attempts through a real gateway that does NOT allow loopback (the default: only public addresses), except
127.0.0.2/32 where a second image server plays the role of an allowed in-cluster image store."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.gateway.conftest import Gateway, ImageServer, start_image_server


@pytest.fixture(scope="module")
def allowed_store() -> Iterator[ImageServer]:
    server = start_image_server("127.0.0.2")
    yield server
    server.httpd.shutdown()


def ssrf_urls(port: int) -> list[str]:
    return [
        f"http://127.0.0.1:{port}/pants.jpg",
        f"http://localhost:{port}/pants.jpg",  # a hostname resolving to a private address
        f"http://[::1]:{port}/pants.jpg",
        f"http://[::ffff:127.0.0.1]:{port}/pants.jpg",
        f"http://[::ffff:7f00:1]:{port}/pants.jpg",
        f"http://2130706433:{port}/pants.jpg",  # decimal
        f"http://0177.0.0.1:{port}/pants.jpg",  # octal
        f"http://0x7f.0.0.1:{port}/pants.jpg",  # hex
        f"http://0x7f000001:{port}/pants.jpg",
        f"http://127.1:{port}/pants.jpg",
        f"http://0.0.0.0:{port}/pants.jpg",
        f"http://[::]:{port}/pants.jpg",
        f"http://user:pass@127.0.0.1:{port}/pants.jpg",
        "http://10.0.0.1/x.jpg",
        "http://172.16.0.1/x.jpg",
        "http://192.168.0.1/x.jpg",
        "http://100.64.0.1/x.jpg",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://[fe80::1]/x.jpg",
        "http://224.0.0.1/x.jpg",
        "http://[2002:7f00:1::]/x.jpg",  # 6to4 wrapping 127.0.0.1
        "http://[64:ff9b::a9fe:a9fe]/x.jpg",  # NAT64 wrapping 169.254.169.254
        "https://127.0.0.1/x.jpg",
        "ftp://127.0.0.1/x.jpg",
        "file:///etc/passwd",
        "gopher://127.0.0.1:6379/_INFO",
    ]


def test_ssrf_attempts_are_refused(strict_gateway: Gateway, image_server: ImageServer) -> None:
    before = len(image_server.requests)
    failures = []
    for url in ssrf_urls(image_server.port):
        response = strict_gateway.post_json("/predict", {"url": url})
        code = response.json()["error"]["code"]
        if (response.status, code) != (422, "blocked_url"):
            failures.append(f"{url}: {response.status} {code}")
    assert not failures
    assert len(image_server.requests) == before  # nothing reached the loopback image server


def test_kserve_instances_are_checked_too(strict_gateway: Gateway, image_server: ImageServer) -> None:
    instances = [{"url": f"http://127.0.0.1:{image_server.port}/pants.jpg"}]
    response = strict_gateway.post_json("/v1/models/clothing-model:predict", {"instances": instances})
    assert (response.status, response.json()["error"]["code"]) == (422, "blocked_url")


def test_allowed_network_works_and_redirects_out_of_it_are_refused(
    strict_gateway: Gateway, allowed_store: ImageServer, image_server: ImageServer
) -> None:
    assert strict_gateway.post_json("/predict", {"url": allowed_store.url("/pants.jpg")}).status == 200
    redirect = allowed_store.url(f"/redirect?to=http://127.0.0.1:{image_server.port}/pants.jpg")
    response = strict_gateway.post_json("/predict", {"url": redirect})
    assert (response.status, response.json()["error"]["code"]) == (422, "blocked_url")
    metadata = allowed_store.url("/redirect?to=http://169.254.169.254/latest/meta-data/&status=307")
    assert strict_gateway.post_json("/predict", {"url": metadata}).status == 422
