"""A 10 kB tar whose sparse member expands to 1 GiB: the trainer and the report skip that
member unread (counted, logged) and still read the rest of the shard, in little memory."""

from __future__ import annotations

import io
import random
import tarfile
import tracemalloc

from trainer_helpers import jpeg

from manifests.report import samples
from trainer.data import ShardStream
from trainer.shards import read_shards

GIB = 1 << 30


def add(tar: tarfile.TarFile, name: str, data: bytes, pax: dict | None = None) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.pax_headers = len(data), pax or {}
    tar.addfile(info, io.BytesIO(data))


def sparse_shard(path) -> None:
    """Samples 0..5, sample 2's JPEG a PAX (GNU 0.1) sparse member: 100 bytes stored, 1 GiB
    when read (tarfile fills the hole with zeros)."""
    rng = random.Random(0)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(6):
            key = f"{i:05d}"
            if i == 2:
                pax = {"GNU.sparse.map": "0,100", "GNU.sparse.size": str(GIB)}
                add(tar, f"{key}.jpg", b"\xff" * 100, pax)
            else:
                add(tar, f"{key}.jpg", jpeg("red", "circle", rng))
            add(tar, f"{key}.txt", f"sample {i}".encode())


def peak_bytes(function):
    tracemalloc.start()
    try:
        result = function()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_trainer_skips_a_sparse_member_and_reads_the_rest(tmp_path):
    path = tmp_path / "00000.tar"
    sparse_shard(path)
    assert path.stat().st_size < 64 << 10
    errors = []
    handler = lambda exc: errors.append(exc) or True  # noqa: E731  (skip and go on)
    found, peak = peak_bytes(lambda: list(read_shards([str(path)], handler)))
    assert peak < 32 << 20  # reading the member whole would be 1 GiB
    assert len(errors) == 1 and "00002.jpg" in str(errors[0])
    assert [s["__key__"] for s in found] == [f"{i:05d}" for i in range(6)]
    assert "jpg" not in found[2] and all("jpg" in s for i, s in enumerate(found) if i != 2)

    stream = ShardStream(str(path), 5, 32, shuffle_buffer=1)
    images, captions = next(stream.batches())
    assert sorted(captions) == [f"sample {i}" for i in (0, 1, 3, 4, 5)]
    assert stream.read_errors == 1 and stream.skipped == 1  # the member, then its sample


def test_the_report_skips_a_sparse_member_and_shows_the_rest(tmp_path):
    (tmp_path / "shards").mkdir()
    sparse_shard(tmp_path / "shards" / "00000.tar")
    found, peak = peak_bytes(lambda: samples(tmp_path))
    assert peak < 32 << 20
    assert [caption for caption, _ in found] == [f"sample {i}" for i in (0, 1, 3, 4, 5)]
