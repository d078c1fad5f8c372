"""The demo's web-like corpus: the synthetic shapes with the noise a real crawl meets.

A head-heavy (Zipf) distribution over 48 colour-shape concepts, captions from several
templates, and about a quarter noise: near-duplicates at other sizes and compressions,
exact repeats of URLs, captions in French, German and Spanish, placeholder captions
(`IMG_2043.JPG`, `untitled`), tiny and broken images, dead links and HTML pages. Everything is
deterministic from the seed. Held-out images (never served) make the zero-shot test set.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

from demo.corpus import BACKGROUND_RGB, BACKGROUNDS, COLORS, SHAPES, draw_shape, encode

TEMPLATES = (  # every one judged English by langdetect for all 144 colour-shape-background mixes
    "a {color} {shape} on a {background} background",
    "a picture of a {color} {shape} on a plain {background} background",
    "this is a {color} {shape} shown in the middle of the picture",
    "a photo of the {color} {shape} with a {background} background",
    "simple drawing of a {color} {shape}, isolated on {background}",
)
TRANSLATIONS = {
    "fr": (
        "un {shape} {color} sur fond uni",
        {
            "circle": "cercle",
            "square": "carré",
            "triangle": "triangle",
            "cross": "croix",
            "ring": "anneau",
            "stripes": "motif rayé",
        },
        {
            "red": "rouge",
            "green": "vert",
            "blue": "bleu",
            "yellow": "jaune",
            "purple": "violet",
            "orange": "orange",
            "black": "noir",
            "white": "blanc",
        },
    ),
    "de": (
        "ein {color} {shape} auf einfarbigem Hintergrund",
        {
            "circle": "Kreis",
            "square": "Quadrat",
            "triangle": "Dreieck",
            "cross": "Kreuz",
            "ring": "Ring",
            "stripes": "Streifenmuster",
        },
        {
            "red": "roter",
            "green": "grüner",
            "blue": "blauer",
            "yellow": "gelber",
            "purple": "violetter",
            "orange": "oranger",
            "black": "schwarzer",
            "white": "weißer",
        },
    ),
    "es": (
        "un {shape} {color} sobre fondo liso",
        {
            "circle": "círculo",
            "square": "cuadrado",
            "triangle": "triángulo",
            "cross": "cruz",
            "ring": "anillo",
            "stripes": "patrón de rayas",
        },
        {
            "red": "rojo",
            "green": "verde",
            "blue": "azul",
            "yellow": "amarillo",
            "purple": "morado",
            "orange": "naranja",
            "black": "negro",
            "white": "blanco",
        },
    ),
}
PLACEHOLDERS = ("IMG_{n:04d}.JPG", "untitled", "image", "photo", "DSC{n:05d}", "{n}")
CONCEPTS = tuple(f"{color} {shape}" for shape in SHAPES for color in COLORS)


@dataclass
class WebCorpus:
    images: dict[str, bytes] = field(default_factory=dict)  # served under /img/NAME
    rows: list[dict] = field(default_factory=list)  # {"path", "caption", "kind", "concept"}
    heldout: list[tuple[bytes, str]] = field(default_factory=list)  # (JPEG, concept), never served
    queries: list[str] = field(default_factory=list)  # the query list balancing matches against
    heldout_style: list[str] = field(default_factory=list)  # per held-out image, when styled


def concept_weights(count: int, exponent: float) -> list[float]:
    return [1.0 / (rank + 1) ** exponent for rank in range(count)]


def _draw(rng: random.Random, concept: str, min_side: int, max_side: int) -> Image.Image:
    """The concept's shape, placed and sized at random over faint clutter, so that no two
    pictures are near-duplicates of each other unless made so on purpose."""
    color, shape = concept.split(" ")
    size = (rng.randint(min_side, max_side), rng.randint(min_side, max_side))
    canvas = Image.new("RGB", size, BACKGROUND_RGB[rng.choice(BACKGROUNDS)])
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.randint(4, 8)):
        tone = rng.randint(90, 200)
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        end = (x + rng.randint(-size[0], size[0]) // 2, y + rng.randint(-size[1], size[1]) // 2)
        draw.line((x, y, *end), fill=(tone, tone, tone), width=max(2, min(size) // 16))
    center = (rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7))
    return draw_shape(shape, color, canvas, size, center, rng.uniform(0.22, 0.34))


def _caption(rng: random.Random, concept: str) -> str:
    color, shape = concept.split(" ")
    return rng.choice(TEMPLATES).format(
        color=color, shape=shape, background=rng.choice(BACKGROUNDS)
    )


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def add_clean(corpus: WebCorpus, rng: random.Random, name: str, image: Image.Image,
              caption: str, concept: str, copy_chance: float = 0.08) -> None:  # fmt: skip
    """A clean row for `image`, and with `copy_chance` the same picture elsewhere, resized and
    recompressed (a near-duplicate that dedup should catch)."""
    corpus.images[name] = encode(image, "jpg")
    corpus.rows.append({"path": f"img/{name}", "caption": caption, "kind": "clean",
                        "concept": concept})  # fmt: skip
    if rng.random() < copy_chance:
        copy = name.replace(".jpg", "-copy.jpg")
        scale = rng.uniform(0.5, 0.9)
        size = (max(32, int(image.width * scale)), max(32, int(image.height * scale)))
        corpus.images[copy] = _jpeg(image.resize(size), quality=rng.choice((40, 60, 75)))
        corpus.rows.append({"path": f"img/{copy}", "caption": caption, "kind": "near_duplicate",
                            "concept": concept})  # fmt: skip


def add_noise(corpus: WebCorpus, rng: random.Random, count: int, foreign, tiny) -> None:
    """`count` noise rows made from random clean rows: repeated URLs, foreign captions
    (`foreign(row, rng) -> (caption, lang)`), placeholders, tiny images (`tiny(row, rng) ->
    Image`), broken files, dead links and HTML pages, inserted at random places."""
    noise_kinds = ("repeat_url", "foreign", "placeholder", "tiny", "broken", "dead", "html")
    clean_rows = [r for r in corpus.rows if r["kind"] == "clean"]
    for n in range(count):
        kind = rng.choice(noise_kinds)
        base = rng.choice(clean_rows)
        row = {"path": base["path"], "caption": base["caption"], "kind": kind,
               "concept": base["concept"]}  # fmt: skip
        if kind == "foreign":
            row["caption"], lang = foreign(base, rng)
            row["kind"] = f"foreign_{lang}"
        elif kind == "placeholder":
            row["caption"] = rng.choice(PLACEHOLDERS).format(n=rng.randint(1, 99999))
        elif kind == "tiny":
            name = f"tiny-{n:05d}.jpg"
            corpus.images[name] = _jpeg(tiny(base, rng))
            row["path"] = f"img/{name}"
        elif kind == "broken":
            name = f"broken-{n:05d}.jpg"
            data = corpus.images[base["path"].split("/", 1)[1]]
            corpus.images[name] = data[: len(data) // 3]
            row["path"] = f"img/{name}"
        elif kind == "dead":
            row["path"] = "status/404"
        elif kind == "html":
            row["path"] = "html"
        corpus.rows.insert(rng.randrange(len(corpus.rows) + 1), row)


def _foreign(row: dict, rng: random.Random) -> tuple[str, str]:
    lang = rng.choice(sorted(TRANSLATIONS))
    template, shapes, colors = TRANSLATIONS[lang]
    color, shape = row["concept"].split(" ")
    return template.format(shape=shapes[shape], color=colors[color]), lang


def build(
    pairs: int = 2000,
    heldout_per_concept: int = 5,
    seed: int = 0,
    min_side: int = 96,
    max_side: int = 400,
    zipf: float = 1.1,
) -> WebCorpus:
    """A corpus of about `pairs` rows, a quarter of them noise (see the module docstring)."""
    rng = random.Random(seed)
    order = list(CONCEPTS)
    rng.shuffle(order)  # which concepts form the head is itself seeded
    weights = concept_weights(len(order), zipf)
    corpus = WebCorpus(queries=[*CONCEPTS, *COLORS, *SHAPES])  # as CLIP's: bigrams and words
    for index in range(int(pairs * 0.75)):
        concept = rng.choices(order, weights)[0]
        image = _draw(rng, concept, min_side, max_side)
        add_clean(corpus, rng, f"{index:06d}.jpg", image, _caption(rng, concept), concept)
    tiny = lambda row, rng: _draw(rng, row["concept"], 12, 24)  # noqa: E731
    add_noise(corpus, rng, pairs - len(corpus.rows), _foreign, tiny)
    for concept in CONCEPTS:
        for _ in range(heldout_per_concept):
            corpus.heldout.append((_jpeg(_draw(rng, concept, 96, 256)), concept))
    return corpus
