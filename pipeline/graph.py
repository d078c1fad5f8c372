"""The pipeline graph: read -> text filters -> URL dedup -> query match + balance with headroom
-> crawl -> image filters -> image dedup -> score -> final balance -> shard.

Every pair flows on to the manifest; each curation stage hands its stats to stats.json.

Reruns resume: finished crawl batches are cached under `OUTPUT/_crawl_cache/<fingerprint>/`
and reused; a run whose `stats.json` already carries the same fingerprint is complete and is
skipped. Both fingerprints hold each input's size and modification time, so an edited or
appended input is a new run. Shards, manifest and stats are written anew each run (they
depend on global counts) under `OUTPUT/_staging/`, and replace the previous run's only once
all of them are complete; the cache is removed after that, unless asked to keep it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from dataclasses import dataclass, field

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from filters.options import FiltersConfig
from manifests import query_counts
from manifests.io import (
    ensure_writable_dir,
    file_versions,
    join,
    match_files,
    read_bytes,
    write_atomic,
)
from manifests.query_list import load_queries
from manifests.readers import InputSpec, check_columns
from manifests.schema import error
from pipeline.balance import Balance, BalanceConfig, MatchQueries
from pipeline.crawl import Crawl, CrawlConfig
from pipeline.crawl_cache import CrawlCache, fingerprint
from pipeline.dedup import DedupConfig, ImageDedup, UrlDedup
from pipeline.filtering import ApplyFilters, ScoreFilter
from pipeline.image_store import STORE_ERROR
from pipeline.read import ROWS, ReadPairs
from pipeline.shard import WriteShards

log = logging.getLogger(__name__)
DEDUP_EXAMPLES = "dedup_examples.parquet"  # thumbnails of a few near-duplicate groups
STAGING = "_staging"  # where a run writes its outputs before they replace the previous ones
OUTPUTS = ("shards", "manifest", "balance", DEDUP_EXAMPLES, "stats.json")  # stats.json last


@dataclass(frozen=True)
class PipelineConfig:
    input: str
    output: str
    spec: InputSpec = field(default_factory=InputSpec)
    crawl: CrawlConfig = field(default_factory=CrawlConfig)
    samples_per_shard: int = 10_000
    resume: bool = True
    keep_crawl_cache: bool = False
    filters: FiltersConfig | None = None
    dedup: DedupConfig | None = field(default_factory=DedupConfig)
    balance: BalanceConfig | None = None


def run_fingerprint(config: PipelineConfig, paths: list[str]) -> str:
    """Everything that determines the outputs (not how fast they are made), the inputs' sizes
    and modification times included: rows appended to a finished input make a new run."""
    settings = dataclasses.asdict(config)
    for speed_only in ("threads", "decode_processes"):
        settings["crawl"].pop(speed_only)
    return fingerprint({"inputs": file_versions(paths), **settings})


def crawl_fingerprint(config: PipelineConfig, paths: list[str]) -> str:
    """Everything that determines crawl results, so a cached batch is never stale: the inputs'
    versions, the crawl settings and the text stages before it, which decide which pairs are
    downloaded at all."""
    crawl = dataclasses.asdict(config.crawl)
    for speed_only in ("threads", "decode_processes"):
        crawl.pop(speed_only)
    text = [dataclasses.asdict(step) for step in (config.filters or FiltersConfig()).text]
    url_dedup = config.dedup.scope if config.dedup and config.dedup.exact else None
    balance = dataclasses.asdict(config.balance) if config.balance else None
    settings = {"spec": dataclasses.asdict(config.spec), "crawl": crawl, "text_filters": text}
    inputs = file_versions(paths)
    return fingerprint({"inputs": inputs, **settings, "url_dedup": url_dedup, "balance": balance})


def is_complete(output: str, run_id: str) -> bool:
    """True when `output` holds a finished run with fingerprint `run_id` that lost no image
    from the store (a rerun fetches those again)."""
    path = join(output, "stats.json")
    if not FileSystems.exists(path):
        return False
    try:
        stats = json.loads(read_bytes(path))
    except ValueError:
        return False
    lost = stats.get("status_counts", {}).get(error(STORE_ERROR), 0)
    return stats.get("fingerprint") == run_id and not lost


def _files_under(path: str) -> list[str]:
    """Every file below `path` (object stores have no folders, only names with slashes)."""
    return [m.path for m in FileSystems.match([join(path, "**")])[0].metadata_list]


def _remove(path: str) -> None:
    """Delete a file, or a folder and all it holds, if there."""
    files = _files_under(path)
    if files:
        FileSystems.delete(files)
    if FileSystems.exists(path):
        FileSystems.delete([path])


def publish(staging: str, output: str) -> None:
    """Replace the previous run's outputs by this run's, complete in `staging`: stats.json goes
    first and comes back last, so a kill half-way leaves an output that is not complete."""
    for name in OUTPUTS[::-1]:
        _remove(join(output, name))
    for name in OUTPUTS:
        source, target = join(staging, name), join(output, name)
        files = _files_under(source) or ([source] if FileSystems.exists(source) else [])
        targets = [target + path[len(source) :] for path in files]
        for folder in {t.rsplit("/", 1)[0] for t in targets if t != target}:
            if not FileSystems.exists(folder):
                FileSystems.mkdirs(folder)
        if files:
            FileSystems.rename(files, targets)
    _remove(staging)


class _Stages:
    """Applies curation stages and collects the stats each returns for stats.json."""

    def __init__(self) -> None:
        self.stats: dict[str, beam.PCollection] = {}

    def apply(self, pairs, label: str, transform: beam.PTransform, stats_key: str):
        out = pairs | label >> transform
        if "stats" in out:
            self.stats[stats_key] = out["stats"]
        return out["pairs"]


class _Balancer:
    """The two balancing passes and the per-query count report they feed."""

    def __init__(self, config: BalanceConfig, output: str):
        self.config = config
        self.folder = join(output, "balance")
        self.size = len(load_queries(config.queries))  # a bad list fails before the run
        self.before = None

    def before_download(self, pairs, stages: _Stages):
        pairs = stages.apply(pairs, "MatchQueries", MatchQueries(self.config), "balance_match")
        if not self.config.headroom:
            return pairs
        limit = self.config.max_per_query * self.config.headroom
        out = pairs | "PreBalance" >> Balance(self.config, self.size, limit, "pre")
        stages.stats["balance_pre"], self.before = out["stats"], out["counts"]
        return out["pairs"]

    def after_curation(self, pairs, stages: _Stages, sinks: list):
        config = self.config
        out = pairs | "FinalBalance" >> Balance(config, self.size, config.max_per_query, "final")
        stages.stats["balance_final"] = out["stats"]
        before = beam.pvalue.AsSingleton(self.before) if self.before is not None else None
        written = out["counts"] | "WriteQueryCounts" >> beam.Map(
            _write_query_counts, before, config.queries, self.folder, config.max_per_query
        )
        sinks.append(written)
        return out["pairs"]


def _write_examples(rows: list[tuple], path: str) -> None:
    names = ("group", "key", "status", "jpeg")
    table = pa.table({name: [row[i] for row in sorted(rows)] for i, name in enumerate(names)})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    write_atomic(path, sink.getvalue())


def _write_query_counts(final: tuple, before: tuple | None, queries: str, folder: str, limit: int):
    final_in, final_kept = final
    pool, after_pre = before if before is not None else (final_in, final_in)
    columns = {"pool": pool, "after_prebalance": after_pre, "final_in": final_in}
    query_counts.write(folder, load_queries(queries), {**columns, "final_kept": final_kept}, limit)


def build(pipeline: beam.Pipeline, config: PipelineConfig) -> beam.PCollection | None:
    """Wire the stages onto `pipeline`; None when the output is already complete.

    Fails fast on missing inputs, a missing URL column or an unwritable output folder.
    """
    paths = match_files(config.input)
    check_columns(paths[0], config.spec)
    ensure_writable_dir(config.output)
    run_id = run_fingerprint(config, paths)
    if config.resume and is_complete(config.output, run_id):
        log.info("%s is already complete (fingerprint %s); nothing to do", config.output, run_id)
        return None
    cache = CrawlCache(join(config.output, "_crawl_cache", crawl_fingerprint(config, paths)))
    if not config.resume:
        cache.delete()
    staging = join(config.output, STAGING)
    _remove(staging)  # what a killed run left half-written

    read = pipeline | "Read" >> ReadPairs(paths, config.spec)
    pairs, input_rows = read["pairs"], read[ROWS]
    sinks = []
    stages = _Stages()
    filters = config.filters or FiltersConfig()
    if filters.text:
        pairs = stages.apply(pairs, "TextFilters", ApplyFilters(filters.text), "filters_text")
    dedup = config.dedup
    if dedup and dedup.exact:
        pairs = stages.apply(pairs, "UrlDedup", UrlDedup(dedup), "dedup_url")
    balancer = _Balancer(config.balance, staging) if config.balance else None
    if balancer:
        pairs = balancer.before_download(pairs, stages)
    hashing = dedup.crawl_hashes if dedup else None  # results, not settings: not fingerprinted
    crawl = dataclasses.replace(config.crawl, cache_folder=cache.folder, hashing=hashing)
    pairs = stages.apply(pairs, "Crawl", Crawl(crawl), "crawl")
    if filters.image:
        pairs = stages.apply(pairs, "ImageFilters", ApplyFilters(filters.image), "filters_image")
    if dedup:
        image_dedup = ImageDedup(dataclasses.replace(dedup, eval_image=config.crawl.image))
        out = pairs | "ImageDedup" >> image_dedup
        pairs, stages.stats["dedup_image"] = out["pairs"], out["stats"]
        examples = join(staging, DEDUP_EXAMPLES)
        sinks.append(
            out["examples"]
            | "CollectExamples" >> beam.combiners.ToList()
            | "WriteExamples" >> beam.Map(_write_examples, examples)
        )
    if filters.score:
        pairs = stages.apply(pairs, "ScoreFilter", ScoreFilter(filters.score), "score")
    if balancer:
        pairs = balancer.after_curation(pairs, stages, sinks)
    extra = {"fingerprint": run_id, "inputs": paths, "config": dataclasses.asdict(config)}
    stats = pairs | "Shard" >> WriteShards(
        staging, config.samples_per_shard, input_rows, extra, stages.stats
    )
    waits = [beam.pvalue.AsList(sink) for sink in sinks]  # the other writers must be done
    published = stats | "Publish" >> beam.Map(
        lambda stats, *_: publish(staging, config.output) or stats, *waits
    )
    if not config.keep_crawl_cache:
        published | "DropCrawlCache" >> beam.Map(lambda _: cache.delete())
    return published
