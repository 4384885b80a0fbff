"""Safe fetching, in-process against the loopback image server (and a loopback HTTPS server with a test CA)."""

from __future__ import annotations

import ipaddress
import os
import ssl
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from clothing_gateway import fetch
from clothing_gateway.errors import GatewayError
from clothing_gateway.fetch import (
    CachedResolver,
    ConnectionPools,
    DownloadSlots,
    FetchPolicy,
    blocked_reason,
    fetch_image,
    resolve,
)
from clothing_gateway.metrics import Metrics
from tests.conftest import free_port
from tests.gateway.conftest import ImageHandler, ImageServer, ImageServerHTTP, start_image_server

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
POOLS = ConnectionPools()  # shared by the module's downloads, as a worker's are
SLOTS = DownloadSlots(total=10_000, per_host=10_000, metrics=Metrics())  # bounds are tested on their own


@pytest.fixture(autouse=True, scope="module")
def _close_pools() -> Iterator[None]:
    yield
    POOLS.close()


def policy(**changes: object) -> FetchPolicy:
    values: dict[str, object] = {
        "max_bytes": 1024 * 1024,
        "timeout_seconds": 2.0,
        "max_redirects": 2,
        "allowed_networks": LOOPBACK,
    }
    values.update(changes)
    return FetchPolicy(**values)  # type: ignore[arg-type]


def fails_with(code: str, url: str, fetch_policy: FetchPolicy | None = None, **kwargs: object) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        fetch_image(url, fetch_policy or policy(), POOLS, SLOTS, **kwargs)  # type: ignore[arg-type]
    assert caught.value.code == code, caught.value.message
    return caught.value


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "127.255.255.254", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1",
        "100.127.255.255", "0.0.0.0", "0.1.2.3", "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255",
        "192.0.2.1", "198.18.0.1",
        "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "fec0::1", "ff02::1", "2001:db8::1",
        "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::127.0.0.1", "::10.0.0.1",
        "2002:7f00:1::", "2002:a9fe:a9fe::1", "64:ff9b::7f00:1", "64:ff9b::a00:1", "64:ff9b:1::1",
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo whose client is 127.0.0.1
    ],
)  # fmt: skip
def test_non_public_addresses_are_blocked(address: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) is None


def test_allowed_networks() -> None:
    cluster = (ipaddress.ip_network("10.1.0.0/16"),)
    assert blocked_reason(ipaddress.ip_address("10.1.2.3"), cluster) is None
    assert blocked_reason(ipaddress.ip_address("::ffff:10.1.2.3"), cluster) is None
    assert blocked_reason(ipaddress.ip_address("10.2.0.1"), cluster) is not None
    assert blocked_reason(ipaddress.ip_address("169.254.169.254"), cluster) is not None


@pytest.mark.parametrize("host", ["2130706433", "0177.0.0.1", "0x7f.0.0.1", "0x7f000001", "127.1", "017700000001"])
def test_numeric_spellings_resolve_to_the_address_that_is_checked(host: str) -> None:
    assert resolve(host, 80) == ["127.0.0.1"]
    fails_with("blocked_url", f"http://{host}:80/x.jpg", policy(allowed_networks=()))


def test_download(image_server: ImageServer, pants_jpeg: bytes) -> None:
    assert fetch_image(image_server.url("/pants.jpg"), policy(), POOLS, SLOTS) == pants_jpeg
    assert fetch_image(image_server.url("/pants-as-html"), policy(), POOLS, SLOTS) == pants_jpeg


def test_every_resolved_address_is_checked(image_server: ImageServer) -> None:
    resolver = lambda host, port: ["93.184.216.34", "10.0.0.7"]  # noqa: E731
    error = fails_with("blocked_url", "http://mixed.test/x.jpg", policy(allowed_networks=()), resolver=resolver)
    assert "10.0.0.7" in error.message


def test_connects_to_the_checked_address_without_resolving_again(image_server: ImageServer, pants_jpeg: bytes) -> None:
    calls: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"]

    url = f"http://images.test:{image_server.port}/pants.jpg?size=big%20one"
    assert fetch_image(url, policy(), POOLS, SLOTS, resolver=resolver) == pants_jpeg
    assert calls == ["images.test"]
    assert image_server.requests[-1] == ("/pants.jpg", f"images.test:{image_server.port}")


def test_falls_back_to_the_next_checked_address(image_server: ImageServer, pants_jpeg: bytes) -> None:
    # ::1 refuses (the image server listens on 127.0.0.1 only), 127.0.0.1 answers.
    resolver = lambda host, port: ["::1", "127.0.0.1"]  # noqa: E731
    allowed = (*LOOPBACK, ipaddress.ip_network("::1/128"))
    url = f"http://dual.test:{image_server.port}/pants.jpg"
    assert fetch_image(url, policy(allowed_networks=allowed), POOLS, SLOTS, resolver=resolver) == pants_jpeg


def test_redirects_are_followed_and_limited(image_server: ImageServer, pants_jpeg: bytes) -> None:
    assert fetch_image(image_server.url("/redirect-chain?n=1"), policy(), POOLS, SLOTS) == pants_jpeg  # 2 redirects
    assert "more than 2 redirects" in fails_with("download_failed", image_server.url("/redirect-chain?n=2")).message


def test_redirect_to_a_blocked_address_is_refused(image_server: ImageServer) -> None:
    only_this_server = (ipaddress.ip_network("127.0.0.1/32"),)
    target = "http://169.254.169.254/latest/meta-data/"
    fails_with("blocked_url", image_server.url(f"/redirect?to={target}"), policy(allowed_networks=only_this_server))
    fails_with("blocked_url", image_server.url("/redirect?to=file:///etc/passwd&status=307"))


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("ftp://example.com/x.jpg", "blocked_url"),
        ("file:///etc/passwd", "blocked_url"),
        ("gopher://127.0.0.1:70/", "blocked_url"),
        ("example.com/x.jpg", "invalid_url"),
        ("http:///x.jpg", "invalid_url"),
        ("http://exa mple.com/", "invalid_url"),
        ("http://[::1/", "invalid_url"),
        ("http://example.com:99999/", "invalid_url"),
        ("http://" + "a" * 9000, "invalid_url"),
    ],
)
def test_bad_urls(url: str, code: str) -> None:
    fails_with(code, url)


def test_size_limit(image_server: ImageServer) -> None:
    fails_with("image_too_large", image_server.url("/pants.jpg"), policy(max_bytes=1000))
    started = time.monotonic()
    fails_with("image_too_large", image_server.url("/declared-huge"))
    fails_with("image_too_large", image_server.url("/endless"))
    assert time.monotonic() - started < 2


def test_timeouts(image_server: ImageServer) -> None:
    for path in ("/slow?seconds=2", "/drip"):
        started = time.monotonic()
        fails_with("download_timeout", image_server.url(path), policy(timeout_seconds=0.5))
        assert time.monotonic() - started < 1.2, path


def test_http_errors_and_refused_connections(image_server: ImageServer) -> None:
    assert "HTTP 404" in fails_with("download_failed", image_server.url("/status/404")).message
    fails_with("download_failed", image_server.url("/status/500"))
    fails_with("download_failed", f"http://127.0.0.1:{free_port()}/x.jpg")


# ---------------------------------------------------------------------------------------------------------------
# Keep-alive: connections are reused only for the same hostname and checked address.


@pytest.fixture
def fresh_server() -> Iterator[ImageServer]:
    server = start_image_server()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def test_connections_are_reused(fresh_server: ImageServer, pants_jpeg: bytes) -> None:
    pools = ConnectionPools()
    for _ in range(3):
        assert fetch_image(fresh_server.url("/pants.jpg"), policy(), pools, SLOTS) == pants_jpeg
    pools.close()
    assert len(fresh_server.requests) == 3
    assert fresh_server.connections == 1


def test_a_connection_serves_one_hostname_and_one_checked_address(fresh_server: ImageServer, pants_jpeg: bytes) -> None:
    """Another hostname on the same address gets its own connection (its Host, SNI and certificate); a hostname that
    now resolves to a refused address is refused although a connection to its old address is pooled."""
    pools = ConnectionPools()
    answers = {"a.test": ["127.0.0.1"], "b.test": ["127.0.0.1"]}

    def fetch(host: str) -> bytes:
        url = f"http://{host}:{fresh_server.port}/pants.jpg"
        return fetch_image(url, policy(), pools, SLOTS, resolver=lambda name, port: answers[name])

    for host in ("a.test", "b.test", "a.test"):
        assert fetch(host) == pants_jpeg
    assert fresh_server.connections == 2
    assert [host for _, host in fresh_server.requests] == [
        f"{h}:{fresh_server.port}" for h in ("a.test", "b.test", "a.test")
    ]
    answers["a.test"] = ["10.0.0.1"]
    with pytest.raises(GatewayError) as caught:
        fetch("a.test")
    assert caught.value.code == "blocked_url"
    assert len(fresh_server.requests) == 3
    pools.close()


def test_a_connection_with_an_unread_body_is_not_reused(fresh_server: ImageServer, pants_jpeg: bytes) -> None:
    pools = ConnectionPools()
    with pytest.raises(GatewayError):
        fetch_image(fresh_server.url("/declared-huge"), policy(), pools, SLOTS)
    assert fetch_image(fresh_server.url("/pants.jpg"), policy(), pools, SLOTS) == pants_jpeg
    pools.close()
    assert fresh_server.connections == 2


@pytest.mark.parametrize("path", ["/close-after", "/once-per-connection"])
def test_a_connection_the_server_closed_is_replaced(fresh_server: ImageServer, pants_jpeg: bytes, path: str) -> None:
    """Closed after the answer, or (once-per-connection) only when the next request arrives: that request is sent
    again on a new connection, once."""
    pools = ConnectionPools()
    for _ in range(3):
        assert fetch_image(fresh_server.url(path), policy(), pools, SLOTS) == pants_jpeg
    pools.close()
    assert fresh_server.connections == 3


def test_many_concurrent_downloads_from_one_host_all_succeed(fresh_server: ImageServer, pants_jpeg: bytes) -> None:
    """64 threads share one worker's pools (4 idle connections per host): each download owns its connection until its
    body is read, whether the connection then goes back to the pool or is discarded because the pool is full."""
    pools = ConnectionPools()
    patient = policy(timeout_seconds=60.0)  # correctness under concurrency, not speed: a loaded CI machine is slow
    with ThreadPoolExecutor(max_workers=64) as executor:
        bodies = list(
            executor.map(lambda _: fetch_image(fresh_server.url("/pants.jpg"), patient, pools, SLOTS), range(640))
        )
    pools.close()
    assert all(body == pants_jpeg for body in bodies)
    assert len(fresh_server.requests) == 640
    assert fresh_server.connections < 640  # and yet connections were reused


def test_concurrent_downloads_survive_a_server_closing_connections_at_random(
    fresh_server: ImageServer, pants_jpeg: bytes
) -> None:
    pools = ConnectionPools()
    patient = policy(timeout_seconds=60.0)
    with ThreadPoolExecutor(max_workers=32) as executor:
        bodies = list(
            executor.map(lambda _: fetch_image(fresh_server.url("/random-close"), patient, pools, SLOTS), range(400))
        )
    pools.close()
    assert all(body == pants_jpeg for body in bodies)
    dropped = len(fresh_server.requests) - 400
    assert dropped > 0  # the server did drop reused connections, and each such request was sent again


def test_a_download_waiting_for_its_body_holds_little_memory(fresh_server: ImageServer) -> None:
    """20 downloads of a 1 MB image whose host sent the headers and then waits: what Python allocated under
    fetch_image stays small per download (no read buffer sized for a fast download before any of the body has
    arrived); then the bodies arrive whole."""
    image = os.urandom(1024 * 1024)
    fresh_server.httpd.images["/large.jpg"] = ("image/jpeg", image)
    metrics = Metrics()
    slots = DownloadSlots(total=100, per_host=100, metrics=metrics)
    patient = policy(max_bytes=2 * len(image), timeout_seconds=30.0)
    tracemalloc.start(25)
    try:
        with ThreadPoolExecutor(max_workers=20) as executor:
            url = fresh_server.url("/slow?seconds=2&image=/large.jpg")
            futures = [executor.submit(fetch_image, url, patient, POOLS, slots) for _ in range(20)]
            while metrics.registry.get_sample_value("gateway_downloads_in_flight") != 20:
                time.sleep(0.01)
            time.sleep(0.5)  # every download has its headers and waits in its first read of the body
            waiting = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(True, fetch.__file__, all_frames=True)]
            )
            assert [future.result() for future in futures] == [image] * 20
    finally:
        tracemalloc.stop()
    per_download = sum(stat.size for stat in waiting.statistics("filename")) / 20
    assert per_download < 48 * 1024  # 34 KB measured; a 64 KB read buffer alone is more


def test_downloads_past_a_bound_are_refused_at_once(image_server: ImageServer, pants_jpeg: bytes) -> None:
    """Two slots per host, three in all: a third download from one host is refused while another host still gets
    the last slot; then every slot is taken and any download is refused; each refusal is counted by its bound."""
    metrics = Metrics()
    slots = DownloadSlots(total=3, per_host=2, metrics=metrics)
    other_host = start_image_server("127.0.0.2")
    slow = policy(timeout_seconds=30.0)

    def in_flight() -> float | None:
        return metrics.registry.get_sample_value("gateway_downloads_in_flight")

    def refused(url: str) -> tuple[GatewayError, float]:
        started = time.monotonic()
        with pytest.raises(GatewayError) as caught:
            fetch_image(url, policy(), ConnectionPools(), slots)
        return caught.value, time.monotonic() - started

    with ThreadPoolExecutor(max_workers=3) as executor:
        held = [executor.submit(fetch_image, image_server.url("/slow?seconds=1.5"), slow, POOLS, slots) for _ in "ab"]
        while in_flight() != 2:
            time.sleep(0.01)
        per_host, seconds = refused(image_server.url("/pants.jpg"))
        assert (per_host.code, seconds < 0.5) == ("overloaded", True)
        assert "GATEWAY_MAX_DOWNLOADS_PER_HOST" in per_host.message
        held.append(executor.submit(fetch_image, other_host.url("/slow?seconds=1"), slow, POOLS, slots))
        while in_flight() != 3:
            time.sleep(0.01)
        total, seconds = refused(other_host.url("/pants.jpg"))
        assert (total.code, seconds < 0.5) == ("overloaded", True)
        assert "GATEWAY_MAX_DOWNLOADS" in total.message
        assert "PER_HOST" not in total.message
        assert [future.result() for future in held] == [pants_jpeg] * 3
    other_host.httpd.shutdown()
    other_host.httpd.server_close()
    assert in_flight() == 0
    assert fetch_image(image_server.url("/pants.jpg"), policy(), POOLS, slots) == pants_jpeg  # the slots came back
    for bound in ("downloads_per_host", "downloads"):
        assert metrics.registry.get_sample_value("gateway_shed_requests_total", {"bound": bound}) == 1


def test_each_redirect_hop_holds_a_slot_of_its_own_host(image_server: ImageServer) -> None:
    """A redirect to a host at its bound is refused: the bound is on the host downloaded from, not the first URL's."""
    slots = DownloadSlots(total=10, per_host=1, metrics=Metrics())
    other_host = start_image_server("127.0.0.2")
    target = other_host.url("/slow?seconds=1.5")
    with ThreadPoolExecutor(max_workers=1) as executor:
        held = executor.submit(fetch_image, target, policy(timeout_seconds=30.0), POOLS, slots)
        while not other_host.requests:
            time.sleep(0.01)
        redirected = image_server.url(f"/redirect?to={other_host.url('/pants.jpg')}")
        with pytest.raises(GatewayError) as caught:
            fetch_image(redirected, policy(), POOLS, slots)
        held.result()
    other_host.httpd.shutdown()
    other_host.httpd.server_close()
    assert caught.value.code == "overloaded"
    assert f"127.0.0.2:{other_host.port}" in caught.value.message


# ---------------------------------------------------------------------------------------------------------------
# HTTPS: the connection goes to the checked IP, SNI and certificate verification use the hostname.


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def https_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ImageServerHTTP, Path]]:
    """An HTTPS image server on 127.0.0.1 whose certificate (from a throwaway CA) is for images.test."""
    tmp = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=test CA", "-days", "1", cwd=tmp)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=images.test", cwd=tmp)
    (tmp / "ext.cnf").write_text("subjectAltName=DNS:images.test\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "1", "-extfile", "ext.cnf", cwd=tmp)  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp / "server.pem", tmp / "server.key")
    httpd = ImageServerHTTP(("127.0.0.1", 0), ImageHandler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    httpd.images = {"/pants.jpg": ("image/jpeg", (Path(__file__).parents[1] / "data" / "pants.jpg").read_bytes())}
    httpd.requests = []
    httpd.client_ports = []
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd, tmp / "ca.pem"
    httpd.shutdown()


def test_https_verifies_the_hostname_not_the_ip(
    https_server: tuple[ImageServerHTTP, Path], pants_jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    httpd, ca = https_server
    port = int(httpd.server_address[1])
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    resolver = lambda host, port: ["127.0.0.1"]  # noqa: E731
    pools = ConnectionPools()
    for _ in range(2):  # the second download reuses the verified connection: no new handshake
        assert (
            fetch_image(f"https://images.test:{port}/pants.jpg", policy(), pools, SLOTS, resolver=resolver)
            == pants_jpeg
        )
    assert len(set(httpd.client_ports)) == 1
    fails_with("download_failed", f"https://wrong.test:{port}/pants.jpg", resolver=resolver)
    monkeypatch.delenv("SSL_CERT_FILE")
    with pytest.raises(GatewayError) as caught:
        fetch_image(f"https://images.test:{port}/pants.jpg", policy(), ConnectionPools(), SLOTS, resolver=resolver)
    assert caught.value.code == "download_failed"
    pools.close()


@pytest.mark.parametrize("host", ["localhost.", "127.0.0.1."])
def test_a_trailing_dot_names_the_same_host_and_is_checked_like_it(host: str) -> None:
    """`localhost.` is the fully qualified spelling of `localhost`: refused as loopback, not 'cannot resolve'."""
    fails_with("blocked_url", f"http://{host}/x.jpg", policy(allowed_networks=()))


def test_a_trailing_dot_host_downloads_when_allowed(image_server: ImageServer, pants_jpeg: bytes) -> None:
    assert fetch_image(f"http://127.0.0.1.:{image_server.port}/pants.jpg", policy(), POOLS, SLOTS) == pants_jpeg


class _CountingResolver:
    def __init__(self, *answers: list[str] | OSError) -> None:
        self.answers = list(answers)
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, OSError):
            raise answer
        return answer


def test_a_hosts_addresses_are_looked_up_once_within_the_cache_time() -> None:
    lookups = _CountingResolver(["127.0.0.1"], ["127.0.0.2"])
    cached = CachedResolver(seconds=0.2, resolver=lookups)
    assert [cached("images.test", 80) for _ in range(3)] == [["127.0.0.1"]] * 3
    assert lookups.calls == ["images.test"]
    assert cached("images.test", 8080) == ["127.0.0.2"]  # another port, another entry
    time.sleep(0.25)
    assert cached("images.test", 80) == ["127.0.0.2"]
    assert len(lookups.calls) == 3


def test_a_failed_lookup_is_not_remembered() -> None:
    lookups = _CountingResolver(OSError("temporary failure in name resolution"), ["127.0.0.1"])
    cached = CachedResolver(resolver=lookups)
    with pytest.raises(OSError, match="temporary failure"):
        cached("images.test", 80)
    assert cached("images.test", 80) == ["127.0.0.1"]


def test_the_cache_keeps_the_most_recently_used_hosts() -> None:
    lookups = _CountingResolver(["127.0.0.1"])
    cached = CachedResolver(size=2, resolver=lookups)
    for host in ("a.test", "b.test", "a.test", "c.test", "a.test", "b.test"):
        cached(host, 80)
    assert lookups.calls == ["a.test", "b.test", "c.test", "b.test"]  # b was the least recently used when c came


def test_a_cached_address_is_still_checked_on_every_download(fresh_server: ImageServer, pants_jpeg: bytes) -> None:
    lookups = _CountingResolver(["127.0.0.1"])
    cached = CachedResolver(resolver=lookups)
    url = f"http://images.test:{fresh_server.port}/pants.jpg"
    assert fetch_image(url, policy(), POOLS, SLOTS, resolver=cached) == pants_jpeg
    fails_with("blocked_url", url, policy(allowed_networks=()), resolver=cached)
    assert lookups.calls == ["images.test"]
