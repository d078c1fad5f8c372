"""Politeness and pinning: robots.txt, per-host connection cap and delay, the checked address."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import LOOPBACK

from demo.server import CorpusServer
from manifests.schema import Pair
from pipeline.crawl import CrawlConfig, crawl_pair
from pipeline.fetch import Fetcher, FetchError, FetchPolicy


def policy(**overrides) -> FetchPolicy:
    return FetchPolicy(**{"timeout": 2.0, "allowed_networks": (LOOPBACK,), **overrides})


def test_robots_txt_is_honoured_and_fetched_once_per_host(corpus):
    with CorpusServer({i.name: i.data for i in corpus}) as server:
        fetcher = Fetcher(policy())
        with pytest.raises(FetchError) as caught:
            fetcher.fetch(server.url(f"private/{corpus[0].name}"))
        assert caught.value.kind == "robots"
        for image in corpus[:5]:
            assert fetcher.fetch(server.url(f"img/{image.name}")) == image.data
        assert server.hits["/robots.txt"] == 1


def test_ignore_robots_txt(corpus):
    with CorpusServer({i.name: i.data for i in corpus}) as server:
        fetcher = Fetcher(policy(respect_robots_txt=False))
        assert fetcher.fetch(server.url(f"private/{corpus[0].name}")) == corpus[0].data
        assert server.hits["/robots.txt"] == 0


def test_unavailable_robots_txt_allows_everything(corpus):
    with CorpusServer({i.name: i.data for i in corpus}, robots_delay=3.0) as server:
        fetcher = Fetcher(policy(robots_timeout=0.5))
        assert fetcher.fetch(server.url(f"private/{corpus[0].name}")) == corpus[0].data


def test_per_host_connection_cap(server, corpus):
    fetcher = Fetcher(policy(per_host_connections=2))
    with ThreadPoolExecutor(8) as pool:
        bodies = list(
            pool.map(fetcher.fetch, [server.url(f"concurrent/cap/{i.name}") for i in corpus[:8]])
        )
    assert bodies == [i.data for i in corpus[:8]]
    assert server.peak["cap"] == 2  # eight threads, never more than two connections


def test_per_host_delay_spaces_requests(server, corpus):
    fetcher = Fetcher(policy(per_host_connections=4, per_host_delay=0.3))
    with ThreadPoolExecutor(4) as pool:
        list(
            pool.map(fetcher.fetch, [server.url(f"concurrent/delay/{i.name}") for i in corpus[:4]])
        )
    starts = sorted(server.starts["delay"])
    assert all(b - a >= 0.25 for a, b in zip(starts, starts[1:], strict=False))


def test_connection_goes_to_the_checked_address(server, corpus):
    """A name no DNS knows reaches the server only through the address our resolver checked."""
    port = int(server.base_url.rsplit(":", 1)[1])
    lookups = []

    def resolver(host, _port):
        lookups.append(host)
        return (
            ["127.0.0.1"] if len(lookups) <= 2 else ["10.0.0.1"]
        )  # robots.txt, image; then rebinding

    fetcher = Fetcher(policy(), resolver=resolver)
    url = f"http://images.invalid:{port}/img/{corpus[0].name}"
    assert fetcher.fetch(url) == corpus[0].data
    assert lookups == ["images.invalid"]  # one lookup serves robots.txt and the image


def test_crawl_pair_keeps_hostile_text_as_data(server, corpus):
    caption = "../../etc/passwd %s {0} $(rm -rf /) `id`"
    pair = Pair(key="000000000000007", url=server.url(f"img/{corpus[0].name}"), caption=caption)
    out = crawl_pair(pair, Fetcher(policy()), CrawlConfig())
    assert out.is_ok and out.caption == caption and out.key == "000000000000007"
