"""Dedup's config and flags, shared by its two stages: exact URL dedup before the download
(`dedup_url`) and image dedup with decontamination after it (`dedup_image`).

The scope says what a duplicate is. `image` (the default): one sample per picture. `pair`: a
copy is dropped only when its caption also says the same (`caption_key`), so a picture the web
captions in several ways keeps one sample per caption; only repeated pairs go. CLIP learns from
the text, and those other captions are extra supervision, not repetition.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

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

    exact: bool = True  # repeated URLs (before download) and identical pixels (after)
    near: bool = True  # perceptual-hash near-duplicates
    threshold: int = 8  # Hamming bits (of 64) within which two images are near-duplicates
    bands: int = 8  # LSH bands; bands > threshold guarantees every match is found
    hash_name: str = "phash"  # an imagehash function: phash, dhash, ahash, whash
    mirror: bool = False  # also match left-right mirrored copies (a second hash per image)
    zoom: tuple[float, ...] = (0.95,)  # also hash these centre zooms: matches cropped copies
    colour_distance: float | None = 12.0  # grey levels; matches whose colours differ more are
    # not copies (recoloured drawings, flags); None switches the check off
    scope: str = "image"  # image: a copy is a duplicate; pair: only with the same caption
    decontaminate: str | None = None  # eval images: folders, image files or .tar shards
    eval_image: ImageConfig = field(default_factory=ImageConfig)  # the crawl's resize, for evals

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

    def hash_image(self, data: bytes, views: bool = True) -> ImageHashes:
        """`hashing.hash_image` with this config's `hash_spec`."""
        return self.hash_spec(views).of(data)

    @property
    def crawl_hashes(self) -> HashSpec:
        """What the crawl should hash for this stage (views only when near-dups are sought)."""
        return self.hash_spec(views=self.near)

    def text_key(self, caption: str) -> str:
        """What of the caption a duplicate must share: its `caption_key` in the pair scope."""
        return caption_key(caption) if self.scope == "pair" else ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("dedup and decontamination")
    group.add_argument(
        "--dedup",
        default="exact,near",
        help="comma list of exact (repeated URLs, identical pixels) and near (perceptual hash); "
        "'none' switches dedup off (default: exact,near)",
    )
    group.add_argument(
        "--near-dup-threshold",
        type=int,
        default=DedupConfig.threshold,
        help="Hamming distance in bits (of 64) within which images are near-duplicates "
        f"(default: {DedupConfig.threshold})",
    )
    group.add_argument(
        "--near-dup-bands",
        type=int,
        default=DedupConfig.bands,
        help="LSH bands the 64-bit hash is split into: more than the threshold finds every match, "
        f"fewer make smaller buckets on huge corpora (default: {DedupConfig.bands})",
    )
    group.add_argument(
        "--near-dup-hash",
        choices=sorted(HASH_FUNCTIONS),
        default=DedupConfig.hash_name,
        help=f"perceptual hash function (default: {DedupConfig.hash_name})",
    )
    group.add_argument(
        "--near-dup-mirror",
        action="store_true",
        help="also match left-right mirrored copies (hashes each image twice)",
    )
    group.add_argument(
        "--near-dup-zoom",
        default=",".join(str(f) for f in DedupConfig.zoom),
        help="comma list of centre zooms also hashed per image, so copies cropped by up to "
        "1 - zoom still match; 'none' hashes the image alone "
        f"(default: {','.join(str(f) for f in DedupConfig.zoom)})",
    )
    group.add_argument(
        "--near-dup-colour-distance",
        default=str(DedupConfig.colour_distance),
        help="mean chroma difference (grey levels, 4x4 grid) above which two hash matches are "
        "not copies, since pHash sees no colour; greyscale images always pass; 'none' switches "
        f"the check off (default: {DedupConfig.colour_distance})",
    )
    group.add_argument(
        "--dedup-scope",
        choices=SCOPES,
        default=DedupConfig.scope,
        help="image: one sample per picture; pair: copies of a picture are dropped only when "
        "their captions say the same (case, spacing and punctuation aside), so each distinct "
        f"caption of it keeps a sample (default: {DedupConfig.scope})",
    )
    group.add_argument(
        "--decontaminate",
        metavar="EVAL_DIR_OR_SHARDS",
        help="drop images near-duplicate to these evaluation images: folders, files, globs or "
        ".tar shards, comma-separated",
    )


def config_from_args(args: argparse.Namespace) -> DedupConfig | None:
    """The DedupConfig of parsed `args`; None when dedup and decontamination are both off."""
    modes = {m.strip() for m in args.dedup.split(",") if m.strip()} - {"none"}
    unknown = modes - set(MODES)
    if unknown:
        raise ValueError(f"--dedup takes {', '.join(MODES)} or none, not {sorted(unknown)}")
    if not modes and not args.decontaminate:
        return None
    return DedupConfig(
        exact="exact" in modes,
        near="near" in modes,
        threshold=args.near_dup_threshold,
        bands=args.near_dup_bands,
        hash_name=args.near_dup_hash,
        mirror=args.near_dup_mirror,
        zoom=_zoom(args.near_dup_zoom),
        colour_distance=_colour_distance(args.near_dup_colour_distance),
        scope=args.dedup_scope,
        decontaminate=args.decontaminate,
    )


def _zoom(text: str) -> tuple[float, ...]:
    return () if text.strip().lower() == "none" else tuple(float(f) for f in text.split(","))


def _colour_distance(text: str) -> float | None:
    return None if text.strip().lower() == "none" else float(text)


DEDUP = Options("dedup", DedupConfig, "dedup and decontamination", add_arguments, config_from_args)
