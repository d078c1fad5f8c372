"""Crawl results per batch, saved as they complete: the image store, and what a rerun resumes from.

A batch is the kept pairs of one range of input rows (`batch_id`). Its encoded images go once
to `CACHE/<batch_id>.jpgs` (`image_store`), then its results (status, sizes, sha256, the dedup
hashes and where each image lies) to `CACHE/<batch_id>.parquet`, both atomically: the parquet
file is the mark that the batch is complete. The pairs leave the crawl with a reference into
the image file, and a rerun with the same configuration finds both and skips the downloads.
The folder name carries a fingerprint of everything that changes results, so a run with other
options never reads stale images. A cached batch lends only what the crawl learnt to the pairs
of this run (`merge_cached`): captions and other text always come from the input being read.
A batch whose files cannot be read, or whose image file is missing or short, is a miss
(logged), and the batch is fetched again.
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
from pipeline.hashing import ImageHashes
from pipeline.image_store import ImageRef, stored_size, write_images

log = logging.getLogger(__name__)
# What the crawl stage sets on a pair; everything else comes from the rows being read.
CRAWL_FIELDS = (
    "status",
    "error_message",
    "width",
    "height",
    "original_width",
    "original_height",
    "sha256",
    "image_ref",
    "hashes",
)
_STORE_FIELDS = [  # beside the manifest's columns: where the image lies, the dedup hashes
    pa.field("image_offset", pa.int64()),
    pa.field("image_length", pa.int64()),
    pa.field("hash_digest", pa.string()),
    pa.field("hash_phash", pa.uint64()),
    pa.field("hash_views", pa.list_(pa.uint64())),
    pa.field("hash_colour", pa.binary()),
]


def fingerprint(settings: dict) -> str:
    """A short stable hash of the settings that determine crawl results."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _store_columns(pairs: list[Pair], refs: list[ImageRef | None]) -> dict[str, list]:
    hashes = [p.hashes for p in pairs]
    return {
        "image_offset": [r.offset if r else None for r in refs],
        "image_length": [r.length if r else None for r in refs],
        "hash_digest": [h.digest if h else None for h in hashes],
        "hash_phash": [h.phash if h else None for h in hashes],
        "hash_views": [list(h.views) if h else None for h in hashes],
        "hash_colour": [h.colour if h else None for h in hashes],
    }


def _stored_pair(row: dict, images: str) -> Pair:
    """A cached row back as a pair: its manifest fields, its image reference and hashes."""
    pair = pair_from_row({name: row[name] for name in MANIFEST_SCHEMA.names})
    ref = None
    if row["image_length"] is not None:
        ref = ImageRef(images, row["image_offset"], row["image_length"])
    hashes = None
    if row["hash_digest"] is not None:
        views = tuple(row["hash_views"])
        hashes = ImageHashes(row["hash_digest"], row["hash_phash"], views, row["hash_colour"])
    return dataclasses.replace(pair, image_ref=ref, hashes=hashes)


class CrawlCache:
    def __init__(self, folder: str):
        self.folder = folder

    def _path(self, batch_id: str) -> str:
        return join(self.folder, f"{batch_id}.parquet")

    def images_path(self, batch_id: str) -> str:
        return join(self.folder, f"{batch_id}.jpgs")

    def load(self, batch_id: str) -> list[Pair] | None:
        """The saved results of a batch; None when there are none or they cannot be read."""
        path = self._path(batch_id)
        if not FileSystems.exists(path):
            return None
        images = self.images_path(batch_id)
        try:
            with FileSystems.open(path) as f:
                rows = pq.read_table(io.BytesIO(f.read())).to_pylist()
            pairs = [_stored_pair(row, images) for row in rows]
        except Exception as exc:  # truncated or corrupt: fetch the batch again
            log.warning("unreadable crawl cache file %s (%s); fetching the batch again", path, exc)
            return None
        expected = sum(p.image_ref.length for p in pairs if p.image_ref)
        if stored_size(images) != expected:
            log.warning("image file %s is missing or short; fetching the batch again", images)
            return None
        return pairs

    def save(self, batch_id: str, pairs: list[Pair]) -> list[Pair]:
        """Store the batch's images and results; the pairs back, light: a reference each."""
        refs = write_images(self.images_path(batch_id), [p.image for p in pairs])
        table = manifest_table(pairs)
        for field, values in zip(_STORE_FIELDS, _store_columns(pairs, refs).values(), strict=True):
            table = table.append_column(field, pa.array(values, field.type))
        out = io.BytesIO()
        pq.write_table(table, out, compression="none")
        write_atomic(self._path(batch_id), out.getvalue())
        return [
            dataclasses.replace(pair, image=None, image_ref=ref)
            for pair, ref in zip(pairs, refs, strict=True)
        ]

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
