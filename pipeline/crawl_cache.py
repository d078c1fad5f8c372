"""Crawl results per batch, saved as they complete so a killed run resumes without re-fetching.

A batch is the kept pairs of one range of input rows (`batch_id`). Its results (status,
sizes, JPEG bytes) are written atomically to `CACHE/<batch_id>.parquet`; a rerun with the same
configuration finds them and skips the downloads. The folder name carries a fingerprint of
everything that changes results, so a run with other options never reads stale images.
A cached batch lends only what the crawl learnt (status, sizes, hash, JPEG) to the pairs of
this run (`merge_cached`): captions and other text always come from the input being read.
A cache file that cannot be read is a miss (logged), and the batch is fetched again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from manifests.io import join, write_atomic
from manifests.schema import MANIFEST_SCHEMA, Pair, manifest_table, pair_from_row

log = logging.getLogger(__name__)
_SCHEMA = MANIFEST_SCHEMA.append(pa.field("image", pa.binary()))
# What the crawl stage sets on a pair; everything else comes from the rows being read.
CRAWL_FIELDS = (
    "status",
    "error_message",
    "width",
    "height",
    "original_width",
    "original_height",
    "sha256",
    "image",
)


def fingerprint(settings: dict) -> str:
    """A short stable hash of the settings that determine crawl results."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class CrawlCache:
    def __init__(self, folder: str):
        self.folder = folder

    def _path(self, batch_id: str) -> str:
        return join(self.folder, f"{batch_id}.parquet")

    def load(self, batch_id: str) -> list[Pair] | None:
        """The saved results of a batch; None when there are none or they cannot be read."""
        path = self._path(batch_id)
        if not FileSystems.exists(path):
            return None
        try:
            with FileSystems.open(path) as f:
                table = pq.read_table(io.BytesIO(f.read()))
            return [pair_from_row(row) for row in table.to_pylist()]
        except Exception as exc:  # truncated or corrupt: fetch the batch again
            log.warning("unreadable crawl cache file %s (%s); fetching the batch again", path, exc)
            return None

    def save(self, batch_id: str, pairs: list[Pair]) -> None:
        table = manifest_table(pairs).append_column(
            _SCHEMA.field("image"), pa.array([p.image for p in pairs], pa.binary())
        )
        out = io.BytesIO()
        pq.write_table(table, out, compression="none")
        write_atomic(self._path(batch_id), out.getvalue())

    def delete(self) -> None:
        if FileSystems.exists(self.folder):
            FileSystems.delete([self.folder])


def merge_cached(pairs: list[Pair], cached: list[Pair] | None) -> list[Pair] | None:
    """`pairs` (sorted by key) with the crawl results of a cached batch, or None when the cache
    does not hold exactly these rows (same keys, same URLs). Captions stay this run's."""
    if cached is None or [(p.key, p.url) for p in cached] != [(p.key, p.url) for p in pairs]:
        return None
    return [
        dataclasses.replace(pair, **{name: getattr(hit, name) for name in CRAWL_FIELDS})
        for pair, hit in zip(pairs, cached, strict=True)
    ]
