"""The query-list builder: each source, merging, and the CLI's TSV read back by the loader."""

from __future__ import annotations

import gzip
import json

from manifests.queries import QueryList, corpus_terms, main, titles, wordnet_lemmas
from manifests.query_list import load_queries

WORDNET_HEADER = "  1 This software and database is being provided to you, the LICENSEE, by  \n"


def write_wordnet(folder):
    folder.mkdir()
    (folder / "data.noun").write_text(
        WORDNET_HEADER
        + "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived\n"
        + "09119276 15 n 02 New_York 0 New_York_City 0 001 @ 08524735 n 0000 | a city\n"
    )
    (folder / "data.adj").write_text(
        WORDNET_HEADER + "00001740 00 a 02 able(a) 0 capable 0 001 ! 00002098 a 0101 | (usually)\n"
    )


def test_wordnet_lemmas_read_the_data_files(tmp_path):
    write_wordnet(tmp_path / "dict")
    lemmas = list(wordnet_lemmas(str(tmp_path / "dict")))
    assert lemmas == ["entity", "New York", "New York City", "able", "capable"]


def test_corpus_keeps_frequent_words_and_high_pmi_bigrams():
    lines = ["Hong Kong is big.", "the cat and the dog", "Hong Kong, again"] * 5
    lines += ["the end"] * 5
    # 70 words (Hong, Kong 10; the 15; the others 5), 50 bigrams (Hong Kong 10, the others 5):
    # PMI(Hong Kong) = (10/50) / (10/70)^2 = 9.8, PMI(the cat) = (5/50) / (15/70 * 5/70) = 6.5,
    # PMI(cat and) = (5/50) / (5/70)^2 = 19.6, PMI(Kong is) = (5/50) / (10/70 * 5/70) = 9.8
    unigrams, bigrams = corpus_terms(lines, min_count=10, min_pmi=7.0, min_bigram_count=5)
    assert sorted(unigrams) == ["Hong", "Kong", "the"]
    assert sorted(bigrams) == ["Hong Kong", "Kong again", "Kong is", "cat and", "is big"]
    _, frequent = corpus_terms(lines, min_count=10, min_pmi=7.0, min_bigram_count=10)
    assert frequent == ["Hong Kong"]


def test_titles_keep_case_and_views_threshold():
    lines = ["Paris\t1200\n", "Obscure_Page\t3\n", "No_Views_Given\n"]
    assert list(titles(lines, min_views=70)) == ["Paris", "No Views Given"]


def test_query_list_merges_sources_and_keeps_case():
    queries = QueryList()
    queries.add("wordnet", ["Paris", "new  york", "paris"])
    queries.add("title", ["Paris", ""])
    assert queries.sources == {"Paris": {"wordnet", "title"}, "new york": {"wordnet"},
                               "paris": {"wordnet"}}  # fmt: skip
    ranked = [(50.0, "a b"), (40.0, "c d"), (2.0, "e f"), (1.0, "g h")]
    queries.pad_with("bigram", ranked, min_score=30.0, size=6)
    assert {"a b", "c d", "e f"} <= set(queries.sources) and "g h" not in queries.sources


def test_cli_writes_a_tsv_that_the_pipeline_loads(tmp_path, capsys):
    write_wordnet(tmp_path / "dict")
    corpus = tmp_path / "corpus.txt.gz"
    text = "Hong Kong harbour\n" * 120 + "".join(f"w{i} x{i}\n" for i in range(2000))
    corpus.write_bytes(gzip.compress(text.encode()))  # PMI(Hong Kong) = (120/2240)/(120/4360)^2
    (tmp_path / "titles.tsv").write_text("Paris\t100\nHong_Kong\t5000\n")
    out = tmp_path / "queries.tsv"
    summary = main(["build", "--out", str(out), "--wordnet", str(tmp_path / "dict"),
                    "--corpus", str(corpus), "--titles", str(tmp_path / "titles.tsv")])  # fmt: skip
    assert json.loads(capsys.readouterr().out) == summary
    assert summary["per_source"] == {"wordnet": 5, "corpus_unigram": 3, "corpus_bigram": 2,
                                     "title": 2}  # fmt: skip
    lines = out.read_text().splitlines()
    assert lines[0] == "query\tsources" and "Hong Kong\tcorpus_bigram,title" in lines
    loaded = load_queries(str(out))
    assert loaded == sorted(loaded) and len(loaded) == summary["queries"] == 11
    assert "New York City" in loaded and "Paris" in loaded


def test_offline_pypi_lists_give_half_a_million_queries(tmp_path):
    summary = main(["build", "--out", str(tmp_path / "q.tsv"), "--pad-to", "500000"])
    assert summary["queries"] == 500_000
    assert summary["per_source"]["wordfreq"] > 300_000
    assert summary["per_source"]["wikipedia_unigram"] > 100_000
    assert summary["per_source"]["bigram"] > 100_000
