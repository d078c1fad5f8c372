"""`--corpus real`: real images nobody here drew, with their names, and the same web noise.

Images: Noto Color Emoji renders captioned with their English CLDR names (PyPI `emoji`), and
Openclipart drawings captioned with the title in their file name and their category. Foreign
captions are the emoji names in Spanish, French, German, Italian and Portuguese (`emoji` has
them). The emoji head is Zipf-heavy, as on the web, where the same pictures recur; every
picture is one file served under several URLs, so dedup meets exact copies as well as the
resized near-copies. Held out, never served: the same emoji in another art style, Twemoji,
for zero-shot classification by English name.

Installed from the package registries (once, about 250 MB, about a minute):

    sudo apt-get install -y fonts-noto-color-emoji openclipart-png
    npm install --prefix ~/.cache/openwit/twemoji emoji-datasource-twitter@16.0.0

`OPENWIT_TWEMOJI` overrides the Twemoji folder (the one holding `node_modules`).
"""

from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from demo.webcorpus import WebCorpus, add_clean, add_noise, concept_weights

NOTO_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
CLIPART = Path("/usr/share/openclipart/png")
TWEMOJI = Path(os.environ.get("OPENWIT_TWEMOJI", "~/.cache/openwit/twemoji")).expanduser()
FOREIGN = ("es", "fr", "de", "it", "pt")
TEMPLATES = ("{} emoji", "an emoji of {}", "{} icon", "a picture of {}", "{}")
INSTALL = (
    "sudo apt-get install -y fonts-noto-color-emoji openclipart-png && "
    "npm install --prefix ~/.cache/openwit/twemoji emoji-datasource-twitter@16.0.0"
)


def missing() -> list[str]:
    """What `--corpus real` needs that is not installed."""
    twemoji = TWEMOJI / "node_modules" / "emoji-datasource-twitter" / "emoji.json"
    needed = {"Noto Color Emoji": NOTO_FONT, "Openclipart": CLIPART, "Twemoji": twemoji}
    return [name for name, path in needed.items() if not path.exists()]


def _name(entry: dict) -> str:
    return entry["en"].strip(":").replace("_", " ")


def noto_render(char: str, font: ImageFont.FreeTypeFont) -> Image.Image | None:
    """The emoji on white, or None when the font lacks it (a blank render)."""
    canvas = Image.new("RGBA", (136, 128), (255, 255, 255, 255))
    ImageDraw.Draw(canvas).text((0, 0), char, font=font, embedded_color=True)
    image = canvas.convert("RGB")
    return image if np.asarray(image.convert("L")).std() > 5 else None


def twemoji_images() -> dict[str, bytes]:
    """Emoji character -> its 64 px Twemoji PNG."""
    folder = TWEMOJI / "node_modules" / "emoji-datasource-twitter"
    found = {}
    for entry in json.loads((folder / "emoji.json").read_text()):
        char = "".join(chr(int(code, 16)) for code in entry["unified"].split("-"))
        path = folder / "img" / "twitter" / "64" / entry["image"]
        if entry.get("has_img_twitter") and path.exists():
            found[char] = path.read_bytes()
    return found


def clipart(limit: int, rng: random.Random) -> list[tuple[Image.Image, str, str]]:
    """(image on white, caption, category) of `limit` Openclipart drawings."""
    paths = sorted(CLIPART.rglob("*.png"))
    rng.shuffle(paths)
    out = []
    for path in paths:
        if len(out) >= limit:
            break
        try:
            with Image.open(path) as opened:
                if opened.width * opened.height > 4_000_000:
                    continue
                image = opened.convert("RGBA")
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
        image.thumbnail((400, 400))
        flat = Image.new("RGB", image.size, "white")
        flat.paste(image, mask=image.getchannel("A"))
        title = path.stem.split("_")[0].replace("-", " ")
        category = path.parent.relative_to(CLIPART).parts[0].replace("_", " ")
        out.append((flat, f"{title}, clip art of {category}", category))
    return out


def build(pairs: int = 3000, seed: int = 0, heldout_classes: int = 100) -> WebCorpus:
    """About `pairs` rows (two thirds emoji, a third clip art, a quarter of all noise)."""
    import emoji

    emoji.config.load_language(list(FOREIGN))  # adds the names in those languages
    if missing():
        raise FileNotFoundError(f"--corpus real needs {', '.join(missing())}: {INSTALL}")
    rng = random.Random(seed)
    font = ImageFont.truetype(str(NOTO_FONT), 109)
    twemoji = twemoji_images()
    chars = sorted(c for c in twemoji if c in emoji.EMOJI_DATA and len(c) <= 2)
    renders = {c: r for c in chars if (r := noto_render(c, font)) is not None}
    order = sorted(renders)
    rng.shuffle(order)
    weights = concept_weights(len(order), 1.1)
    corpus = WebCorpus()
    clean = int(pairs * 0.75)
    for index in range(clean * 2 // 3):
        char = rng.choices(order, weights)[0]
        name = _name(emoji.EMOJI_DATA[char])
        caption = rng.choice(TEMPLATES).format(name)
        add_clean(corpus, rng, f"e{index:06d}.jpg", renders[char], caption, char)
    for index, (image, caption, category) in enumerate(clipart(clean - len(corpus.rows), rng)):
        add_clean(corpus, rng, f"c{index:06d}.jpg", image, caption, category)

    def foreign(row: dict, rng: random.Random) -> tuple[str, str]:
        entry = emoji.EMOJI_DATA.get(row["concept"], {})
        langs = [lang for lang in FOREIGN if lang in entry]
        if not langs:  # clip art: its category in Spanish would need a dictionary
            return f"imagen prediseñada de {row['concept']}", "es"
        lang = rng.choice(langs)
        return entry[lang].strip(":").replace("_", " "), lang

    tiny = lambda row, rng: Image.new("RGB", (16, 16), "white")  # noqa: E731
    add_noise(corpus, rng, pairs - len(corpus.rows), foreign, tiny)
    seen = sorted({r["concept"] for r in corpus.rows if r["concept"] in renders})
    categories = {r["concept"] for r in corpus.rows if r["concept"] not in renders}
    corpus.queries = sorted({_name(emoji.EMOJI_DATA[c]) for c in seen} | categories)
    for char in rng.sample(seen, min(heldout_classes, len(seen))):
        png = Image.open(io.BytesIO(twemoji[char])).convert("RGBA")
        flat = Image.new("RGB", png.size, "white")
        flat.paste(png, mask=png.getchannel("A"))
        out = io.BytesIO()
        flat.save(out, format="JPEG", quality=95)
        corpus.heldout.append((out.getvalue(), _name(emoji.EMOJI_DATA[char]).replace("/", " ")))
    return corpus
