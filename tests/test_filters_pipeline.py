"""The filter transforms on Beam: conservation, the funnel, metrics, plugins, runner determinism."""

from __future__ import annotations

import io
import json
import sys
from collections import Counter

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from conftest import LOOPBACK, write_list
from PIL import Image, ImageDraw
from test_filters import _parse, emoji_captions

import beam_runner
from demo.server import CorpusServer
from filters.base import step
from filters.caption import CaptionConfig
from filters.lang import LangConfig
from manifests.schema import Pair, error
from pipeline.crawl import Crawl, CrawlConfig
from pipeline.fetch import FetchPolicy
from pipeline.filtering import PASSED, ApplyFilters, apply_chain, config_from_args

MULTI_PROCESSING = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]


def make_pairs() -> list[Pair]:
    """Real multilingual captions, junk captions and rows an earlier stage dropped."""
    captions = [c for code in ("en", "de", "ja", "ru") for c in emoji_captions(code, 12, seed=3)]
    captions += ["IMG_2043.JPG", "untitled", "https://example.com/x.png", "dog dog dog", "42"]
    captions += [n for n in emoji_captions("en", 8, names_per_caption=1, seed=4)]  # short ones
    pairs = [Pair(key=f"00000{i:010d}", url=f"http://x/{i}.jpg", caption=c)
             for i, c in enumerate(captions)]  # fmt: skip
    pairs[1] = pairs[1].with_status(error("bad_url"), "no host")
    return pairs


_SINK: dict[str, list] = {}


def _collect(element, name: str) -> None:
    """A module function, pickled by reference: the in-process runner appends to this _SINK."""
    _SINK.setdefault(name, []).append(element)


def run_chain(pairs: list[Pair], steps):
    """Run ApplyFilters on the in-process runner; return (output pairs, funnel, result)."""
    _SINK.clear()
    with beam.Pipeline() as p:
        result = p | beam.Create(pairs) | ApplyFilters(steps)
        result["pairs"] | "CollectPairs" >> beam.Map(_collect, "pairs")
        result["stats"] | "CollectStats" >> beam.Map(_collect, "stats")
    (funnel,) = _SINK["stats"]
    return _SINK.get("pairs", []), funnel, p.result


STEPS = (step("lang", LangConfig(lang=("en",))), step("caption", CaptionConfig(min_words=2)))


def test_funnel_adds_up_and_matches_statuses_and_metrics():
    pairs = make_pairs()
    out, funnel, result = run_chain(pairs, STEPS)
    assert sorted(p.key for p in out) == sorted(p.key for p in pairs)  # each pair exactly once
    statuses = Counter(p.status for p in out)
    assert funnel["rows_in"] == len(pairs) == funnel["passed_through"] + funnel["ok_in"]
    assert funnel["passed_through"] == 1 and funnel["ok_out"] == statuses["ok"]
    rows = funnel["ok_in"]
    for row in funnel["filters"]:
        assert row["rows_in"] == rows and row["rows_out"] == rows - sum(row["dropped"].values())
        for reason, count in row["dropped"].items():
            assert statuses[f"filtered:{row['filter']}:{reason}"] == count
        rows = row["rows_out"]
    assert rows == funnel["ok_out"]
    assert all(row["dropped"] for row in funnel["filters"])  # both filters did drop something
    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(MetricsFilter().with_namespace("filters"))["counters"]
    }
    assert counters["chain:kept"] == funnel["ok_out"]
    assert counters["lang:other_language"] == funnel["filters"][0]["dropped"]["other_language"]


def test_languages_are_recorded_and_dropped_pairs_keep_what_they_had():
    pairs = make_pairs()
    out, _, _ = run_chain(pairs, STEPS)
    by_key = {p.key: p for p in out}
    assert by_key[pairs[1].key] == pairs[1]  # arrived dropped: untouched
    judged = [p for p in out if p.language is not None]
    assert {"en", "de", "ja", "ru"} <= {p.language for p in judged}
    other = [p for p in out if p.status == "filtered:lang:other_language"]
    assert other and all(p.language not in (None, "en") for p in other)
    assert all(p.status != "filtered:lang:other_language" for p in out if p.language == "en")


def test_same_results_on_multi_processing_runner():
    pairs = make_pairs()
    expected = [
        apply_chain(p, [s.resolve() for s in STEPS], [s.config for s in STEPS]) for p in pairs
    ]
    with beam.Pipeline(options=PipelineOptions(MULTI_PROCESSING)) as p:
        result = p | beam.Create(pairs) | ApplyFilters(STEPS)
        assert_that(result["pairs"], equal_to([pair for pair, _ in expected]))
        funnel = result["stats"] | beam.Map(lambda f: (f["ok_out"], f["passed_through"]))
        kept = sum(1 for _, outcome in expected if outcome != PASSED and outcome[1] == "")
        assert_that(funnel, equal_to([(kept, 1)]), label="funnel")


PLUGIN = '''
from dataclasses import dataclass
from filters.base import register

@dataclass(frozen=True)
class NoWordConfig:
    word: str = "cat"

@register("no_word", "text", NoWordConfig)
def no_word(pair, config):
    """Drop captions that mention a word (a user's own filter)."""
    return "has_word" if config.word in pair.caption.lower().split() else None
'''


def test_user_filter_from_a_plugin_module_runs(tmp_path, monkeypatch):
    (tmp_path / "my_filters.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = config_from_args(
        _parse(
            "--filter-plugins",
            "my_filters",
            "--filters",
            "no_word,caption",
            "--filter-option",
            "no_word.word=dog",
        )  # fmt: skip
    )
    pairs = [Pair(key=f"00000{i:010d}", url="http://x/", caption=c)
             for i, c in enumerate(["a dog on a sofa", "a cat on a sofa", "untitled"])]  # fmt: skip
    out, funnel, _ = run_chain(pairs, config.text)
    assert sorted(p.status for p in out) == ["filtered:caption:placeholder",
                                             "filtered:no_word:has_word", "ok"]  # fmt: skip
    assert [row["filter"] for row in funnel["filters"]] == ["no_word", "caption"]
    sys.modules.pop("my_filters", None)


def test_a_failing_filter_costs_its_pair_not_the_run(tmp_path, monkeypatch):
    bad = PLUGIN.replace('"no_word"', '"bad_word"').replace(
        'return "has_word" if', 'return "Bad Reason!" if'
    )
    (tmp_path / "bad_filters.py").write_text(bad)
    monkeypatch.syspath_prepend(str(tmp_path))
    import bad_filters  # noqa: F401  (registers bad_word)

    pairs = [Pair(key=f"00000{i:010d}", url="http://x/", caption=c)
             for i, c in enumerate(["a cat on a sofa", "a dog"])]  # fmt: skip
    out, funnel, _ = run_chain(pairs, [step("bad_word")])
    assert sorted(p.status for p in out) == [error("filter"), "ok"]
    assert funnel["filters"][0]["dropped"] == {"error": 1}
    sys.modules.pop("bad_filters", None)


BAD_UPDATES = """
from dataclasses import dataclass
from filters.base import Verdict, register

@dataclass(frozen=True)
class NoConfig:
    pass

@register("bad_updates", "text", NoConfig)
def bad_updates(pair, config):
    if "cat" in pair.caption:
        return Verdict(None, updates={"langauge": "en"})  # a misspelt field
    if "dog" in pair.caption:
        return Verdict(None, updates={"language": 5})  # a wrong type
    return Verdict(None, updates={"language": "en"})
"""


def test_bad_verdict_updates_cost_their_pair_not_the_run(tmp_path, monkeypatch):
    (tmp_path / "bad_updates.py").write_text(BAD_UPDATES)
    monkeypatch.syspath_prepend(str(tmp_path))
    import bad_updates  # noqa: F401  (registers bad_updates)

    pairs = [Pair(key=f"00000{i:010d}", url="http://x/", caption=c)
             for i, c in enumerate(["a cat", "a dog", "a bird"])]  # fmt: skip
    out, funnel, _ = run_chain(pairs, [step("bad_updates")])
    by_caption = {p.caption: p for p in out}
    assert by_caption["a cat"].status == by_caption["a dog"].status == error("filter")
    assert "langauge" in by_caption["a cat"].error_message
    assert "language=5" in by_caption["a dog"].error_message
    assert (by_caption["a bird"].status, by_caption["a bird"].language) == ("ok", "en")
    assert funnel["filters"][0]["dropped"] == {"error": 2}
    sys.modules.pop("bad_updates", None)


def _jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(scope="module")
def image_server():
    def shape(size):
        image = Image.new("RGB", size, (200, 180, 140))
        ImageDraw.Draw(image).ellipse((size[0] // 4, size[1] // 4, size[0] * 3 // 4,
                                       size[1] * 3 // 4), fill=(30, 60, 220))  # fmt: skip
        return _jpeg(image)

    images = {"ok.jpg": shape((300, 200)), "small.jpg": shape((50, 40)),
              "long.jpg": shape((900, 100)), "blank.jpg": _jpeg(Image.new("RGB", (300, 300)))}  # fmt: skip
    with CorpusServer(images) as srv:
        yield srv


def test_image_filter_after_a_real_crawl(image_server):
    names = ["ok.jpg", "small.jpg", "long.jpg", "blank.jpg", "missing.jpg"]
    pairs = [Pair(key=f"00000{i:010d}", url=image_server.url(f"img/{n}"), caption=n)
             for i, n in enumerate(names)]  # fmt: skip
    crawl = CrawlConfig(fetch=FetchPolicy(allowed_networks=(LOOPBACK,), retries=0), threads=4)
    _SINK.clear()
    with beam.Pipeline() as p:
        crawled = (p | beam.Create(pairs) | Crawl(crawl))["pairs"]
        result = crawled | ApplyFilters([step("image")])
        result["pairs"] | beam.Map(_collect, "pairs")
    out = _SINK["pairs"]
    statuses = {p.caption: p.status for p in out}
    assert statuses["ok.jpg"] == "ok"
    assert statuses["small.jpg"] == "filtered:image:too_small"
    assert statuses["long.jpg"] == "filtered:image:aspect_ratio"
    assert statuses["blank.jpg"] == "filtered:image:uniform"
    assert statuses["missing.jpg"].startswith("error:")
    assert all(p.image is None for p in out if not p.is_ok)


def test_end_to_end_through_the_cli(tmp_path, image_server):
    """beam_runner with --filters: statuses in the manifest, funnels in stats.json, all add up."""

    rows = [{"url": image_server.url("img/ok.jpg"), "caption": c} for c in emoji_captions("en", 6)]
    rows += [{"url": image_server.url("img/ok.jpg"), "caption": c} for c in emoji_captions("de", 4)]
    rows += [{"url": image_server.url(f"img/{n}"), "caption": "a shape on a plain background"}
             for n in ("small.jpg", "blank.jpg", "missing.jpg")]  # fmt: skip
    rows += [{"url": image_server.url("img/ok.jpg"), "caption": "IMG_2043.JPG"}]
    path = write_list(tmp_path / "list.jsonl", rows, "jsonl")
    out = tmp_path / "out"
    beam_runner.run(["--input", str(path), "--output", str(out), "--allowed-networks", LOOPBACK,
                     "--retries", "0", "--filters", "caption,lang,image"])  # fmt: skip
    stats = json.loads((out / "stats.json").read_text())
    statuses = Counter(
        r["status"]
        for f in (out / "manifest").glob("*.parquet")
        for r in pq.read_table(f).to_pylist()
    )
    assert sum(statuses.values()) == stats["input_rows"] == len(rows)
    text, image = stats["filters_text"], stats["filters_image"]
    assert text["rows_in"] == image["rows_in"] == len(rows)
    assert [row["filter"] for row in text["filters"]] == ["caption", "lang"]
    for funnel in (text, image):
        for row in funnel["filters"]:
            for reason, count in row["dropped"].items():
                assert statuses[f"filtered:{row['filter']}:{reason}"] == count
    assert image["ok_out"] == statuses["ok"] == stats["samples"]
    assert statuses["filtered:caption:file_name"] == 1 and statuses["filtered:image:uniform"] == 1
