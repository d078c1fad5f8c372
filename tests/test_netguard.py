"""The SSRF guard refuses every non-public address, judged once, on the address connected to."""

from __future__ import annotations

import ipaddress

import pytest

from pipeline.netguard import (
    CachingResolver,
    UrlRefused,
    is_public,
    parse_networks,
    resolve_target,
    split_url,
)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",  # IPv4-mapped IPv6
        "::ffff:10.0.0.1",
    ],
)
def test_non_public_addresses_are_refused(address):
    assert not is_public(ipaddress.ip_address(address))
    with pytest.raises(UrlRefused) as caught:
        resolve_target("http://innocent.example/x.jpg", lambda host, port: [address])
    assert caught.value.kind == "private_address"


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1::1", "::ffff:8.8.8.8"])
def test_public_addresses_pass_and_are_pinned(address):
    target = resolve_target("https://Example.COM:8443/a/b.jpg?x=1", lambda h, p: [address])
    assert target.address == str(ipaddress.ip_address(address))
    assert (target.scheme, target.host, target.port, target.path) == (
        "https",
        "example.com",
        8443,
        "/a/b.jpg?x=1",
    )
    assert target.host_header == "example.com:8443"


def test_allowed_networks_lift_the_guard_only_for_them():
    allowed = parse_networks(["127.0.0.0/8"])
    assert resolve_target("http://h/x", lambda h, p: ["127.0.0.2"], allowed).address == "127.0.0.2"
    with pytest.raises(UrlRefused):
        resolve_target("http://h/x", lambda h, p: ["10.0.0.1"], allowed)


def test_mixed_answers_connect_to_the_public_address():
    target = resolve_target("http://h/x", lambda h, p: ["10.0.0.1", "93.184.216.34"])
    assert target.address == "93.184.216.34"


def test_resolver_is_asked_once_per_target():
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])  # a rebinding DNS server
    calls = []

    def rebinding(host, port):
        calls.append(host)
        return next(answers)

    target = resolve_target("http://rebind.example/x", rebinding)
    assert target.address == "93.184.216.34" and calls == ["rebind.example"]


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/x.jpg",
        "data:image/png;base64,AAAA",
        "javascript:alert(1)",
        "http://",
        "http://exa mple.com/x.jpg",
        "http://[::1/x.jpg",
        "http://example.com:99999/x.jpg",
        "example.com/no-scheme.jpg",
    ],
)
def test_bad_urls_are_refused_before_any_lookup(url):
    with pytest.raises(UrlRefused) as caught:
        split_url(url)
    assert caught.value.kind == "bad_url"


def test_unresolvable_host():
    def fail(host, port):
        raise OSError("Name or service not known")

    with pytest.raises(UrlRefused) as caught:
        resolve_target("http://nx.invalid/x", fail)
    assert caught.value.kind == "dns"


def test_caching_resolver_asks_once_per_host_within_its_ttl():
    calls = []

    def resolver(host, port):
        calls.append(host)
        return ["93.184.216.34"]

    cached = CachingResolver(resolver, ttl=60)
    assert cached("a.example", 80) == cached("a.example", 80) == ["93.184.216.34"]
    cached("b.example", 80)
    assert calls == ["a.example", "b.example"]
    expired = CachingResolver(resolver, ttl=0)
    expired("a.example", 80)
    expired("a.example", 80)
    assert calls.count("a.example") == 3


@pytest.mark.parametrize(
    "address",
    [
        "::127.0.0.1",  # IPv4-compatible
        "::ffff:0:7f00:1",  # IPv4-translated 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254, the metadata service
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "64:ff9b:1::a00:1",  # local-use NAT64
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
        "fec0::1",  # site-local
        "192.0.0.8",  # IETF protocol assignments (192.0.0.0/24)
        "192.0.0.170",
        "198.18.0.1",  # benchmarking
        "2001:db8::1",  # documentation
    ],
)
def test_ipv6_forms_of_private_ipv4_and_special_ranges_are_refused(address):
    """Defect 7: the guard passed IPv6 forms that embed a private IPv4 address."""
    assert not is_public(ipaddress.ip_address(address))
    with pytest.raises(UrlRefused) as caught:
        resolve_target("http://innocent.example/x.jpg", lambda host, port: [address])
    assert caught.value.kind == "private_address"
    literal = f"http://[{address}]/x.jpg" if ":" in address else f"http://{address}/x.jpg"
    with pytest.raises(UrlRefused):
        resolve_target(literal, lambda host, port: [host])


@pytest.mark.parametrize("address", ["64:ff9b::808:808", "2002:808:808::1", "::ffff:1.1.1.1"])
def test_ipv6_forms_of_public_ipv4_pass(address):
    target = resolve_target("http://h/x", lambda h, p: [address])
    assert target.address == str(ipaddress.ip_address(address))


def test_allowed_networks_cover_the_ipv4_inside_an_ipv6_form():
    loopback = parse_networks(["127.0.0.0/8"])
    for address in ("::127.0.0.1", "::ffff:127.0.0.1", "2002:7f00:1::"):
        assert resolve_target("http://h/x", lambda h, p, a=address: [a], loopback)
    with pytest.raises(UrlRefused):
        resolve_target("http://h/x", lambda h, p: ["64:ff9b::a00:1"], loopback)
    everything = parse_networks(["0.0.0.0/0", "::/0"])
    assert resolve_target("http://h/x", lambda h, p: ["fec0::1"], everything)
