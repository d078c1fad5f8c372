"""Query matching (MetaCLIP's rule) and the balanced sampler, alone and through the pipeline."""

from __future__ import annotations

import gzip
import json
import math
import re
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from conftest import LOOPBACK, write_list
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import beam_runner
from manifests.query_list import load_queries
from manifests.schema import Pair
from pipeline.balance import (
    BALANCED_OUT,
    UNMATCHED,
    Balance,
    BalanceConfig,
    MatchQueries,
    draw,
    keep_probabilities,
    warn_never_matching,
)
from pipeline.matching import (
    QueryMatcher,
    TokenMatcher,
    never_matching,
    reference_match,
    spaced_tokens,
    spacing,
)

WORDS = ["new", "york", "city", "New", "York", "a", "an", "red", "Paris", "paris", "the", "Ünï"]
QUERY_POOL = [*WORDS, "new york", "new york city", "york city", "New York", "a red", "U.S.", "a.",
              "a new york city", "the red", "ünï"]  # fmt: skip
JOINERS = [
    " ",
    " ",
    " ",
    ", ",
    ". ",
    "\t",
    "\n",
    "\r",
    "  ",
    "!",
    "`",
    "-",
    ";",
    "?",
    ":",
    ",,",
    " ,",
]


@st.composite
def captions(draw_: st.DrawFn) -> str:
    parts = draw_(st.lists(st.sampled_from(WORDS), min_size=0, max_size=9))
    text = ""
    for part in parts:
        text += part + draw_(st.sampled_from(JOINERS))
    return text if draw_(st.booleans()) else text.strip()


@settings(max_examples=300, deadline=None)
@given(
    queries=st.lists(st.sampled_from(QUERY_POOL), min_size=1, max_size=12),
    texts=st.lists(captions(), min_size=1, max_size=8),
    fold_case=st.booleans(),
)
def test_both_matchers_agree_with_the_reference_rule(queries, texts, fold_case):
    if fold_case:
        expected = [reference_match(t.lower(), [q.lower() for q in queries]) for t in texts]
    else:
        expected = [reference_match(t, queries) for t in texts]
    for matcher in (QueryMatcher(queries, fold_case), TokenMatcher(queries, fold_case)):
        assert matcher.match_batch(texts) == expected
        assert [matcher.match(t) for t in texts] == expected


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab Ü€\t\n\r,.;:?!`-\x00"), max_size=30))
def test_spaced_tokens_cut_the_text_where_spacing_and_split_do(text):
    data, starts, ends = spaced_tokens(text)
    tokens = [
        data[start:end].tobytes().decode("utf-8") for start, end in zip(starts, ends, strict=True)
    ]
    assert tokens == spacing(text).split(" ")[1:-1]


PUNCTUATED = st.text(alphabet=st.sampled_from("ab ,.!"), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(query=PUNCTUATED, texts=st.lists(PUNCTUATED, max_size=20))
def test_a_query_flagged_never_matching_matches_no_caption_and_any_other_matches_one(query, texts):
    query = " ".join(query.split())
    if not query:
        return
    tight = re.sub(r" ?([,.!]) ?", r"\1", query)  # the caption the query reads as once spaced
    captions = [*texts, query, tight]
    if never_matching([query]):
        assert all(reference_match(caption, [query]) == [] for caption in captions)
    else:
        assert reference_match(tight, [query]) == [0]


def test_a_list_with_queries_that_can_never_match_is_flagged(caplog):
    queries = ["The letter P.", "red apple", "St. Louis", "a , b", "a , , b", "U.S."]
    assert never_matching(queries) == [0, 2, 4, 5]
    assert reference_match("The letter P.", queries) == []  # why: the caption is spaced apart
    assert reference_match("The letter P.", ["The letter P ."]) == [0]
    with caplog.at_level("WARNING"):
        assert warn_never_matching(queries, "q.txt") == 4
    assert "q.txt: 4 of 6 queries can never match" in caplog.text
    assert "'The letter P.'" in caplog.text and "'The letter P .'" in caplog.text
    caplog.clear()
    assert warn_never_matching(["red apple", "a , b"], "ok.txt") == 0
    assert caplog.text == ""


@pytest.mark.parametrize("matcher_class", [QueryMatcher, TokenMatcher])
def test_overlapping_and_nested_queries_all_match(matcher_class):
    queries = ["new york", "new york city", "york", "York", "city", "a new york city hall", "york"]
    matcher = matcher_class(queries)
    assert matcher.match("I love New York city, and new york city.") == [0, 1, 2, 3, 4, 6]
    assert matcher.match("a new york city hall!") == [0, 1, 2, 4, 5, 6]
    assert matcher.match("newyork") == [] and matcher.match("york\tcity") == [2, 4, 6]


@pytest.mark.parametrize("matcher_class", [QueryMatcher, TokenMatcher])
def test_a_caption_with_the_batch_separator_stays_in_its_own_batch_slot(matcher_class):
    matcher = matcher_class(["a b", "b"])
    assert matcher.match_batch(["a\x00b", "a b", "", "b"]) == [[], [0, 1], [], [1]]
    with pytest.raises(ValueError, match="control character"):
        matcher_class(["a\x00b"])


def test_draws_are_uniform_and_fixed_by_their_inputs():
    values = np.array([draw(7, "final", f"k{i}", 3) for i in range(20_000)])
    assert abs(values.mean() - 0.5) < 0.01 and 0 <= values.min() and values.max() < 1
    assert draw(7, "final", "k1", 3) == draw(7, "final", "k1", 3) != draw(8, "final", "k1", 3)
    probabilities = keep_probabilities(np.array([0, 5, 10, 40]), 10)
    assert probabilities.tolist() == [1.0, 1.0, 1.0, 0.25]


# ---- balancing on Beam -------------------------------------------------------------------------

QUERIES = ["red", "blue", "green", "yellow"]
LIMIT = 300


def pool() -> list[Pair]:
    """4000 red-only, 1500 blue-only, 60 green-only, 400 red-and-blue, 40 matching nothing."""
    groups = [("a red cup", 4000), ("blue sky", 1500), ("green.", 60), ("red and blue", 400)]
    groups.append(("nothing here", 40))
    pairs, index = [], 0
    for caption, count in groups:
        for _ in range(count):
            pairs.append(Pair(key=f"{index:015d}", url=f"http://x.test/{index}", caption=caption))
            index += 1
    return pairs


def run_balance(folder: Path, options: list[str] = ()) -> tuple[dict, dict]:
    """MatchQueries + Balance on a real pipeline; ({key: (status, queries)}, stats)."""
    query_file = folder / "queries.txt"
    folder.mkdir(parents=True)
    query_file.write_text("\n".join(QUERIES) + "\n")
    config = BalanceConfig(str(query_file), max_per_query=LIMIT, seed=5)
    with beam.Pipeline(options=PipelineOptions(list(options))) as p:
        matched = p | beam.Create(pool(), reshuffle=False) | MatchQueries(config)
        out = matched["pairs"] | Balance(config, len(QUERIES), LIMIT, "final")
        rows = out["pairs"] | "Rows" >> beam.Map(lambda q: json.dumps([q.key, q.status, q.queries]))
        rows | "WriteRows" >> beam.io.WriteToText(str(folder / "rows"))
        stats = (out["stats"], matched["stats"]) | beam.Flatten() | "Json" >> beam.Map(json.dumps)
        stats | "WriteStats" >> beam.io.WriteToText(str(folder / "stats"))
    rows = [json.loads(line) for path in folder.glob("rows*") for line in path.open()]
    stats = {}
    for path in folder.glob("stats*"):
        for line in path.open():
            stats.update(json.loads(line))
    return {key: (status, tuple(ids or ())) for key, status, ids in rows}, stats


@pytest.fixture(scope="module")
def balanced(tmp_path_factory):
    return run_balance(tmp_path_factory.mktemp("balance") / "direct")


def kept_per_query(rows: dict) -> list[int]:
    counts = [0] * len(QUERIES)
    for status, ids in rows.values():
        if status == "ok":
            for query_id in ids:
                counts[query_id] += 1
    return counts


def test_head_queries_keep_about_t_and_the_tail_keeps_everything(balanced):
    rows, stats = balanced
    assert len(rows) == 6000
    red_only = sum(1 for s, ids in rows.values() if ids == (0,) and s == "ok")
    blue_only = sum(1 for s, ids in rows.values() if ids == (1,) and s == "ok")
    for kept, n in ((red_only, 4400), (blue_only, 1900)):  # counts include the shared 400
        p = LIMIT / n
        expected, sd = (n - 400) * p, math.sqrt((n - 400) * p * (1 - p))
        assert abs(kept - expected) < 5 * sd, (kept, expected, sd)
    both = sum(1 for s, ids in rows.values() if ids == (0, 1) and s == "ok")
    p_both = 1 - (1 - LIMIT / 4400) * (1 - LIMIT / 1900)  # kept if either query draws it
    assert abs(both - 400 * p_both) < 5 * math.sqrt(400 * p_both * (1 - p_both))
    assert kept_per_query(rows)[2:] == [60, 0]  # green is under t: all kept; yellow unmatched
    statuses = [s for s, _ in rows.values()]
    assert statuses.count(UNMATCHED) == 40
    assert statuses.count(BALANCED_OUT) == 5960 - statuses.count("ok")
    assert stats["rows_in"] == 5960 and stats[BALANCED_OUT] == statuses.count(BALANCED_OUT)
    assert (stats["matched"], stats[UNMATCHED], stats["queries_over_limit"]) == (5960, 40, 2)


def test_selection_is_the_same_across_runs_and_runners(balanced, tmp_path):
    again, _ = run_balance(tmp_path / "again")
    workers = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    multi, _ = run_balance(tmp_path / "multi", workers)
    assert again == balanced[0] == multi


# ---- through beam_runner -----------------------------------------------------------------------


def test_pipeline_balances_before_and_after_download(tmp_path, server, corpus):
    jpeg = next(image for image in corpus if image.name.endswith(".jpg"))
    rows = []
    for i in range(120):  # every row a distinct URL of the same picture
        caption = "a photo of a red thing." if i < 80 else "one blue thing"
        rows.append({"url": server.url(f"img/{jpeg.name}?copy={i}"), "caption": caption})
    rows += [{"url": server.url(f"img/{jpeg.name}?copy=x{i}"), "caption": "zzz"} for i in range(6)]
    path = write_list(tmp_path / "list.csv", rows, "csv")
    (tmp_path / "queries.json").write_text(json.dumps(["red", "blue", "green", "red thing."]))
    out = tmp_path / "out"
    beam_runner.run(["--input", str(path), "--output", str(out), "--allowed-networks", LOOPBACK,
                     "--dedup", "none", "--queries", str(tmp_path / "queries.json"),
                     "--max-per-query", "10", "--prebalance-headroom", "2", "--image-size", "64"])  # fmt: skip
    stats = json.loads((out / "stats.json").read_text())
    counts = stats["status_counts"]
    assert sum(counts.values()) == stats["input_rows"] == 126 and counts[UNMATCHED] == 6
    assert stats["balance_match"] == {"rows_in": 126, "matched": 120, UNMATCHED: 6,
                                      "queries_never_matching": 1}  # fmt: skip
    pre, final = stats["balance_pre"], stats["balance_final"]
    assert pre["rows_in"] == 120 and final["rows_in"] == pre["kept"] < 70  # head cut before fetch
    assert counts["ok"] == final["kept"] and counts[BALANCED_OUT] == 120 - final["kept"]
    table = pq.read_table(out / "balance/query_counts.parquet").to_pylist()
    by_query = {row["query"]: row for row in table}
    assert (
        by_query["red"]["pool"] == 80 and by_query["blue"]["pool"] == 40 and "green" not in by_query
    )
    assert "red thing." not in by_query  # 80 captions end so, but matching spaces "." apart
    assert by_query["red"]["after_prebalance"] == by_query["red"]["final_in"]
    assert sum(r["final_kept"] for r in table) == counts["ok"]
    assert Image.open(out / "balance/query_counts.png").size[0] > 300
    manifest = [
        r for f in (out / "manifest").glob("*.parquet") for r in pq.read_table(f).to_pylist()
    ]
    assert all(
        r["queries"] == ([0] if "red" in r["caption"] else [1])
        for r in manifest
        if r["status"] == "ok"
    )


def test_query_lists_load_from_plain_tsv_json_and_gzip(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("Paris\n  new   york \n\nparis\nParis\n")
    tsv = tmp_path / "built.tsv"
    tsv.write_text("query\tsources\nParis\twordnet,titles\nnew york\tbigram\n")
    meta = tmp_path / "metadata.json.gz"
    meta.write_bytes(gzip.compress(json.dumps(["Paris", "new york", "paris"]).encode()))
    assert load_queries(str(plain)) == ["Paris", "new york", "paris"]
    assert load_queries(str(tsv)) == ["Paris", "new york"]
    assert load_queries(str(meta)) == ["Paris", "new york", "paris"]
    (tmp_path / "bad.json").write_text('{"a": 1}')
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="list of strings"):
        load_queries(str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="no query"):
        load_queries(str(tmp_path / "empty.txt"))
