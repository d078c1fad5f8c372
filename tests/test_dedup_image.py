"""The image dedup stage on Beam: scopes, exact and near copies, views, colours, runners,
decontamination."""

from __future__ import annotations

import io
import json
import random
import tarfile
import zlib
from dataclasses import replace
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from dedup_helpers import drawing, encode, image_pair
from PIL import Image, ImageDraw, ImageOps

from manifests.schema import Pair
from pipeline.dedup import DedupConfig
from pipeline.dedup_groups import CONTAMINATED, DUP_EXACT, DUP_NEAR
from pipeline.dedup_image import EXAMPLE_COPIES, ImageDedup, write_examples
from pipeline.hashing import colours_agree, hamming, hash_image, to_hex


def bar(x: int) -> Image.Image:
    """A black bar at column `x`: moving it a little moves the pHash a little."""
    image = Image.new("RGB", (128, 128), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((x, 20, x + 30, 108), fill="black")
    draw.ellipse((10, 10, 50, 50), fill="red")
    return image


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


def test_the_reports_examples_show_a_bounded_sample_of_each_group(tmp_path):
    """A picture copied 40 times shows its survivor and EXAMPLE_COPIES copies, chosen by key
    hash (so any runner shows the same), with the group's real size; a pair of copies shows
    both."""
    big = [image_pair(f"a{i:02d}", encode(drawing(1).resize((100 + i, 100 + i)), quality=90))
           for i in range(41)]  # fmt: skip
    small = [image_pair(f"b{i}", encode(drawing(2).resize((120 + 9 * i,) * 2))) for i in range(2)]
    pairs = [*big, *small, image_pair("c", encode(drawing(3)))]
    random.Random(3).shuffle(pairs)
    path = tmp_path / "examples.parquet"
    with beam.Pipeline() as p:
        examples = (p | beam.Create(pairs) | ImageDedup(DedupConfig()))["examples"]
        examples | beam.combiners.ToList() | beam.Map(write_examples, str(path))
    rows = pq.read_table(path).to_pylist()
    groups = {row["group"] for row in rows}
    assert groups == {"a00", "b0"}
    shown_big = sorted(r["key"] for r in rows if r["group"] == "a00" and r["key"] != "a00")
    copies = sorted((p.key for p in big[1:]), key=lambda k: (zlib.crc32(k.encode()), k))
    assert shown_big == sorted(copies[:EXAMPLE_COPIES])
    assert {r["group_copies"] for r in rows if r["group"] == "a00"} == {40}
    assert sorted((r["key"], r["status"], r["group_copies"]) for r in rows if r["group"] == "b0") == [
        ("b0", "ok", 1), ("b1", DUP_NEAR, 1)]  # fmt: skip
    for row in rows:
        assert Image.open(io.BytesIO(row["jpeg"])).size[0] <= 128
