"""The pipeline graph: read -> crawl -> shard, every pair flowing to the manifest."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import apache_beam as beam

from manifests.io import ensure_writable_dir, match_files
from manifests.readers import InputSpec, check_columns
from pipeline.crawl import Crawl, CrawlConfig
from pipeline.read import ReadPairs
from pipeline.shard import WriteShards


@dataclass(frozen=True)
class PipelineConfig:
    input: str
    output: str
    spec: InputSpec = field(default_factory=InputSpec)
    crawl: CrawlConfig = field(default_factory=CrawlConfig)
    samples_per_shard: int = 10_000


def build(pipeline: beam.Pipeline, config: PipelineConfig) -> beam.PCollection:
    """Wire the stages onto `pipeline`; fails fast on missing inputs or an unwritable output."""
    paths = match_files(config.input)
    check_columns(paths[0], config.spec)
    ensure_writable_dir(config.output)
    pairs = pipeline | "Read" >> ReadPairs(paths, config.spec)
    input_rows = pairs | "CountInput" >> beam.combiners.Count.Globally()
    crawled = pairs | "Crawl" >> Crawl(config.crawl)
    extra = {"inputs": paths, "config": dataclasses.asdict(config)}
    return crawled | "Shard" >> WriteShards(
        config.output, config.samples_per_shard, input_rows, extra
    )
