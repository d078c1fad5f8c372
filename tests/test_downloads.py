"""The crawl's concurrency: host-keyed queues under many threads, stalled hosts, retries."""

from __future__ import annotations

import gc
import threading
import time
import weakref

from conftest import LOOPBACK

from demo.server import CorpusServer, StalledServer
from pipeline.downloads import Download, Downloads
from pipeline.fetch import Fetcher, FetchPolicy


def policy(**overrides) -> FetchPolicy:
    return FetchPolicy(**{"timeout": 2.0, "allowed_networks": (LOOPBACK,), **overrides})


class Collector:
    """`on_done` for Downloads: the finished downloads and when each finished."""

    def __init__(self, expected: int):
        self.done: list[tuple[float, Download]] = []
        self._expected = expected
        self._lock = threading.Lock()
        self._all = threading.Event()

    def __call__(self, download: Download) -> None:
        with self._lock:
            self.done.append((time.monotonic(), download))
            if len(self.done) == self._expected:
                self._all.set()

    def wait(self, timeout: float = 60.0) -> dict[str, Download]:
        assert self._all.wait(timeout), f"{len(self.done)} of {self._expected} finished"
        return {d.url: d for _, d in self.done}


def run(urls: list[str], threads: int, **overrides) -> tuple[Collector, float]:
    collector = Collector(len(urls))
    downloads = Downloads(Fetcher(policy(**overrides)), threads, collector)
    start = time.monotonic()
    for url in urls:
        downloads.submit(url)
    collector.wait()
    downloads.close()
    return collector, start


def hosts(corpus, count: int) -> list[CorpusServer]:
    images = {i.name: i.data for i in corpus}
    return [CorpusServer(images, host=f"127.0.0.{10 + i}").start() for i in range(count)]


def test_per_host_cap_holds_with_many_threads_on_many_hosts(corpus):
    servers = hosts(corpus, 3)
    try:
        urls = [s.url(f"concurrent/cap/{i.name}") for i in corpus[:8] for s in servers]
        collector, _ = run(urls, threads=64, per_host_connections=2)
        data = {i.name: i.data for i in corpus}
        assert all(d.body == data[u.rsplit("/", 1)[1]] for u, d in collector.wait().items())
        assert [s.peak["cap"] for s in servers] == [2, 2, 2]  # 64 threads, 2 per host
    finally:
        for server in servers:
            server.stop()


def test_per_host_delay_spaces_each_host_while_hosts_overlap(corpus):
    servers = hosts(corpus, 3)
    try:
        urls = [s.url(f"concurrent/delay/{i.name}") for i in corpus[:4] for s in servers]
        run(urls, threads=32, per_host_connections=4, per_host_delay=0.3)
        for server in servers:
            starts = sorted(server.starts["delay"])
            assert all(b - a >= 0.25 for a, b in zip(starts, starts[1:], strict=False))
        firsts = sorted(min(s.starts["delay"]) for s in servers)
        assert firsts[-1] - firsts[0] < 0.25  # the hosts did not wait for each other
    finally:
        for server in servers:
            server.stop()


def test_a_stalled_host_does_not_slow_the_others(corpus):
    """Eight threads, ten stalled rows queued first: the fast hosts' rows still finish long
    before the stalled host's first timeout (a thread pool blocking on the host would not)."""
    servers = hosts(corpus, 2)
    with StalledServer("127.0.0.20") as stalled:
        try:
            slow = [stalled.url(f"img/{i}.jpg") for i in range(10)]
            fast = [s.url(f"img/{i.name}") for i in corpus for s in servers]
            collector, start = run(slow + fast, threads=8, timeout=3.0, retries=0)
            done = collector.wait()
            assert all(done[u].body is not None for u in fast)
            assert {done[u].error.kind for u in slow} == {"timeout"}
            last_fast = max(t for t, d in collector.done if d.url in fast)
            first_slow = min(t for t, d in collector.done if d.url in slow)
            assert last_fast - start < 2.0 < first_slow - start
        finally:
            for server in servers:
                server.stop()


def test_a_retry_waits_without_holding_a_thread(corpus):
    """One thread: while a 429 waits out its Retry-After (1 s), the other rows are fetched."""
    (server,) = hosts(corpus, 1)
    try:
        flaky = server.url(f"retry-after/wait/1/{corpus[0].name}")
        others = [server.url(f"img/{i.name}") for i in corpus[1:6]]
        collector, start = run([flaky, *others], threads=1, per_host_connections=1)
        order = [d.url for _, d in collector.done]
        assert order[-1] == flaky and collector.wait()[flaky].body == corpus[0].data
        assert max(t for t, d in collector.done if d.url in others) - start < 0.9
    finally:
        server.stop()


def test_hosts_that_all_stall_end_in_about_one_timeout_each(corpus):
    """60 rows on 3 stalled hosts, 2 connections each, 3 tries of 1 s per row: one by one that
    is 30 s; given up after three unanswered rows, each host ends in about two timeouts."""
    servers = [StalledServer(f"127.0.0.{30 + i}").__enter__() for i in range(3)]
    try:
        urls = [s.url(f"img/{i}.jpg") for i in range(20) for s in servers]
        collector, start = run(urls, threads=64, timeout=1.0, retries=2, robots_timeout=0.5)
        done = collector.wait()
        assert len(done) == 60 and {d.error.kind for d in done.values()} == {"timeout"}
        assert max(t for t, _ in collector.done) - start < 6.0
    finally:
        for server in servers:
            server.__exit__()


def test_a_host_that_answers_with_errors_is_never_given_up(corpus):
    (server,) = hosts(corpus, 1)
    try:
        urls = [server.url(f"status/503?n={i}") for i in range(8)]
        urls.append(server.url(f"img/{corpus[0].name}"))
        collector, _ = run(urls, threads=4, retries=1, backoff=0.05)
        done = collector.wait()
        assert {done[u].error.kind for u in urls[:-1]} == {"http_503"}
        assert done[urls[-1]].body == corpus[0].data
    finally:
        server.stop()


def test_idle_threads_keep_no_finished_download_alive(corpus):
    """A crawl hands each body and its caller's tag (the batch of results) on and forgets them:
    256 idle threads that each kept their last download would keep 256 bodies and batches."""

    class Tag:  # a stand-in for the crawl's batch, which a weak reference can watch
        pass

    tags = [Tag() for _ in corpus[:8]]
    watched = [weakref.ref(tag) for tag in tags]
    collector = Collector(len(tags))
    with CorpusServer({i.name: i.data for i in corpus}) as server:
        downloads = Downloads(Fetcher(policy()), 8, lambda d: collector(Download(d.url)))
        for image, tag in zip(corpus[:8], tags, strict=True):
            downloads.submit(server.url(image.name), tag)
        del tags, tag
        collector.wait()
        time.sleep(0.2)  # the threads are back waiting for work
        gc.collect()
        alive = sum(ref() is not None for ref in watched)
        downloads.close()
    assert alive == 0, f"{alive} of {len(watched)} finished downloads still referenced"
