"""`--corpus styles`: the larger real corpus, several art styles of the same concepts and more.

Served: the emoji in three art styles (Noto Color Emoji rendered, Apple's and Google's from the
`emoji-datasource-*` npm packages) captioned with their English CLDR names, Openclipart
drawings (title and category), Tux Paint stamps (their English descriptions) and Papirus icons
(their names), each source under a Zipf head (the same pictures recur under several URLs), and
a quarter of web noise (`demo.webcorpus.add_noise`: foreign captions from the `emoji` package's
translations and Tux Paint's own, placeholders, near-copies at other sizes, repeated URLs,
tiny and broken images, dead links, HTML pages). Held out, never served: whole art styles,
Twemoji and Facebook's, of emoji that the corpus serves in the other styles, for zero-shot
classification by English name. `python -m demo.realcorpus install` installs the packages.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from functools import partial
from itertools import accumulate

from PIL import Image

from demo import realsources as rs
from demo.webcorpus import WebCorpus, add_clean, add_noise, concept_weights

SERVED_STYLES = ("noto", "apple", "google")
HELDOUT_STYLES = ("twitter", "facebook")
SOURCE_SHARES = {"emoji": 0.5, "openclipart": 0.25, "papirus": 0.15, "tuxpaint": 0.10}
APT = ("fonts-noto-color-emoji", "openclipart-png", "tuxpaint-stamps-default",
       "papirus-icon-theme")  # fmt: skip
NPM = tuple(f"emoji-datasource-{style}@{rs.NPM_VERSION}" for style in rs.NPM_STYLES)
INSTALL = (f"sudo apt-get install -y {' '.join(APT)} && "
           f"npm install --prefix {rs.EMOJI_NPM} {' '.join(NPM)}")  # fmt: skip


@dataclass(frozen=True)
class StyleOptions:
    """How the corpus is drawn; every figure is the default of `build`."""

    pairs: int = 30000
    seed: int = 0
    heldout_classes: int = 200  # emoji per held-out style
    noise: float = 0.25  # share of noise rows
    emoji_zipf: float = 1.1  # head of the emoji concepts
    picture_zipf: float = 0.8  # head of the other sources' pictures


def missing() -> list[str]:
    """What the corpus needs that is not installed (CairoSVG draws the SVGs)."""
    needed = {"Noto Color Emoji": rs.NOTO_FONT, "Openclipart": rs.CLIPART,
              "Tux Paint stamps": rs.STAMPS, "Papirus icons": rs.ICONS}  # fmt: skip
    needed |= {f"emoji-datasource-{s}": rs.npm_folder(s) / "emoji.json" for s in rs.NPM_STYLES}
    absent = [name for name, path in needed.items() if not path.exists()]
    try:
        import cairosvg  # noqa: F401
    except (ImportError, OSError):
        absent.append("cairosvg (pip install cairosvg)")
    return absent


def emoji_name(char: str) -> str:
    import emoji

    return emoji.EMOJI_DATA[char]["en"].strip(":").replace("_", " ")


class _Draws:
    """Weighted draws with a decode cache: a picture is decoded once, however often drawn."""

    def __init__(self, items: list, exponent: float, rng: random.Random) -> None:
        self.items = list(items)
        rng.shuffle(self.items)  # the seed picks the head
        self.cum = list(accumulate(concept_weights(len(self.items), exponent)))
        self.rng, self.cache = rng, {}

    def draw(self):
        return self.rng.choices(self.items, cum_weights=self.cum)[0]

    def image(self, key, load) -> Image.Image | None:
        if key not in self.cache:
            self.cache[key] = load()
        return self.cache[key]


def _add(corpus: WebCorpus, rng, name: str, image, caption: str, concept: str, source: str):
    start = len(corpus.rows)
    add_clean(corpus, rng, name, image, caption, concept)
    for row in corpus.rows[start:]:
        row["source"] = source


def _emoji_rows(corpus: WebCorpus, rng: random.Random, count: int, opts: StyleOptions) -> None:
    """`count` clean emoji rows, the concept drawn under Zipf, the style at random."""
    import emoji

    tables = {style: rs.npm_emoji(style) for style in ("apple", "google")}
    chars = sorted(c for c in tables["apple"] if c in tables["google"] and c in emoji.EMOJI_DATA)
    draws = _Draws(chars, opts.emoji_zipf, rng)
    made = 0
    while made < count:
        char = draws.draw()
        style = rng.choice(SERVED_STYLES)
        if style == "noto":
            image = draws.image((style, char), rs.noto_loader(char))
        else:
            image = draws.image((style, char), partial(rs.open_png, tables[style][char]))
        if image is None:  # Noto lacks it: another draw
            continue
        caption = rng.choice(rs.TEMPLATES).format(emoji_name(char))
        _add(corpus, rng, f"e{made:06d}.jpg", image, caption, char, style)
        made += 1


def _picture_rows(corpus: WebCorpus, rng: random.Random, source: str, pictures: list,
                  count: int, exponent: float) -> dict[str, dict[str, str]]:  # fmt: skip
    """`count` clean rows of one source's pictures; returns each concept's translations."""
    draws = _Draws(range(len(pictures)), exponent, rng)
    made, foreign = 0, {}
    while made < count and pictures:
        index = draws.draw()
        picture = pictures[index]
        image = draws.image(index, picture.load)
        if image is None:
            continue
        _add(corpus, rng, f"{source[0]}{made:06d}.jpg", image, picture.name, picture.concept,
             source)  # fmt: skip
        foreign[picture.concept] = picture.foreign
        made += 1
    return foreign


def _foreign(translations: dict[str, dict[str, str]]):
    """The noise's foreign caption of a row: the emoji's or the stamp's name in another
    language, else a Spanish or French caption around its concept."""
    import emoji

    def foreign(row: dict, rng: random.Random) -> tuple[str, str]:
        names = emoji.EMOJI_DATA.get(row["concept"]) or translations.get(row["concept"], {})
        langs = [lang for lang in rs.FOREIGN if lang in names]
        if langs:
            lang = rng.choice(langs)
            return names[lang].strip(":").replace("_", " "), lang
        if rng.random() < 0.5:
            return f"imagen prediseñada de {row['concept']}", "es"
        return f"icône de {row['concept']}", "fr"

    return foreign


def heldout_jpeg(path) -> bytes:
    out = io.BytesIO()
    rs.open_png(path).save(out, format="JPEG", quality=95)
    return out.getvalue()


def _heldout(corpus: WebCorpus, rng: random.Random, classes: int) -> None:
    """`classes` emoji the corpus serves, each in every held-out style."""
    tables = {style: rs.npm_emoji(style) for style in HELDOUT_STYLES}
    seen = sorted({r["concept"] for r in corpus.rows if r.get("source") in SERVED_STYLES})
    usable = [c for c in seen if all(c in table for table in tables.values())]
    for char in sorted(rng.sample(usable, min(classes, len(usable)))):
        for style, table in tables.items():
            corpus.heldout.append((heldout_jpeg(table[char]), emoji_name(char).replace("/", " ")))
            corpus.heldout_style.append(style)


def build(pairs: int = StyleOptions.pairs, seed: int = StyleOptions.seed,
          opts: StyleOptions | None = None) -> WebCorpus:  # fmt: skip
    """About `pairs` rows: each source's share of the clean rows, then the noise."""
    import emoji

    opts = opts or StyleOptions(pairs=pairs, seed=seed)
    if missing():
        raise FileNotFoundError(f"--corpus styles needs {', '.join(missing())}: {INSTALL}")
    emoji.config.load_language(list(rs.FOREIGN))  # adds the names in those languages
    rng = random.Random(opts.seed)
    corpus = WebCorpus()
    clean = round(opts.pairs * (1 - opts.noise))
    _emoji_rows(corpus, rng, round(clean * SOURCE_SHARES["emoji"]), opts)
    readers = {"openclipart": rs.clipart_pictures, "papirus": rs.icon_pictures,
               "tuxpaint": rs.stamp_pictures}  # fmt: skip
    translations = {}
    for source, reader in readers.items():
        count = round(clean * SOURCE_SHARES[source])
        translations |= _picture_rows(corpus, rng, source, reader(), count, opts.picture_zipf)
    tiny = lambda row, rng: Image.new("RGB", (16, 16), "white")  # noqa: E731
    add_noise(corpus, rng, opts.pairs - len(corpus.rows), _foreign(translations), tiny)
    concepts = {r["concept"] for r in corpus.rows}
    corpus.queries = sorted({emoji_name(c) if c in emoji.EMOJI_DATA else c for c in concepts})
    _heldout(corpus, rng, opts.heldout_classes)
    return corpus
