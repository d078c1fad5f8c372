"""Dedup stages: URL normalisation, hashes, LSH matching, groups, and both transforms on Beam."""

from __future__ import annotations

import argparse
import io
import json
import random
import tarfile
from dataclasses import replace
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from conftest import LOOPBACK, write_list
from PIL import Image, ImageDraw, ImageOps

import beam_runner
from demo.server import CorpusServer
from filters.image_size import ImageSizeConfig
from manifests.schema import Pair
from pipeline.decode import finish_pair
from pipeline.dedup import DedupConfig, config_from_args
from pipeline.dedup_groups import CONTAMINATED, DUP_EXACT, DUP_NEAR
from pipeline.dedup_image import ImageDedup
from pipeline.dedup_url import UrlDedup
from pipeline.hashing import (
    Groups,
    band_keys,
    band_layout,
    caption_key,
    close_pairs,
    colours_agree,
    hamming,
    hash_image,
    normalize_url,
    to_hex,
)
from pipeline.imaging import ImageConfig


def drawing(seed: int, size: int = 160) -> Image.Image:
    """A picture of random coloured boxes and discs: distinct seeds look nothing alike."""
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        x, y = rng.randrange(size - 30), rng.randrange(size - 30)
        box = (x, y, x + rng.randint(20, 90), y + rng.randint(20, 90))
        shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
        shape(box, fill=tuple(rng.randrange(256) for _ in range(3)))
    return image


def encode(image: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def bar(x: int) -> Image.Image:
    """A black bar at column `x`: moving it a little moves the pHash a little."""
    image = Image.new("RGB", (128, 128), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((x, 20, x + 30, 108), fill="black")
    draw.ellipse((10, 10, 50, 50), fill="red")
    return image


def image_pair(key: str, data: bytes | None, **fields) -> Pair:
    return Pair(
        key=key, url=f"http://img.test/{key}.jpg", caption=f"caption {key}", image=data, **fields
    )


def run_dedup(pairs: list[Pair], config: DedupConfig, folder: Path, options: list[str] = ()):
    """Run ImageDedup on a real pipeline; return ({key: (status, dup_of, phash, has_image)},
    stats). Results go through files, so this works with worker processes too."""
    with beam.Pipeline(options=PipelineOptions(list(options))) as p:
        out = p | beam.Create(pairs, reshuffle=False) | ImageDedup(config)
        rows = out["pairs"] | "Rows" >> beam.Map(
            lambda q: json.dumps([q.key, q.status, q.dup_of, q.phash, q.image is not None])
        )
        rows | "WriteRows" >> beam.io.WriteToText(str(folder / "rows"))
        stats = out["stats"] | "StatsJson" >> beam.Map(json.dumps)
        stats | "WriteStats" >> beam.io.WriteToText(str(folder / "stats"))
    rows = [json.loads(line) for path in folder.glob("rows*") for line in path.open()]
    by_key = {row[0]: tuple(row[1:]) for row in rows}
    assert len(by_key) == len(rows) == len(pairs), "every pair comes out exactly once"
    (stats,) = [json.loads(line) for path in folder.glob("stats*") for line in path.open()]
    return by_key, stats


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


def test_pixel_digest_ignores_the_container_but_not_the_pixels():
    image = drawing(1)
    png = hash_image(encode(image, "PNG"), "phash", mirror=False)
    with_metadata = hash_image(encode(image, "PNG", dpi=(300, 300)), "phash", mirror=False)
    jpeg = hash_image(encode(image, quality=40), "phash", mirror=False)
    assert png.digest == with_metadata.digest
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


# ---- the transforms on Beam -----------------------------------------------------------------


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


def captioned_copies() -> list[Pair]:
    """One picture captioned three ways (two of them the same words), a resized copy with the
    first caption and one with a caption of its own, and an unrelated picture."""
    picture = drawing(7)
    same, small = encode(picture, quality=95), encode(picture.resize((90, 90)), quality=60)
    captions = {"p1": "A red fox.", "p2": "a red fox", "p3": "a fox in the snow",
                "p4": "a red fox", "p5": "a fox, small"}  # fmt: skip
    images = {"p1": same, "p2": same, "p3": same, "p4": small, "p5": small}
    pairs = [replace(image_pair(k, images[k]), caption=c) for k, c in captions.items()]
    return [*pairs, image_pair("q1", encode(drawing(8), quality=95))]


def test_the_image_scope_keeps_one_sample_per_picture(tmp_path):
    out, _ = run_dedup(captioned_copies(), DedupConfig(), tmp_path)
    kept = sorted(key for key, row in out.items() if row[0] == "ok")
    assert kept == ["p1", "q1"]
    assert {key: row[:2] for key, row in out.items() if key.startswith("p")} == {
        "p1": ("ok", None),
        "p2": (DUP_EXACT, "p1"),
        "p3": (DUP_EXACT, "p1"),
        "p4": (DUP_NEAR, "p1"),
        "p5": (DUP_EXACT, "p1"),  # identical to p4, which joins p1's group
    }


def test_the_pair_scope_keeps_one_sample_per_caption_of_a_picture(tmp_path):
    out, stats = run_dedup(captioned_copies(), DedupConfig(scope="pair"), tmp_path)
    assert {key: row[:2] for key, row in out.items()} == {
        "p1": ("ok", None),
        "p2": (DUP_EXACT, "p1"),  # the same picture and the same words
        "p3": ("ok", None),  # the same picture, said otherwise
        "p4": (DUP_NEAR, "p1"),  # a resized copy with p1's words
        "p5": ("ok", None),  # a resized copy, said otherwise
        "q1": ("ok", None),
    }
    assert (stats[DUP_EXACT], stats[DUP_NEAR]) == (1, 1)


def test_the_pair_scope_decontaminates_every_caption_of_an_eval_picture(tmp_path):
    evals = tmp_path / "eval"
    evals.mkdir()
    drawing(7).resize((120, 120)).save(evals / "fox.png")
    config = DedupConfig(scope="pair", decontaminate=str(evals))
    out, stats = run_dedup(captioned_copies(), config, tmp_path / "out")
    assert {key for key, row in out.items() if row[0] == CONTAMINATED} == {
        f"p{i}" for i in range(1, 6)
    }
    assert out["q1"][0] == "ok" and stats[CONTAMINATED] == 5


def corpus_pairs() -> list[Pair]:
    """Distinct drawings, byte-identical copies, recompressed and resized copies, an exact copy
    of a near copy, and pairs the stage must leave alone."""
    pairs = []
    for seed in range(6):
        original = drawing(seed)
        pairs.append(image_pair(f"a{seed}", encode(original, quality=95)))
    pairs += [
        image_pair("b0", encode(drawing(0), quality=95)),  # exact copy of a0
        image_pair("b1", encode(drawing(1), quality=30)),  # recompressed a1
        image_pair("b2", encode(drawing(2).resize((80, 80)), quality=90)),  # resized a2
        image_pair("b3", encode(drawing(2).resize((80, 80)), quality=90)),  # exact copy of b2
        image_pair("c0", None, status="error:http_404"),
        image_pair("c1", b"not an image"),
        image_pair("c2", None),  # kept but never crawled: nothing to hash
    ]
    return pairs


def test_image_dedup_finds_exact_and_near_duplicates(tmp_path):
    pairs = corpus_pairs()
    out, stats = run_dedup(pairs, DedupConfig(), tmp_path)
    expected = {
        "b0": (DUP_EXACT, "a0"),
        "b1": (DUP_NEAR, "a1"),
        "b2": (DUP_NEAR, "a2"),
        "b3": (DUP_EXACT, "a2"),  # the kept key, not b2 which is itself dropped
        "c0": ("error:http_404", None),
        "c1": ("error:decode", None),
        "c2": ("ok", None),
    }
    for key, (status, dup_of, _phash, has_image) in out.items():
        assert (status, dup_of) == expected.get(key, ("ok", None)), key
        assert has_image == (status == "ok" and key != "c2"), key
    by_key = {p.key: p for p in pairs}
    for key in ("a0", "a1", "b0", "b1", "b2", "b3"):
        assert out[key][2] == to_hex(hash_image(by_key[key].image, "phash", False).phash)
    assert out["c0"][2] is None and out["c2"][2] is None
    assert stats["images"] == 10 and stats["unreadable"] == 1 and stats["no_image"] == 1
    assert (stats[DUP_EXACT], stats[DUP_NEAR], stats[CONTAMINATED]) == (2, 2, 0)


def test_exact_only_keeps_near_copies(tmp_path):
    out, stats = run_dedup(corpus_pairs(), DedupConfig(near=False), tmp_path)
    assert out["b0"][:2] == (DUP_EXACT, "a0") and out["b3"][:2] == (DUP_EXACT, "b2")
    assert out["b1"][0] == out["b2"][0] == "ok"
    assert stats[DUP_NEAR] == 0


def test_a_chain_of_near_duplicates_lands_in_one_group(tmp_path):
    a, b, c = (hash_image(encode(bar(x)), "phash", False).phash for x in (40, 44, 48))
    threshold = max(hamming(a, b), hamming(b, c))
    assert hamming(a, c) > threshold, "the ends of the chain must not match directly"
    pairs = [
        image_pair("k2", encode(bar(44))),
        image_pair("k3", encode(bar(48))),
        image_pair("k1", encode(bar(40))),
        image_pair("k9", encode(drawing(9))),
    ]
    config = DedupConfig(threshold=threshold, bands=threshold + 1)
    out, _ = run_dedup(pairs, config, tmp_path)
    assert {k: v[:2] for k, v in out.items()} == {
        "k1": ("ok", None),
        "k2": (DUP_NEAR, "k1"),
        "k3": (DUP_NEAR, "k1"),
        "k9": ("ok", None),
    }


def test_the_zoom_view_catches_a_cropped_copy_that_phash_alone_misses(tmp_path):
    original = drawing(26, 256)
    margin = round(256 * 0.05 / 2)  # 5% of each side, then back to the crawl's 256 px
    cropped = original.crop((margin, margin, 256 - margin, 256 - margin)).resize((256, 256))
    hashes = [
        hash_image(encode(im, quality=90), "phash", zoom=(0.95,)) for im in (original, cropped)
    ]
    assert hamming(hashes[0].phash, hashes[1].phash) > DedupConfig.threshold
    pairs = [
        image_pair("a", encode(original, quality=90)),
        image_pair("b", encode(cropped, quality=90)),
    ]
    plain, _ = run_dedup(pairs, DedupConfig(zoom=()), tmp_path / "plain")
    zoomed, _ = run_dedup(pairs, DedupConfig(), tmp_path / "zoomed")
    assert plain["b"][:2] == ("ok", None)
    assert zoomed["b"][:2] == (DUP_NEAR, "a")


def recoloured_pictures() -> dict[str, Image.Image]:
    """One layout in two palettes (the same luminance pattern, so the same pHash), and the
    greyscale version of the first."""
    layout = bar(44).convert("L")
    warm = ImageOps.colorize(layout, black=(120, 0, 0), white=(255, 255, 120))
    cold = ImageOps.colorize(layout, black=(0, 40, 110), white=(140, 255, 255))
    return {"a": warm, "b": cold, "c": ImageOps.grayscale(warm).convert("RGB")}


def test_colour_signatures_tell_recoloured_pictures_apart_and_let_greyscale_copies_pass():
    hashed = {
        k: hash_image(encode(im), "phash", colour=True) for k, im in recoloured_pictures().items()
    }
    assert hamming(hashed["a"].phash, hashed["b"].phash) <= DedupConfig.threshold
    assert not colours_agree(hashed["a"].colour, hashed["b"].colour, 12)
    assert colours_agree(hashed["a"].colour, hashed["c"].colour, 12)  # grey: nothing to compare
    assert colours_agree(hashed["a"].colour, hashed["b"].colour, None)  # the check is off
    noisy = hash_image(encode(recoloured_pictures()["a"], quality=30), "phash", colour=True)
    assert colours_agree(hashed["a"].colour, noisy.colour, 12)


def test_a_recoloured_picture_is_kept_and_a_greyscale_copy_dropped(tmp_path):
    pictures = {k: image_pair(k, encode(im)) for k, im in recoloured_pictures().items()}
    recoloured = [pictures["a"], pictures["b"]]
    checked, _ = run_dedup(recoloured, DedupConfig(), tmp_path / "checked")
    assert {k: v[:2] for k, v in checked.items()} == {"a": ("ok", None), "b": ("ok", None)}
    unchecked, _ = run_dedup(recoloured, DedupConfig(colour_distance=None), tmp_path / "off")
    assert unchecked["b"][:2] == (DUP_NEAR, "a")
    grey, _ = run_dedup([pictures["a"], pictures["c"]], DedupConfig(), tmp_path / "grey")
    assert grey["c"][:2] == (DUP_NEAR, "a")


def test_survivors_agree_across_runners_and_input_orders(tmp_path):
    rng = random.Random(11)
    pairs = []
    for i in range(24):
        image = drawing(100 + i % 8)  # 8 pictures, 3 copies each, in several encodings
        data = encode(image.resize((120, 120)) if i % 3 == 2 else image, quality=95 - 20 * (i % 3))
        pairs.append(image_pair(f"k{rng.randrange(10**6):06d}", data))
    config = DedupConfig(mirror=True)
    direct, _ = run_dedup(pairs, config, tmp_path / "direct")
    shuffled = pairs[:]
    rng.shuffle(shuffled)
    workers = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    multi, _ = run_dedup(shuffled, config, tmp_path / "multi", workers)
    assert direct == multi
    groups: dict[str, set] = {}
    for key, (_status, dup_of, *_rest) in direct.items():
        groups.setdefault(dup_of or key, set()).add(key)
    assert sorted(len(members) for members in groups.values()) == [3] * 8
    assert all(min(members) == survivor for survivor, members in groups.items())


def test_decontamination_drops_exactly_the_planted_eval_copies(tmp_path):
    train = [image_pair(f"k{i:02d}", encode(drawing(200 + i), quality=90)) for i in range(10)]
    planted = {"k02", "k05", "k07"}
    evals = tmp_path / "eval"
    (evals / "part").mkdir(parents=True)
    drawing(202).resize((100, 100)).save(evals / "part" / "cat.png")  # a resized copy
    encode_to = evals / "shard-000.tar"
    with tarfile.open(encode_to, "w") as tar:
        for name, seed in (("x1.jpg", 205), ("x2.jpg", 207), ("x3.jpg", 300)):
            data = encode(drawing(seed), quality=60)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (evals / "notes.txt").write_text("not an image")
    train.append(replace(train[5], key="k99"))  # an exact copy of a contaminated image
    config = DedupConfig(decontaminate=str(evals))
    out, stats = run_dedup(train, config, tmp_path / "out")
    dropped = {key for key, row in out.items() if row[0] == CONTAMINATED}
    assert dropped == planted | {"k99"}
    assert out["k02"][1].endswith("part/cat.png")
    assert out["k05"][1].endswith("shard-000.tar/x1.jpg") and out["k99"][1] == out["k05"][1]
    assert (stats[CONTAMINATED], stats["eval_images"], stats[DUP_EXACT]) == (4, 4, 0)
    assert all(row[0] == "ok" for key, row in out.items() if key not in dropped)


def test_missing_eval_set_fails_fast(tmp_path):
    with pytest.raises(FileNotFoundError):
        ImageDedup(DedupConfig(decontaminate=str(tmp_path / "nowhere")))


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


def test_the_stage_takes_the_crawls_hashes_instead_of_decoding_again(tmp_path):
    """A pair the crawl hashed is grouped by those hashes: its bytes are not decoded again (here
    they are unreadable on purpose, which the stage would otherwise report as error:decode)."""
    config = DedupConfig()
    original = encode(drawing(3), quality=95)
    pairs = [
        image_pair("a", original),
        image_pair("b", b"unreadable", hashes=config.crawl_hashes.of(original)),
        image_pair("c", b"unreadable"),
    ]
    out, stats = run_dedup(pairs, config, tmp_path)
    assert out["b"][:2] == (DUP_EXACT, "a")
    assert out["c"][0] == "error:decode" and stats["unreadable"] == 1


def test_the_crawl_hashes_what_the_dedup_stage_would(corpus):
    spec = DedupConfig().crawl_hashes
    image = next(i for i in corpus if i.name.endswith(".jpg"))
    pair = finish_pair(image_pair("k", None), image.data, ImageConfig(), ImageSizeConfig(), spec)
    assert pair.is_ok and pair.hashes == spec.of(pair.image)
    unhashed = finish_pair(image_pair("k", None), image.data, ImageConfig(), ImageSizeConfig())
    assert unhashed.hashes is None and unhashed.image == pair.image
