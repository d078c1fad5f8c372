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


# Refused whatever the Python version's `is_global` says (its tables changed across releases).
_SPECIAL = tuple(
    ipaddress.ip_network(cidr)
    for cidr in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
        "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        "::/128", "::1/128", "100::/64", "64:ff9b:1::/48", "2001:2::/48", "2001:10::/28",
        "2001:20::/28", "2001:db8::/32", "3fff::/20", "5f00::/16", "fc00::/7", "fe80::/10",
        "fec0::/10", "ff00::/8",
    )
)  # fmt: skip
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (mapped, compatible, translated, NAT64,
    6to4, Teredo's server and client): traffic to it may well reach them."""
    low = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    found = [address.ipv4_mapped, address.sixtofour, *(address.teredo or ())]
    if any(address in net for net in (_NAT64, _IPV4_COMPATIBLE, _IPV4_TRANSLATED)):
        found.append(low)
    return [a for a in found if a is not None]


def _is_special(address: IPAddress) -> bool:
    return any(address in net for net in _SPECIAL if net.version == address.version)


def _public_itself(address: IPAddress) -> bool:
    return address.is_global and not address.is_multicast and not _is_special(address)


def is_public(address: IPAddress) -> bool:
    """True for globally routable unicast addresses; an IPv6 address that embeds IPv4 ones is
    judged by them (`[::ffff:127.0.0.1]`, `[::127.0.0.1]`, `[64:ff9b::a9fe:a9fe]`...)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = embedded_ipv4(address)
        if embedded:
            return not _is_special(address) and all(_public_itself(a) for a in embedded)
    return _public_itself(address)


def is_allowed(address: IPAddress, allowed_networks: Sequence) -> bool:
    """Public, or inside `allowed_networks` (the address, or every IPv4 address it embeds)."""
    if is_public(address) or any(address in net for net in allowed_networks):
        return True
    embedded = embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else []
    allowed = [net for net in allowed_networks if net.version == 4]
    return bool(embedded) and all(any(a in net for net in allowed) for a in embedded)


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
        if is_allowed(address, allowed_networks):
            return Target(scheme, host, port, path, str(address))
    raise UrlRefused(
        "private_address",
        f"{host!r} resolves to non-public address {addresses[0]} (see --allow-private-addresses)",
    )
