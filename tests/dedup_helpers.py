"""For the dedup tests: drawn pictures, their encodings, and pairs that carry them."""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw

from manifests.schema import Pair


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


def image_pair(key: str, data: bytes | None, **fields) -> Pair:
    return Pair(
        key=key, url=f"http://img.test/{key}.jpg", caption=f"caption {key}", image=data, **fields
    )
