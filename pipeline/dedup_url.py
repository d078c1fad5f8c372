"""URL dedup stage, before the download: repeated URLs (after `normalize_url`; in the pair
scope, with the same `caption_key` too) are fetched once, the others become `dup:exact`.
"""

from __future__ import annotations

import apache_beam as beam

from pipeline.dedup import DEDUP, DedupConfig
from pipeline.dedup_groups import (
    DUP_EXACT,
    resolve_urls,
)
from pipeline.hashing import (
    normalize_url,
)
from pipeline.shuffle import MeteredGroupByKey
from pipeline.stage import Stage
from pipeline.stats import CountEvents


class UrlDedup(beam.PTransform):
    """Pairs in, the same pairs out; repeated URLs (after `normalize_url`; in the pair scope,
    with the same `caption_key` too) become `dup:exact`.
    Stats: {"rows": ok pairs considered, "duplicates": pairs dropped}."""

    def __init__(self, config: DedupConfig | None = None):
        super().__init__()
        self._config = config or DedupConfig()

    def expand(self, pairs):
        text_key = self._config.text_key
        dropped = pairs | "Dropped" >> beam.Filter(lambda p: not p.is_ok)
        decided = (
            pairs
            | "Kept" >> beam.Filter(lambda p: p.is_ok)
            | "KeyByUrl" >> beam.Map(lambda p: ((normalize_url(p.url), text_key(p.caption)), p))
            | "GroupByUrl" >> MeteredGroupByKey("dedup_url")
            | "Resolve" >> beam.FlatMapTuple(resolve_urls)
        )
        events = decided | "Events" >> beam.FlatMap(
            lambda p: ["rows"] if p.is_ok else ["rows", "duplicates"]
        )
        return {
            "pairs": (decided, dropped) | "Merge" >> beam.Flatten(),
            "stats": events | "Stats" >> CountEvents(("rows", "duplicates"), "dedup_url"),
        }


STAGE = Stage(
    "dedup_url",
    DEDUP,
    lambda config, ctx: UrlDedup(config),
    statuses=(DUP_EXACT,),
    enabled=lambda config: config is not None and config.exact,
    crawl_key=lambda config: config.scope,  # the rest of DedupConfig is the image dedup's
    doc="repeated URLs before the download",
)
