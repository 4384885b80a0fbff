"""Download an image from a client-supplied URL without becoming an SSRF proxy.

- Only http and https.
- The host is resolved once and EVERY address is checked; non-public addresses (loopback, private, link-local
  including 169.254.169.254, multicast, reserved, unspecified, CGNAT 100.64/10, their IPv6 equivalents, and IPv4
  addresses embedded in IPv6: mapped, compatible, 6to4, Teredo, NAT64) are refused unless inside an allowed network.
  Numeric host spellings (2130706433, 0177.0.0.1, 0x7f.0.0.1) are caught because the check is on resolved addresses.
- The connection goes to the checked address (no second resolution); the Host header, TLS SNI and certificate
  verification still use the hostname.
- Redirects are followed manually, limited, and every hop is checked again.
- Connect/read timeouts plus a total deadline; the byte limit is enforced while streaming; no content decoding
  (`Accept-Encoding: identity`), so a compressed body cannot expand past the limit.
- Keep-alive connections are reused (`ConnectionPools`), but only for the same hostname and the same address that
  the download's own resolution has just checked.
- A host's addresses are remembered for a few seconds (`CachedResolver`): a stream of images from one host costs one
  lookup, not one per image. They are checked on every use and connected to as checked, so nothing can rebind them.
- Downloads in flight are bounded per worker and per image host (`DownloadSlots`): past a bound, 503 overloaded at
  once, so one slow host cannot take every download a worker may run.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote, urljoin, urlsplit

import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError, ProtocolError, ReadTimeoutError

from clothing_gateway import USER_AGENT
from clothing_gateway.errors import GatewayError

if TYPE_CHECKING:
    from clothing_gateway.metrics import Metrics

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]

MAX_URL_LENGTH = 8192
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# A read asks for as many bytes as have already arrived, between these two: read1(n) allocates its n bytes before it
# waits, so a download stalled at its first bytes holds 16 KB, not a full-size read buffer (measured, 500 dripping
# downloads in two workers that had served load: largest worker RSS 112-125 -> 92-99 MB), while a fast one gets
# to large reads after a few.
_FIRST_READ, _MAX_READ = 16 * 1024, 256 * 1024
_MAX_CONNECT_SECONDS = 5.0
# Characters left as they are when re-quoting a path (the set `requests` uses): a URL that is already
# percent-encoded stays byte-identical, and spaces or non-ASCII characters get encoded instead of refused.
_SAFE_URL_CHARS = "!#$%&'()*+,/:;=?@[]~"
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_BLOCKED_V6 = (ipaddress.ip_network("64:ff9b:1::/48"),)  # local-use NAT64 (RFC 8215)


@dataclass(frozen=True)
class FetchPolicy:
    """Limits for one download."""

    max_bytes: int
    timeout_seconds: float
    max_redirects: int
    allowed_networks: tuple[IPNetwork, ...] = ()


def embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (mapped, compatible, 6to4, Teredo, NAT64); empty for IPv4."""
    if isinstance(address, ipaddress.IPv4Address):
        return []
    found = [a for a in (address.ipv4_mapped, address.sixtofour) if a is not None]
    if address.teredo:
        found.extend(address.teredo)
    if int(address) >> 32 == 0 and int(address) > 1:  # deprecated IPv4-compatible ::a.b.c.d
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address in _NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def _is_public(address: IPAddress) -> bool:
    if (
        not address.is_global
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    ):
        return False
    if isinstance(address, ipaddress.IPv4Address):
        return address not in _CGNAT
    return not address.is_site_local and not any(address in net for net in _BLOCKED_V6)


def _judged_addresses(address: IPAddress) -> list[IPAddress]:
    """An IPv4-mapped or NAT64 address stands for its IPv4 address (that is where packets go); any other address is
    judged together with the IPv4 addresses it embeds."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped:
            return [address.ipv4_mapped]
        if address in _NAT64:
            return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    return [address, *embedded_ipv4(address)]


def blocked_reason(address: IPAddress, allowed_networks: Sequence[IPNetwork] = ()) -> str | None:
    """Why a download from this address is refused, or None when it is allowed.

    An address inside an allowed network (or IPv4-mapped into one) is allowed; otherwise the address and every
    IPv4 address embedded in it must be public.
    """
    direct: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        direct.append(address.ipv4_mapped)
    if any(candidate in net for candidate in direct for net in allowed_networks if candidate.version == net.version):
        return None
    for candidate in _judged_addresses(address):
        if not _is_public(candidate):
            what = "the address" if candidate == address else f"the embedded IPv4 address {candidate}"
            return f"{address}: {what} is not a public address"
    return None


def resolve(host: str, port: int) -> list[str]:
    """All addresses the system resolver gives for host (IP literals in any spelling included), in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class CachedResolver:
    """`resolver`'s answers, kept per (host, port) for `seconds` (at most `size` hosts, the least recently used
    dropped first). Failures are not kept."""

    def __init__(self, seconds: float = 5.0, size: int = 1024, resolver: Resolver = resolve) -> None:
        self.seconds = seconds
        self.size = size
        self._resolver = resolver
        self._answers: OrderedDict[tuple[str, int], tuple[float, list[str]]] = OrderedDict()

    def __call__(self, host: str, port: int) -> list[str]:
        key, now = (host, port), time.monotonic()
        found = self._answers.get(key)
        if found is None or found[0] <= now:
            found = (now + self.seconds, self._resolver(host, port))
            self._answers[key] = found
            while len(self._answers) > self.size:
                self._answers.popitem(last=False)
        self._answers.move_to_end(key)
        return found[1]


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str  # IDNA-encoded hostname or IP literal (no brackets)
    port: int
    host_header: str
    path: str


def _parse(url: str) -> _Target:
    if len(url) > MAX_URL_LENGTH:
        raise GatewayError("invalid_url", f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(ord(char) < 0x21 or ord(char) == 0x7F for char in url.strip()):
        raise GatewayError("invalid_url", "the URL contains whitespace or control characters")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
        hostname = parts.hostname
    except ValueError as exc:
        raise GatewayError("invalid_url", f"cannot parse the URL: {exc}") from None
    scheme = parts.scheme.lower()
    if not scheme:
        raise GatewayError("invalid_url", "the URL must start with http:// or https://")
    if scheme not in ("http", "https"):
        raise GatewayError("blocked_url", f"only http and https URLs are fetched, not {scheme}:")
    if hostname and hostname.endswith(".") and not hostname.endswith(".."):
        hostname = hostname[:-1]  # the fully qualified spelling of the same name (localhost. is localhost)
    if not hostname:
        raise GatewayError("invalid_url", "the URL has no host")
    try:
        host = hostname.encode("idna").decode("ascii") if not hostname.isascii() else hostname
    except UnicodeError:
        raise GatewayError("invalid_url", f"the host {hostname!r} is not a valid domain name") from None
    port = port or (443 if scheme == "https" else 80)
    bracketed = f"[{host}]" if ":" in host else host
    host_header = bracketed if port == (443 if scheme == "https" else 80) else f"{bracketed}:{port}"
    path = quote(parts.path or "/", safe=_SAFE_URL_CHARS) + (
        "?" + quote(parts.query, safe=_SAFE_URL_CHARS) if parts.query else ""
    )
    return _Target(scheme=scheme, host=host, port=port, host_header=host_header, path=path)


def _checked_addresses(target: _Target, policy: FetchPolicy, resolver: Resolver) -> list[str]:
    try:
        addresses = resolver(target.host, target.port)
    except (OSError, UnicodeError) as exc:
        raise GatewayError("download_failed", f"cannot resolve {target.host}: {exc}") from None
    if not addresses:
        raise GatewayError("download_failed", f"{target.host} resolves to no address")
    for address in addresses:
        reason = blocked_reason(ipaddress.ip_address(address.split("%", 1)[0]), policy.allowed_networks)
        if reason:
            raise GatewayError("blocked_url", f"refusing to fetch from {target.host}: {reason}")
    return addresses


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.seconds = seconds

    def remaining(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise GatewayError("download_timeout", f"the download took longer than {self.seconds:g} s")
        return left


class ConnectionPools:
    """Keep-alive connections to image servers, reused across downloads (one instance per worker process).

    A pool is keyed by (scheme, hostname, port, address): a connection is reused only for the hostname it was opened
    for (Host header, TLS SNI and certificate) and only when this download's own resolution has just checked that
    same address, so DNS changes and blocked addresses are handled exactly as without reuse. At most `max_pools`
    pools (the least recently used is closed) of at most `max_idle` idle connections each.
    """

    def __init__(self, max_pools: int = 32, max_idle: int = 4) -> None:
        self.max_pools = max_pools
        self.max_idle = max_idle
        self._pools: OrderedDict[tuple[str, str, int, str], urllib3.HTTPConnectionPool] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, target: _Target, address: str) -> urllib3.HTTPConnectionPool:
        """The pool of connections to `address` for `target`'s scheme, hostname and port."""
        key = (target.scheme, target.host, target.port, address)
        with self._lock:
            pool = self._pools.get(key)
            if pool is not None:
                self._pools.move_to_end(key)
                return pool
            pool = self._new_pool(target, address)
            self._pools[key] = pool
            if len(self._pools) > self.max_pools:
                _, evicted = self._pools.popitem(last=False)
                evicted.close()
            return pool

    def close(self) -> None:
        """Close every pooled connection."""
        with self._lock:
            for pool in self._pools.values():
                pool.close()
            self._pools.clear()

    def _new_pool(self, target: _Target, address: str) -> urllib3.HTTPConnectionPool:
        if target.scheme == "https":
            return urllib3.HTTPSConnectionPool(
                address,
                target.port,
                retries=False,
                maxsize=self.max_idle,
                cert_reqs="CERT_REQUIRED",
                server_hostname=target.host,
                assert_hostname=target.host,
            )
        return urllib3.HTTPConnectionPool(address, target.port, retries=False, maxsize=self.max_idle)


class DownloadSlots:
    """Downloads in flight in this worker: at most `total`, and at most `per_host` from one image host (hostname and
    port). A download past either bound is refused at once with 503 overloaded: under gevent a waiting download costs
    only a socket and its buffer, so these bounds are what keeps memory and sockets finite, and the per-host one keeps
    a slow host (a tarpit, a struggling CDN) from taking every slot the other hosts' downloads need."""

    def __init__(self, total: int, per_host: int, metrics: Metrics) -> None:
        self.total = total
        self.per_host = per_host
        self.metrics = metrics
        self._by_host: Counter[tuple[str, int]] = Counter()
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, target: _Target) -> Iterator[None]:
        """One slot for a download from target's host, for the block's duration."""
        host = (target.host, target.port)
        with self._lock:
            if self._by_host.total() >= self.total:
                bound, message = "downloads", f"this worker already runs {self.total} downloads (GATEWAY_MAX_DOWNLOADS)"
            elif self._by_host[host] >= self.per_host:
                bound = "downloads_per_host"
                message = (
                    f"this worker already runs {self.per_host} downloads from {target.host_header} "
                    "(GATEWAY_MAX_DOWNLOADS_PER_HOST)"
                )
            else:
                bound = ""
                self._by_host[host] += 1
        if bound:
            self.metrics.shed.labels(bound).inc()
            raise GatewayError("overloaded", message)
        self.metrics.downloads.inc()
        try:
            yield
        finally:
            self.metrics.downloads.dec()
            with self._lock:
                self._by_host[host] -= 1
                if not self._by_host[host]:
                    del self._by_host[host]


def _open(
    target: _Target, addresses: list[str], deadline: _Deadline, pools: ConnectionPools
) -> urllib3.BaseHTTPResponse:
    """Send the GET to the first checked address that accepts a connection."""
    headers = {
        "Host": target.host_header,
        "User-Agent": USER_AGENT,
        "Accept": "image/*",
        "Accept-Encoding": "identity",
    }
    for index, address in enumerate(addresses):
        pool = pools.get(target, address)
        # A pooled connection may be one the server has closed. urllib3 discards it on the error and its pool is LIFO,
        # so the retry usually gets a new connection; but a concurrent download can return another stale idle one in
        # between (seen once in CI: ProtocolError twice). Each failure discards the failed connection; a download
        # fails only when max_idle + 1 connections in a row are dropped.
        attempts = pools.max_idle + 1
        for attempt in range(attempts):
            timeout = urllib3.Timeout(
                connect=min(_MAX_CONNECT_SECONDS, deadline.remaining()), read=deadline.remaining()
            )
            try:
                return pool.urlopen(
                    "GET",
                    target.path,
                    headers=headers,
                    retries=False,
                    redirect=False,
                    assert_same_host=False,
                    preload_content=False,
                    decode_content=False,
                    timeout=timeout,
                )
            except (NewConnectionError, ConnectTimeoutError) as exc:
                if index < len(addresses) - 1:
                    break
                # NewConnectionError subclasses ConnectTimeoutError (urllib3 legacy): test for it first.
                if not isinstance(exc, NewConnectionError):
                    raise GatewayError("download_timeout", f"connecting to {target.host} timed out") from None
                raise GatewayError("download_failed", f"cannot connect to {target.host}:{target.port}") from None
            except ReadTimeoutError:
                raise GatewayError("download_timeout", f"{target.host} did not answer in time") from None
            except HTTPError as exc:
                if isinstance(exc, ProtocolError) and attempt < attempts - 1:
                    continue  # a kept-alive connection the server closed as it was reused: again, on another one
                raise GatewayError(
                    "download_failed", f"request to {target.host} failed: {type(exc).__name__}"
                ) from None
    raise AssertionError("unreachable: addresses is never empty")


def _read_body(response: urllib3.BaseHTTPResponse, policy: FetchPolicy, deadline: _Deadline) -> bytes:
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > policy.max_bytes:
        raise GatewayError("image_too_large", f"the image is {length} bytes, more than the {policy.max_bytes} allowed")
    # One growing buffer, not a list of chunks: each read1() result is freed at once, so a slow download does not pin
    # one small object per read across the heap (measured: 250 dripping downloads in one worker, RSS 95 -> 77 MB).
    body = bytearray()
    try:
        while True:
            # Looked up before every read: once the body is complete, urllib3 hands the connection back to the pool
            # (response.connection becomes None) and another download may already own, or have closed, its socket.
            sock = getattr(response.connection, "sock", None)
            if sock is not None:
                sock.settimeout(deadline.remaining())
            chunk = response.read1(min(_MAX_READ, max(_FIRST_READ, len(body))))
            if not chunk:
                break
            if len(body) + len(chunk) > policy.max_bytes:
                raise GatewayError("image_too_large", f"the image is more than the {policy.max_bytes} bytes allowed")
            body += chunk
            deadline.remaining()
    except ReadTimeoutError:
        raise GatewayError("download_timeout", f"the download took longer than {deadline.seconds:g} s") from None
    except HTTPError as exc:
        raise GatewayError("download_failed", f"the download was interrupted: {type(exc).__name__}") from None
    return bytes(body)


def fetch_image(
    url: str, policy: FetchPolicy, pools: ConnectionPools, slots: DownloadSlots, resolver: Resolver = resolve
) -> bytes:
    """Download url's body under policy, or raise GatewayError (blocked_url, invalid_url, download_failed,
    download_timeout, image_too_large, overloaded). Each hop holds one of `slots` for its host; a connection is
    returned to `pools` only after a complete 200 body."""
    deadline = _Deadline(policy.timeout_seconds)
    for _ in range(policy.max_redirects + 1):
        target = _parse(url)
        addresses = _checked_addresses(target, policy, resolver)
        with slots.hold(target):
            body_or_location = _hop(target, addresses, policy, deadline, pools)
        if isinstance(body_or_location, bytes):
            return body_or_location
        url = urljoin(url, body_or_location)
    raise GatewayError("download_failed", f"more than {policy.max_redirects} redirects")


def _hop(
    target: _Target, addresses: list[str], policy: FetchPolicy, deadline: _Deadline, pools: ConnectionPools
) -> bytes | str:
    """One hop: the image's bytes, or the Location a redirect points to."""
    response = _open(target, addresses, deadline, pools)
    reusable = False
    try:
        if response.status in REDIRECT_STATUSES:
            location = response.headers.get("Location")
            if not location:
                raise GatewayError("download_failed", f"HTTP {response.status} redirect without a Location")
            return location
        if response.status != 200:
            raise GatewayError("download_failed", f"the image server answered HTTP {response.status}")
        body = _read_body(response, policy, deadline)
        reusable = True
        return body
    finally:
        if not reusable:
            response.close()  # closes the connection too: an unread body must not reach the next request
        response.release_conn()
