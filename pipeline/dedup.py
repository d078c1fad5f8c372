"""Dedup's config and flags, shared by its two stages: exact URL dedup before the download
(`dedup_url`) and image dedup with decontamination after it (`dedup_image`).

The scope says what a duplicate is. `image` (the default): one sample per picture. `pair`: a
copy is dropped only when its caption also says the same (`caption_key`), so a picture the web
captions in several ways keeps one sample per caption; only repeated pairs go. CLIP learns from
the text, and those other captions are extra supervision, not repetition.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, replace

from PIL import Image

from pipeline.config_flags import config_from_flags, option
from pipeline.hashing import (
    HASH_BITS,
    HASH_FUNCTIONS,
    HashSpec,
    ImageHashes,
    band_layout,
    caption_key,
)
from pipeline.imaging import ImageConfig
from pipeline.stage import Options

MODES = ("exact", "near")
SCOPES = ("image", "pair")


@dataclass(frozen=True)
class DedupConfig:
    """Which dedup steps run and how near is near."""

    exact: bool = field(default=True, metadata={"cli": False})  # repeated URLs, identical pixels
    near: bool = field(default=True, metadata={"cli": False})  # perceptual-hash near-duplicates
    threshold: int = option(8, "Hamming distance in bits (of 64) within which images are "
                            "near-duplicates", flag="--near-dup-threshold")  # fmt: skip
    bands: int = option(8, "LSH bands the 64-bit hash is split into: more than the threshold "
                        "finds every match, fewer make smaller buckets on huge corpora",
                        flag="--near-dup-bands")  # fmt: skip
    hash_name: str = option("phash", "perceptual hash function", flag="--near-dup-hash",
                            choices=sorted(HASH_FUNCTIONS))  # fmt: skip
    mirror: bool = option(False, "also match left-right mirrored copies (hashes each image "
                          "twice)", flag="--near-dup-mirror")  # fmt: skip
    zoom: tuple[float, ...] = option((0.95,), "comma list of centre zooms also hashed per "
                                     "image, so copies cropped by up to 1 - zoom still match; "
                                     "'none' hashes the image alone",
                                     flag="--near-dup-zoom")  # fmt: skip
    colour_distance: float | None = option(12.0, "mean chroma difference (grey levels, 4x4 grid) "
                                           "above which two hash matches are not copies, since "
                                           "pHash sees no colour; greyscale images always pass; "
                                           "'none' switches the check off",
                                           flag="--near-dup-colour-distance")  # fmt: skip
    scope: str = option("image", "image: one sample per picture; pair: copies of a picture are "
                        "dropped only when their captions say the same (case, spacing and "
                        "punctuation aside), so each distinct caption of it keeps a sample",
                        flag="--dedup-scope", choices=SCOPES)  # fmt: skip
    decontaminate: str | None = option(None, "drop images near-duplicate to these evaluation "
                                       "images: folders, files, globs or .tar shards, "
                                       "comma-separated", metavar="EVAL_DIR_OR_SHARDS")  # fmt: skip
    # the crawl's resize, which evaluation images get before hashing; set by the graph
    eval_image: ImageConfig = field(default_factory=ImageConfig, metadata={"cli": False})

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}, not {self.scope!r}")
        if not 0 <= self.threshold < HASH_BITS:
            raise ValueError(f"threshold must be in 0..{HASH_BITS - 1}, not {self.threshold}")
        band_layout(self.bands)
        if self.hash_name not in HASH_FUNCTIONS:
            raise ValueError(f"hash {self.hash_name!r} is not one of {sorted(HASH_FUNCTIONS)}")
        if not all(0.5 <= fraction < 1 for fraction in self.zoom):
            raise ValueError(f"zoom fractions must be in [0.5, 1), not {self.zoom}")
        if self.colour_distance is not None and self.colour_distance < 0:
            raise ValueError(f"colour distance must be >= 0, not {self.colour_distance}")

    def hash_spec(self, views: bool = True) -> HashSpec:
        """This config's hash, views (mirror, zooms) and colour signature."""
        return HashSpec(
            self.hash_name,
            mirror=self.mirror and views,
            zoom=self.zoom if views else (),
            colour=self.colour_distance is not None,
        )

    def hash_image(
        self, data: bytes, views: bool = True, decoded: Image.Image | None = None
    ) -> ImageHashes:
        """`hashing.hash_image` with this config's `hash_spec`."""
        return self.hash_spec(views).of(data, decoded)

    @property
    def crawl_hashes(self) -> HashSpec:
        """What the crawl should hash for this stage (views only when near-dups are sought)."""
        return self.hash_spec(views=self.near)

    def text_key(self, caption: str) -> str:
        """What of the caption a duplicate must share: its `caption_key` in the pair scope."""
        return caption_key(caption) if self.scope == "pair" else ""


def add_arguments(group) -> None:
    """`--dedup`: which steps run (the other flags are DedupConfig's fields)."""
    defaults = ",".join(mode for mode in MODES if getattr(DedupConfig, mode))
    group.add_argument(
        "--dedup",
        help="comma list of exact (repeated URLs, identical pixels) and near (perceptual hash); "
        f"'none' switches dedup off (default: {defaults})",
    )


def config_from_args(args: argparse.Namespace) -> DedupConfig | None:
    """The DedupConfig of parsed `args`; None when dedup and decontamination are both off."""
    config = config_from_flags(args, DedupConfig, "dedup")
    if args.dedup is None:
        return config
    modes = {m.strip() for m in args.dedup.split(",") if m.strip()} - {"none"}
    unknown = modes - set(MODES)
    if unknown:
        raise ValueError(f"--dedup takes {', '.join(MODES)} or none, not {sorted(unknown)}")
    if not modes and not config.decontaminate:
        return None
    return replace(config, exact="exact" in modes, near="near" in modes)


DEDUP = Options("dedup", DedupConfig, "dedup and decontamination", add_arguments, config_from_args)
