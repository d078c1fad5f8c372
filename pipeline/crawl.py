"""Crawl stage: download, verify and resize each pair's image, many downloads at once.

`crawl_pair` is the per-element logic (never raises; every failure is a status). The DoFn fans
batches out over a thread pool: downloads are I/O-bound and Pillow releases the GIL while
decoding and resizing, so threads keep both cores busy. Finished batches are saved to the
crawl cache (`crawl_cache`), so a killed run resumes where it stopped.
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from filters.image_size import NAME as SIZE_FILTER
from filters.image_size import ImageSizeConfig, check_image_size
from manifests.schema import Pair, error, filtered
from pipeline.crawl_cache import CrawlCache, merge_cached
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
    batch_rows: int = 1000
    cache_folder: str | None = None  # where finished batches are saved for resuming


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
        image = open_image(body, config.image.max_pixels, config.image.formats)
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


def batch_of(key: str, batch_rows: int) -> str:
    """The batch of a key: its input file and a range of `batch_rows` rows."""
    return f"{key[:5]}-{int(key[5:]) // batch_rows:08d}"


class _CrawlBatchesFn(beam.DoFn):
    """Crawl batches on a shared thread pool, a few batches in flight so one batch's slow tail
    overlaps the next batch's downloads; each finished batch is saved to the crawl cache."""

    def __init__(self, config: CrawlConfig, batches_in_flight: int = 3):
        self._config = config
        self._batches_in_flight = batches_in_flight

    def setup(self) -> None:
        self._fetcher = Fetcher(self._config.fetch)
        self._pool = ThreadPoolExecutor(self._config.threads, thread_name_prefix="crawl")
        self._cache = CrawlCache(self._config.cache_folder) if self._config.cache_folder else None
        self._statuses: dict[str, object] = {}
        self._resumed = Metrics.counter("crawl", "batches_resumed")

    def start_bundle(self) -> None:
        self._pending: deque[tuple[str, list[Future]]] = deque()

    def process(self, element):
        batch_id, pairs = element
        pairs = sorted(pairs, key=lambda p: p.key)
        cached = merge_cached(pairs, self._cache.load(batch_id)) if self._cache else None
        if cached is not None:
            self._resumed.inc()
            yield from cached
            return
        futures = [self._pool.submit(crawl_pair, p, self._fetcher, self._config) for p in pairs]
        self._pending.append((batch_id, futures))
        while len(self._pending) >= self._batches_in_flight:
            yield from self._complete(*self._pending.popleft())

    def finish_bundle(self):
        while self._pending:
            for pair in self._complete(*self._pending.popleft()):
                yield GlobalWindows.windowed_value(pair)

    def teardown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._fetcher.close()

    def _complete(self, batch_id: str, futures: list[Future]) -> list[Pair]:
        results = [future.result() for future in futures]
        if self._cache:
            self._cache.save(batch_id, results)
        for pair in results:
            counter = self._statuses.get(pair.status)
            if counter is None:
                counter = self._statuses[pair.status] = Metrics.counter("crawl", pair.status)
            counter.inc()
        return results


class Crawl(beam.PTransform):
    """Pairs in, the same pairs out: kept ones with their JPEG, the rest with a status.

    Kept pairs are grouped into batches of input rows (which also spreads them over workers);
    pairs already dropped pass around the crawl untouched.
    """

    def __init__(self, config: CrawlConfig):
        super().__init__()
        self._config = config

    def expand(self, pairs):
        batch_rows = self._config.batch_rows
        checked = pairs | "CheckUrls" >> beam.Map(check_url)
        dropped = checked | "Dropped" >> beam.Filter(lambda p: not p.is_ok)
        crawled = (
            checked
            | "Kept" >> beam.Filter(lambda p: p.is_ok)
            | "KeyByBatch" >> beam.Map(lambda p: (batch_of(p.key, batch_rows), p))
            | "GroupBatches" >> beam.GroupByKey()
            | "Download" >> beam.ParDo(_CrawlBatchesFn(self._config))
        )
        return (crawled, dropped) | "Merge" >> beam.Flatten()
