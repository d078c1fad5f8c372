"""The one record type that flows through the pipeline, and the manifest's parquet schema.

Every input row becomes exactly one `Pair`; stages return new pairs with `dataclasses.replace`
and never drop one silently: a pair that is not kept carries a status saying why. The
manifest's column names follow img2dataset's, so tools that read its output read ours.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    from pipeline.hashing import ImageHashes
    from pipeline.image_store import ImageRef

OK = "ok"
_URL_USERINFO = re.compile(r"^(\s*[A-Za-z][A-Za-z0-9+.-]*:)?//[^/?#]*@")  # a URL's own
_TEXT_USERINFO = re.compile(r"(?<=://)[^/?#\s]*@")  # `user:password@` of any URL in a text


def error(kind: str) -> str:
    """Status for a row that could not be processed (`error:http_404`, `error:timeout`, ...)."""
    return f"error:{kind}"


def strip_userinfo(url: str) -> str:
    """`url` without its `user:password@`: credentials someone left in a list must not reach
    the manifest, the shards' KEY.json, error messages or logs (the fetch goes without them)."""
    if "@" not in url:
        return url
    return _URL_USERINFO.sub(lambda m: f"{m.group(1) or ''}//", url, count=1)


def scrub_userinfo(text: str) -> str:
    """`text` with the userinfo of every URL quoted in it removed."""
    return _TEXT_USERINFO.sub("", text) if "@" in text else text


def filtered(filter_name: str, reason: str) -> str:
    """Status for a row a filter dropped (`filtered:image:too_small`)."""
    return f"filtered:{filter_name}:{reason}"


@dataclass(frozen=True)
class Pair:
    """One URL-caption row and everything learned about it on its way to a shard."""

    key: str
    url: str
    caption: str
    status: str = OK
    error_message: str | None = None
    source: str = ""
    width: int | None = None
    height: int | None = None
    original_width: int | None = None
    original_height: int | None = None
    sha256: str | None = None
    shard: str | None = None
    # Curation results, written to the manifest by the stages that compute them.
    language: str | None = None  # detected caption language (lang filter)
    queries: tuple[int, ...] | None = None  # ids of the matched queries (balance stage)
    phash: str | None = None  # 64-bit perceptual hash, hex (dedup stage)
    dup_of: str | None = None  # key of the kept copy, for dup:* and contaminated rows
    score: float | None = None  # image-caption cosine similarity (score filter)
    # The encoded JPEG of the resized image, inline only where no store holds it (plain calls,
    # a stage that needs the pixels for a moment); never in the manifest.
    image: bytes | None = field(default=None, repr=False)
    # Where the crawl stored that JPEG (`pipeline.image_store`): what pairs carry between stages.
    image_ref: ImageRef | None = field(default=None, repr=False)
    # The image dedup's hashes of it, made by the crawl while decoding; never in the manifest.
    hashes: ImageHashes | None = field(default=None, repr=False)

    @property
    def is_ok(self) -> bool:
        return self.status == OK

    def with_status(self, status: str, message: str | None = None) -> Pair:
        """The same pair, dropped with `status`; its image (bytes, reference, hashes) is
        released. URLs quoted in `message` (a redirect's target, say) lose their userinfo."""
        if message is not None:
            message = scrub_userinfo(message)
        return dataclasses.replace(
            self, status=status, error_message=message, image=None, image_ref=None, hashes=None
        )

    def sample_metadata(self) -> dict:
        """The `KEY.json` record of a shard sample: the manifest row, as img2dataset writes it."""
        record = {name: getattr(self, name) for name in MANIFEST_SCHEMA.names}
        if record["queries"] is not None:
            record["queries"] = list(record["queries"])
        return record


MANIFEST_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("status", pa.string()),
        ("error_message", pa.string()),
        ("source", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
        ("sha256", pa.string()),
        ("shard", pa.string()),
        ("language", pa.string()),
        ("queries", pa.list_(pa.int32())),
        ("phash", pa.string()),
        ("dup_of", pa.string()),
        ("score", pa.float32()),
    ]
)


def manifest_table(pairs: list[Pair]) -> pa.Table:
    """A manifest table of `pairs` in MANIFEST_SCHEMA (image bytes left out)."""
    columns = {name: [getattr(p, name) for p in pairs] for name in MANIFEST_SCHEMA.names}
    return pa.table(columns, schema=MANIFEST_SCHEMA)


def pair_from_row(row: dict) -> Pair:
    """The Pair of a manifest (or crawl-cache) row, as `manifest_table` wrote it."""
    if row.get("queries") is not None:
        row = {**row, "queries": tuple(row["queries"])}
    return Pair(**row)
