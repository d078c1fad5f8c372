"""Crawl stage: download, verify and resize each pair's image, many downloads at once.

`crawl_pair` is the per-element logic (never raises; every failure is a status). The DoFn fans
a bundle out over a thread pool: downloads are I/O-bound and Pillow releases the GIL while
decoding and resizing, so threads keep both cores busy. Up to `threads * 4` downloads are in
flight; results are emitted as they complete, so one slow host does not stall the others.
"""

from __future__ import annotations

import logging
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass, field, replace

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from filters.image_size import NAME as SIZE_FILTER
from filters.image_size import ImageSizeConfig, check_image_size
from manifests.schema import Pair, error, filtered
from pipeline.fetch import Fetcher, FetchError, FetchPolicy
from pipeline.imaging import ImageConfig, ImageError, finish_image, open_image, oriented_size
from pipeline.netguard import UrlRefused, split_url

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CrawlConfig:
    fetch: FetchPolicy = field(default_factory=FetchPolicy)
    image: ImageConfig = field(default_factory=ImageConfig)
    size_filter: ImageSizeConfig = field(default_factory=ImageSizeConfig)
    threads: int = 32


def check_url(pair: Pair) -> Pair:
    """Refuse before any network work what can be judged from the URL's text alone."""
    if not pair.is_ok:
        return pair
    try:
        split_url(pair.url)
    except UrlRefused as exc:
        return pair.with_status(error(exc.kind), str(exc))
    return pair


def crawl_pair(pair: Pair, fetcher: Fetcher, config: CrawlConfig) -> Pair:
    """Fetch, check and resize `pair`'s image; the returned pair says what happened."""
    if not pair.is_ok:
        return pair
    try:
        body = fetcher.fetch(pair.url)
        image = open_image(body, config.image.max_pixels)
        width, height = oriented_size(image)
        reason = check_image_size(width, height, config.size_filter)
        if reason:
            return replace(pair, original_width=width, original_height=height).with_status(
                filtered(SIZE_FILTER, reason), f"{width}x{height}"
            )
        out = finish_image(image, config.image)
    except (FetchError, UrlRefused, ImageError) as exc:
        return pair.with_status(error(exc.kind), str(exc))
    except Exception as exc:  # a bug or an exotic failure must cost one row, not the run
        log.exception("unexpected failure crawling %s", pair.url)
        return pair.with_status(error("internal"), f"{type(exc).__name__}: {exc}")
    return replace(
        pair,
        image=out.jpeg,
        width=out.width,
        height=out.height,
        original_width=out.original_width,
        original_height=out.original_height,
        sha256=out.sha256,
    )


class _CrawlFn(beam.DoFn):
    def __init__(self, config: CrawlConfig):
        self._config = config

    def setup(self) -> None:
        self._statuses: dict[str, object] = {}
        self._fetcher = Fetcher(self._config.fetch)
        self._pool = ThreadPoolExecutor(self._config.threads, thread_name_prefix="crawl")
        self._max_in_flight = self._config.threads * 4

    def start_bundle(self) -> None:
        self._in_flight: set[Future] = set()

    def process(self, pair: Pair):
        if not pair.is_ok:
            yield pair
            return
        self._in_flight.add(self._pool.submit(crawl_pair, pair, self._fetcher, self._config))
        if len(self._in_flight) >= self._max_in_flight:
            done, self._in_flight = wait(self._in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                yield self._count(future.result())

    def finish_bundle(self):
        for future in as_completed(self._in_flight):
            yield GlobalWindows.windowed_value(self._count(future.result()))
        self._in_flight = set()

    def teardown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._fetcher.close()

    def _count(self, pair: Pair) -> Pair:
        counter = self._statuses.get(pair.status)
        if counter is None:
            counter = self._statuses[pair.status] = Metrics.counter("crawl", pair.status)
        counter.inc()
        return pair


class Crawl(beam.PTransform):
    """Pairs in, the same pairs out: kept ones with their JPEG, the rest with a status."""

    def __init__(self, config: CrawlConfig):
        super().__init__()
        self._config = config

    def expand(self, pairs):
        return (
            pairs
            | "CheckUrls" >> beam.Map(check_url)
            | "Spread" >> beam.Reshuffle()
            | "Download" >> beam.ParDo(_CrawlFn(self._config))
        )
