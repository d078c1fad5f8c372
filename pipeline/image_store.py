"""Where the crawl keeps the images it encoded: one file per crawl batch, read back by reference.

The crawl writes each finished batch's JPEGs once, end to end, to `FOLDER/<batch_id>.jpgs`
(the crawl cache's image file, so the store is the resume cache, not a copy); from then on a
pair carries an `ImageRef` (file, offset, length), never the bytes, and dedup, the filters,
balancing and every shuffle between them move metadata only. The few stages that need pixels
again (image filter plugins, the score model, the shard writer, the report's examples) read
them back here. A read is checked against the pair's length and sha256, so a missing,
truncated or overwritten file costs its rows `error:image_store` naming the file, never the run.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

from apache_beam.io.filesystems import FileSystems

from manifests.io import write_atomic
from manifests.schema import Pair, error

STORE_ERROR = "image_store"  # the error kind of a pair whose stored image cannot be read


@dataclass(frozen=True)
class ImageRef:
    """Where one encoded image lies: `length` bytes at `offset` of the batch file `path`."""

    path: str
    offset: int
    length: int


class StoreError(Exception):
    """A stored image that cannot be read back as written."""

    kind = STORE_ERROR


def write_images(path: str, images: list[bytes | None]) -> list[ImageRef | None]:
    """Write `images` end to end to `path` (atomically) and say where each one lies."""
    refs: list[ImageRef | None] = []
    offset = 0
    for image in images:
        refs.append(None if image is None else ImageRef(path, offset, len(image)))
        offset += len(image or b"")
    write_atomic(path, b"".join(image for image in images if image))
    return refs


def stored_size(path: str) -> int | None:
    """The size of a batch file, or None when it is not there."""
    matches = FileSystems.match([path])[0].metadata_list
    return matches[0].size_in_bytes if matches else None


class ImageReader:
    """Reads images by reference, keeping the last batch file open: readers that go through
    pairs in key order (the shard writer, the score filter) read each file front to back."""

    def __init__(self) -> None:
        self._path: str | None = None
        self._file = None

    def read(self, ref: ImageRef, sha256: str | None) -> bytes:
        """The image at `ref`; StoreError when it is missing, short or not what was written."""
        try:
            if ref.path != self._path:
                self.close()
                self._file, self._path = FileSystems.open(ref.path), ref.path
            self._file.seek(ref.offset)
            data = self._file.read(ref.length)
        except (OSError, ValueError) as exc:
            self.close()
            raise StoreError(f"stored image file {ref.path} cannot be read: {exc}") from None
        if len(data) != ref.length:
            raise StoreError(
                f"stored image file {ref.path} is truncated: {len(data)} of {ref.length} bytes "
                f"at offset {ref.offset}"
            )
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise StoreError(f"stored image file {ref.path} holds other bytes at {ref.offset}")
        return data

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = self._path = None

    def __enter__(self) -> ImageReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def image_bytes(pair: Pair, reader: ImageReader | None = None) -> bytes | None:
    """`pair`'s encoded image: carried inline (a crawl without a store) or read from the store."""
    if pair.image is not None or pair.image_ref is None:
        return pair.image
    if reader is not None:
        return reader.read(pair.image_ref, pair.sha256)
    with ImageReader() as own:
        return own.read(pair.image_ref, pair.sha256)


def with_image(pair: Pair, reader: ImageReader) -> Pair:
    """`pair` carrying its image bytes for a stage that needs pixels, or the pair dropped with
    `error:image_store` when they cannot be read."""
    try:
        return dataclasses.replace(pair, image=image_bytes(pair, reader))
    except StoreError as exc:
        return pair.with_status(error(exc.kind), str(exc))


def without_image(pair: Pair) -> Pair:
    """`pair` light again once its stage is done with the pixels (the reference stays)."""
    return dataclasses.replace(pair, image=None) if pair.image_ref is not None else pair
