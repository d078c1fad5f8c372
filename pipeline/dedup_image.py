"""Image dedup stage, after the download: `ImageDedup` groups crawled images by a digest of
their pixels (exact), then by 64-bit perceptual hash with locality-sensitive banding (near):
each hash is split into bands, a GroupByKey per (band, bits) bucket finds candidates, which are
compared by Hamming distance; each bucket is resolved locally into a star (n copies, n - 1
edges) and the stars are joined by bounded GroupByKey rounds (`components`), so no step holds
the run's matches and a picture repeated thousands of times costs linear work. Evaluation
images enter the same buckets in a pass of their own, which takes contaminated images out of
the graph first. In every group the smallest key survives, so the result is the same on any
runner, whatever order it processed elements in. What a duplicate is: `DedupConfig.scope`.

Every pair comes out once; pairs that arrive dropped pass untouched. Work is done on small
tuples; the pairs (and their JPEGs) are shuffled once, to join them with the decisions.
"""

from __future__ import annotations

import io
import logging
import zlib
from dataclasses import replace

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from manifests.io import join, write_atomic
from manifests.schema import Pair, error
from pipeline.components import ConnectedComponents
from pipeline.dedup import DEDUP, DedupConfig
from pipeline.dedup_groups import (
    CONTAMINATED,
    DUP_EXACT,
    DUP_NEAR,
    Sig,
    apply_decision,
    bucket_edges,
    bucket_entries,
    bucket_hits,
    eval_entries,
    exact_group,
    node_decisions,
    node_groups,
)
from pipeline.hashing import (
    band_layout,
    eval_paths,
    read_eval_images,
    to_hex,
)
from pipeline.image_store import STORE_ERROR, StoreError, image_bytes
from pipeline.imaging import ImageError, process_image
from pipeline.shuffle import MeteredCoGroupByKey, MeteredGroupByKey
from pipeline.stage import Stage
from pipeline.stats import CountEvents

log = logging.getLogger(__name__)
EXAMPLES = "dedup_examples.parquet"  # thumbnails of a few near-duplicate groups, for the report
_UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


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
                shown = process_image(data, self._config.eval_image)
                hashes = self._config.hash_image(shown.jpeg, decoded=shown.pixels)
            except (ImageError, *_UNREADABLE) as exc:
                log.warning("skipping unreadable evaluation image %s: %s", ident, exc)
                yield beam.pvalue.TaggedOutput("events", "eval_unreadable")
                continue
            yield beam.pvalue.TaggedOutput("events", "eval_images")
            yield ident, ((hashes.phash, *hashes.views), hashes.colour)


# ---- the image dedup transform -------------------------------------------------------------

EXAMPLE_GROUPS = 6
EXAMPLE_COPIES = 11  # copies shown per group beside its survivor


def _stable_hash(key: str) -> int:
    return zlib.crc32(key.encode())


class FirstCopies(beam.CombineFn):
    """A group's size and the `n` copy keys that hash smallest: which copies the report shows,
    in memory bounded by `n` however many thousand copies a picture has."""

    def __init__(self, n: int):
        self._n = n

    def create_accumulator(self) -> tuple[int, list[str]]:
        return 0, []

    def add_input(self, accumulator, key: str):
        return self.merge_accumulators([accumulator, (1, [key])])

    def merge_accumulators(self, accumulators):
        sizes, keys = zip(*accumulators, strict=True)
        merged = sorted({k for ks in keys for k in ks}, key=lambda k: (_stable_hash(k), k))
        return sum(sizes), merged[: self._n]

    def extract_output(self, accumulator):
        return accumulator


def shown_members(group: str, size_and_copies: tuple[int, list[str]]):
    """(member key, (group, copies in the group)) of the survivor and each copy shown."""
    size, copies = size_and_copies
    for key in (group, *copies):
        yield key, (group, size)


def example_thumbnail(key: str, joined: dict, shown: dict[str, tuple[str, int]]):
    """(group, key, status, copies in the group, thumbnail JPEG) when this pair is shown."""
    if key not in shown:
        return
    group, size = shown[key]
    (pair,) = joined["pair"]
    decisions = joined["decision"]
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
    yield group, key, decisions[0].status if decisions else "ok", size, out.getvalue()


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
        events = [hashed[_HashFn.EVENTS]]
        decisions = self._decide(hashed[_HashFn.SIGS], events)
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

    def _decide(self, sigs, events: list):
        """(key, Decision) of every dropped hashed pair."""
        config = self._config
        if not (config.near or self._eval_paths):
            return (
                sigs
                | "KeyByPixels" >> beam.Map(lambda s: ((s.digest, s.text), s))
                | "GroupByPixels" >> MeteredGroupByKey("dedup_image")
                | "ExactDecisions"
                >> beam.FlatMapTuple(
                    lambda pixels, ss: node_decisions(
                        [exact_group(pixels, ss)], None, near=False, threshold=config.threshold
                    )
                )
            )
        layout = band_layout(config.bands)
        nodes = (
            sigs
            | "KeyByNode" >> beam.Map(lambda s: (s.node, s))
            | "GroupByNode" >> MeteredGroupByKey("dedup_image")
            | "NodeGroups" >> beam.MapTuple(lambda node, ss: node_groups(node, ss, config.exact))
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
    """Thumbnails of a few near-duplicate groups (the survivor and up to EXAMPLE_COPIES of its
    copies) for the report: the groups whose survivor key hashes smallest and the copies whose
    keys do, so every runner picks the same ones and reads a few dozen images, not every copy."""
    copies = decisions | "NearCopies" >> beam.FlatMap(
        lambda kd: [(kd[1].dup_of, kd[0])] if kd[1].status == DUP_NEAR else []
    )
    groups = (
        copies
        | "GroupNames" >> beam.Keys()
        | "DistinctGroups" >> beam.Distinct()
        | "FirstGroups" >> beam.combiners.Top.Smallest(EXAMPLE_GROUPS, key=_stable_hash)
    )
    shown = (
        copies
        | "InFirstGroups"
        >> beam.Filter(lambda gk, chosen: gk[0] in chosen, beam.pvalue.AsSingleton(groups))
        | "FirstCopies" >> beam.CombinePerKey(FirstCopies(EXAMPLE_COPIES))
        | "ShownMembers" >> beam.FlatMapTuple(shown_members)
    )
    return joined | "Thumbnails" >> beam.FlatMap(
        lambda item, members: example_thumbnail(*item, members), beam.pvalue.AsDict(shown)
    )


def write_examples(rows: list[tuple], path: str) -> None:
    names = ("group", "key", "status", "group_copies", "jpeg")
    table = pa.table({name: [row[i] for row in sorted(rows)] for i, name in enumerate(names)})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    write_atomic(path, sink.getvalue())


def _image_dedup(config: DedupConfig, ctx) -> ImageDedup:
    return ImageDedup(replace(config, eval_image=ctx.options("crawl").image))


def _write_examples(out: dict, config: DedupConfig, ctx) -> None:
    path = join(ctx.staging, EXAMPLES)
    ctx.sinks.append(
        out["examples"]
        | "CollectExamples" >> beam.combiners.ToList()
        | "WriteExamples" >> beam.Map(write_examples, path)
    )


STAGE = Stage(
    "dedup_image",
    DEDUP,
    _image_dedup,
    statuses=(DUP_EXACT, DUP_NEAR, CONTAMINATED, "error:decode", error(STORE_ERROR)),
    collect=_write_examples,
    doc="identical pixels, near-duplicates and evaluation images",
)
