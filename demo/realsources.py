"""The real pictures the registry packages install, each with its real name.

One reader per source: emoji art styles (the `emoji-datasource-*` npm packages' 64 px PNGs, and
Noto Color Emoji rendered from the Debian font), Openclipart drawings (title and category from
the file name), Tux Paint stamps (the English description in the `.txt` beside each stamp, and
its translations) and Papirus icons (the icon name from the file name). SVGs are rendered with
CairoSVG in-process: 7 ms an icon here, against 29 ms for a `rsvg-convert` process per icon,
and Pillow reads no SVG. Readers list pictures cheaply; `Picture.load` decodes one when a row
needs it, so a small corpus never renders the whole icon theme.
"""

from __future__ import annotations

import io
import json
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

NOTO_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
CLIPART = Path("/usr/share/openclipart/png")
STAMPS = Path("/usr/share/tuxpaint/stamps")
ICONS = Path("/usr/share/icons/Papirus/64x64")
EMOJI_NPM = Path(os.environ.get("OPENWIT_EMOJI", "~/.cache/openwit/emoji")).expanduser()
NPM_STYLES = ("apple", "google", "facebook", "twitter")
NPM_VERSION = "16.0.0"
ICON_KINDS = {"apps": "application", "devices": "device", "places": "place",
              "mimetypes": "file type"}  # fmt: skip
FOREIGN = ("es", "fr", "de", "it", "pt")  # the noise's languages
TEMPLATES = ("{} emoji", "an emoji of {}", "{} icon", "a picture of {}", "{}")  # emoji captions
MAX_SIDE = 400  # larger drawings are shrunk: the crawl resizes to 256 anyway


@dataclass
class Picture:
    """One picture of a source: its caption name, its concept (what balancing counts) and how
    to decode it (None when it cannot be)."""

    name: str
    concept: str
    load: Callable[[], Image.Image | None]
    foreign: dict[str, str] = field(default_factory=dict)  # language -> the name in it


def on_white(image: Image.Image) -> Image.Image:
    """Transparent pixels flattened onto white, as a web page shows them."""
    rgba = image.convert("RGBA")
    rgba.thumbnail((MAX_SIDE, MAX_SIDE))
    flat = Image.new("RGB", rgba.size, "white")
    flat.paste(rgba, mask=rgba.getchannel("A"))
    return flat


def open_png(path: Path, max_pixels: int = 4_000_000) -> Image.Image | None:
    """The picture on white; None when it is broken or over `max_pixels` (judged from its
    header, before Pillow's own decompression-bomb warning matters)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
        with opened:
            if opened.width * opened.height > max_pixels:
                return None
            return on_white(opened)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def render_svg(path: Path, width: int) -> Image.Image | None:
    """The SVG drawn `width` pixels wide on white; None when CairoSVG cannot draw it."""
    import cairosvg

    try:
        png = cairosvg.svg2png(url=str(path), output_width=width)
    except Exception:  # noqa: BLE001 - a malformed SVG costs that picture only
        return None
    return on_white(Image.open(io.BytesIO(png)))


def emoji_char(unified: str) -> str:
    return "".join(chr(int(code, 16)) for code in unified.split("-"))


def npm_folder(style: str) -> Path:
    return EMOJI_NPM / "node_modules" / f"emoji-datasource-{style}"


def npm_emoji(style: str) -> dict[str, Path]:
    """Emoji character -> its 64 px PNG in the `style` package."""
    folder = npm_folder(style)
    found = {}
    for entry in json.loads((folder / "emoji.json").read_text()):
        path = folder / "img" / style / "64" / entry["image"]
        if entry.get(f"has_img_{style}") and path.exists():
            found[emoji_char(entry["unified"])] = path
    return found


def noto_render(char: str, font: ImageFont.FreeTypeFont) -> Image.Image | None:
    """The emoji on white, or None when the font lacks it (a blank render)."""
    canvas = Image.new("RGBA", (136, 128), (255, 255, 255, 255))
    ImageDraw.Draw(canvas).text((0, 0), char, font=font, embedded_color=True)
    image = canvas.convert("RGB")
    return image if np.asarray(image.convert("L")).std() > 5 else None


def noto_loader(char: str) -> Callable[[], Image.Image | None]:
    """Renders `char` with Noto Color Emoji (single code points and pairs: Pillow without
    raqm draws a longer sequence as separate glyphs)."""
    if len(char) > 2:
        return lambda: None
    return lambda: noto_render(char, _noto_font())


_FONT: list[ImageFont.FreeTypeFont] = []


def _noto_font() -> ImageFont.FreeTypeFont:
    if not _FONT:
        _FONT.append(ImageFont.truetype(str(NOTO_FONT), 109))
    return _FONT[0]


def clipart_caption(path: Path) -> tuple[str, str]:
    """An Openclipart PNG's caption (its title, the file name before `_`, and its category)
    and its category."""
    title = path.stem.split("_")[0].replace("-", " ")
    category = path.parent.relative_to(CLIPART).parts[0].replace("_", " ")
    return f"{title}, clip art of {category}", category


def clipart_pictures() -> list[Picture]:
    """Every Openclipart PNG, captioned by `clipart_caption`."""
    return [Picture(*clipart_caption(path), lambda p=path: open_png(p))
            for path in sorted(CLIPART.rglob("*.png"))]  # fmt: skip


_TRANSLATION = re.compile(r"^([a-z]{2,3})(?:_[A-Z]{2})?(?:@\w+)?\.utf-?8=(.*)$")


def stamp_text(path: Path) -> tuple[str, dict[str, str]]:
    """A Tux Paint description file: its English line and its translations by language."""
    english, foreign = "", {}
    for line in path.read_text(errors="replace").splitlines():
        match = _TRANSLATION.match(line.strip())
        if match:
            lang, text = match.groups()
            if lang in FOREIGN and text.strip():
                foreign.setdefault(lang, text.strip())
        elif not english and line.strip():
            english = line.strip()
    return english, foreign


def stamp_pictures() -> list[Picture]:
    """Every Tux Paint stamp with a description: its PNG, or its SVG rendered."""
    out = []
    for text in sorted(STAMPS.rglob("*.txt")):
        png, svg = text.with_suffix(".png"), text.with_suffix(".svg")
        if not (png.exists() or svg.exists()):
            continue
        english, foreign = stamp_text(text)
        if not english:
            continue
        load = (lambda p=png: open_png(p)) if png.exists() else (lambda s=svg: render_svg(s, 256))
        out.append(Picture(english, english, load, foreign))
    return out


def icon_name(path: Path) -> str:
    """An icon's name from its file name: `audio-headphones.svg` -> `audio headphones`."""
    return re.sub(r"[-_.]+", " ", path.stem).strip()


def icon_pictures() -> list[Picture]:
    """Papirus icons of the kinds in ICON_KINDS (files only: its links are aliases)."""
    out = []
    for kind, label in ICON_KINDS.items():
        for path in sorted((ICONS / kind).glob("*.svg")):
            if path.is_symlink():
                continue
            name = icon_name(path)
            out.append(Picture(f"{name} {label} icon", name,
                               lambda p=path: render_svg(p, 96)))  # fmt: skip
    return out
