"""The query-balanced sampler: CLIP's construction as MetaCLIP reconstructed it.

Each caption is matched against the query list (`pipeline.matching`); pairs that match no query
become `unmatched`. The matches are counted per query with a global combine, and a pair is kept
when, for any of its queries, a uniform draw falls under t / count of that query (queries with
fewer than t matches keep all their pairs). The draw is a hash of (seed, pass, pair key, query
id), so retries, runners and worker counts select the same pairs; dropped ones are
`balanced_out`.

It runs twice: before the download with headroom (t x h), which spares fetching the head
queries' surplus, and after download, dedup and filters with t itself, on what survived.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import apache_beam as beam
import numpy as np

from manifests import query_counts
from manifests.io import join
from manifests.query_list import load_queries
from manifests.schema import Pair
from pipeline.config_flags import config_from_flags, option
from pipeline.matching import QueryMatcher, TokenMatcher, never_matching, spaced_query
from pipeline.stage import Options, Stage, whole
from pipeline.stats import CountEvents

UNMATCHED = "unmatched"
BALANCED_OUT = "balanced_out"
_MATCH_BATCH = 4096  # captions matched in one pass
MATCHERS = {"tokens": TokenMatcher, "aho-corasick": QueryMatcher}  # same results, see matching.py


@dataclass(frozen=True)
class BalanceConfig:
    queries: str = option("", "query list that turns balancing on: one query a line (or `python "
                          "-m manifests.queries build` output) or MetaCLIP's metadata.json",
                          metavar="PATH")  # fmt: skip
    max_per_query: int = option(20_000, "t: the most pairs any query keeps")
    seed: int = option(0, flag="--balance-seed")
    headroom: float = option(2.0, "h: before download keep t x h per query, so failures and "
                             "duplicates do not starve the tail; 0 balances only after download",
                             flag="--prebalance-headroom")  # fmt: skip
    keep_unmatched: bool = option(False, "keep pairs whose caption matches no query (default: "
                                  "status unmatched, as WIT's construction)")  # fmt: skip
    fold_case: bool = option(False, "match captions to queries case-insensitively (default: "
                             "case-sensitive, as MetaCLIP)", flag="--match-ignore-case")  # fmt: skip
    matcher: str = option("tokens", "how captions are matched; both give MetaCLIP's matches, "
                          "tokens (numpy n-gram lookup) is faster than aho-corasick",
                          flag="--query-matcher", choices=sorted(MATCHERS))  # fmt: skip

    def __post_init__(self) -> None:
        if self.matcher not in MATCHERS:
            raise ValueError(f"matcher must be one of {sorted(MATCHERS)}, not {self.matcher!r}")
        if self.max_per_query < 1:
            raise ValueError(f"max_per_query must be at least 1, not {self.max_per_query}")
        if self.headroom != 0 and self.headroom < 1:
            raise ValueError(
                f"headroom must be 0 (no pass before download) or >= 1, not {self.headroom}"
            )


def draw(seed: int, salt: str, key: str, query_id: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, salt, key, query id)."""
    digest = hashlib.blake2b(f"{seed}:{salt}:{key}:{query_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def keep_probabilities(counts: np.ndarray, limit: float) -> np.ndarray:
    """Per query: 1 when it has at most `limit` matches, else limit / count."""
    return np.minimum(1.0, limit / np.maximum(counts, 1))


def is_kept(pair: Pair, probabilities: np.ndarray, seed: int, salt: str) -> bool:
    """MetaCLIP's rule: kept when any of the pair's queries draws it."""
    chances = probabilities[list(pair.queries)]
    if (chances >= 1.0).any():
        return True
    return any(
        draw(seed, salt, pair.key, q) < p
        for q, p in zip(pair.queries, chances.tolist(), strict=True)
    )


class QueryCounts(beam.CombineFn):
    """Matches per query, as one int64 array over the query ids (4 MB at 500k queries), so the
    global combine ships partial arrays rather than one record per match."""

    def __init__(self, size: int):
        self._size = size

    def create_accumulator(self) -> np.ndarray:
        return np.zeros(self._size, dtype=np.int64)

    def add_input(self, acc: np.ndarray, query_ids: Sequence[int]) -> np.ndarray:
        acc[list(query_ids)] += 1  # a pair lists each query once
        return acc

    def merge_accumulators(self, accs) -> np.ndarray:
        total = self.create_accumulator()
        for acc in accs:
            total += acc
        return total

    def extract_output(self, acc: np.ndarray) -> np.ndarray:
        return acc


class _MatchFn(beam.DoFn):
    """Sets each batch's matched query ids; the automaton is built once per worker."""

    def __init__(self, config: BalanceConfig):
        self._config = config

    def setup(self) -> None:
        matcher = MATCHERS[self._config.matcher]
        self._matcher = matcher(load_queries(self._config.queries), self._config.fold_case)

    def process(self, batch: list[Pair]):
        found = self._matcher.match_batch([p.caption for p in batch])
        for pair, ids in zip(batch, found, strict=True):
            matched = replace(pair, queries=tuple(ids))
            if ids or self._config.keep_unmatched:
                yield matched
            else:
                yield matched.with_status(UNMATCHED, "the caption matches no query")


class MatchQueries(beam.PTransform):
    """Pairs in, the same pairs out with their matched query ids; no match: `unmatched`.
    Stats: {"rows_in", "matched", "unmatched"} over the pairs that arrived ok, and
    "queries_never_matching" (`never_matching`) when the wiring counted them."""

    def __init__(self, config: BalanceConfig, never_matching_queries: int | None = None):
        super().__init__()
        self._config = config
        self._never = never_matching_queries

    def expand(self, pairs):
        passed = pairs | "NotOk" >> beam.Filter(lambda p: not p.is_ok)
        matched = (
            pairs
            | "Ok" >> beam.Filter(lambda p: p.is_ok)
            | "Batch" >> beam.BatchElements(min_batch_size=64, max_batch_size=_MATCH_BATCH)
            | "Match" >> beam.ParDo(_MatchFn(self._config))
        )
        events = matched | "Events" >> beam.FlatMap(
            lambda p: ["rows_in", "matched" if p.queries else UNMATCHED]
        )
        stats = events | "Stats" >> CountEvents(("rows_in", "matched", UNMATCHED), "balance")
        if self._never is not None:
            never = self._never
            stats = stats | "NeverMatching" >> beam.Map(
                lambda counts: {**counts, "queries_never_matching": never}
            )
        return {"pairs": (passed, matched) | "Merge" >> beam.Flatten(), "stats": stats}


class _SelectFn(beam.DoFn):
    """Draws each matched ok pair; an event per pair decided here goes to the stats."""

    EVENTS = "events"

    def __init__(self, seed: int, salt: str):
        self._seed, self._salt = seed, salt

    def process(self, pair: Pair, probabilities: np.ndarray):
        if not pair.is_ok or not pair.queries:
            yield pair
        elif is_kept(pair, probabilities, self._seed, self._salt):
            yield beam.pvalue.TaggedOutput(self.EVENTS, "kept")
            yield pair
        else:
            yield beam.pvalue.TaggedOutput(self.EVENTS, BALANCED_OUT)
            yield pair.with_status(BALANCED_OUT, "not drawn for any of its queries")


def _summary(counts_in: np.ndarray, counts_out: np.ndarray, limit: float) -> dict:
    return {
        "limit_per_query": limit,
        "queries_matched": int((counts_in > 0).sum()),
        "queries_over_limit": int((counts_in > limit).sum()),
        "query_matches_in": int(counts_in.sum()),
        "query_matches_out": int(counts_out.sum()),
    }


class Balance(beam.PTransform):
    """One balancing pass over pairs whose query ids are set: count, then draw.

    Returns {"pairs", "stats", "counts"}: stats count pairs in and out and queries over the
    limit; counts is a singleton (per-query matches before, after) for the query-count report.
    """

    def __init__(self, config: BalanceConfig, size: int, limit: float, salt: str):
        super().__init__()
        self._config, self._size, self._limit, self._salt = config, size, limit, salt

    def expand(self, pairs):
        size, seed, salt, limit = self._size, self._config.seed, self._salt, self._limit
        counted = lambda label, pcoll: (  # noqa: E731
            pcoll
            | f"{label}Ids" >> beam.FlatMap(lambda p: [p.queries] if p.is_ok and p.queries else [])
            | f"{label}Count" >> beam.CombineGlobally(QueryCounts(size))
        )
        counts_in = counted("In", pairs)
        probabilities = counts_in | "Probabilities" >> beam.Map(keep_probabilities, limit)
        decided = pairs | "Select" >> beam.ParDo(
            _SelectFn(seed, salt), beam.pvalue.AsSingleton(probabilities)
        ).with_outputs(_SelectFn.EVENTS, main="pairs")
        selected = decided["pairs"]
        counts_out = counted("Out", selected)
        counts = decided[_SelectFn.EVENTS] | "Stats" >> CountEvents(
            ("kept", BALANCED_OUT), "balance"
        )
        stats = counts | "Summary" >> beam.Map(
            lambda c, a, b: {"rows_in": c["kept"] + c[BALANCED_OUT], **c, **_summary(a, b, limit)},
            beam.pvalue.AsSingleton(counts_in),
            beam.pvalue.AsSingleton(counts_out),
        )
        both = counts_in | "Both" >> beam.Map(
            lambda a, b: (a, b), beam.pvalue.AsSingleton(counts_out)
        )
        return {"pairs": selected, "stats": stats, "counts": both}


def config_from_args(args: argparse.Namespace) -> BalanceConfig | None:
    """The flags' config; None (balancing off) without `--queries`."""
    config = config_from_flags(args, BalanceConfig, "balance")
    return config if config.queries else None


def _query_count(config: BalanceConfig, ctx) -> int:
    """The list's size, read once while the graph is wired: a bad list fails before the run,
    and queries that can never match are reported before it."""
    if "queries" not in ctx.shared:
        queries = load_queries(config.queries)
        ctx.shared["queries"] = len(queries)
        ctx.shared["queries_never_matching"] = warn_never_matching(queries, config.queries)
    return ctx.shared["queries"]


def warn_never_matching(queries: Sequence[str], name: str) -> int:
    """A query with punctuation not spaced apart matches no caption (`never_matching`): its
    pairs end `unmatched` with nothing else to say why, so the list is flagged up front.
    Returns how many the list holds, for the match stage's stats."""
    never = never_matching(queries)
    if never:
        examples = ", ".join(repr(queries[i]) for i in never[:3])
        logging.getLogger(__name__).warning(
            "%s: %d of %d queries can never match, since matching spaces the punctuation of "
            "captions apart (MetaCLIP's rule), e.g. %s; write them spaced as a caption is "
            "(%r) or without the punctuation", name, len(never), len(queries), examples,
            spaced_query(queries[never[0]]),
        )  # fmt: skip
    return len(never)


def _match(config: BalanceConfig, ctx) -> MatchQueries:
    _query_count(config, ctx)
    return MatchQueries(config, ctx.shared["queries_never_matching"])


def _prebalance(config: BalanceConfig, ctx) -> Balance:
    limit = config.max_per_query * config.headroom
    return Balance(config, _query_count(config, ctx), limit, "pre")


def _keep_counts(out: dict, config: BalanceConfig, ctx) -> None:
    ctx.shared["balance_before"] = out["counts"]


def write_query_counts(final: tuple, before: tuple | None, config: BalanceConfig, folder: str):
    """balance/: per-query counts at each pass (the pool, after the prebalance, final)."""
    final_in, final_kept = final
    pool, after_pre = before if before is not None else (final_in, final_in)
    columns = {"pool": pool, "after_prebalance": after_pre, "final_in": final_in}
    columns["final_kept"] = final_kept
    query_counts.write(folder, load_queries(config.queries), columns, config.max_per_query)


def _write_counts(out: dict, config: BalanceConfig, ctx) -> None:
    before = ctx.shared.get("balance_before")
    before = beam.pvalue.AsSingleton(before) if before is not None else None
    folder = join(ctx.staging, "balance")
    ctx.sinks.append(
        out["counts"] | "WriteQueryCounts" >> beam.Map(write_query_counts, before, config, folder)
    )


BALANCE = Options(
    "balance", BalanceConfig, "query balancing (CLIP / MetaCLIP)", from_args=config_from_args
)
MATCH_STAGE = Stage(
    "balance_match",
    BALANCE,
    _match,
    statuses=(UNMATCHED,),
    crawl_key=whole,
    doc="match captions against the query list",
)
PRE_STAGE = Stage(
    "balance_pre",
    BALANCE,
    _prebalance,
    statuses=(BALANCED_OUT,),
    enabled=lambda config: config is not None and bool(config.headroom),
    crawl_key=whole,
    collect=_keep_counts,
    doc="balance with headroom before the download",
)
FINAL_STAGE = Stage(
    "balance_final",
    BALANCE,
    lambda config, ctx: Balance(config, _query_count(config, ctx), config.max_per_query, "final"),
    statuses=(BALANCED_OUT,),
    collect=_write_counts,
    doc="balance to t per query after curation",
)
