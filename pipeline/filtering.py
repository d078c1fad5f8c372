"""Filter stages: chains of registered filters (`ApplyFilters`) and the batched ones
(`BatchFilters`: the model score, `ScoreFilter`).

Every pair comes out once: kept ones unchanged but for what a filter recorded (the language),
dropped ones with `filtered:<filter>:<reason>`, pairs dropped earlier untouched. A filter that
raises costs its pair (`error:filter`, the exception in the message), never the run. The stats
are a funnel: rows in and out of each filter and the drops per reason, so the counts add up.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics
from PIL import Image

from filters.base import FilterDef, FilterStep, Verdict, is_reason
from filters.options import FiltersConfig, add_arguments, config_from_args
from filters.score import (
    ScoreConfig,
    Scorer,
    histogram_quantiles,
    pair_threshold,
    quantise,
    rounded,
    score_reason,
    top_fraction_threshold,
)
from manifests.schema import MANIFEST_SCHEMA, Pair, error, filtered
from pipeline.config_flags import settings
from pipeline.crawl import batch_of
from pipeline.image_store import STORE_ERROR, ImageReader, with_image, without_image
from pipeline.shuffle import MeteredGroupByKey
from pipeline.stage import Options, Stage

log = logging.getLogger(__name__)
PASSED = "passed_through"  # arrived with a non-ok status
KEPT = ""  # the reason of a pair that passed every filter
ERROR = "error"  # the funnel reason of a pair whose filter raised
_SCORE_GROUP_ROWS = 4096  # input rows per scoring group: locality and spread over workers
QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)

Outcome = tuple[int, str] | str  # (index of the deciding filter, reason), or PASSED


def _verdict(result: object) -> Verdict:
    verdict = result if isinstance(result, Verdict) else Verdict(result)
    if verdict.reason is not None and not is_reason(verdict.reason):
        raise ValueError(f"a drop reason must be snake_case, not {verdict.reason!r}")
    return verdict


_NOT_UPDATABLE = ("key", "status", "error_message", "image")


def checked_updates(updates: dict) -> dict:
    """A filter's `Verdict.updates`, checked: each names a manifest field a filter may set and
    holds a value of that column's type, or ValueError (which costs the pair, not the run)."""
    for name, value in updates.items():
        if name in _NOT_UPDATABLE or name not in MANIFEST_SCHEMA.names:
            raise ValueError(f"a filter cannot set {name!r}")
        try:
            pa.array([value], MANIFEST_SCHEMA.field(name).type)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            kind = MANIFEST_SCHEMA.field(name).type
            raise ValueError(f"{name}={value!r} is not a {kind}: {exc}") from None
    return updates


def apply_chain(pair: Pair, chain: Sequence[FilterDef], configs: Sequence) -> tuple[Pair, Outcome]:
    """Run `pair` through the filters in order until one drops it; say where it stopped."""
    if not pair.is_ok:
        return pair, PASSED
    image = None
    for index, (definition, config) in enumerate(zip(chain, configs, strict=True)):
        name = definition.name
        try:
            if definition.kind == "image":
                if pair.image is None:
                    return pair.with_status(filtered(name, "no_image")), (index, "no_image")
                if image is None:
                    image = Image.open(io.BytesIO(pair.image)).convert("RGB")
                verdict = _verdict(definition.check(pair, image, config))
            else:
                verdict = _verdict(definition.check(pair, config))
            if verdict.updates:
                pair = dataclasses.replace(pair, **checked_updates(verdict.updates))
        except Exception as exc:  # a filter's bug must cost one row, not the run
            log.exception("filter %s failed on %s", name, pair.key)
            message = f"{name}: {type(exc).__name__}: {exc}"
            return pair.with_status(error("filter"), message), (index, ERROR)
        if verdict.reason is not None:
            return pair.with_status(filtered(name, verdict.reason)), (index, verdict.reason)
    return pair, (len(chain), KEPT)


def funnel(counts: dict, names: Sequence[str]) -> dict:
    """The stats of a chain from outcome counts: rows in/out per filter and drops per reason."""
    passed = counts.get(PASSED, 0)
    arrived = sum(n for outcome, n in counts.items() if outcome != PASSED)
    rows, steps = arrived, []
    for index, name in enumerate(names):
        dropped = {r: n for (i, r), n in _outcomes(counts) if i == index}
        out = rows - sum(dropped.values())
        steps.append({"filter": name, "rows_in": rows, "rows_out": out, "dropped": dropped})
        rows = out
    return {"rows_in": passed + arrived, "passed_through": passed, "ok_in": arrived,
            "ok_out": rows, "filters": steps}  # fmt: skip


def _outcomes(counts: dict) -> list[tuple[tuple[int, str], int]]:
    return sorted((o, n) for o, n in counts.items() if o != PASSED)


class _CountFn(beam.CombineFn):
    """Counts of hashable elements, as a plain dict (order-free, so any runner agrees)."""

    def create_accumulator(self) -> Counter:
        return Counter()

    def add_input(self, acc: Counter, element) -> Counter:
        acc[element] += 1
        return acc

    def merge_accumulators(self, accs) -> Counter:
        total: Counter = Counter()
        for acc in accs:
            total.update(acc)
        return total

    def extract_output(self, acc: Counter) -> dict:
        return dict(acc)


class _FilterFn(beam.DoFn):
    def __init__(self, steps: Sequence[FilterStep]):
        self._steps = tuple(steps)

    def setup(self) -> None:
        self._chain = [s.resolve() for s in self._steps]
        self._configs = [s.config for s in self._steps]
        for definition, config in zip(self._chain, self._configs, strict=True):
            if definition.setup:
                definition.setup(config)
        self._counters: dict[str, object] = {}
        needs_pixels = any(definition.kind == "image" for definition in self._chain)
        self._reader = ImageReader() if needs_pixels else None

    def teardown(self) -> None:
        if self._reader:
            self._reader.close()

    def process(self, pair: Pair):
        if self._reader and pair.is_ok:  # the image filters read the image from the store
            pair = with_image(pair, self._reader)
            if not pair.is_ok:  # lost from the store: it never reached a filter
                self._count(pair.status)
                yield pair, (0, STORE_ERROR)
                return
        out, outcome = apply_chain(pair, self._chain, self._configs)
        out = without_image(out)
        if outcome != PASSED:
            index, reason = outcome
            name = self._chain[index].name if index < len(self._chain) else "chain"
            self._count(f"{name}:{reason or 'kept'}")
        yield out, outcome

    def _count(self, name: str) -> None:
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = Metrics.counter("filters", name)
        counter.inc()


class ApplyFilters(beam.PTransform):
    """Pairs in, the same pairs out, through `steps` in order; `stats` is the funnel."""

    def __init__(self, steps: Sequence[FilterStep]):
        super().__init__()
        self._steps = tuple(steps)

    def expand(self, pairs):
        names = [s.name for s in self._steps]
        results = pairs | "Filter" >> beam.ParDo(_FilterFn(self._steps))
        stats = (
            results
            | "Outcomes" >> beam.Map(lambda r: r[1])
            | "CountOutcomes" >> beam.CombineGlobally(_CountFn())
            | "Funnel" >> beam.Map(funnel, names)
        )
        return {"pairs": results | "Pairs" >> beam.Map(lambda r: r[0]), "stats": stats}


class _ScoreFn(beam.DoFn):
    """Score a group of pairs in key order, `batch_size` at a time, with a model per worker."""

    def __init__(self, config: ScoreConfig, make_scorer: Callable[[ScoreConfig], Any]):
        self._config = config
        self._make_scorer = make_scorer

    def setup(self) -> None:
        self._scorer = self._make_scorer(self._config)
        self._scored = Metrics.counter("score", "scored")
        self._failed = Metrics.counter("score", "error")
        self._reader = ImageReader()

    def teardown(self) -> None:
        self._reader.close()

    def process(self, element):
        _, pairs = element
        pairs = sorted(pairs, key=lambda p: p.key)
        size = self._config.score_batch_size
        for start in range(0, len(pairs), size):
            yield from self._score_batch(pairs[start : start + size])

    def _score_batch(self, batch: list[Pair]):
        loaded = [with_image(pair, self._reader) for pair in batch]
        yield from (pair for pair in loaded if not pair.is_ok)  # lost from the image store
        batch = [pair for pair in loaded if pair.is_ok]
        if not batch:
            return
        try:
            scores = self._scorer.score(batch)
        except Exception:  # one bad image must not cost its whole batch: retry one by one
            if len(batch) > 1:
                for pair in batch:
                    yield from self._score_batch([pair])
                return
            log.exception("scoring %s failed", batch[0].key)
            self._failed.inc()
            yield batch[0].with_status(error("score"), "the model could not score this pair")
            return
        self._scored.inc(len(batch))
        for pair, score in zip(batch, scores, strict=True):
            yield without_image(dataclasses.replace(pair, score=rounded(score)))


def _judge(pair: Pair, config: ScoreConfig, threshold: float | None,
           per_query: dict[int, float]) -> Pair:  # fmt: skip
    if not pair.is_ok:
        return pair
    reason = score_reason(pair.score, config, pair_threshold(pair.queries, per_query, threshold))
    return pair.with_status(filtered("score", reason), f"{pair.score:.4f}") if reason else pair


def _query_scores(pair: Pair, enabled: bool):
    """(query id, score bin) for each of an ok pair's queries: the per-query histograms."""
    if enabled and pair.is_ok and pair.queries:
        yield from ((query, quantise(pair.score)) for query in pair.queries)


def score_stats(histogram: dict, statuses: dict, threshold: float | None, scope: str) -> dict:
    """The score filter's stats: the score distribution, the threshold, rows per outcome (with
    `--score-scope query` the threshold is only that of pairs without queries)."""
    scored = sum(histogram.values())
    return {
        "rows_in": sum(statuses.values()),
        "passed_through": statuses.get(PASSED, 0),
        "scored": scored,
        "kept": statuses.get("ok", 0),
        "dropped": {s.split(":")[-1]: n for s, n in statuses.items() if s.startswith("filtered:")},
        "errors": statuses.get(error("score"), 0),
        "score_scope": scope,
        "top_fraction_threshold": threshold,
        "score_quantiles": {
            str(q): v
            for q, v in zip(QUANTILES, histogram_quantiles(histogram, QUANTILES), strict=True)
        },
    }


def load_scorer(config: ScoreConfig) -> Scorer:
    return Scorer(config.score_checkpoint, config.score_device)


class ScoreFilter(beam.PTransform):
    """Score every ok pair with the checkpoint, then drop by --min-score / --keep-top-fraction.

    `make_scorer(config)` builds, once per worker, what scores: anything with a
    `score(pairs) -> list[float]` method (an openwit checkpoint by default)."""

    def __init__(
        self, config: ScoreConfig, make_scorer: Callable[[ScoreConfig], Any] = load_scorer
    ):
        super().__init__()
        self._config = config
        self._make_scorer = make_scorer

    def expand(self, pairs):
        config = self._config
        passed = pairs | "Dropped" >> beam.Filter(lambda p: not p.is_ok)
        scored = (
            pairs
            | "Ok" >> beam.Filter(lambda p: p.is_ok)
            | "KeyByGroup" >> beam.Map(lambda p: (batch_of(p.key, _SCORE_GROUP_ROWS), p))
            | "Group" >> MeteredGroupByKey("score")
            | "Score" >> beam.ParDo(_ScoreFn(config, self._make_scorer))
        )
        histogram = (
            scored
            | "Scores" >> beam.FlatMap(lambda p: [quantise(p.score)] if p.is_ok else [])
            | "Histogram" >> beam.CombineGlobally(_CountFn())
        )
        fraction = config.keep_top_fraction
        threshold = histogram | "Threshold" >> beam.Map(
            lambda h: top_fraction_threshold(h, fraction) if fraction else None
        )
        per_query = (
            scored
            | "QueryScores" >> beam.FlatMap(_query_scores, enabled=bool(fraction)
                                            and config.score_scope == "query")  # fmt: skip
            | "QueryHistograms" >> beam.CombinePerKey(_CountFn())
            | "QueryThresholds" >> beam.MapTuple(lambda q, h: (q, top_fraction_threshold(h, fraction)))
        )  # fmt: skip
        judged = scored | "Judge" >> beam.Map(
            _judge, config, threshold=beam.pvalue.AsSingleton(threshold),
            per_query=beam.pvalue.AsDict(per_query),
        )  # fmt: skip
        out = (judged, passed) | "Merge" >> beam.Flatten()
        statuses = (
            (
                judged | "Status" >> beam.Map(lambda p: p.status),
                passed | "Passed" >> beam.Map(lambda p: PASSED),
            )
            | "MergeStatuses" >> beam.Flatten()
            | "CountStatuses" >> beam.CombineGlobally(_CountFn())
        )
        stats = histogram | "Stats" >> beam.Map(
            score_stats,
            statuses=beam.pvalue.AsSingleton(statuses),
            threshold=beam.pvalue.AsSingleton(threshold),
            scope=config.score_scope,
        )
        return {"pairs": out, "stats": stats}


class BatchFilters(beam.PTransform):
    """Pairs through each batched filter's transform in `--filters` order; `stats` holds each
    one's stats under its name."""

    def __init__(self, steps: Sequence[FilterStep]):
        super().__init__()
        self._steps = tuple(steps)

    def expand(self, pairs):
        stats = {}
        for step in self._steps:
            out = pairs | step.name >> step.resolve().check(step.config)
            pairs, stats[step.name] = out["pairs"], out["stats"]
        first, *others = self._steps
        merged = stats[first.name] | "Stats" >> beam.Map(
            lambda own, **rest: {first.name: own, **rest},
            **{s.name: beam.pvalue.AsSingleton(stats[s.name]) for s in others},
        )
        return {"pairs": pairs, "stats": merged}


FILTERS = Options("filters", FiltersConfig, "filters", add_arguments, config_from_args)


def _of_kind(config: FiltersConfig | None, kind: str) -> tuple[FilterStep, ...]:
    return tuple(s for s in config.steps if s.kind == kind) if config else ()


def _chain_stage(kind: str, doc: str, **more) -> Stage:
    """The stage of the per-pair filters of one kind, in `--filters` order."""
    return Stage(
        f"filters_{kind}",
        FILTERS,
        lambda config, ctx: ApplyFilters(_of_kind(config, kind)),
        statuses=("filtered:*", "error:filter", error(STORE_ERROR)),
        enabled=lambda config: bool(_of_kind(config, kind)),
        doc=doc,
        **more,
    )


TEXT_STAGE = _chain_stage(
    "text",
    "text filters on captions and URLs",
    crawl_key=lambda config: [settings(step) for step in config.text],
)
IMAGE_STAGE = _chain_stage("image", "image filters on the decoded pictures")
BATCH_STAGE = Stage(
    "filters_batch",
    FILTERS,
    lambda config, ctx: BatchFilters(config.batch),
    statuses=("filtered:*", "error:*"),
    enabled=lambda config: bool(config and config.batch),
    doc="batched filters (the model score)",
)
