"""Images travel by reference: the crawl stores each batch's JPEGs once, pairs carry where they
lie, and a stored image that is missing or truncated at shard time costs its rows a status
naming the file (a rerun fetches them again), never the run."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import LOOPBACK
from PIL import Image

import beam_runner
from manifests.schema import Pair
from pipeline.crawl_cache import CrawlCache
from pipeline.hashing import HashSpec
from pipeline.image_store import ImageReader, StoreError, image_bytes
from pipeline.shard import write_bucket


def jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    Image.effect_noise((64, 64), 40 + seed).convert("RGB").save(out, format="JPEG")  # random
    return out.getvalue()


def crawled(i: int) -> Pair:
    data = jpeg(i)
    return Pair(
        key=f"{i:015d}",
        url=f"http://h/{i}",
        caption=f"caption {i}",
        image=data,
        sha256=hashlib.sha256(data).hexdigest(),
        hashes=HashSpec(mirror=True).of(data),
    )


def test_a_stored_batch_gives_light_pairs_that_read_back_their_images(tmp_path):
    pairs = [crawled(i) for i in range(4)] + [Pair("000000000000004", "u", "c", status="x")]
    cache = CrawlCache(str(tmp_path))
    light = cache.save("b0", pairs)
    assert [p.image for p in light] == [None] * 5
    assert light[4].image_ref is None
    with ImageReader() as reader:
        assert [image_bytes(p, reader) for p in light[:4]] == [p.image for p in pairs[:4]]
    heavy, small = len(pickle.dumps(pairs[0])), len(pickle.dumps(light[0]))
    assert small < 2048 < heavy  # what a shuffle moves per pair
    loaded = cache.load("b0")
    assert loaded == light  # hashes and references survive the cache
    assert loaded[0].hashes == pairs[0].hashes


def test_a_short_or_rewritten_image_file_is_refused_by_name(tmp_path):
    cache = CrawlCache(str(tmp_path))
    light = cache.save("b0", [crawled(i) for i in range(3)])
    images = Path(cache.images_path("b0"))
    data = images.read_bytes()
    images.write_bytes(data[:-10])
    with pytest.raises(StoreError, match="b0.jpgs is truncated"):
        image_bytes(light[2])
    assert cache.load("b0") is None  # a rerun fetches the batch again
    images.write_bytes(data[::-1])
    with pytest.raises(StoreError, match="b0.jpgs holds other bytes"):
        image_bytes(light[0])
    images.unlink()
    with pytest.raises(StoreError, match="b0.jpgs cannot be read"):
        image_bytes(light[0])


def test_a_shard_whose_images_are_partly_lost_keeps_the_rest_and_names_the_file(tmp_path):
    cache = CrawlCache(str(tmp_path / "store"))
    originals = [crawled(i) for i in range(3)]
    first = cache.save("b0", originals)
    second = cache.save("b1", [crawled(i) for i in range(3, 6)])
    Path(cache.images_path("b1")).unlink()
    summary = write_bucket(0, first + second, str(tmp_path / "out"))
    assert summary["samples"] == 3 and summary["rows"] == 6
    assert summary["status_counts"] == {"ok": 3, "error:image_store": 3}
    manifest = pq.read_table(tmp_path / "out" / "manifest" / "00000.parquet").to_pylist()
    lost = [row for row in manifest if row["status"] != "ok"]
    assert all("b1.jpgs" in row["error_message"] for row in lost)
    with tarfile.open(tmp_path / "out" / "shards" / "00000.tar") as tar:
        jpgs = [tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")]
    assert jpgs == [p.image for p in originals]
    Path(cache.images_path("b0")).unlink()
    summary = write_bucket(1, first, str(tmp_path / "out"))
    assert summary["shard"] is None and not (tmp_path / "out" / "shards" / "00001.tar").exists()


LOSING_FILTER = """
import os
from dataclasses import dataclass
from filters.base import register

@dataclass(frozen=True)
class LoseConfig:
    victim: str = ""

@register("lose_store", "image", LoseConfig)
def lose_store(pair, image, config):
    path = pair.image_ref.path
    if path.endswith(config.victim) and not os.path.exists(path + ".lost-once"):
        os.remove(path)  # a disk or a person losing the file mid-run, once
        open(path + ".lost-once", "w").close()
    return None
"""


def test_a_batch_file_lost_mid_run_costs_its_rows_and_a_rerun_fetches_them(
    tmp_path, server, corpus, monkeypatch
):
    (tmp_path / "lose_plugin.py").write_text(LOSING_FILTER)
    monkeypatch.syspath_prepend(str(tmp_path))
    names = [image.name for image in corpus if image.name.endswith((".jpg", ".png"))][:8]
    rows = "".join(f"{server.url('img/' + name)},caption {i}\n" for i, name in enumerate(names))
    input_path = tmp_path / "list.csv"
    input_path.write_text("url,caption\n" + rows)
    out = tmp_path / "out"
    argv = ["--input", str(input_path), "--output", str(out), "--allowed-networks", LOOPBACK]
    argv += ["--image-size", "48", "--batch-rows", "4", "--dedup", "none", "--keep-crawl-cache"]
    victim = "-00000001.jpgs"  # the second batch: rows 4-7
    argv += ["--filter-plugins", "lose_plugin", "--filters", "lose_store"]
    argv += ["--filter-option", f"lose_store.victim={victim}"]
    assert beam_runner.run(argv) is not None
    stats = json.loads((out / "stats.json").read_text())
    assert stats["input_rows"] == 8 and stats["samples"] == 4
    assert stats["status_counts"] == {"ok": 4, "error:image_store": 4}
    manifest = pq.read_table(out / "manifest").to_pylist()
    assert all(victim in r["error_message"] for r in manifest if r["status"] != "ok")
    assert sorted(r["key"][-1] for r in manifest if r["status"] != "ok") == list("4567")

    fetched = sum(server.hits.get("/img/" + name, 0) for name in names)
    assert beam_runner.run(argv) is not None  # not complete: the same command runs again
    assert sum(server.hits.get("/img/" + name, 0) for name in names) == fetched + 4
    assert json.loads((out / "stats.json").read_text())["status_counts"] == {"ok": 8}
