"""Dedup stages: exact URL dedup before the download, image dedup and decontamination after it.

`UrlDedup` groups pairs by normalised URL; `ImageDedup` groups crawled images by a digest of
their pixels (exact), then by 64-bit perceptual hash with locality-sensitive banding (near):
each hash is split into bands, a GroupByKey per (band, bits) bucket finds candidates, which are
compared by Hamming distance; each bucket is resolved locally into a star (n copies, n - 1
edges) and the stars are joined by bounded GroupByKey rounds (`components`), so no step holds
the run's matches and a picture repeated thousands of times costs linear work. Evaluation
images enter the same buckets in a pass of their own, which takes contaminated images out of
the graph first. In every group the smallest key survives, so the result is the same on any
runner, whatever order it processed elements in.

The scope says what a duplicate is. `image` (the default): one sample per picture. `pair`: a
copy is dropped only when its caption also says the same (`caption_key`), so a picture the web
captions in several ways keeps one sample per caption; only repeated pairs go. CLIP learns from
the text, and those other captions are extra supervision, not repetition.

Every pair comes out once; pairs that arrive dropped pass untouched. Work is done on small
tuples; the pairs (and their JPEGs) are shuffled once, to join them with the decisions.
"""

from __future__ import annotations

import argparse
import io
import logging
import zlib
from dataclasses import dataclass, field, replace

import apache_beam as beam
from PIL import Image

from manifests.schema import Pair, error
from pipeline.components import ConnectedComponents
from pipeline.dedup_groups import (
    CONTAMINATED,
    DUP_EXACT,
    DUP_NEAR,
    ExactGroup,
    Sig,
    apply_decision,
    bucket_edges,
    bucket_entries,
    bucket_hits,
    eval_entries,
    exact_group,
    node_decisions,
    resolve_urls,
)
from pipeline.hashing import (
    HASH_BITS,
    HASH_FUNCTIONS,
    HashSpec,
    ImageHashes,
    band_layout,
    caption_key,
    eval_paths,
    normalize_url,
    read_eval_images,
    to_hex,
)
from pipeline.image_store import StoreError, image_bytes
from pipeline.imaging import ImageConfig, ImageError, process_image
from pipeline.shuffle import MeteredCoGroupByKey, MeteredGroupByKey
from pipeline.stats import CountEvents

log = logging.getLogger(__name__)

MODES = ("exact", "near")
SCOPES = ("image", "pair")
_UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


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


# ---- exact URL dedup (before the download) ------------------------------------------------


class UrlDedup(beam.PTransform):
    """Pairs in, the same pairs out; repeated URLs (after `normalize_url`; in the pair scope,
    with the same `caption_key` too) become `dup:exact`.
    Stats: {"rows": ok pairs considered, "duplicates": pairs dropped}."""

    def __init__(self, config: DedupConfig | None = None):
        super().__init__()
        self._config = config or DedupConfig()

    def expand(self, pairs):
        text_key = self._config.text_key
        dropped = pairs | "Dropped" >> beam.Filter(lambda p: not p.is_ok)
        decided = (
            pairs
            | "Kept" >> beam.Filter(lambda p: p.is_ok)
            | "KeyByUrl" >> beam.Map(lambda p: ((normalize_url(p.url), text_key(p.caption)), p))
            | "GroupByUrl" >> MeteredGroupByKey("dedup_url")
            | "Resolve" >> beam.FlatMapTuple(resolve_urls)
        )
        events = decided | "Events" >> beam.FlatMap(
            lambda p: ["rows"] if p.is_ok else ["rows", "duplicates"]
        )
        return {
            "pairs": (decided, dropped) | "Merge" >> beam.Flatten(),
            "stats": events | "Stats" >> CountEvents(("rows", "duplicates"), "dedup_url"),
        }


# ---- image dedup (after the download) ------------------------------------------------------


class _HashFn(beam.DoFn):
    """Hash each kept image: the pair (with its `phash`; the other hashes travel in the Sig
    only) to the join, its Sig to the grouping; pairs already dropped or without an image pass
    straight through."""

    SIGS, HASHED, EVENTS = "sigs", "hashed", "events"

    def __init__(self, config: DedupConfig):
        self._config = config

    def process(self, pair: Pair):
        if not pair.is_ok:
            yield pair
            return
        if pair.image is None and pair.image_ref is None:
            yield beam.pvalue.TaggedOutput(self.EVENTS, "no_image")
            yield pair
            return
        try:  # the crawl made the hashes; an image it could not hash is read back to say why
            hashes = pair.hashes or self._config.hash_image(image_bytes(pair), self._config.near)
        except StoreError as exc:
            yield beam.pvalue.TaggedOutput(self.EVENTS, "unreadable")
            yield pair.with_status(error(exc.kind), str(exc))
            return
        except _UNREADABLE as exc:
            yield beam.pvalue.TaggedOutput(self.EVENTS, "unreadable")
            yield pair.with_status(error("decode"), f"dedup cannot decode image: {exc}")
            return
        yield beam.pvalue.TaggedOutput(self.EVENTS, "images")
        text = self._config.text_key(pair.caption)
        sig = Sig(pair.key, hashes.digest, hashes.phash, hashes.views, hashes.colour, text)
        yield beam.pvalue.TaggedOutput(self.SIGS, sig)
        yield beam.pvalue.TaggedOutput(
            self.HASHED, (pair.key, replace(pair, phash=to_hex(sig.phash), hashes=None))
        )


class _HashEvalFn(beam.DoFn):
    """Eval images get the crawl's resize before hashing, so they look like training images."""

    def __init__(self, config: DedupConfig):
        self._config = config

    def process(self, path: str):
        for ident, data in read_eval_images(path):
            try:
                jpeg = process_image(data, self._config.eval_image).jpeg
                hashes = self._config.hash_image(jpeg)
            except (ImageError, *_UNREADABLE) as exc:
                log.warning("skipping unreadable evaluation image %s: %s", ident, exc)
                yield beam.pvalue.TaggedOutput("events", "eval_unreadable")
                continue
            yield beam.pvalue.TaggedOutput("events", "eval_images")
            yield ident, ((hashes.phash, *hashes.views), hashes.colour)


# ---- the image dedup transform -------------------------------------------------------------

EXAMPLE_GROUPS = 6


def _stable_hash(key: str) -> int:
    return zlib.crc32(key.encode())


def example_thumbnail(key: str, joined: dict, groups: list[str]):
    """(group, key, status, thumbnail JPEG) when this pair belongs to one of `groups`."""
    (pair,) = joined["pair"]
    decisions = joined["decision"]
    decision = decisions[0] if decisions else None
    group = decision.dup_of if decision and decision.status == DUP_NEAR else key
    if group not in groups:
        return
    try:
        data = image_bytes(pair)
    except StoreError as exc:
        log.warning("no near-duplicate example of %s: %s", key, exc)
        return
    with Image.open(io.BytesIO(data)) as image:
        thumbnail = image.convert("RGB")
        thumbnail.thumbnail((128, 128))
        out = io.BytesIO()
        thumbnail.save(out, format="JPEG", quality=85)
    yield group, key, decision.status if decision else "ok", out.getvalue()


IMAGE_STATS = (
    "images",
    "no_image",
    "unreadable",
    DUP_EXACT,
    DUP_NEAR,
    CONTAMINATED,
    "eval_images",
    "eval_unreadable",
    "residual_edges",
)


class ImageDedup(beam.PTransform):
    """Pairs in (after the crawl), the same pairs out: kept images with `phash` set, copies as
    `dup:exact` / `dup:near` and eval near-duplicates as `contaminated`, `dup_of` naming the
    kept key (or the evaluation image). Stats: counts of IMAGE_STATS."""

    def __init__(self, config: DedupConfig):
        super().__init__()
        self._config = config
        self._eval_paths = eval_paths(config.decontaminate) if config.decontaminate else []

    def expand(self, pairs):
        config = self._config
        hashed = pairs | "Hash" >> beam.ParDo(_HashFn(config)).with_outputs(
            _HashFn.SIGS, _HashFn.HASHED, _HashFn.EVENTS, main="passed"
        )
        sigs = hashed[_HashFn.SIGS]
        if config.exact:
            groups = (
                sigs
                | "KeyByPixels" >> beam.Map(lambda s: ((s.digest, s.text), s))
                | "GroupByPixels" >> MeteredGroupByKey("dedup_image")
                | "ExactGroups" >> beam.MapTuple(exact_group)
            )
        else:
            groups = sigs | "Singletons" >> beam.Map(lambda s: ExactGroup(s.key, (), *s[2:]))
        events = [hashed[_HashFn.EVENTS]]
        decisions = self._decide(groups, events)
        joined = {"pair": hashed[_HashFn.HASHED], "decision": decisions} | (
            "JoinDecisions" >> MeteredCoGroupByKey("dedup_join")
        )
        decided = joined | "Apply" >> beam.FlatMapTuple(apply_decision)
        dropped = decisions | "DecisionEvents" >> beam.Map(lambda kd: kd[1].status)
        merged = (hashed["passed"], decided) | "Merge" >> beam.Flatten()
        stats = (
            (*events, dropped)
            | "MergeEvents" >> beam.Flatten()
            | "Stats" >> CountEvents(IMAGE_STATS, "dedup_image")
        )
        return {"pairs": merged, "stats": stats, "examples": _examples(decisions, joined)}

    def _decide(self, groups, events: list):
        """(key, Decision) of every dropped hashed pair."""
        config = self._config
        if not (config.near or self._eval_paths):
            return groups | "ExactDecisions" >> beam.FlatMap(
                lambda g: node_decisions([g], None, near=False, threshold=config.threshold)
            )
        layout = band_layout(config.bands)
        nodes = (
            groups
            | "KeyByNode" >> beam.Map(lambda g: (g.node, g))
            | "GroupByNode" >> MeteredGroupByKey("dedup_image")
            | "ByNodeKey" >> beam.MapTuple(lambda node, gs: (min(gs).rep, (node, sorted(gs))))
        )
        verdicts, clean = [], nodes
        if self._eval_paths:
            hits = self._contaminated(nodes, layout, events)
            verdicts.append(
                hits | "Contaminated" >> beam.MapTuple(lambda k, i: (k, (CONTAMINATED, i)))
            )
            clean = (
                {"node": nodes, "hit": hits}
                | "JoinHits" >> MeteredCoGroupByKey("dedup_image")
                | "Clean" >> beam.FlatMapTuple(lambda k, j: [] if j["hit"] else [(k, j["node"][0])])
            )
        if config.near:
            components = (
                clean
                | "NodeBands" >> beam.FlatMap(lambda kn: bucket_entries(*kn[1], layout))
                | "GroupByBand" >> MeteredGroupByKey("dedup_bands")
                | "BucketStars"
                >> beam.FlatMapTuple(
                    lambda _, es: bucket_edges(list(es), config.threshold, config.colour_distance)
                )
                | "Components" >> ConnectedComponents()
            )
            events.append(components["events"])
            labels = components["labels"]
            verdicts.append(
                labels | "NearVerdicts" >> beam.MapTuple(lambda k, s: (k, (DUP_NEAR, s)))
            )
        return (
            {"node": nodes, "verdict": verdicts | "MergeVerdicts" >> beam.Flatten()}
            | "JoinVerdicts" >> MeteredCoGroupByKey("dedup_image")
            | "NodeDecisions"
            >> beam.FlatMapTuple(
                lambda _, joined: node_decisions(
                    joined["node"][0][1],
                    joined["verdict"][0] if joined["verdict"] else None,
                    config.near,
                    config.threshold,
                )
            )
        )

    def _contaminated(self, nodes, layout, events: list):
        """(node key, evaluation id) of each node near an evaluation image: a pass of its own,
        so contaminated nodes leave the graph before the components and never bridge two
        clean groups."""
        config = self._config
        return (
            (
                nodes | "HitBands" >> beam.FlatMap(lambda kn: bucket_entries(*kn[1], layout)),
                self._eval_entries(nodes.pipeline, layout, events),
            )
            | "MergeEntries" >> beam.Flatten()
            | "GroupHitBands" >> MeteredGroupByKey("dedup_bands")
            | "Hits"
            >> beam.FlatMapTuple(
                lambda _, es: bucket_hits(list(es), config.threshold, config.colour_distance)
            )
            | "FirstHit" >> beam.CombinePerKey(min)
        )

    def _eval_entries(self, pipeline, layout, events: list):
        """LSH bucket entries of the evaluation images; their events go to `events`."""
        evals = (
            pipeline
            | "EvalPaths" >> beam.Create(self._eval_paths)
            | "Reshuffle" >> beam.Reshuffle()
            | "HashEval"
            >> beam.ParDo(_HashEvalFn(self._config)).with_outputs("events", main="hashes")
        )
        events.append(evals["events"])
        return evals["hashes"] | "EvalBands" >> beam.FlatMapTuple(
            lambda ident, hashed: eval_entries(ident, *hashed, layout)
        )


def _examples(decisions, joined):
    """Thumbnails of a few near-duplicate groups (the survivor and its copies) for the report:
    the groups whose survivor key hashes smallest, so every runner picks the same ones."""
    groups = (
        decisions
        | "NearGroups"
        >> beam.FlatMap(lambda kd: [kd[1].dup_of] if kd[1].status == DUP_NEAR else [])
        | "DistinctGroups" >> beam.Distinct()
        | "FirstGroups" >> beam.combiners.Top.Smallest(EXAMPLE_GROUPS, key=_stable_hash)
    )
    return joined | "Thumbnails" >> beam.FlatMap(
        lambda item, chosen: example_thumbnail(*item, chosen), beam.pvalue.AsSingleton(groups)
    )


# ---- command line --------------------------------------------------------------------------


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
