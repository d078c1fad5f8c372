"""Shared fixtures: a loopback corpus server with fault routes, and input-list writers."""

from __future__ import annotations

import csv
import gzip
import io
import json
import struct
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from demo.corpus import SyntheticImage, generate
from demo.server import CorpusServer

LOOPBACK = "127.0.0.0/8"


def output_files(folder: Path) -> dict[str, bytes]:
    """The bytes of a run's shards and manifest, and its stats less what names the folder: what a
    rerun must reproduce exactly."""
    files = {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for sub in ("shards", "manifest")
        for p in sorted((folder / sub).iterdir())
    }
    stats = json.loads((folder / "stats.json").read_text())
    for varying in ("config", "fingerprint"):  # they name the output folder
        stats.pop(varying)
    files["stats"] = json.dumps(stats, sort_keys=True).encode()
    return files


@pytest.fixture(scope="session")
def corpus() -> list[SyntheticImage]:
    return generate(24, seed=7, min_side=120, max_side=600)


@pytest.fixture(scope="session")
def server(corpus):
    images = {image.name: image.data for image in corpus}
    jpeg = next(image.data for image in corpus if image.name.endswith(".jpg"))
    images["corrupt.jpg"] = jpeg[: len(jpeg) // 2]  # a valid header, then the body breaks off
    images["bomb.png"] = _png_bomb()
    images["tiny.jpg"] = _jpeg((20, 20))
    noise = io.BytesIO()
    Image.effect_noise((300, 300), 60).convert("RGB").save(noise, format="JPEG", quality=90)
    images["photo.jpg"] = noise.getvalue()  # ~40 kB: enough body to drip, reset or truncate
    images["vector.jpg"] = EPS  # PostScript served as image/jpeg: must never reach Ghostscript
    images["lying.jpg"] = ico_around(_png((3000, 2000)))  # a 16x16 ICO entry hiding 6 Mpx
    with CorpusServer(images) as srv:
        yield srv


EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n%%EndComments\n"
    b"(/etc/passwd) (r) file pop\nshowpage\n%%EOF\n"
)


def ico_around(frame: bytes, declared: int = 16) -> bytes:
    """An ICO whose directory declares a `declared`-pixel icon and holds `frame` (a PNG)."""
    entry = bytes([declared, declared, 0, 0]) + (1).to_bytes(2, "little")
    entry += (32).to_bytes(2, "little") + len(frame).to_bytes(4, "little")
    entry += (22).to_bytes(4, "little")  # the frame follows the 6-byte header and one entry
    return b"\x00\x00\x01\x00\x01\x00" + entry + frame


def _png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 10, 200)).save(out, format="PNG")
    return out.getvalue()


def _jpeg(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 200, 10)).save(out, format="JPEG")
    return out.getvalue()


def _png_bomb(side: int = 30000) -> bytes:
    """A ~100 kB PNG that decodes to side x side pixels (900 Mpx): a decompression bomb.

    Written chunk by chunk so the test never holds the decoded size in memory itself."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + 1-bit pixels
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row * 1000) for _ in range(side // 1000)) + packer.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def write_list(path: Path, rows: list[dict], fmt: str, compress: bool = False) -> Path:
    """Write `rows` (dicts with url/caption) as an input list in `fmt`, optionally gzipped."""
    if fmt == "parquet":
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buffer, row_group_size=5)
        data = buffer.getvalue()
    elif fmt in ("csv", "tsv"):
        text = io.StringIO()
        writer = csv.DictWriter(
            text, fieldnames=list(rows[0]), delimiter="\t" if fmt == "tsv" else ","
        )
        writer.writeheader()
        writer.writerows(rows)
        data = text.getvalue().encode()
    elif fmt == "jsonl":
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    elif fmt == "txt":
        data = "".join(r["url"] + "\n" for r in rows).encode()
    else:
        raise ValueError(fmt)
    if compress:
        data = gzip.compress(data, mtime=0)
        path = path.with_name(path.name + ".gz")
    path.write_bytes(data)
    return path
