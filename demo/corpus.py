"""A deterministic synthetic image-caption corpus: coloured shapes with captions naming them.

Small enough to generate in seconds, yet real JPEG/PNG/GIF files of varied sizes and modes
(RGB, RGBA with transparency, palette), so the crawl, the shards and the trainer all see what
web images look like to a decoder. Captions name the shape and colour, which makes the classes
separable for a small CLIP.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 60, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 40, 170),
    "orange": (250, 140, 20),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "cross", "ring", "stripes")
BACKGROUNDS = ("grey", "sand", "sky")
BACKGROUND_RGB = {"grey": (128, 128, 128), "sand": (200, 180, 140), "sky": (150, 200, 240)}


@dataclass(frozen=True)
class SyntheticImage:
    name: str
    data: bytes
    caption: str
    shape: str
    color: str
    width: int
    height: int


def draw_shape(
    shape: str,
    color: str,
    background: str | Image.Image,
    size: tuple[int, int],
    center: tuple[float, float] = (0.5, 0.5),
    scale: float = 0.375,
) -> Image.Image:
    """An RGB image of one shape on a plain background (or drawn onto a given canvas).

    `center` is the shape's centre as fractions of the width and height, `scale` its radius as
    a fraction of the shorter side.
    """
    width, height = size
    if isinstance(background, Image.Image):
        image = background
    else:
        image = Image.new("RGB", size, BACKGROUND_RGB[background])
    draw = ImageDraw.Draw(image)
    fill = COLORS[color]
    side = min(width, height)
    cx, cy, r = int(width * center[0]), int(height * center[1]), int(side * scale)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    elif shape == "cross":
        t = r // 3
        draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=fill)
        draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, r // 3))
    elif shape == "stripes":
        step = max(4, side // 8)
        for x in range(0, width, step * 2):
            draw.rectangle((x, 0, x + step - 1, height), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return image


def encode(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    if fmt == "png-rgba":
        rgba = image.convert("RGBA")
        alpha = Image.new("L", image.size, 255)
        ImageDraw.Draw(alpha).rectangle((0, 0, image.width // 6, image.height), fill=0)
        rgba.putalpha(alpha)
        rgba.save(out, format="PNG")
    elif fmt == "gif":
        image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(out, format="GIF")
    else:
        image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def generate(
    count: int, seed: int = 0, min_side: int = 200, max_side: int = 1000
) -> list[SyntheticImage]:
    """`count` images, the same for the same arguments; mostly JPEG, some PNG-RGBA and GIF."""
    rng = random.Random(seed)
    images = []
    for index in range(count):
        shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
        background = rng.choice(BACKGROUNDS)
        size = (rng.randint(min_side, max_side), rng.randint(min_side, max_side))
        fmt = rng.choices(("jpg", "png-rgba", "gif"), weights=(8, 1, 1))[0]
        data = encode(draw_shape(shape, color, background, size), fmt)
        ext = {"jpg": "jpg", "png-rgba": "png", "gif": "gif"}[fmt]
        caption = f"a {color} {shape} on a {background} background"
        images.append(SyntheticImage(f"{index:06d}.{ext}", data, caption, shape, color, *size))
    return images
