"""Dedup: URL normalisation, hashes, LSH matching, groups, flags, the URL stage on Beam, and a
whole run through beam_runner (the image stage on Beam: test_dedup_image.py)."""

from __future__ import annotations

import argparse
import hashlib
import json
import random

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that, equal_to
from conftest import LOOPBACK, write_list
from dedup_helpers import drawing, encode, image_pair
from PIL import ImageOps

import beam_runner
from demo.server import CorpusServer
from filters.image_size import ImageSizeConfig
from manifests.schema import Pair
from pipeline.decode import finish_pair
from pipeline.dedup import DedupConfig, config_from_args
from pipeline.dedup_groups import DUP_EXACT, DUP_NEAR
from pipeline.dedup_url import UrlDedup
from pipeline.hashing import (
    Groups,
    band_keys,
    band_layout,
    caption_key,
    close_pairs,
    hamming,
    hash_image,
    normalize_url,
)
from pipeline.imaging import ImageConfig, process_image

# ---- per-element logic ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("HTTP://Example.COM/a.jpg", "http://example.com/a.jpg"),
        ("http://example.com:80/a.jpg", "http://example.com/a.jpg"),
        ("https://example.com:443/a.jpg#top", "https://example.com/a.jpg"),
        ("https://example.com/a.jpg?utm_source=x&id=3&fbclid=y", "https://example.com/a.jpg?id=3"),
        ("http://example.com", "http://example.com/"),
        ("http://example.com./a%2fb.jpg", "http://example.com/a%2Fb.jpg"),
    ],
)
def test_normalize_url_merges_spellings_of_one_url(a, b):
    assert normalize_url(a) == normalize_url(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("http://example.com/A.jpg", "http://example.com/a.jpg"),
        ("http://example.com:8080/a.jpg", "http://example.com/a.jpg"),
        ("https://example.com/a.jpg", "http://example.com/a.jpg"),
        ("http://example.com/a.jpg?id=3", "http://example.com/a.jpg?id=4"),
    ],
)
def test_normalize_url_keeps_distinct_urls_apart(a, b):
    assert normalize_url(a) != normalize_url(b)


def test_caption_key_ignores_case_spacing_and_punctuation_but_not_words():
    assert caption_key("A red fox, in snow!") == caption_key("a  red fox in\tsnow")
    assert caption_key("Straße_café") == caption_key("STRASSE CAFÉ")
    assert caption_key("a red fox") != caption_key("a red fox cub")
    assert caption_key("a red fox") != caption_key("red a fox")


def test_the_digest_ignores_the_container_but_not_the_pixels():
    """The crawl re-encodes every image, so the same pixels stored with other metadata get the
    same shard JPEG and digest; a recompressed copy does not, but its pHash stays close."""
    image, crawl = drawing(1), ImageConfig()
    shard = [
        hash_image(process_image(data, crawl).jpeg, "phash")
        for data in (
            encode(image, "PNG"),
            encode(image, "PNG", dpi=(300, 300)),
            encode(image, "BMP"),
            encode(image, quality=40),
        )
    ]
    png, with_metadata, bmp, jpeg = shard
    assert png.digest == with_metadata.digest == bmp.digest
    assert png.digest != jpeg.digest
    assert hamming(png.phash, jpeg.phash) <= 4


def test_mirror_hash_matches_a_flipped_copy():
    image = drawing(2)
    original = hash_image(encode(image, "PNG"), "phash", mirror=True)
    flipped = hash_image(encode(ImageOps.mirror(image), "PNG"), "phash", mirror=True)
    assert hamming(original.phash, flipped.phash) > 8
    assert hamming(original.views[0], flipped.phash) <= 2


@pytest.mark.parametrize("bands", [1, 4, 7, 9, 64])
def test_band_layout_covers_the_hash_and_finds_every_close_pair(bands):
    layout = band_layout(bands)
    assert sum(width for _, width in layout) == 64 and len(layout) == bands
    rng = random.Random(bands)
    threshold = bands - 1
    for _ in range(300):
        a = rng.getrandbits(64)
        b = a
        for bit in rng.sample(range(64), rng.randint(0, threshold)):
            b ^= 1 << bit
        assert set(band_keys(a, layout)) & set(band_keys(b, layout))


def test_close_pairs_agrees_with_brute_force_across_chunks():
    rng = random.Random(5)
    base = [rng.getrandbits(64) for _ in range(20)]
    values = [v ^ (1 << rng.randrange(64)) if i % 2 else v for i, v in enumerate(base * 3)]
    expected = {
        (i, j)
        for i in range(len(values))
        for j in range(i + 1, len(values))
        if hamming(values[i], values[j]) <= 3
    }
    assert set(close_pairs(values, None, 3, chunk=7)) == expected
    cross = set(close_pairs(values[:10], values[10:], 3, chunk=4))
    assert cross == {
        (i, j) for i in range(10) for j in range(50) if hamming(values[i], values[10 + j]) <= 3
    }


def test_groups_do_not_depend_on_the_order_of_matches():
    edges = [("a", "b"), ("c", "d"), ("b", "c"), ("e", "f")]
    keys = {"a": "k5", "b": "k3", "c": "k9", "d": "k4", "e": "k8", "f": "k7"}
    results = []
    for seed in range(5):
        shuffled = edges[:]
        random.Random(seed).shuffle(shuffled)
        groups = Groups()
        for a, b in shuffled:
            groups.add(a, keys[a])
            groups.add(b, keys[b])
            groups.union(a, b)
        results.append(groups.survivors())
    assert all(r == results[0] for r in results)
    assert results[0] == {"a": "k3", "b": "k3", "c": "k3", "d": "k3", "e": "k7", "f": "k7"}


class _Parser:
    """The real command line's dedup flags (`beam_runner.make_parser`)."""

    def parse_args(self, argv: list[str]) -> argparse.Namespace:
        parser = beam_runner.make_parser([])
        return parser.parse_known_args(["--input", "i", "--output", "o", *argv])[0]


def test_config_from_args():
    parser = _Parser()
    assert config_from_args(parser.parse_args([])) == DedupConfig()
    assert config_from_args(parser.parse_args(["--dedup", "none"])) is None
    only_eval = config_from_args(parser.parse_args(["--dedup", "none", "--decontaminate", "e"]))
    assert only_eval == DedupConfig(exact=False, near=False, decontaminate="e")
    tuned = config_from_args(
        parser.parse_args(["--dedup", "near", "--near-dup-threshold", "5", "--near-dup-mirror"])
    )
    assert (tuned.exact, tuned.threshold, tuned.mirror) == (False, 5, True)
    views = ["--near-dup-zoom", "0.9,0.95", "--near-dup-colour-distance", "none"]
    assert config_from_args(parser.parse_args(views)) == DedupConfig(
        zoom=(0.9, 0.95), colour_distance=None
    )
    off = config_from_args(parser.parse_args(["--near-dup-zoom", "none"]))
    assert off.zoom == () and off.colour_distance == 12
    scoped = config_from_args(parser.parse_args(["--dedup-scope", "pair"]))
    assert scoped == DedupConfig(scope="pair")
    with pytest.raises(ValueError, match="scope"):
        DedupConfig(scope="caption")
    with pytest.raises(ValueError, match="zoom"):
        DedupConfig(zoom=(1.5,))
    with pytest.raises(ValueError, match="--dedup"):
        config_from_args(parser.parse_args(["--dedup", "exact,fuzzy"]))
    with pytest.raises(ValueError, match="threshold"):
        DedupConfig(threshold=64)


def test_the_crawl_hashes_what_the_dedup_stage_would(corpus):
    """The crawl hashes the pixels it has just encoded, as the evaluation set's path does, so a
    training image and the same evaluation image hash alike; the digest is the stored JPEG's."""
    spec = DedupConfig().crawl_hashes
    for image in corpus[:6]:
        pair = finish_pair(
            image_pair("k", None), image.data, ImageConfig(), ImageSizeConfig(), spec
        )
        shown = process_image(image.data, ImageConfig())
        assert pair.is_ok and pair.hashes == spec.of(shown.jpeg, shown.pixels), image.name
        assert (
            pair.hashes.digest
            == spec.of(pair.image).digest
            == hashlib.sha256(pair.image).hexdigest()
        )
        unhashed = finish_pair(image_pair("k", None), image.data, ImageConfig(), ImageSizeConfig())
        assert unhashed.hashes is None and unhashed.image == pair.image


# ---- the URL stage on Beam, and a whole run -------------------------------------------------


def test_url_dedup_keeps_the_smallest_key_of_each_url():
    pairs = [
        Pair(key="k3", url="http://Site.test/a.jpg?utm_medium=x", caption="c"),
        Pair(key="k1", url="http://site.test:80/a.jpg#frag", caption="c"),
        Pair(key="k2", url="http://site.test/a.jpg", caption="c"),
        Pair(key="k4", url="http://site.test/b.jpg", caption="c"),
        Pair(key="k0", url="http://site.test/a.jpg", caption="c", status="error:bad_row"),
    ]
    with beam.Pipeline() as p:
        out = p | beam.Create(pairs) | UrlDedup()
        rows = out["pairs"] | beam.Map(lambda q: (q.key, q.status, q.dup_of))
        assert_that(
            rows,
            equal_to(
                [
                    ("k0", "error:bad_row", None),
                    ("k1", "ok", None),
                    ("k2", DUP_EXACT, "k1"),
                    ("k3", DUP_EXACT, "k1"),
                    ("k4", "ok", None),
                ]
            ),
        )
        assert_that(out["stats"], equal_to([{"rows": 4, "duplicates": 2}]), label="Stats")


def test_url_dedup_in_the_pair_scope_keeps_each_caption_of_a_url():
    url = "http://site.test/a.jpg"
    pairs = [
        Pair(key="k1", url=url, caption="A red fox."),
        Pair(key="k2", url=url + "#x", caption="a red fox"),
        Pair(key="k3", url=url, caption="a fox in the snow"),
    ]
    with beam.Pipeline() as p:
        out = p | beam.Create(pairs) | UrlDedup(DedupConfig(scope="pair"))
        rows = out["pairs"] | beam.Map(lambda q: (q.key, q.status, q.dup_of))
        expected = [("k1", "ok", None), ("k2", DUP_EXACT, "k1"), ("k3", "ok", None)]
        assert_that(rows, equal_to(expected))


def test_beam_runner_dedups_urls_and_images_into_the_manifest(tmp_path):
    pictures = {f"p{i}.jpg": encode(drawing(400 + i), quality=92) for i in range(6)}
    pictures["p0-small.jpg"] = encode(drawing(400).resize((110, 110)), quality=50)
    pictures["p1-copy.jpg"] = pictures["p1.jpg"]
    with CorpusServer(pictures) as server:
        rows = [
            {"url": server.url(f"img/{name}"), "caption": f"picture {name}"} for name in pictures
        ]
        rows.append({"url": server.url("img/p2.jpg").upper().replace("/IMG/P2.JPG", "/img/p2.jpg")
                     + "?utm_source=mail", "caption": "the same URL, spelt otherwise"})  # fmt: skip
        path = write_list(tmp_path / "list.csv", rows, "csv")
        beam_runner.run(["--input", str(path), "--output", str(tmp_path / "out"),
                         "--allowed-networks", LOOPBACK, "--image-size", "96"])  # fmt: skip
    stats = json.loads((tmp_path / "out/stats.json").read_text())
    manifest = {r["url"].rsplit("/", 1)[1]: r for f in (tmp_path / "out/manifest").glob("*.parquet")
                for r in pq.read_table(f).to_pylist()}  # fmt: skip
    statuses = {name: (r["status"], r["dup_of"]) for name, r in manifest.items()}
    key = {name: r["key"] for name, r in manifest.items()}
    assert statuses["p0-small.jpg"] == (DUP_NEAR, key["p0.jpg"])
    assert statuses["p1-copy.jpg"] == (DUP_EXACT, key["p1.jpg"])
    assert statuses["p2.jpg?utm_source=mail"] == (DUP_EXACT, key["p2.jpg"])
    kept = [name for name, (status, _) in statuses.items() if status == "ok"]
    assert sorted(kept) == [f"p{i}.jpg" for i in range(6)]
    assert all(len(manifest[name]["phash"]) == 16 for name in kept)
    assert stats["status_counts"] == {"ok": 6, DUP_EXACT: 2, DUP_NEAR: 1}
    assert stats["dedup_url"]["duplicates"] == 1 and stats["dedup_image"]["images"] == 8
