"""robots.txt: bracketed IPv6-literal origins, and a cache bounded by bytes, not hosts."""

from __future__ import annotations

from pipeline.robots import RobotsCache

BIG = "User-agent: *\n" + "".join(f"Disallow: /private/path/{i}/\n" for i in range(4_000))


def test_robots_txt_of_an_ipv6_literal_host_is_fetched_and_honoured():
    """Defect 9: the robots URL lacked brackets, failed to parse and counted as allow-all."""
    asked = []

    def fetch_text(url):
        asked.append(url)
        return "User-agent: *\nDisallow: /private/\n"

    robots = RobotsCache(fetch_text, "openwit")
    assert not robots.allowed("http://[2001:db8::5]:8080/private/x.jpg")
    assert robots.allowed("http://[2001:db8::5]:8080/public/x.jpg")
    assert asked == ["http://[2001:db8::5]:8080/robots.txt"]


def test_the_cache_is_bounded_by_bytes_and_keeps_recent_hosts():
    """Defect 10: 100,000 hosts of a 512 kB robots.txt each were allowed in memory."""
    fetched = []

    def fetch_text(url):
        fetched.append(url)
        return BIG

    budget = 3 * 1024 * 1024  # a host of BIG takes about 0.9 MB
    robots = RobotsCache(fetch_text, "openwit", max_bytes=budget)
    for host in range(12):
        assert not robots.allowed(f"http://h{host}.example/private/path/7/x.jpg")
        assert robots.cached_bytes <= budget
    assert robots.cached_bytes > budget // 2  # the estimate counts what the rules hold
    robots.allowed("http://h11.example/a.jpg")  # recent: still cached
    assert len(fetched) == 12
    robots.allowed("http://h0.example/a.jpg")  # evicted long ago: fetched again
    assert len(fetched) == 13


def test_other_crawlers_groups_are_not_kept():
    rules = "".join(f"Disallow: /private/path/{i}/\n" for i in range(5_000))
    text = "User-agent: otherbot\n" + rules + "User-agent: *\nDisallow: /no/\n"
    robots = RobotsCache(lambda url: text, "openwit")
    assert robots.allowed("http://a.example/private/path/1/x.jpg")
    assert not robots.allowed("http://a.example/no/x.jpg")
    assert robots.cached_bytes < 10_000
