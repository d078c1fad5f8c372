"""The one record type that flows through the pipeline, and the manifest's parquet schema.

Every input row becomes exactly one `Pair`; stages return new pairs with `dataclasses.replace`
and never drop one silently: a pair that is not kept carries a status saying why. The
manifest's column names follow img2dataset's, so tools that read its output read ours.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pyarrow as pa

OK = "ok"


def error(kind: str) -> str:
    """Status for a row that could not be processed (`error:http_404`, `error:timeout`, ...)."""
    return f"error:{kind}"


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
    # Encoded JPEG of the resized image; carried between crawl and shard stages, never in the manifest.
    image: bytes | None = field(default=None, repr=False)

    @property
    def is_ok(self) -> bool:
        return self.status == OK

    def with_status(self, status: str, message: str | None = None) -> Pair:
        """The same pair, dropped with `status`; its image bytes are released."""
        return dataclasses.replace(self, status=status, error_message=message, image=None)

    def sample_metadata(self) -> dict:
        """The `KEY.json` record of a shard sample: the manifest row, as img2dataset writes it."""
        return {name: getattr(self, name) for name in MANIFEST_SCHEMA.names}


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
    ]
)


def manifest_table(pairs: list[Pair]) -> pa.Table:
    """A manifest table of `pairs` in MANIFEST_SCHEMA (image bytes left out)."""
    columns = {name: [getattr(p, name) for p in pairs] for name in MANIFEST_SCHEMA.names}
    return pa.table(columns, schema=MANIFEST_SCHEMA)
