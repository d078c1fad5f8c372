"""Shard stage: WebDataset tars of the kept pairs, a parquet manifest of every pair, stats.json.

Each pair goes to bucket `hash(key) % n`, with n = ceil(kept / samples_per_shard) from a global
count, so shard names and contents are deterministic and no two workers ever write the same
file, whatever the runner or the order it processed elements in. A bucket writes
`shards/NNNNN.tar` (its kept pairs, sorted by key, their images read back from the crawl's
store one at a time and streamed through `writers` to a temporary file renamed when complete)
and `manifest/NNNNN.parquet` (all of its pairs, dropped ones included, with their status),
both atomically. Hash buckets rather than img2dataset's groups of input batches: the group by
bucket moves metadata only (a reference per image), so memory stays bounded either way, and
each shard mixes the whole input instead of one stretch of it, which a trainer reading a few
shards at a time wants.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from manifests.io import atomic_file, join, write_atomic
from manifests.schema import OK, Pair, error, manifest_table
from pipeline.image_store import STORE_ERROR, ImageReader, with_image, without_image
from pipeline.read import ROWS
from pipeline.shuffle import MeteredGroupByKey
from pipeline.stage import Options, Stage
from pipeline.writers import write_samples


def shard_count(kept: int, samples_per_shard: int) -> int:
    return max(1, math.ceil(kept / samples_per_shard))


def bucket_of(key: str, buckets: int) -> int:
    """A stable bucket for `key`: a hash every Python process and runner agrees on."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % buckets


def shard_name(bucket: int) -> str:
    return f"{bucket:05d}"


def _with_images(
    kept: list[Pair], reader: ImageReader, written: list[Pair], failed: list[Pair]
) -> Iterator[Pair]:
    """The kept pairs carrying their image bytes, read one at a time from the store (each noted
    in `written`, light); a pair whose image cannot be read goes to `failed` instead, with
    `error:image_store`."""
    for pair in kept:
        loaded = with_image(pair, reader)
        if loaded.is_ok:
            written.append(without_image(loaded))
            yield loaded
        else:
            failed.append(loaded)


def write_bucket(bucket: int, pairs: list[Pair], output: str) -> dict:
    """Write one bucket's shard and manifest part; return its summary for stats.json.

    Samples go to the tar in key order, their images read back from the store one by one (a
    batch file front to back), so a shard is never held in memory."""
    name = shard_name(bucket)
    pairs = sorted(pairs, key=lambda p: p.key)
    kept = [replace(p, shard=f"{name}.tar") for p in pairs if p.is_ok]
    written, failed = [], []
    if kept:
        tar = join(output, "shards", f"{name}.tar")
        with ImageReader() as reader, atomic_file(tar) as stream:
            write_samples(stream, _with_images(kept, reader, written, failed))
        if not written:  # every image of the shard was lost from the store
            FileSystems.delete([tar])
    rows = [p for p in pairs if not p.is_ok] + written + failed
    rows.sort(key=lambda p: p.key)
    parquet = io.BytesIO()
    pq.write_table(manifest_table(rows), parquet, compression="zstd")
    write_atomic(join(output, "manifest", f"{name}.parquet"), parquet.getvalue())
    return {
        "shard": f"{name}.tar" if written else None,
        "samples": len(written),
        "rows": len(rows),
        "status_counts": dict(Counter(p.status for p in rows)),
    }


class _WriteBucketFn(beam.DoFn):
    def __init__(self, output: str):
        self._output = output
        self._samples = Metrics.counter("shard", "samples")
        self._shards = Metrics.counter("shard", "shards")

    def process(self, element):
        bucket, pairs = element
        summary = write_bucket(bucket, list(pairs), self._output)
        self._samples.inc(summary["samples"])
        self._shards.inc(1 if summary["shard"] else 0)
        yield summary


def merge_summaries(summaries) -> dict:
    """Combine bucket summaries into the stats body (status counts, rows, shards)."""
    counts: Counter = Counter()
    shards, rows, samples = [], 0, 0
    for summary in summaries:
        counts.update(summary["status_counts"])
        rows += summary["rows"]
        samples += summary["samples"]
        if summary["shard"]:
            shards.append(summary["shard"])
    return {
        "manifest_rows": rows,
        "samples": samples,
        "shards": sorted(shards),
        "status_counts": dict(sorted(counts.items())),
    }


class ConservationError(RuntimeError):
    """The manifest does not hold one row per input row: some stage lost or invented rows."""


def check_conservation(merged: dict, input_rows: int) -> None:
    """Fail the run loudly, both numbers named, unless every input row is in the manifest
    exactly once. `input_rows` is counted from the inputs, not from the reader's pairs."""
    rows, counted = merged["manifest_rows"], sum(merged["status_counts"].values())
    if rows != input_rows or counted != input_rows:
        raise ConservationError(
            f"the inputs hold {input_rows} rows but the manifest has {rows} "
            f"(status counts sum to {counted}): rows were lost or duplicated on the way"
        )


def with_shard_losses(funnel: list[dict], status_counts: dict) -> list[dict]:
    """The funnel with the shard row's own drops, which only the written manifest knows: images
    lost from the store by the time their shard was written (`error:image_store`)."""
    *earlier, last = funnel
    seen: Counter = Counter()
    for row in earlier:
        seen.update(row["dropped"])
    dropped = {s: n - seen[s] for s, n in status_counts.items() if s != OK and n > seen[s]}
    return [*earlier, {**last, "rows_out": status_counts.get(OK, 0), "dropped": dropped}]


def write_stats(merged: dict, input_rows: int, output: str, extra: dict, **stage_stats) -> dict:
    """stats.json, written only when the conservation check passes."""
    check_conservation(merged, input_rows)
    if stage_stats.get("funnel"):
        stage_stats["funnel"] = with_shard_losses(stage_stats["funnel"], merged["status_counts"])
    stats = {"input_rows": input_rows, **merged, **stage_stats, **extra}
    write_atomic(join(output, "stats.json"), json.dumps(stats, indent=2).encode("utf-8"))
    return stats


class WriteShards(beam.PTransform):
    """Every pair in (kept and dropped); shards, manifest and stats.json out under `output`."""

    def __init__(
        self,
        output: str,
        samples_per_shard: int,
        input_rows,
        extra_stats: dict,
        stage_stats: dict | None = None,
    ):
        """`input_rows`: a singleton count; `stage_stats`: name -> singleton PCollection of a
        JSON-able value that a stage computed (its funnel, its query counts), put in stats.json."""
        super().__init__()
        self._output = output
        self._samples_per_shard = samples_per_shard
        self._input_rows = input_rows
        self._extra_stats = extra_stats
        self._stage_stats = stage_stats or {}

    def expand(self, pairs):
        kept = pairs | "Kept" >> beam.Filter(lambda p: p.is_ok) | beam.combiners.Count.Globally()
        per_shard = self._samples_per_shard
        summaries = (
            pairs
            | "Bucket"
            >> beam.Map(
                lambda p, n: (bucket_of(p.key, shard_count(n, per_shard)), p),
                n=beam.pvalue.AsSingleton(kept),
            )
            | "GroupBuckets" >> MeteredGroupByKey("shard")
            | "WriteBuckets" >> beam.ParDo(_WriteBucketFn(self._output))
        )
        output, extra = self._output, self._extra_stats
        return (
            summaries
            | "Collect" >> beam.combiners.ToList()
            | "Merge" >> beam.Map(merge_summaries)
            | "WriteStats"
            >> beam.Map(
                lambda merged, rows, **stages: write_stats(merged, rows, output, extra, **stages),
                rows=beam.pvalue.AsSingleton(self._input_rows),
                **{name: beam.pvalue.AsSingleton(pc) for name, pc in self._stage_stats.items()},
            )
        )


@dataclass(frozen=True)
class ShardConfig:
    samples_per_shard: int = field(default=10_000, metadata={"help": "samples per .tar shard"})


def _shard(config: ShardConfig, ctx) -> WriteShards:
    rows = ctx.shared[ROWS]
    return WriteShards(ctx.staging, config.samples_per_shard, rows, ctx.shared["extra"], ctx.stats)


SHARD = Options("shard", ShardConfig, "shards", required=True)
STAGE = Stage(
    "shard",
    SHARD,
    _shard,
    statuses=(error(STORE_ERROR),),  # an image lost from the store before its shard
    enabled=lambda config: True,
    doc="write every ok pair to a shard, every pair to the manifest, stats.json",
)
