"""Sample writers: one small class per output format behind one interface, chosen in one place.

A writer streams the kept samples of one shard into a file object in the order given, so a
shard is never built whole in memory; the shard stage opens that file through
`manifests.io.atomic_file` (a temporary name, renamed when complete). Output is deterministic:
the same samples give the same bytes on every runner.
"""

from __future__ import annotations

import json
from typing import BinaryIO, Protocol

from manifests.schema import Pair

# Fixed tar metadata, so a rerun writes byte-identical shards.
_TAR_MTIME = 946684800.0  # 2000-01-01
_TAR_OWNER = "openwit"


class SampleWriter(Protocol):
    """Writes samples to one open file; `close` ends the format (not the file)."""

    extension: str

    def write(self, pair: Pair) -> None: ...

    def close(self) -> None: ...


class WebDatasetWriter:
    """A WebDataset tar: KEY.jpg, KEY.txt, KEY.json per sample, readable by `webdataset` and
    OpenCLIP unchanged (webdataset's own TarWriter, streaming)."""

    extension = "tar"

    def __init__(self, stream: BinaryIO):
        # imported here: webdataset imports torch when present, so only shard writers pay
        from webdataset import TarWriter

        self._tar = TarWriter(
            stream, user=_TAR_OWNER, group=_TAR_OWNER, mtime=_TAR_MTIME, encoder=False
        )

    def write(self, pair: Pair) -> None:
        metadata = json.dumps(pair.sample_metadata(), sort_keys=True).encode("utf-8")
        self._tar.write(
            {
                "__key__": pair.key,
                "jpg": pair.image,
                "txt": pair.caption.encode("utf-8"),
                "json": metadata,
            }
        )

    def close(self) -> None:
        self._tar.close()


WRITERS: dict[str, type] = {"webdataset": WebDatasetWriter}


def write_samples(stream: BinaryIO, pairs, output_format: str = "webdataset") -> int:
    """Stream `pairs` into `stream` in `output_format`; the number written."""
    writer: SampleWriter = WRITERS[output_format](stream)
    count = 0
    for pair in pairs:
        writer.write(pair)
        count += 1
    writer.close()
    return count
