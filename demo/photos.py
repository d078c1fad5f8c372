"""Photo-like pictures for crawl benchmarks: distinct, of web sizes and web byte counts.

Each picture is a smooth random colour field (low-resolution noise upsampled), a gradient, a
few shapes and a fine grain, so it compresses like a photo (JPEG of 300-1,500 px at ~1-3 bits
a pixel) and no two have the same perceptual hash: default dedup keeps them all. The formats
follow the web's mix, mostly JPEG with some PNG and WebP. Everything is deterministic from the
seed and the index, so a cached corpus and a regenerated one are the same bytes.
"""

from __future__ import annotations

import io
import random
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

FORMATS = (("jpg", 0.7), ("png", 0.12), ("webp", 0.18))
ASPECTS = (4 / 3, 3 / 2, 16 / 9, 1.0, 3 / 4, 2 / 3)


def photo(index: int, seed: int = 0, min_side: int = 300, max_side: int = 1500) -> Image.Image:
    """The RGB picture number `index` of `seed`'s corpus."""
    rng = random.Random(f"{seed}-{index}")
    np_rng = np.random.default_rng(rng.getrandbits(64))
    longer = rng.randint(min_side, max_side)
    aspect = rng.choice(ASPECTS)
    width, height = (
        (longer, round(longer / aspect)) if aspect >= 1 else (round(longer * aspect), longer)
    )
    width, height = max(width, min_side // 2), max(height, min_side // 2)
    cells = np_rng.integers(0, 256, size=(rng.randint(3, 9), rng.randint(3, 9), 3), dtype=np.uint8)
    image = Image.fromarray(cells, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    ramp = np.linspace(-40, 40, width if rng.random() < 0.5 else height, dtype=np.float32)
    ramp = ramp[None, :, None] if ramp.size == width else ramp[:, None, None]
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(2, 8)):
        box = sorted(rng.sample(range(width), 2)), sorted(rng.sample(range(height), 2))
        xy = (box[0][0], box[1][0], box[0][1], box[1][1])
        fill = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(xy, fill=fill)
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.5)))
    grain = np_rng.normal(0, rng.uniform(3, 9), size=(height, width, 1)).astype(np.float32)
    pixels = np.asarray(image, dtype=np.float32) + ramp + grain
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def encoded(index: int, seed: int = 0) -> tuple[str, bytes]:
    """(extension, bytes) of picture `index`: JPEG, PNG or WebP at a web-like quality."""
    rng = random.Random(f"format-{seed}-{index}")
    fmt = rng.choices([f for f, _ in FORMATS], weights=[w for _, w in FORMATS])[0]
    image = photo(index, seed, max_side=900 if fmt == "png" else 1500)
    out = io.BytesIO()
    if fmt == "jpg":
        image.save(out, format="JPEG", quality=rng.randint(75, 92))
    elif fmt == "webp":
        image.save(out, format="WEBP", quality=rng.randint(70, 88), method=2)
    else:
        image.save(out, format="PNG", compress_level=6)
    return fmt, out.getvalue()


def _write(task: tuple[Path, int, int]) -> Path:
    folder, index, seed = task
    fmt, data = encoded(index, seed)
    path = folder / f"{index:06d}.{fmt}"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path


def corpus(folder: Path, count: int, seed: int = 0, processes: int | None = None) -> list[Path]:
    """`count` pictures written once under `folder` (reused when present), in index order."""
    folder.mkdir(parents=True, exist_ok=True)
    existing = {int(p.stem): p for p in folder.iterdir() if p.suffix != ".tmp" and p.stem.isdigit()}
    missing = [(folder, i, seed) for i in range(count) if i not in existing]
    if missing:
        with ProcessPoolExecutor(processes) as pool:
            for path in pool.map(_write, missing, chunksize=16):
                existing[int(path.stem)] = path
    return [existing[i] for i in range(count)]
