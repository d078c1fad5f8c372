"""Sample writers stream shards to a temporary file that becomes the shard only when complete."""

from __future__ import annotations

import io
import json

import pytest
import webdataset as wds
from PIL import Image

from manifests.io import atomic_file
from manifests.schema import Pair
from pipeline.writers import write_samples


def sample(i: int) -> Pair:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (i, 0, 0)).save(out, format="JPEG")
    return Pair(key=f"{i:015d}", url=f"http://h/{i}", caption=f"caption {i}", image=out.getvalue())


def test_a_streamed_shard_reads_back_with_webdataset_and_is_deterministic(tmp_path):
    pairs = [sample(i) for i in range(5)]
    for name in ("a.tar", "b.tar"):
        with atomic_file(str(tmp_path / name)) as stream:
            assert write_samples(stream, pairs) == 5
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    read = list(wds.WebDataset(str(tmp_path / "a.tar"), shardshuffle=False))
    assert [r["__key__"] for r in read] == [p.key for p in pairs]
    assert [r["txt"].decode() for r in read] == [p.caption for p in pairs]
    assert json.loads(read[2]["json"])["url"] == "http://h/2" and read[2]["jpg"] == pairs[2].image
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar", "b.tar"]


def test_a_shard_that_fails_midway_leaves_neither_a_shard_nor_a_temporary_file(tmp_path):
    path = tmp_path / "00000.tar"
    path.write_bytes(b"the previous run's shard")
    broken = [sample(0), Pair(key="000000000000001", url="u", caption="c", image=None)]
    with pytest.raises(ValueError), atomic_file(str(path)) as stream:
        write_samples(stream, broken)
    assert path.read_bytes() == b"the previous run's shard"
    assert [p.name for p in tmp_path.iterdir()] == ["00000.tar"]
