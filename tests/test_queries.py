"""The query list: the loaders for each format, each builder source, merging, and the CLI."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest

from manifests.queries import (
    build_queries,
    corpus_terms,
    load_queries,
    main,
    merge_into,
    open_lines,
    pad_ranked,
    pmi_ratio,
    source_sizes,
    symspell_bigrams,
    titles,
    wordfreq_words,
    wordnet_lemmas,
    wordninja_words,
)

WORDNET_HEADER = (
    "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    "  2 Princeton University under the following license.  By obtaining, using  \n"
)
TEN_WORDS = " ".join(f"w{i} 0" for i in range(10))  # w_cnt is hex: "0a" is ten


def write_wordnet(folder: Path) -> Path:
    """data.noun and data.adj in WordNet 3.0's real layout, licence header included."""
    folder.mkdir()
    (folder / "data.noun").write_text(
        WORDNET_HEADER
        + "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived\n"
        + "09119276 15 n 02 New_York 0 New_York_City 0 001 @ 08524735 n 0000 | a city\n"
        + f"09999999 15 n 0a {TEN_WORDS} 000 | ten words\n"
    )
    (folder / "data.adj").write_text(
        WORDNET_HEADER
        + "00001740 00 a 02 able(a) 0 capable 0 001 ! 00002098 a 0101 | (usually)\n"
        + "00002098 00 a 01 unable(p) 0 000 | not able\n"
        + "00003000 00 s 01 elect(ip) 0 000 | chosen\n"
        + "00004000 00 a 01 entity 0 000 | a repeat across files\n"
    )
    return folder


# loaders


def test_plain_list_normalises_whitespace_keeps_case_and_first_order(tmp_path):
    path = tmp_path / "q.txt"
    path.write_text("  Paris \n\nparis\nnew   york\nParis\n\t\nhot\tdog\n")
    # a tab ends the query: `hot<TAB>dog` is the builder's TSV layout, so "hot"
    assert load_queries(str(path)) == ["Paris", "paris", "new york", "hot"]


def test_builder_tsv_loads_with_its_header_skipped(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_text("query\tsources\nNew York\ttitle,wordnet\ncat\twordfreq\n")
    assert load_queries(str(path)) == ["New York", "cat"]


def test_metadata_json_and_gzip(tmp_path):
    entries = ["cat", " big  dog ", "cat", "Paris"]
    (tmp_path / "metadata.json").write_text(json.dumps(entries))
    (tmp_path / "metadata.json.gz").write_bytes(gzip.compress(json.dumps(entries).encode()))
    (tmp_path / "list.txt.gz").write_bytes(gzip.compress(b"cat\ndog\n"))
    (tmp_path / "no_suffix").write_text(json.dumps(["a", "b"]))  # a leading `[` means JSON
    expected = ["cat", "big dog", "Paris"]
    assert load_queries(str(tmp_path / "metadata.json")) == expected
    assert load_queries(str(tmp_path / "metadata.json.gz")) == expected
    assert load_queries(str(tmp_path / "list.txt.gz")) == ["cat", "dog"]
    assert load_queries(str(tmp_path / "no_suffix")) == ["a", "b"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.txt", "\n  \n", "holds no query"),
        ("empty.json", "[]", "holds no query"),
        ("dict.json", '{"a": 1}', "list of strings"),
        ("mixed.json", '["a", 2]', "list of strings"),
        ("broken.json", '["a", ', "not valid JSON"),
    ],
)
def test_bad_query_files_fail_with_a_clear_message(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=message):
        load_queries(str(tmp_path / name))


# builder sources


def test_wordnet_lemmas_read_the_data_files(tmp_path):
    lemmas = list(wordnet_lemmas(str(write_wordnet(tmp_path / "dict"))))
    assert lemmas[:3] == ["entity", "New York", "New York City"]
    assert lemmas[3:13] == [f"w{i}" for i in range(10)]
    assert lemmas[13:] == ["able", "capable", "unable", "elect", "entity"]
    with pytest.raises(FileNotFoundError, match="data"):
        list(wordnet_lemmas(str(tmp_path)))


@pytest.mark.skipif(not Path("/usr/share/wordnet/data.noun").exists(), reason="no wordnet-base")
def test_debian_wordnet_gives_the_documented_lemma_count():
    lemmas = set(wordnet_lemmas("/usr/share/wordnet"))
    assert len(lemmas) == 148_730
    assert sum(" " in lemma for lemma in lemmas) == 64_243


CORPUS = ["New York city."] * 6 + ["the city"] * 4 + ["“the” dog,"] * 6


def test_pmi_is_the_plain_ratio_of_observed_to_chance():
    # 38 words (New, York, dog 6; city, the 10), 22 adjacent pairs: PMI(New York) =
    # (6/22) / ((6/38) * (6/38)) = 8664/792
    assert pmi_ratio(6, 22, 6, 6, 38) == pytest.approx(8664 / 792)
    assert math.log2(pmi_ratio(6, 22, 6, 6, 38)) == pytest.approx(3.4514, abs=1e-4)


def test_corpus_keeps_frequent_words_and_high_pmi_bigrams():
    # PMI ratios: New York 10.94, York city = the dog = (6/22)/((6/38)(10/38)) = 6.56,
    # the city = (4/22)/((10/38)(10/38)) = 2.63 but seen only 4 times
    unigrams, bigrams = corpus_terms(lambda: CORPUS, 10, min_pmi=7.0, min_bigram_count=5)
    assert unigrams == ["city", "the"]  # punctuation stripped, first occurrence order
    assert bigrams == ["New York"]
    _, bigrams = corpus_terms(lambda: CORPUS, 10, min_pmi=6.5, min_bigram_count=5)
    assert bigrams == ["New York", "York city", "the dog"]
    _, bigrams = corpus_terms(lambda: CORPUS, 10, min_pmi=2.6, min_bigram_count=4)
    assert bigrams == ["New York", "York city", "the city", "the dog"]


def test_corpus_streams_gzip_files(tmp_path):
    path = tmp_path / "corpus.txt.gz"
    path.write_bytes(gzip.compress("\n".join(CORPUS).encode()))
    assert list(open_lines(str(path))) == [line + "\n" for line in CORPUS[:-1]] + [CORPUS[-1]]


def test_titles_keep_case_and_views_threshold():
    lines = ["Paris\t1200\n", "paris\t70\n", "Obscure_Page\t3\n", "No_Views_Given\n", "Odd\tx\n"]
    assert list(titles(lines, min_views=70)) == ["Paris", "paris", "No Views Given"]


def test_merging_keeps_case_and_merges_sources():
    queries: dict[str, set[str]] = {}
    assert merge_into(queries, "wordnet", ["Paris", "new  york", "paris", "Paris"]) == 3
    assert merge_into(queries, "title", ["Paris", " ", "new york"]) == 0
    assert queries == {"Paris": {"wordnet", "title"}, "new york": {"wordnet", "title"},
                       "paris": {"wordnet"}}  # fmt: skip
    assert source_sizes(queries) == {"title": 2, "wordnet": 3}


def test_pad_ranked_lowers_the_bar_only_as_far_as_needed():
    ranked = [(50.0, "a b"), (40.0, "c d"), (2.0, "e f"), (1.5, "a b"), (1.0, "g h")]
    queries = {"x": {"wordfreq"}}
    assert pad_ranked(queries, "bigram", ranked, min_score=30.0) == 2
    assert set(queries) == {"x", "a b", "c d"}
    assert pad_ranked(queries, "bigram", ranked, min_score=30.0, size=4) == 1
    assert set(queries) == {"x", "a b", "c d", "e f"}
    assert pad_ranked(queries, "bigram", ranked, min_score=30.0, size=99) == 1  # all there is


def test_cli_writes_a_sorted_tsv_that_the_pipeline_loads(tmp_path, capsys):
    write_wordnet(tmp_path / "dict")
    corpus = tmp_path / "corpus.txt.gz"
    corpus.write_bytes(gzip.compress(("\n".join(CORPUS) + "\n").encode()))
    (tmp_path / "titles.tsv").write_text("Paris\t100\nNew_York\t5000\nRare\t1\n")
    out = tmp_path / "queries.tsv"
    summary = main(["build", "--out", str(out), "--wordnet", str(tmp_path / "dict"),
                    "--corpus", str(corpus), "--min-count", "10", "--min-pmi", "7",
                    "--titles", str(tmp_path / "titles.tsv")])  # fmt: skip
    assert json.loads(capsys.readouterr().out) == summary
    assert summary["per_source"] == {"corpus_bigram": 1, "corpus_unigram": 2, "title": 2,
                                     "wordnet": 17}  # fmt: skip
    lines = out.read_text().splitlines()
    assert lines[0] == "query\tsources"
    assert "New York\tcorpus_bigram,title,wordnet" in lines and "Paris\ttitle" in lines
    loaded = load_queries(str(out))
    assert loaded == sorted(loaded) and len(loaded) == summary["queries"] == 20


# the offline PyPI lists (the `queries` extra, part of `test`)


def test_pypi_word_lists_are_large():
    words = wordfreq_words(320_000)
    assert len(words) > 300_000 and words[:3] == ["the", "to", "and"]
    ninja = wordninja_words()
    assert len(ninja) > 100_000 and ninja[0] == "the"


def test_symspell_bigrams_ranked_by_pmi():
    ranked = symspell_bigrams()
    assert len(ranked) > 240_000
    scores = [score for score, _ in ranked]
    assert scores == sorted(scores, reverse=True)
    assert 200_000 < sum(score >= 1.0 for score in scores) < len(scores)  # the default keeps most


def test_offline_defaults_pad_to_half_a_million():
    # a high bar (58k bigrams) leaves the list short of 500k, so padding decides the size
    queries = build_queries(min_bigram_pmi=30.0, pad_to=500_000)
    sizes = source_sizes(queries)
    assert len(queries) == 500_000
    assert set(sizes) == {"bigram", "wikipedia_unigram", "wordfreq"}
    assert sizes["wordfreq"] > 300_000 and sizes["bigram"] > 100_000
    assert all(query == " ".join(query.split()) for query in queries)
