"""The shard stream: splits by rank and worker, resumes exactly, survives bad data."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from trainer_helpers import CLASSES, write_numbered_shards, write_shards

from trainer.data import (
    MEAN,
    STD,
    DataState,
    ShardStream,
    preprocess_eval,
)
from trainer.shards import _matches, expand_shards


def test_expand_shards_reads_braces_globs_and_lists(tmp_path):
    for name in ("00000.tar", "00001.tar", "00002.tar", "other.tar"):
        (tmp_path / name).write_bytes(b"")
    braces = expand_shards(str(tmp_path / "{00000..00001}.tar"))
    assert [p.rsplit("/", 1)[1] for p in braces] == ["00000.tar", "00001.tar"]
    assert len(expand_shards(str(tmp_path / "0000?.tar"))) == 3
    assert len(expand_shards(f"{tmp_path}/00002.tar,{tmp_path}/other.tar")) == 2
    with pytest.raises(FileNotFoundError):
        expand_shards(str(tmp_path / "missing*.tar"))


@pytest.mark.parametrize("shards", [4, 1])  # one shard: fewer than lanes, split by sample
def test_ranks_and_workers_read_an_epoch_once(tmp_path, shards):
    pattern = write_numbered_shards(tmp_path, shards=shards, per_shard=40 // shards)
    seen = []
    for rank in range(2):
        stream = ShardStream(pattern, batch_size=1, image_size=8, rank=rank, world=2,
                             shuffle_buffer=3, workers=2)  # fmt: skip
        for _, captions in itertools.islice(stream.batches(), 20):
            seen.extend(captions)
    assert sorted(seen) == sorted(f"sample {i}" for i in range(40))


def test_a_restored_stream_continues_with_the_same_batches(tmp_path):
    pattern = write_numbered_shards(tmp_path, shards=3, per_shard=10)

    def stream() -> ShardStream:
        return ShardStream(pattern, batch_size=4, image_size=8, seed=3, shuffle_buffer=5,
                           workers=2)  # fmt: skip

    whole = stream()
    batches = whole.batches()
    first = [next(batches) for _ in range(3)]
    position = whole.position()
    expected = [next(batches) for _ in range(6)]  # across the end of the first epoch
    resumed = stream()
    resumed.restore(position)
    got = list(itertools.islice(resumed.batches(), 6))
    assert [c for _, c in got] == [c for _, c in expected]
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(got, expected, strict=True))
    assert {c for _, cs in first for c in cs}.isdisjoint({c for _, cs in expected[:2] for c in cs})
    with pytest.raises(ValueError, match="--workers 2"):
        ShardStream(pattern, batch_size=4, image_size=8, workers=3).restore(position)


def test_resampling_draws_shards_with_replacement(tmp_path):
    pattern = write_numbered_shards(tmp_path, shards=8, per_shard=1)
    plain = ShardStream(pattern, batch_size=1, image_size=8)
    drawn = ShardStream(pattern, batch_size=1, image_size=8, resample=True)
    plans = [drawn._plan(0, epoch)[0] for epoch in range(4)]
    assert all(sorted(plain._plan(0, e)[0]) == sorted(plain.shards) for e in range(4))
    assert any(len(set(plan)) < len(plan) for plan in plans)  # some shard drawn twice
    assert plans == [ShardStream(pattern, 1, 8, resample=True)._plan(0, e)[0] for e in range(4)]


def _encoded(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def test_any_image_mode_becomes_rgb_with_transparency_on_white(tmp_path):
    clear = Image.new("RGBA", (30, 20), (200, 0, 0, 0))  # fully transparent red
    palette = Image.new("P", (20, 30), 0)
    palette.info["transparency"] = 0
    images = [clear, palette, Image.new("L", (16, 16), 255), Image.new("CMYK", (24, 24))]
    white = torch.from_numpy((1 - MEAN) / STD)[:, None, None]
    assert torch.allclose(preprocess_eval(clear, 8), white.expand(3, 8, 8), atol=1e-5)
    with wds.TarWriter(str(tmp_path / "00000.tar")) as tar:
        for index, image in enumerate(images):
            data = _encoded(image, "JPEG" if image.mode in ("L", "CMYK") else "PNG")
            tar.write({"__key__": f"{index:015d}", "jpg": data, "txt": f"image {index}"})
    stream = ShardStream(str(tmp_path / "00000.tar"), batch_size=4, image_size=8, shuffle_buffer=1)
    batch, _ = next(stream.batches())
    assert batch.shape == (4, 3, 8, 8) and stream.skipped == 0
    assert torch.allclose(batch[:3], white.expand(3, 3, 8, 8), atol=1e-4)  # clear, clear, white


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_samples_and_unreadable_shards_are_skipped_and_counted(tmp_path, workers):
    write_shards(tmp_path, shards=2, per_shard=20, corrupt=3)
    (tmp_path / "00002.tar").write_bytes(b"not a tar archive" * 100)
    good = (tmp_path / "00000.tar").read_bytes()
    (tmp_path / "00003.tar").write_bytes(good[: len(good) // 2])  # cut mid-shard

    def stream() -> ShardStream:
        return ShardStream(str(tmp_path / "*.tar"), batch_size=1, image_size=16,
                           shuffle_buffer=4, workers=workers)  # fmt: skip

    whole = stream()
    batches = whole.batches()
    captions = [c[0] for _, c in itertools.islice(batches, 30)]
    position = whole.position()
    # 100 batches: every lane finishes an epoch (<= 47 good samples), so every shard was read.
    captions += [c[0] for _, c in itertools.islice(batches, 70)]
    assert whole.skipped >= 3 and whole.read_errors >= 2
    assert len(captions) == 100 and np.isin(captions, [f"a {c} {s}" for c, s in CLASSES]).all()
    resumed = stream()
    resumed.restore(position)
    assert [c[0] for _, c in itertools.islice(resumed.batches(), 70)] == captions[30:]
    assert (resumed.skipped, resumed.read_errors) == (whole.skipped, whole.read_errors)


def _batches(pattern: str, count: int, workers: int = 0) -> list:
    stream = ShardStream(pattern, batch_size=2, image_size=8, seed=1, shuffle_buffer=4,
                         workers=workers)  # fmt: skip
    return list(itertools.islice(stream.batches(), count))


def _same(got: list, expected: list) -> bool:
    return [c for _, c in got] == [c for _, c in expected] and all(
        torch.equal(a, b) for (a, _), (b, _) in zip(got, expected, strict=True)
    )


def test_expand_shards_reads_pipes_urls_and_lists(tmp_path):
    write_numbered_shards(tmp_path, shards=3, per_shard=1)
    one_per_shard = [f"pipe:cat {tmp_path}/{i:05d}.tar" for i in range(3)]
    assert expand_shards(f"pipe:cat {tmp_path}/{{00000..00002}}.tar") == one_per_shard
    listed = (
        f"{tmp_path}/{{00000,00001}}.tar,pipe:cut -d, -f1 x,pipe:aws s3 cp s3://b/{{0..1}}.tar -"
    )
    assert expand_shards(listed) == [
        f"{tmp_path}/00000.tar", f"{tmp_path}/00001.tar", "pipe:cut -d, -f1 x",
        "pipe:aws s3 cp s3://b/0.tar -", "pipe:aws s3 cp s3://b/1.tar -",
    ]  # fmt: skip
    globbed = expand_shards(f"file://{tmp_path}/0000[0-2].tar")
    assert globbed == [f"file://{tmp_path}/{i:05d}.tar" for i in range(3)]
    assert _matches("https://host/s.tar?sig=a*b") == ["https://host/s.tar?sig=a*b"]  # no glob
    with pytest.raises(FileNotFoundError):
        expand_shards(f"file://{tmp_path}/missing*.tar")
    with pytest.raises(ValueError, match="not known"):  # no such fsspec filesystem: fail now
        ShardStream("nosuchfs://bucket/00000.tar", batch_size=1, image_size=8)


@pytest.mark.parametrize("workers", [0, 2])
def test_pipe_and_url_specs_read_the_same_samples_as_paths(tmp_path, workers):
    pattern = write_numbered_shards(tmp_path, shards=3, per_shard=5)
    reference = _batches(pattern, 15, workers)  # two epochs
    assert {c for _, cs in reference[:4] for c in cs} <= {f"sample {i}" for i in range(15)}
    globbed = ",".join(expand_shards(f"file://{tmp_path}/0000[0-2].tar"))
    for spec in (f"pipe:cat {pattern}", f"file://{pattern}", globbed):
        assert _same(_batches(spec, 15, workers), reference), spec


def _epoch(pattern: str) -> tuple[list[str], DataState]:
    """Lane 0's raw samples of epoch 0, and the lane's counts after it."""
    state = DataState()
    stream = ShardStream(pattern, batch_size=1, image_size=8, shuffle_buffer=1)
    return sorted(s["txt"].decode() for s in stream._samples(0, state)), state


def test_failing_pipes_are_read_errors_of_their_shards(tmp_path):
    good = write_numbered_shards(tmp_path, shards=1, per_shard=6).replace("{00000..00000}", "00000")
    whole = [f"sample {i}" for i in range(6)]
    assert _epoch(f"pipe:cat {good}") == (whole, DataState())
    samples, state = _epoch(f"{good},pipe:cat /nonexistent/{{0..1}}.tar")  # cat exits 1
    assert samples == whole and state.read_errors == 2
    samples, state = _epoch(f"pipe:cat {good}; exit 3")  # a whole tar, then a failure
    assert samples == whole and state.read_errors == 1
    samples, state = _epoch(f"{good},pipe:yes")  # endless bytes, no tar: abandoned, killed
    assert samples == whole and state.read_errors == 1


def test_a_restored_stream_over_failing_pipes_counts_the_same(tmp_path):
    pattern = write_numbered_shards(tmp_path, shards=3, per_shard=4)
    failing = f"pipe:cat {pattern}; exit 3"  # every shard read whole, then a read error

    def stream() -> ShardStream:
        return ShardStream(failing, batch_size=1, image_size=8, shuffle_buffer=1)

    whole = stream()
    batches = whole.batches()
    positions = []
    for _ in range(30):
        next(batches)
        positions.append((whole.position(), whole.read_errors))
    assert whole.read_errors >= 3 * 2  # two epochs of three shards read whole
    for served, (position, errors) in enumerate(positions[:-1], start=1):
        resumed = stream()
        resumed.restore(position)
        assert resumed.read_errors == errors
        list(itertools.islice(resumed.batches(), 30 - served))
        assert resumed.read_errors == whole.read_errors, served
