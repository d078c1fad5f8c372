"""SSRF guard: which URLs may be fetched, and to which address the connection goes.

The host is resolved once and the connection is made to the address that was checked, so a
DNS answer that changes between check and connect (rebinding) cannot reach a private network.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

ALLOWED_SCHEMES = ("http", "https")
Resolver = Callable[[str, int], list[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UrlRefused(Exception):
    """A URL that must not be fetched; `kind` becomes the row's `error:<kind>` status."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Target:
    """Where one request goes: the URL's parts plus the checked address to connect to."""

    scheme: str
    host: str
    port: int
    path: str
    address: str

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


class CachingResolver:
    """Remember answers for `ttl` seconds: a crawl asks for the same few hosts millions of times,
    and a cached answer is still the very address that was checked."""

    def __init__(self, resolver: Resolver = system_resolver, ttl: float = 300.0, size: int = 65536):
        self._resolver, self._ttl, self._size = resolver, ttl, size
        self._answers: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self._lock = threading.Lock()

    def __call__(self, host: str, port: int) -> list[str]:
        now = time.monotonic()
        with self._lock:
            hit = self._answers.get((host, port))
        if hit is not None and hit[0] > now:
            return hit[1]
        addresses = self._resolver(host, port)
        with self._lock:
            if len(self._answers) >= self._size:
                self._answers.clear()
            self._answers[(host, port)] = (now + self._ttl, addresses)
        return addresses


def is_public(address: IPAddress) -> bool:
    """True for globally routable unicast addresses; IPv4-mapped IPv6 is judged as its IPv4."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def parse_networks(
    cidrs: Sequence[str],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def split_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path+query) of an http(s) URL, or UrlRefused(bad_url)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise UrlRefused("bad_url", f"unparsable URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise UrlRefused("bad_url", f"scheme {scheme or '(none)'!r} is not http or https")
    host = parts.hostname
    if not host or any(c.isspace() for c in host):
        raise UrlRefused("bad_url", "URL has no valid host")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return scheme, host, port or (443 if scheme == "https" else 80), path


def resolve_target(
    url: str,
    resolver: Resolver = system_resolver,
    allowed_networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
) -> Target:
    """Check `url` and pick the address to connect to; refuse private ones unless allowed."""
    scheme, host, port, path = split_url(url)
    try:
        addresses = resolver(host, port)
    except (OSError, UnicodeError) as exc:
        raise UrlRefused("dns", f"cannot resolve {host!r}: {exc}") from None
    if not addresses:
        raise UrlRefused("dns", f"no address for {host!r}")
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        if is_public(address) or any(address in net for net in allowed_networks):
            return Target(scheme, host, port, path, str(address))
    raise UrlRefused(
        "private_address",
        f"{host!r} resolves to non-public address {addresses[0]} (see --allow-private-addresses)",
    )
