"""Crawl stage: download, verify and resize each pair's image, hundreds of downloads at once.

`crawl_pair` is the per-element logic (fetch, then `decode.finish_pair`; never raises: every
failure is a status). The DoFn keeps the network and the CPU apart. `downloads.Downloads` keeps up to
`threads` requests in flight on I/O threads behind host-keyed queues (polite per host, retries
waiting off the pool); each body that arrives goes to a pool of decode processes, one per core,
so decoding and resizing use every core despite the GIL, never wait behind a slow server and
are fed while downloads are pending. Batches complete in any order, and new ones are admitted
while the queues run low, so one batch's slow tail never idles the pool. Finished batches are
saved to the crawl cache (`crawl_cache`), which is also the image store: the pairs leave with a
reference to their JPEG, and a killed run resumes where it stopped.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from filters.image_size import ImageSizeConfig
from manifests.schema import Pair, error
from pipeline import allocator, progress
from pipeline.crawl_cache import CrawlCache, merge_cached
from pipeline.decode import CORES, decode_pool, finish_pair
from pipeline.downloads import Download, Downloads
from pipeline.fetch import Fetcher, FetchError, FetchPolicy
from pipeline.hashing import HashSpec
from pipeline.host_stats import HostStats
from pipeline.imaging import ImageConfig
from pipeline.netguard import UrlRefused, split_url
from pipeline.shuffle import MeteredGroupByKey
from pipeline.stage import Options, Stage, whole

log = logging.getLogger(__name__)


def default_threads(cores: int = CORES) -> int:
    """Downloads in flight per worker process: 128 a core covers ~1 s latencies at the rate the
    cores decode; past 1,024 threads switching costs more than the latency it hides."""
    return min(1024, 128 * cores)


@dataclass(frozen=True)
class CrawlConfig:
    fetch: FetchPolicy = field(default_factory=FetchPolicy)
    image: ImageConfig = field(default_factory=ImageConfig)
    size_filter: ImageSizeConfig = field(default_factory=ImageSizeConfig)
    threads: int = field(
        default=0,
        metadata={
            "speed_only": True,
            "help": "downloads in flight per worker process (0: 128 per core, at most 1024)",
        },
    )
    decode_processes: int = field(
        default=0,
        metadata={
            "speed_only": True,
            "help": "decoding processes per worker (0: one per core; -1: threads in the worker)",
        },
    )
    batch_rows: int = field(
        default=1000, metadata={"help": "input rows per crawl batch (resume unit)"}
    )
    # the image store and resume cache, set by the graph; None: images stay inline
    cache_folder: str | None = field(default=None, metadata={"cli": False})
    hashing: HashSpec | None = field(default=None, metadata={"cli": False})  # the dedup's hashes


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
    except (FetchError, UrlRefused) as exc:
        return pair.with_status(error(exc.kind), str(exc))
    except Exception as exc:  # a bug or an exotic failure must cost one row, not the run
        log.exception("unexpected failure fetching %s", pair.url)
        return pair.with_status(error("internal"), f"{type(exc).__name__}: {exc}")
    return finish_pair(pair, body, config.image, config.size_filter, config.hashing)


def failed_pair(pair: Pair, download: Download) -> Pair:
    return pair.with_status(error(download.error.kind), str(download.error))


def batch_of(key: str, batch_rows: int) -> str:
    """The batch of a key: its input file and a range of `batch_rows` rows."""
    return f"{key[:5]}-{int(key[5:]) // batch_rows:08d}"


class _Batch:
    def __init__(self, batch_id: str, pairs: list[Pair]):
        self.id, self.pairs = batch_id, pairs
        self.results: list[Pair | None] = [None] * len(pairs)
        self.remaining = len(pairs)


class _CrawlBatchesFn(beam.DoFn):
    """Crawl batches: all their rows go to the host queues at once, bodies to the decode pool;
    batches are emitted as they complete, in any order, and new ones are admitted while fewer
    than a batch plus two rows per download thread are unfinished (at most `max_batches`), so
    the host queues always hold work for every thread while a batch waits on its tail."""

    def __init__(self, config: CrawlConfig, max_batches: int = 8):
        self._config = config
        self._max_batches = max_batches

    def setup(self) -> None:
        allocator.tune()  # on any runner's worker, before the download threads start
        threads = self._config.threads or default_threads()
        self._decoder = decode_pool(self._config.decode_processes)
        self._decode_slots = threading.Semaphore(4 * CORES + 8)  # bodies waiting for a decoder
        self._row_limit = 2 * threads + self._config.batch_rows
        self._fetcher = Fetcher(self._config.fetch)
        self._cache = CrawlCache(self._config.cache_folder) if self._config.cache_folder else None
        self._statuses: dict[str, object] = {}
        self._resumed = Metrics.counter("crawl", "batches_resumed")
        self._cond = threading.Condition()
        self._finished: list[_Batch] = []
        self._batches = self._rows = 0  # in flight
        self._downloads = Downloads(self._fetcher, threads, self._downloaded)

    def process(self, element):
        batch_id, pairs = element
        pairs = sorted(pairs, key=lambda p: p.key)
        cached = merge_cached(pairs, self._cache.load(batch_id)) if self._cache else None
        if cached is not None:
            self._resumed.inc()
            for pair in cached:
                progress.done(pair.status)
            yield from cached
            return
        batch = _Batch(batch_id, pairs)
        with self._cond:
            self._batches += 1
            self._rows += len(pairs)
            if not pairs:
                self._finished.append(batch)
        for index, pair in enumerate(pairs):
            self._downloads.submit(pair.url, (batch, index))
        yield from self._collect(
            lambda: self._batches >= self._max_batches or self._rows >= self._row_limit
        )

    def finish_bundle(self):
        for pair in self._collect(lambda: self._batches > 0):
            yield GlobalWindows.windowed_value(pair)

    def teardown(self) -> None:
        self._downloads.close()
        self._decoder.shutdown(wait=False, cancel_futures=True)
        self._fetcher.close()

    def _collect(self, busy):
        """The pairs of finished batches; waits for one while `busy()` says there is no room."""
        while True:
            with self._cond:
                while not self._finished and busy():
                    self._cond.wait()
                if not self._finished:
                    return
                batch = self._finished.pop(0)
                self._batches -= 1
            yield from self._complete(batch)

    def _downloaded(self, download: Download) -> None:
        """On an I/O thread: a failure is the row's result; a body goes to the decode pool."""
        batch, index = download.tag
        pair = batch.pairs[index]
        if download.error is not None:
            self._row_done(batch, index, failed_pair(pair, download))
            return
        self._decode_slots.acquire()  # backpressure: a thread waits here only when CPU-bound
        try:
            config = self._config
            future = self._decoder.submit(
                finish_pair, pair, download.body, config.image, config.size_filter, config.hashing
            )
        except RuntimeError as exc:  # the pool is shutting down
            self._decode_slots.release()
            self._row_done(batch, index, pair.with_status(error("internal"), str(exc)))
            return
        future.add_done_callback(lambda f: self._decoded(f, batch, index))

    def _decoded(self, future, batch: _Batch, index: int) -> None:
        self._decode_slots.release()
        try:
            result = future.result()
        except Exception as exc:  # a decoder process died (a crash in a codec, out of memory)
            log.error("decoding %s failed: %r", batch.pairs[index].url, exc)
            result = batch.pairs[index].with_status(error("internal"), f"decoder: {exc!r}")
        self._row_done(batch, index, result)

    def _row_done(self, batch: _Batch, index: int, result: Pair) -> None:
        progress.done(result.status)
        with self._cond:
            batch.results[index] = result
            batch.remaining -= 1
            self._rows -= 1
            if batch.remaining == 0:
                self._finished.append(batch)
            self._cond.notify_all()

    def _complete(self, batch: _Batch) -> list[Pair]:
        # the batch is released here: the I/O threads' last downloads still point at it
        results, batch.results = batch.results, []
        if self._cache:  # the images go to the store; the pairs go on with references
            results = self._cache.save(batch.id, results)
        for pair in results:
            counter = self._statuses.get(pair.status)
            if counter is None:
                counter = self._statuses[pair.status] = Metrics.counter("crawl", pair.status)
            counter.inc()
        return results


class Crawl(beam.PTransform):
    """Pairs in, {"pairs": the same pairs, "stats": per-host crawl outcomes} out. Kept pairs come
    back with a reference to their JPEG in the store (`cache_folder`; inline without one) and
    their dedup hashes, the rest with a status.

    Kept pairs are grouped into batches of input rows (which also spreads them over workers);
    pairs already dropped pass around the crawl untouched.
    """

    def __init__(self, config: CrawlConfig):
        super().__init__()
        self._config = config

    def expand(self, pairs):
        batch_rows = self._config.batch_rows
        checked = pairs | "CheckUrls" >> beam.Map(_checked)
        dropped = checked | "Dropped" >> beam.Filter(lambda p: not p.is_ok)
        crawled = (
            checked
            | "Kept" >> beam.Filter(lambda p: p.is_ok)
            | "KeyByBatch" >> beam.Map(lambda p: (batch_of(p.key, batch_rows), p))
            | "GroupBatches" >> MeteredGroupByKey("crawl")
            | "Download" >> beam.ParDo(_CrawlBatchesFn(self._config))
        )
        return {
            "pairs": (crawled, dropped) | "Merge" >> beam.Flatten(),
            "stats": crawled | "HostStats" >> HostStats(),
        }


def _checked(pair: Pair) -> Pair:
    """`check_url`, counting the row on the progress bar (done at once when it is dropped)."""
    progress.seen()
    pair = check_url(pair)
    if not pair.is_ok:
        progress.done(pair.status)
    return pair


def _crawl(config: CrawlConfig, ctx) -> Crawl:
    """The crawl, saving batches to this run's cache and making the image dedup's hashes."""
    dedup = ctx.options("dedup")
    hashing = dedup.crawl_hashes if dedup else None  # results, not settings: not fingerprinted
    return Crawl(replace(config, cache_folder=ctx.cache_folder, hashing=hashing))


CRAWL = Options("crawl", CrawlConfig, "crawl: downloading and images", required=True)
STAGE = Stage(
    "crawl",
    CRAWL,
    _crawl,
    statuses=("error:*", "filtered:image:*"),  # the size filter judges the image's header
    enabled=lambda config: True,
    crawl_key=whole,
    doc="download, decode, resize",
)
