"""The fetcher against a real loopback server: every fault ends as the right error kind."""

from __future__ import annotations

import time

import pytest
from conftest import LOOPBACK

from pipeline.fetch import Fetcher, FetchError, FetchPolicy, opt_out_directives
from pipeline.netguard import UrlRefused


@pytest.fixture()
def fetcher():
    policy = FetchPolicy(
        timeout=1.0,
        deadline=5.0,
        retries=2,
        backoff=0.05,
        max_bytes=2_000_000,
        allowed_networks=(LOOPBACK,),
    )
    f = Fetcher(policy)
    yield f
    f.close()


def fetch_error(fetcher, url) -> FetchError | UrlRefused:
    with pytest.raises((FetchError, UrlRefused)) as caught:
        fetcher.fetch(url)
    return caught.value


def test_fetches_an_image(fetcher, server, corpus):
    assert fetcher.fetch(server.url(f"img/{corpus[0].name}")) == corpus[0].data


@pytest.mark.parametrize("code", [403, 404, 410])
def test_client_errors_are_final(fetcher, server, code):
    assert fetch_error(fetcher, server.url(f"status/{code}")).kind == f"http_{code}"


def test_server_error_is_retried_until_it_recovers(fetcher, server, corpus):
    assert fetcher.fetch(server.url(f"flaky/recover/2/{corpus[1].name}")) == corpus[1].data
    assert server.hits["flaky/recover"] == 3


def test_server_error_gives_up_after_the_retries(fetcher, server, corpus):
    assert fetch_error(fetcher, server.url(f"flaky/never/9/{corpus[1].name}")).kind == "http_503"
    assert server.hits["flaky/never"] == 3  # one try and two retries


def test_429_waits_as_retry_after_says(fetcher, server, corpus):
    start = time.monotonic()
    assert fetcher.fetch(server.url(f"retry-after/r1/1/{corpus[2].name}")) == corpus[2].data
    assert time.monotonic() - start >= 0.9


def test_slow_response_times_out(fetcher, server, corpus):
    assert fetch_error(fetcher, server.url(f"slow/3/{corpus[0].name}")).kind == "timeout"


def test_truncated_body(fetcher, server, corpus):
    assert fetch_error(fetcher, server.url(f"truncated/{corpus[0].name}")).kind == "truncated"


def test_html_is_not_an_image(fetcher, server):
    assert fetch_error(fetcher, server.url("html")).kind == "not_image"


def test_endless_body_is_cut_at_the_cap(fetcher, server):
    assert fetch_error(fetcher, server.url("huge")).kind == "too_large"


@pytest.mark.parametrize("directive", ["noai", "noimageai", "noindex", "noimageindex"])
def test_x_robots_tag_opt_out(fetcher, server, corpus, directive):
    url = server.url(f"robots-tag/{directive}/{corpus[0].name}")
    assert fetch_error(fetcher, url).kind == "opted_out"


def test_opt_out_can_be_ignored_for_own_corpora(server, corpus):
    policy = FetchPolicy(honor_opt_out=False, allowed_networks=(LOOPBACK,))
    assert Fetcher(policy).fetch(server.url(f"robots-tag/noai/{corpus[0].name}")) == corpus[0].data


@pytest.mark.parametrize(
    "target", ["http://10.255.255.1/x.jpg", "http://169.254.169.254/latest/meta-data/"]
)
def test_redirect_to_private_address_is_refused_before_connecting(fetcher, server, target):
    error = fetch_error(fetcher, server.url(f"redirect?to={target}"))
    assert error.kind == "private_address"


def test_loopback_is_refused_by_default(server, corpus):
    error = fetch_error(Fetcher(FetchPolicy()), server.url(f"img/{corpus[0].name}"))
    assert error.kind == "private_address"


def test_redirect_chain_within_limit(fetcher, server, corpus):
    assert fetcher.fetch(server.url(f"redirect-chain/3/{corpus[3].name}")) == corpus[3].data


def test_redirect_chain_over_limit(fetcher, server, corpus):
    url = server.url(f"redirect-chain/9/{corpus[3].name}")
    assert fetch_error(fetcher, url).kind == "too_many_redirects"


def test_redirect_loop(fetcher, server):
    assert fetch_error(fetcher, server.url("redirect-loop")).kind == "redirect_loop"


def test_connection_refused(fetcher, server):
    closed_port = _closed_port()
    error = fetch_error(fetcher, f"http://127.0.0.1:{closed_port}/x.jpg")
    assert error.kind == "connection"


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["noai"], {"noai"}),
        (["nofollow, NoImageAI"], {"noimageai"}),
        (["otherbot: noindex"], set()),
        (["openwit: noindex"], {"noindex"}),
        (["unavailable_after: 25 Jun 2010 15:00:00 PST"], set()),
        (["all"], set()),
    ],
)
def test_opt_out_directives(values, expected):
    assert opt_out_directives(values, "openwit/0.1 (+x)") == expected


def test_endless_body_memory_stays_near_the_cap(fetcher, server):
    import tracemalloc

    tracemalloc.start()
    try:
        assert fetch_error(fetcher, server.url("huge")).kind == "too_large"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * fetcher.policy.max_bytes  # streamed and stopped, not buffered whole
