"""Fetching a remote image: every redirect hop's host resolved and checked (no private, loopback or
link-local address, IPv4 embedded in IPv6 included), the connection pinned to a checked address,
the body bounded in bytes and never decompressed, the whole fetch (DNS included) within `timeout_s`."""

from __future__ import annotations

import ipaddress
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any
from urllib.parse import SplitResult, urljoin, urlsplit

import httpx

from qwenkit.chat.media.policy import MediaPolicy, normalize_host
from qwenkit.errors import BadRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_MAX_REDIRECTS = 5
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the IPv4 address is the last 32 bits
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: local use, refused outright
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d
#: getaddrinfo cannot be interrupted: it runs here so that the fetch can stop waiting for it
_DNS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="qwenkit-dns")
_getaddrinfo = socket.getaddrinfo


class _Deadline:
    """The time left of one fetch; `remaining()` refuses once it is spent."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise BadRequest(f"fetching the image took longer than {self.seconds:g} s")
        return left


def fetch_remote(url: str, policy: MediaPolicy) -> bytes:
    """GET an image, following up to 5 redirects by hand; every hop's host is resolved and must be
    public (or trusted); the body is bounded by `max_bytes` and the whole fetch by `timeout_s`."""
    deadline = _Deadline(policy.timeout_s)
    headers = {"Accept": "image/*", "Accept-Encoding": "identity"}
    with httpx.Client(follow_redirects=False, trust_env=False) as client:
        for _ in range(_MAX_REDIRECTS + 1):
            deadline.remaining()  # refuses once the time is spent, before any work on this hop
            parts, port = _parse(url)
            host = parts.hostname or ""
            addresses = _resolve(host, port, deadline)
            if normalize_host(host) not in policy.trusted_hosts:
                _check_public(host, addresses)
            response = _connect(client, url, addresses, headers, deadline)
            try:
                if response.is_redirect:
                    url = urljoin(url, response.headers.get("location", ""))
                    continue
                if response.status_code != 200:
                    raise BadRequest(f"fetching the image answered HTTP {response.status_code}")
                return _read_bounded(response, policy, deadline)
            except httpx.TimeoutException:
                raise BadRequest(f"fetching the image took longer than {policy.timeout_s:g} s") from None
            except httpx.HTTPError as exc:
                raise BadRequest(f"cannot fetch the image: {type(exc).__name__}") from None
            finally:
                response.close()
    raise BadRequest(f"fetching the image took more than {_MAX_REDIRECTS} redirects")


def _parse(url: str) -> tuple[SplitResult, int]:
    """`url`'s parts and port, refused unless it is a well-formed http(s) URL with a host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadRequest(f"malformed image URL {url[:100]!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest(f"unsupported image URL {url[:100]!r} (http or https only)")
    return parts, port or (443 if scheme == "https" else 80)


def _resolve(host: str, port: int, deadline: _Deadline) -> list[IPAddress]:
    """Every address of `host`, looked up within the deadline."""
    future = _DNS.submit(_getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        infos = future.result(timeout=deadline.remaining())
    except FutureTimeout:
        future.cancel()
        raise BadRequest(f"resolving the image host {host!r} took longer than {deadline.seconds:g} s") from None
    except (OSError, UnicodeError):
        raise BadRequest(f"cannot resolve the image host {host!r}") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses:
        raise BadRequest(f"cannot resolve the image host {host!r}")
    return list(dict.fromkeys(addresses))


def _check_public(host: str, addresses: list[IPAddress]) -> None:
    if not all(is_public(a) for a in addresses):
        raise BadRequest(f"the image URL's host {host!r} is a private or local address; refused")


def is_public(address: IPAddress) -> bool:
    """Whether `address`, and every IPv4 address embedded in it (mapped, 6to4, Teredo, NAT64,
    IPv4-compatible), is global unicast."""
    if not address.is_global or address.is_multicast:
        return False
    if isinstance(address, ipaddress.IPv4Address):
        return True
    if address in _NAT64_LOCAL:
        return False
    embedded: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped:
        embedded.append(address.ipv4_mapped)
    if address.sixtofour:
        embedded.append(address.sixtofour)
    if address.teredo:
        embedded.extend(address.teredo)
    if address in _NAT64 or address in _IPV4_COMPATIBLE:
        embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return all(is_public(a) for a in embedded)


def _connect(
    client: httpx.Client, url: str, addresses: list[IPAddress], headers: dict[str, str], deadline: _Deadline
) -> httpx.Response:
    """The response of the first of `addresses` that accepts a connection, within the deadline."""
    failure: httpx.HTTPError | None = None
    for tried, address in enumerate(addresses):
        target, pin_headers, extensions = pinned(url, str(address))
        remaining = deadline.remaining()
        request = client.build_request(
            "GET",
            target,
            headers={**headers, **pin_headers},
            extensions=extensions,
            timeout=httpx.Timeout(
                remaining, connect=remaining / (len(addresses) - tried)
            ),  # time kept for the other addresses
        )
        try:
            return client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            failure = exc
        except httpx.TimeoutException:
            raise BadRequest(f"fetching the image took longer than {deadline.seconds:g} s") from None
        except httpx.HTTPError as exc:
            raise BadRequest(f"cannot fetch the image: {type(exc).__name__}") from None
    raise BadRequest(f"cannot fetch the image: {type(failure).__name__}")


def pinned(url: str, address: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(url, headers, extensions) that connect to the checked `address` (no second DNS lookup
    that could answer differently) while the host name still goes in `Host` and TLS's SNI."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    ip = f"[{address}]" if ":" in address else address
    netloc = ip + (f":{parts.port}" if parts.port else "")
    headers = {"Host": parts.netloc.rsplit("@", 1)[-1]}
    return parts._replace(netloc=netloc).geturl(), headers, {"sni_hostname": host}


def _read_bounded(response: httpx.Response, policy: MediaPolicy, deadline: _Deadline) -> bytes:
    """The raw body, refused when compressed (a small body could inflate past any limit), larger
    than `max_bytes`, or slower than the deadline."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise BadRequest(f"the image was sent with Content-Encoding {encoding!r}; only uncompressed bodies are read")
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > policy.max_bytes:
        raise BadRequest(f"the image is {declared} bytes; at most {policy.max_bytes} are allowed")
    body = bytearray()
    for piece in response.iter_raw():
        body += piece
        if len(body) > policy.max_bytes:
            raise BadRequest(f"the image is larger than {policy.max_bytes} bytes")
        deadline.remaining()
    return bytes(body)
