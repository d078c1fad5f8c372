"""Dedup benchmark: precision and recall of `dup:near` per kind of copy, and how the image dedup
stage's time grows from n to 10n images.

    python bench/dedup.py [--originals 300] [--distractors 3000] [--scale-n 5000]

Images are Openclipart PNGs (Debian `openclipart-png`; `shapes/stars`, near-blank and huge
files left out) and, for the scaling run, Noto Color Emoji renders (`fonts-noto-color-emoji`).
The pool is first cleaned of its own copies by a measure independent of the hashes under test
(mean absolute difference of 16x16 greyscale thumbnails under 8/255), so a copy that Openclipart
already holds twice is not counted as a false match. Each original gets one variant of each
kind; every image then goes through the crawl's own resize (`process_image`, 256 px centre
crop, JPEG 95) and is hashed from the pixels it encoded, as the crawl hashes them. Keys order
originals < distractors < variants, so the originals survive; a variant is a true positive
when it is dropped as a copy (`dup:near`, or `dup:exact`) naming its original's kept key. Precision per kind is true positives over the
variants of that kind dropped; `pool_false_merges` counts originals and distractors dropped.
Configurations (`--configs`): the default (pHash, 8 bits, 8 bands, a second hash of the centre
95%, colour check at 12 grey levels), pHash alone (no zoom view, no colour check: the stage
before those two were added), 10 bits, `--near-dup-mirror`, zoom views 0.9 and 0.95, dHash.

The scaling part times `ImageDedup` (default config) on n and 10n distinct images (2x2 mosaics
of pool thumbnails, 10% of them re-encoded copies), minus a baseline pipeline that only reads
the same pairs, on the DirectRunner. Prints one JSON line.

`--heavy` runs the web's worst case instead: bench/dedup_heavy.py.
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import apache_beam as beam  # noqa: E402
import dedup_heavy  # noqa: E402
from PIL import Image, ImageDraw, ImageFont, ImageOps  # noqa: E402

from manifests.schema import Pair  # noqa: E402
from pipeline.dedup import DedupConfig  # noqa: E402
from pipeline.dedup_groups import DUP_EXACT, DUP_NEAR  # noqa: E402
from pipeline.dedup_image import ImageDedup  # noqa: E402
from pipeline.imaging import ImageConfig, process_image, to_rgb  # noqa: E402

CLIPART = Path("/usr/share/openclipart/png")
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
CRAWL = ImageConfig()
CONFIGS = {
    "default": DedupConfig(),  # pHash, 8 bits, 8 bands, the 95% zoom view, colour check 12
    "phash_alone": DedupConfig(zoom=(), colour_distance=None),  # no view, no colour check
    "t10": DedupConfig(threshold=10, bands=11),
    "mirror": DedupConfig(mirror=True),
    "zoom_90_95": DedupConfig(zoom=(0.9, 0.95)),
    "dhash": DedupConfig(hash_name="dhash"),
}


def jpeg(image: Image.Image, quality: int = 95) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def load_clipart(path: Path) -> Image.Image | None:
    """The clipart on white, at most 512 px; None for huge, unreadable or near-blank files."""
    try:
        with Image.open(path) as opened:
            if opened.width * opened.height > 16_000_000:
                return None
            opened.load()
            image = to_rgb(opened).copy()
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    image.thumbnail((512, 512))
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    if min(image.size) < 32 or grey.std() < 10 or (grey > 245).mean() > 0.97:
        return None
    return image


def distinct_pool(images: list[Image.Image]) -> list[Image.Image]:
    """Drop images whose 16x16 grey thumbnail is within 8/255 mean abs diff of an earlier one."""
    flat = np.stack(
        [np.asarray(im.convert("L").resize((16, 16)), np.int16).reshape(-1) for im in images]
    )
    kept: list[int] = []
    for i in range(len(flat)):
        if not kept or np.abs(flat[kept] - flat[i]).mean(axis=1).min() >= 8:
            kept.append(i)
    return [images[i] for i in kept]


def centre_crop(image: Image.Image, fraction: float) -> Image.Image:
    w, h = image.size
    dx, dy = int(w * fraction / 2), int(h * fraction / 2)
    return image.crop((dx, dy, w - dx, h - dy))


def offset_crop(image: Image.Image, fraction: float, rng: random.Random) -> Image.Image:
    w, h = image.size
    dx, dy = int(w * fraction), int(h * fraction)
    left, top = rng.randint(0, dx), rng.randint(0, dy)
    return image.crop((left, top, w - (dx - left), h - (dy - top)))


def text_strip(image: Image.Image, words: str) -> Image.Image:
    """A caption-like white strip with black text under the picture (12% of its height)."""
    strip = max(14, image.height * 12 // 100)
    out = Image.new("RGB", (image.width, image.height + strip), "white")
    out.paste(image, (0, 0))
    font = ImageFont.load_default(size=max(10, strip * 2 // 3))
    ImageDraw.Draw(out).text((4, image.height + strip // 8), words, fill="black", font=font)
    return out


def variants(image: Image.Image, caption: str, rng: random.Random) -> dict[str, bytes]:
    """One encoded copy of `image` per kind (before the crawl's resize)."""
    w, h = image.size
    return {
        "resize50": jpeg(image.resize((max(1, w // 2), max(1, h // 2)), Image.LANCZOS), 90),
        "resize25": jpeg(image.resize((max(1, w // 4), max(1, h // 4)), Image.LANCZOS), 90),
        "jpeg30": jpeg(image, 30),
        "crop5": jpeg(centre_crop(image, 0.05), 90),
        "crop10": jpeg(centre_crop(image, 0.10), 90),
        "crop5_offset": jpeg(offset_crop(image, 0.05, rng), 90),
        "grey": jpeg(ImageOps.grayscale(image).convert("RGB"), 90),
        "text": jpeg(text_strip(image, caption), 90),
        "flip": jpeg(ImageOps.mirror(image), 90),
    }


def crawled(key: str, data: bytes) -> tuple[Pair, Image.Image]:
    """A pair as the crawl leaves it (the image resized and re-encoded by `process_image`) and
    the pixels it encoded, which the crawl hashes (`hashed`)."""
    shown = process_image(data, CRAWL)
    return Pair(
        key=key, url=f"http://bench.test/{key}", caption=key, image=shown.jpeg
    ), shown.pixels


def hashed(crawl: list[tuple[Pair, Image.Image]], config: DedupConfig) -> list[Pair]:
    """The pairs with the hashes the crawl's decode processes would give them under `config`."""
    spec = config.crawl_hashes
    return [replace(pair, hashes=spec.of(pair.image, pixels)) for pair, pixels in crawl]


def near_dup_corpus(pool: list[Image.Image], originals: int, distractors: int, seed: int):
    """(Pair, pixels) of every image, and each variant's (kind, original key)."""
    rng = random.Random(seed)
    chosen = rng.sample(range(len(pool)), originals + distractors)
    words = ["vector", "free", "clip", "art", "stock", "image", "download", "icon", "of", "a"]
    pairs, truth = [], {}
    for i, index in enumerate(chosen[:originals]):
        image = pool[index]
        pairs.append(crawled(f"a{i:05d}", jpeg(image)))
        caption = " ".join(rng.choice(words) for _ in range(5))
        for kind, data in variants(image, caption, rng).items():
            key = f"c{i:05d}{kind}"
            pairs.append(crawled(key, data))
            truth[key] = (kind, f"a{i:05d}")
    for j, index in enumerate(chosen[originals:]):
        pairs.append(crawled(f"b{j:05d}", jpeg(pool[index])))
    return pairs, truth


def run_stage(pairs: list[Pair], config: DedupConfig) -> dict[str, tuple[str, str | None]]:
    with tempfile.TemporaryDirectory() as tmp:
        with beam.Pipeline() as p:
            out = p | beam.Create(pairs, reshuffle=False) | ImageDedup(config)
            rows = out["pairs"] | beam.Map(lambda q: json.dumps([q.key, q.status, q.dup_of]))
            rows | beam.io.WriteToText(f"{tmp}/rows")
        lines = [json.loads(line) for path in Path(tmp).glob("rows*") for line in path.open()]
    return {key: (status, dup_of) for key, status, dup_of in lines}


def score(out: dict, truth: dict) -> dict:
    """Precision and recall of the copy decision per variant kind."""
    label = {key: dup_of or key for key, (_status, dup_of) in out.items()}
    dropped = {key for key, (status, _d) in out.items() if status in (DUP_NEAR, DUP_EXACT)}
    per_kind: dict[str, dict] = {}
    for key, (kind, original) in truth.items():
        row = per_kind.setdefault(kind, {"n": 0, "dropped": 0, "correct": 0})
        row["n"] += 1
        if key in dropped:
            row["dropped"] += 1
            row["correct"] += label[key] == label[original]
    result = {
        kind: {
            "recall": round(row["correct"] / row["n"], 3),
            "precision": round(row["correct"] / row["dropped"], 3) if row["dropped"] else None,
        }
        for kind, row in per_kind.items()
    }
    pool_dropped = [k for k in dropped if k not in truth]
    result["pool_false_merges"] = len(pool_dropped)
    return result


def mosaics(tiles: list[Image.Image], count: int, seed: int) -> list[Pair]:
    """`count` distinct 2x2 mosaics of 64 px tiles (10% are re-encoded copies of others)."""
    rng = random.Random(seed)
    pairs = []
    for i in range(count):
        if i % 10 == 9:
            source = pairs[rng.randrange(len(pairs))]
            data = jpeg(Image.open(io.BytesIO(source.image)), 60)
        else:
            canvas = Image.new("RGB", (128, 128), "white")
            for slot in range(4):
                canvas.paste(rng.choice(tiles), ((slot % 2) * 64, (slot // 2) * 64))
            data = jpeg(canvas, 90)
        pairs.append(Pair(key=f"m{i:07d}", url=f"http://bench.test/m{i}", caption="m", image=data))
    return pairs


def load_shard(path: str) -> list[Pair]:
    with open(path, "rb") as f:
        return pickle.load(f)


def timed_run(paths: list[str], config: DedupConfig | None) -> float:
    """Seconds to read the pairs (and dedup them, with a config) and count what comes out."""
    start = time.perf_counter()
    with beam.Pipeline() as p:
        pairs = p | beam.Create(paths) | beam.FlatMap(load_shard)
        if config is not None:
            pairs = (pairs | ImageDedup(config))["pairs"]
        pairs | beam.combiners.Count.Globally()
    return time.perf_counter() - start


def scaling(tiles: list[Image.Image], n: int, seed: int) -> dict:
    """Stage seconds (dedup run minus read-only baseline) at n and 10n images."""
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in (n, 10 * n):
            pairs = mosaics(tiles, size, seed)
            paths = []
            for start in range(0, size, 1000):
                path = f"{tmp}/{size}-{start:08d}.pkl"
                with open(path, "wb") as f:
                    pickle.dump(pairs[start : start + 1000], f)
                paths.append(path)
            del pairs
            baseline = timed_run(paths, None)
            total = timed_run(paths, DedupConfig())
            result[str(size)] = {"total_s": round(total, 1), "baseline_s": round(baseline, 1)}
            result[str(size)]["stage_s"] = round(total - baseline, 1)
    small, large = result[str(n)], result[str(10 * n)]
    result["ratio_10n_over_n"] = round(large["stage_s"] / small["stage_s"], 2)
    result["ratio_total"] = round(large["total_s"] / small["total_s"], 2)
    return result


def emoji_tiles(limit: int) -> list[Image.Image]:
    """Noto Color Emoji renders at 64 px (blank renders of too-new code points left out)."""
    import emoji

    font = ImageFont.truetype(str(EMOJI_FONT), 109)
    tiles = []
    for char in sorted(emoji.EMOJI_DATA)[:limit]:
        canvas = Image.new("RGBA", (136, 128), (255, 255, 255, 255))
        ImageDraw.Draw(canvas).text((0, 0), char, font=font, embedded_color=True)
        tile = canvas.convert("RGB").resize((64, 64), Image.LANCZOS)
        if np.asarray(tile.convert("L")).std() > 5:
            tiles.append(tile)
    return tiles


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--originals", type=int, default=300)
    parser.add_argument("--distractors", type=int, default=3000)
    parser.add_argument("--scale-n", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--configs", default=",".join(CONFIGS), help=f"comma list of {', '.join(CONFIGS)}"
    )
    parser.add_argument("--no-scaling", action="store_true", help="skip the n vs 10n timing")
    dedup_heavy.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.heavy:
        print(json.dumps(dedup_heavy.heavy(args)))
        return
    paths = sorted(p for p in CLIPART.rglob("*.png") if "shapes/stars" not in str(p))
    random.Random(args.seed).shuffle(paths)
    images = [
        im for im in map(load_clipart, paths[: 2 * (args.originals + args.distractors)]) if im
    ]
    pool = distinct_pool(images)
    pairs, truth = near_dup_corpus(pool, args.originals, args.distractors, args.seed)
    quality = {}
    for name in filter(None, args.configs.split(",")):
        config = CONFIGS[name]
        start = time.perf_counter()
        quality[name] = score(run_stage(hashed(pairs, config), config), truth)
        quality[name]["seconds"] = round(time.perf_counter() - start, 1)
    result = {
        "images": len(pairs),
        "originals": args.originals,
        "distractors": args.distractors,
        "pool_after_cleaning": len(pool),
        "quality": quality,
    }
    if not args.no_scaling:
        tiles = [im.resize((64, 64), Image.LANCZOS) for im in pool] + emoji_tiles(4000)
        result["scaling"] = scaling(tiles, args.scale_n, args.seed)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
