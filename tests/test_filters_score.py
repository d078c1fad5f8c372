"""The score filter: thresholds and stats as plain functions, the transform on Beam, the model.

The transform tests score with `KeyScorer` (a score from each key's hash): they test the
stage's batching, global threshold and accounting, not a model. The model tests need the
trainer's tiny random checkpoint and are skipped until `trainer.checkpoint` exists.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
from collections import Counter

import apache_beam as beam
import pytest
from conftest import LOOPBACK, write_list
from PIL import Image

import beam_runner
from demo.corpus import generate
from filters.score import (
    SCORE_RESOLUTION,
    ScoreConfig,
    histogram_quantiles,
    quantise,
    score_reason,
    top_fraction_threshold,
)
from manifests.schema import Pair, error
from pipeline.filtering import ScoreFilter

_SINK: dict[str, list] = {}


def _collect(element, name: str) -> None:
    _SINK.setdefault(name, []).append(element)


class KeyScorer:
    """A stand-in for a model: a score in [-1, 1) from the hash of each pair's key."""

    def __init__(self, config: ScoreConfig):
        self.config = config

    def score(self, pairs):
        return [
            int.from_bytes(hashlib.sha256(p.key.encode()).digest()[:4], "big") / 2**31 - 1
            for p in pairs
        ]


def make_pairs(count: int) -> list[Pair]:
    pairs = [
        Pair(f"00000{i:010d}", "http://x/", f"caption {i}", image=b"jpeg") for i in range(count)
    ]
    pairs[3] = pairs[3].with_status(error("http_404"))
    return pairs


def run_score(pairs, config):
    _SINK.clear()
    with beam.Pipeline() as p:
        result = p | beam.Create(pairs) | ScoreFilter(config, KeyScorer)
        result["pairs"] | "CollectPairs" >> beam.Map(_collect, "pairs")
        result["stats"] | "CollectStats" >> beam.Map(_collect, "stats")
    return _SINK["pairs"], _SINK["stats"][0]


def test_top_fraction_keeps_whole_bins_within_budget():
    histogram = {quantise(s): n for s, n in [(0.31, 5), (0.30, 3), (0.2, 10), (-0.1, 2)]}
    assert top_fraction_threshold(histogram, 0.25) == pytest.approx(0.31)  # 5 of budget 5
    assert top_fraction_threshold(histogram, 0.45) == pytest.approx(0.30)  # 8 of budget 9
    assert top_fraction_threshold(histogram, 0.1) == pytest.approx(0.31)  # one bin at least
    assert top_fraction_threshold(histogram, 1.0) == pytest.approx(-0.1)
    assert top_fraction_threshold({}, 0.5) is None


def test_quantiles_and_reasons():
    histogram = Counter(quantise(i / 100) for i in range(100))
    assert histogram_quantiles(histogram, (0.0, 0.5, 0.9)) == [0.0, 0.5, 0.9]
    config = ScoreConfig(score_checkpoint="c.pt", min_score=0.2)
    assert score_reason(0.19, config, None) == "low_score"
    assert score_reason(0.25, config, 0.3) == "not_top"
    assert score_reason(0.3 - SCORE_RESOLUTION / 4, config, 0.3) is None  # same bin: kept
    with pytest.raises(ValueError):
        ScoreConfig(score_checkpoint="c.pt", keep_top_fraction=1.5)


def test_score_filter_keeps_the_top_fraction_and_scores_every_pair():
    pairs = make_pairs(300)
    out, stats = run_score(pairs, ScoreConfig(score_checkpoint="-", keep_top_fraction=0.2))
    assert sorted(p.key for p in out) == [p.key for p in pairs]
    scored = [p for p in out if p.score is not None]
    assert len(scored) == 299 == stats["scored"] and out.count(pairs[3]) == 1
    kept = [p for p in out if p.is_ok]
    assert len(kept) == stats["kept"] <= math.ceil(0.2 * 299) and len(kept) >= 0.19 * 299
    assert min(p.score for p in kept) > max(p.score for p in scored if not p.is_ok)
    assert stats["dropped"] == {"not_top": 299 - len(kept)} and stats["passed_through"] == 1
    assert stats["rows_in"] == 300
    assert stats["top_fraction_threshold"] == pytest.approx(min(p.score for p in kept))
    assert stats["score_scope"] == "query"  # the default: no queries here, the global threshold


def test_score_filter_min_score():
    pairs = make_pairs(100)
    out, stats = run_score(pairs, ScoreConfig(score_checkpoint="-", min_score=0.0))
    statuses = Counter(p.status for p in out)
    assert statuses["filtered:score:low_score"] == sum(p.score < 0 for p in out if p.score)
    assert all(p.score >= 0 for p in out if p.is_ok)
    assert stats["kept"] == statuses["ok"] and stats["score_quantiles"]["0.5"] is not None


class CaptionScorer:
    """A stand-in for a model that scores each pair with the number its caption ends in."""

    def __init__(self, config: ScoreConfig):
        self.config = config

    def score(self, pairs):
        return [float(p.caption.split()[-1]) for p in pairs]


def test_query_scope_keeps_each_querys_best_where_one_threshold_empties_the_rare_concept():
    def key(i: int) -> str:
        return f"00000{i:010d}"

    head = [Pair(key(i), "http://x/", f"dog {0.2 + i / 1000}", image=b"j", queries=(0,))
            for i in range(200)]  # fmt: skip
    rare = [Pair(key(1000 + i), "http://x/", f"axolotl {0.01 * (i + 1)}", image=b"j", queries=(1,))
            for i in range(4)]  # scored low: a raw-pool model barely saw it  # fmt: skip
    both = Pair(key(2000), "http://x/", "dog and axolotl 0.035", image=b"j", queries=(0, 1))
    loose = Pair(key(3000), "http://x/", "no query 0.25", image=b"j")  # kept unmatched
    high = Pair(key(3001), "http://x/", "no query 0.35", image=b"j")
    pairs = [*head, *rare, both, loose, high]

    def kept(scope: str) -> set[str]:
        config = ScoreConfig(score_checkpoint="-", keep_top_fraction=0.5, score_scope=scope)
        _SINK.clear()
        with beam.Pipeline() as p:
            result = p | beam.Create(pairs) | ScoreFilter(config, CaptionScorer)
            result["pairs"] | beam.Map(_collect, "pairs")
        out = _SINK["pairs"]
        assert sorted(q.key for q in out) == sorted(q.key for q in pairs)  # every row accounted
        return {q.key for q in out if q.is_ok}

    assert not kept("global") & {r.key for r in rare}  # the whole concept gone
    by_query = kept("query")
    assert by_query & {r.key for r in rare} == {key(1002), key(1003)}  # ceil(0.5 x 5) = 3 of 5
    assert both.key in by_query  # the rare query's third best, though not among the head's
    assert len(by_query & {h.key for h in head}) == 101  # ceil(0.5 x 201), its own best
    lowest_head = min(float(h.caption.split()[-1]) for h in head if h.key in by_query)
    assert lowest_head == pytest.approx(0.299)
    assert loose.key not in by_query and high.key in by_query  # no query: the global threshold
    with pytest.raises(ValueError, match="score-scope"):
        ScoreConfig(score_checkpoint="c.pt", score_scope="concept")


# The model: runs once the trainer exists.


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A randomly initialised tiny openwit CLIP, its tokenizer trained on demo captions."""
    checkpoint = pytest.importorskip("trainer.checkpoint")
    from trainer.model import CONFIGS
    from trainer.tokenizer import CaptionTokenizer

    captions = [image.caption for image in generate(64, seed=5)]
    tokenizer = CaptionTokenizer.train(captions, 300, CONFIGS["tiny"].context_length)
    config = dataclasses.replace(CONFIGS["tiny"], vocab_size=tokenizer.vocab_size)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    checkpoint.save_initial(path, config, tokenizer)
    return str(path)


def _jpeg(data: bytes) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(out, format="JPEG")
    return out.getvalue()


def test_model_scores_are_cosines_independent_of_the_batch(tiny_checkpoint):
    from filters.score import Scorer

    images = generate(6, seed=3, min_side=64, max_side=200)
    pairs = [
        Pair(f"00000{i:010d}", "u", im.caption, image=_jpeg(im.data)) for i, im in enumerate(images)
    ]
    scorer = Scorer(tiny_checkpoint)
    together = scorer.score(pairs)
    alone = [scorer.score([p])[0] for p in pairs]
    assert all(-1.0 <= s <= 1.0 for s in together)
    assert together == pytest.approx(alone, abs=1e-4)
    assert len(set(round(s, 4) for s in together)) > 1


def test_score_filter_with_a_checkpoint(tiny_checkpoint):
    images = generate(8, seed=4, min_side=64, max_side=200)
    pairs = [
        Pair(f"00000{i:010d}", "u", im.caption, image=_jpeg(im.data)) for i, im in enumerate(images)
    ]
    _SINK.clear()
    with beam.Pipeline() as p:
        config = ScoreConfig(score_checkpoint=tiny_checkpoint, keep_top_fraction=0.5)
        result = p | beam.Create(pairs) | ScoreFilter(config)
        result["pairs"] | beam.Map(_collect, "pairs")
    out = _SINK["pairs"]
    assert len(out) == 8 and all(p.score is not None for p in out)
    assert 1 <= sum(p.is_ok for p in out) <= 4


def test_score_filter_runs_as_a_batched_filter_of_the_registry(
    tmp_path, tiny_checkpoint, server, corpus
):
    """`--filters caption,score`: one registry, one flag; the batched filter is a stage of the
    list, its stats under its name and its drops in the funnel."""
    rows = [{"url": server.url(f"img/{i.name}"), "caption": i.caption} for i in corpus[:10]]
    path = write_list(tmp_path / "list.csv", rows, "csv")
    out = tmp_path / "out"
    beam_runner.run(["--input", str(path), "--output", str(out), "--allowed-networks", LOOPBACK,
                     "--dedup", "none", "--image-size", "64", "--filters", "caption,score",
                     "--score-checkpoint", tiny_checkpoint, "--keep-top-fraction", "0.5"])  # fmt: skip
    stats = json.loads((out / "stats.json").read_text())
    score = stats["filters_batch"]["score"]
    assert score["scored"] == 10 and score["kept"] == stats["samples"] <= 5
    (row,) = [r for r in stats["funnel"] if r["stage"] == "filters_batch"]
    assert row["dropped"] == {"filtered:score:not_top": 10 - score["kept"]}
