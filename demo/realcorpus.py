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

The larger corpus of several art styles (`demo.stylecorpus`, `--corpus styles`) is built to a
folder and its packages installed by this module's command line:

    python -m demo.realcorpus install          # apt-get and npm, pinned versions
    python -m demo.realcorpus build --pairs 30000 --out DIR
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from PIL import Image, ImageFont

from demo import stylecorpus
from demo.realsources import (
    CLIPART,
    EMOJI_NPM,
    FOREIGN,
    NOTO_FONT,
    TEMPLATES,
    clipart_caption,
    noto_render,
    on_white,
    open_png,
)
from demo.stylecorpus import StyleOptions
from demo.webcorpus import WebCorpus, add_clean, add_noise, concept_weights

TWEMOJI = Path(os.environ.get("OPENWIT_TWEMOJI", "~/.cache/openwit/twemoji")).expanduser()
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
        flat = open_png(path)
        if flat is None:
            continue
        out.append((flat, *clipart_caption(path)))
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
        out = io.BytesIO()
        on_white(Image.open(io.BytesIO(twemoji[char]))).save(out, format="JPEG", quality=95)
        corpus.heldout.append((out.getvalue(), _name(emoji.EMOJI_DATA[char]).replace("/", " ")))
    return corpus


def _distinct(corpus: WebCorpus) -> dict[str, set[bytes]]:
    """Each source's distinct clean pictures (the head serves one under many URLs)."""
    found: dict[str, set[bytes]] = {}
    for row in corpus.rows:
        if row["kind"] == "clean":
            found.setdefault(row["source"], set()).add(corpus.images[row["path"].split("/", 1)[1]])
    return found


def write(corpus: WebCorpus, out: Path) -> dict:
    """The corpus as files: `images/` (what the server serves), `rows.parquet` (path,
    caption, kind, concept, source), `heldout/STYLE/CLASS/` and `queries.txt`; returns the
    counts and sizes it wrote."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (out / "images").mkdir(parents=True, exist_ok=True)
    for name, data in corpus.images.items():
        (out / "images" / name).write_bytes(data)
    columns = ("path", "caption", "kind", "concept", "source")
    rows = [{c: row.get(c, "") for c in columns} for row in corpus.rows]
    pq.write_table(pa.Table.from_pylist(rows), out / "rows.parquet")
    for index, ((jpeg, name), style) in enumerate(
        zip(corpus.heldout, corpus.heldout_style, strict=True)
    ):
        folder = out / "heldout" / style / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index:05d}.jpg").write_bytes(jpeg)
    (out / "queries.txt").write_text("\n".join(corpus.queries) + "\n")
    summary = {
        "rows": len(corpus.rows), "images": len(corpus.images),
        "image_bytes": sum(len(d) for d in corpus.images.values()),
        "rows_by_source": dict(Counter(r.get("source") or "noise" for r in corpus.rows)),
        "rows_by_kind": dict(Counter(r["kind"] for r in corpus.rows)),
        "distinct_concepts": len({r["concept"] for r in corpus.rows}),
        "distinct_images_by_source": {source: len(paths) for source, paths in _distinct(corpus).items()},
        "heldout_by_style": dict(Counter(corpus.heldout_style)),
        "heldout_classes": len({name for _, name in corpus.heldout}), "queries": len(corpus.queries),
    }  # fmt: skip
    return summary


def install() -> None:
    """The `--corpus styles` packages: Debian's with apt-get, the emoji styles with npm, and
    CairoSVG for the icons (also in the test extra; here for a user without it)."""
    from demo.stylecorpus import APT, NPM

    subprocess.run(["apt-get", "update"], check=True)
    subprocess.run(["apt-get", "install", "-y", *APT], check=True)
    subprocess.run(["npm", "install", "--prefix", str(EMOJI_NPM), *NPM], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "cairosvg>=2.7"], check=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="the several-styles real corpus")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("install", help="apt-get and npm install what `build` reads")
    build_args = commands.add_parser("build", help="build the corpus into a folder")
    build_args.add_argument("--pairs", type=int, default=StyleOptions.pairs)
    build_args.add_argument("--seed", type=int, default=StyleOptions.seed)
    build_args.add_argument("--heldout-classes", type=int, default=StyleOptions.heldout_classes)
    build_args.add_argument("--out", type=Path, default=Path("realcorpus_out"))
    args = parser.parse_args(argv)
    if args.command == "install":
        install()
        return
    start = time.monotonic()
    opts = StyleOptions(pairs=args.pairs, seed=args.seed, heldout_classes=args.heldout_classes)
    corpus = stylecorpus.build(opts=opts)
    built = time.monotonic() - start
    summary = write(corpus, args.out)
    summary["build_seconds"] = round(built, 1)
    summary["write_seconds"] = round(time.monotonic() - start - built, 1)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
