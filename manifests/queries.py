"""Build a query list ("metadata" in MetaCLIP's words) as CLIP's was built, and load one.

    python -m manifests.queries build --out queries.tsv [sources]

CLIP searched for ~500,000 queries: every word occurring at least 100 times in English
Wikipedia, bigrams with high pointwise mutual information, the titles of Wikipedia articles
above a search volume, and all WordNet synsets. Each source here is optional:

  --wordnet DIR          WordNet 3.0's dict folder (Debian `wordnet-base`: /usr/share/wordnet):
                         every lemma of every synset, `_` read as a space (148,730 lemmas)
  --corpus FILE          a plain-text corpus (a Wikipedia dump's text, say; .gz fine): words
                         seen at least --min-count times (MetaCLIP: 100) and bigrams seen at
                         least --min-bigram-count times whose PMI ratio is >= --min-pmi (30)
  --titles FILE          article titles, `title<TAB>views` a line (views optional: kept), kept
                         with at least --min-views views (MetaCLIP: 70)
  --wordfreq N           the N most frequent English words of PyPI's `wordfreq`
  --wordninja            the Wikipedia unigram list that PyPI's `wordninja` ships
  --symspell-bigrams     the bigram dictionary that PyPI's `symspellpy` ships, kept by PMI ratio
                         against its unigram counts (--min-bigram-pmi, default 1.0)
  --pad-to N             then add symspell bigrams below that bar, best PMI first, until the
                         whole list holds N queries (implies --symspell-bigrams)

PMI, exactly: pmi_ratio(a b) = p(a b) / (p(a) p(b)), with p(a b) = count(a b) / number of
adjacent pairs and p(a) = count(a) / number of words, i.e. 2 ** PMI for the textbook
PMI = log2 p(a b) / (p(a) p(b)). The thresholds are on this ratio: MetaCLIP's "PMI 30" cannot be
log2 (that needs a pair 2**30 times likelier than chance, more than any corpus can show with
a handful of occurrences), so 30 here means log2 PMI >= 4.91. 1.0 (log2 PMI >= 0: seen more
often than chance) keeps 219,135 of symspellpy's 242,342 bigrams.

With no source flag, every offline PyPI list that is installed is used (`pip install -e
'.[queries]'`). Entries keep their case (matching is case-sensitive, so "Paris" and "paris"
are two queries), whitespace is normalised, duplicates merge their sources. The output is
`query<TAB>sources` sorted by query, which `load_queries` (and so `--queries`) reads; the
sizes per source go to stdout as one JSON line, progress to the log.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import logging
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from manifests.io import write_atomic
from manifests.query_list import HEADER, load_queries, normalize_query, parse_queries

__all__ = [
    "build_queries",
    "corpus_terms",
    "load_queries",
    "merge_into",
    "pad_ranked",
    "parse_queries",
    "pmi_ratio",
    "source_sizes",
    "symspell_bigrams",
    "titles",
    "to_tsv",
    "wordfreq_words",
    "wordnet_lemmas",
    "wordninja_words",
]

log = logging.getLogger(__name__)
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
PYPI_PACKAGES = {"wordfreq": "wordfreq", "wikipedia_unigram": "wordninja", "bigram": "symspellpy"}
WORDFREQ_DEFAULT = 320_000
_ADJECTIVE_MARKER = re.compile(r"\((a|p|ip)\)$")
_TOKEN_EDGES = "\"'()[]{}<>,.;:!?`*_|«»“”‘’"


def wordnet_lemmas(folder: str) -> Iterator[str]:
    """Every lemma of every synset in WordNet's `data.*` files.

    Parsed directly rather than through NLTK, which wants a `lexnames` file and refuses
    Debian's /usr/share/wordnet. A line is `offset lex_filenum ss_type w_cnt(hex) word lex_id
    ...`; lines starting with two spaces are the licence header; adjectives may end in a
    syntactic marker, `(a)`, `(p)` or `(ip)`, that is not part of the word.
    """
    found = False
    for name in WORDNET_FILES:
        path = Path(folder) / name
        if not path.exists():
            continue
        found = True
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if line.startswith("  ") or not line.strip():
                    continue
                fields = line.split(" ")
                count = int(fields[3], 16)
                for word in fields[4 : 4 + 2 * count : 2]:
                    yield _ADJECTIVE_MARKER.sub("", word).replace("_", " ")
    if not found:
        raise FileNotFoundError(f"no WordNet data.* file in {folder!r}")


def open_lines(path: str) -> Iterator[str]:
    """The lines of a text file on any Beam filesystem, streamed (a Wikipedia dump is GBs)."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        stream = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
        while line := stream.readline():
            yield line.decode("utf-8", errors="replace")


def tokens(line: str) -> list[str]:
    """Whitespace words with surrounding punctuation stripped (case kept)."""
    return [w for w in (t.strip(_TOKEN_EDGES) for t in line.split()) if w]


def pmi_ratio(pair: int, pairs: int, first: int, second: int, words: int) -> float:
    """p(a b) / (p(a) p(b)) from counts: 2 ** PMI, the scale of MetaCLIP's threshold 30."""
    return (pair / pairs) / ((first / words) * (second / words))


def corpus_terms(
    lines: Callable[[], Iterable[str]], min_count: int, min_pmi: float, min_bigram_count: int
) -> tuple[list[str], list[str]]:
    """(words seen >= min_count times, bigrams seen >= min_bigram_count times with PMI ratio
    >= min_pmi), in order of first occurrence.

    `lines()` is called twice: the first pass counts words, the second counts only the pairs
    whose two words are each frequent enough to make a kept pair, which keeps a dump's
    bigram table to a fraction of its distinct pairs. Pairs do not cross line ends.
    """
    words: Counter[str] = Counter()
    for line in lines():
        words.update(tokens(line))
    pairs: Counter[tuple[str, str]] = Counter()
    total_pairs = 0
    for line in lines():
        seen = tokens(line)
        total_pairs += max(0, len(seen) - 1)
        pairs.update(
            (a, b)
            for a, b in zip(seen, seen[1:], strict=False)
            if words[a] >= min_bigram_count and words[b] >= min_bigram_count
        )
    total_words = sum(words.values())
    unigrams = [w for w, c in words.items() if c >= min_count]
    bigrams = [
        f"{a} {b}"
        for (a, b), count in pairs.items()
        if count >= min_bigram_count
        and pmi_ratio(count, total_pairs, words[a], words[b], total_words) >= min_pmi
    ]
    log.info("corpus: %d words, %d pairs seen", total_words, total_pairs)
    return unigrams, bigrams


def titles(lines: Iterable[str], min_views: int) -> Iterator[str]:
    """Titles with at least `min_views` views (or no view count), Wikipedia's `_` as spaces."""
    bad = 0
    for line in lines:
        title, _, views = line.rstrip("\r\n").partition("\t")
        try:
            keep = not views.strip() or int(views) >= min_views
        except ValueError:
            bad, keep = bad + 1, False
        if title.strip() and keep:
            yield title.replace("_", " ")
    if bad:
        log.warning("titles: %d lines with an unreadable view count skipped", bad)


def wordfreq_words(count: int) -> list[str]:
    """The `count` most frequent English words of wordfreq's 'large' list (lower case)."""
    from wordfreq import top_n_list

    return top_n_list("en", count, "large")


def wordninja_words() -> list[str]:
    """wordninja's Wikipedia-ranked word list, read without importing wordninja (which builds
    its whole language model on import)."""
    spec = importlib.util.find_spec("wordninja")
    if spec is None or spec.origin is None:
        raise ImportError("wordninja is not installed: pip install -e '.[queries]'")
    path = Path(spec.origin).parent / "wordninja" / "wordninja_words.txt.gz"
    return gzip.decompress(path.read_bytes()).decode("utf-8").split()


def symspell_bigrams() -> list[tuple[float, str]]:
    """(PMI ratio, bigram) of symspellpy's bigram dictionary, best first (ties by text).

    Its bigram counts come from a larger corpus than its unigram counts, so each is
    normalised by its own total; pairs with a word missing from the unigram list are skipped.
    """
    import symspellpy

    folder = Path(symspellpy.__file__).parent
    unigram: dict[str, int] = {}
    with (folder / "frequency_dictionary_en_82_765.txt").open(encoding="utf-8") as lines:
        for line in lines:
            word, count = line.split()
            unigram[word] = int(count)
    pairs = []
    with (folder / "frequency_bigramdictionary_en_243_342.txt").open(encoding="utf-8") as lines:
        for line in lines:
            a, b, count = line.split()
            pairs.append((a, b, int(count)))
    total_words, total_pairs = sum(unigram.values()), sum(c for *_, c in pairs)
    scored = [
        (pmi_ratio(c, total_pairs, unigram[a], unigram[b], total_words), f"{a} {b}")
        for a, b, c in pairs
        if a in unigram and b in unigram
    ]
    return sorted(scored, key=lambda item: (-item[0], item[1]))


def merge_into(queries: dict[str, set[str]], source: str, entries: Iterable[str]) -> int:
    """Add `entries` from `source` to `queries` (query -> its sources); returns how many were
    new. Whitespace is normalised, case kept; empty entries are dropped."""
    before = len(queries)
    for query in map(normalize_query, entries):
        if query:
            queries.setdefault(query, set()).add(source)
    log.info("%s: %d new queries, %d in all", source, len(queries) - before, len(queries))
    return len(queries) - before


def pad_ranked(
    queries: dict[str, set[str]],
    source: str,
    ranked: Iterable[tuple[float, str]],
    min_score: float,
    size: int = 0,
) -> int:
    """Add the ranked (best first) entries scoring >= min_score, then keep going down the
    ranking while `queries` holds fewer than `size`: the bar drops only as far as needed.
    Returns how many were new."""
    before = len(queries)
    for score, query in ranked:
        if score < min_score and len(queries) >= size:
            break
        query = normalize_query(query)
        if query:
            queries.setdefault(query, set()).add(source)
    if len(queries) < size:
        log.warning("%s: every entry added, still %d queries < %d", source, len(queries), size)
    log.info("%s: %d new queries, %d in all", source, len(queries) - before, len(queries))
    return len(queries) - before


def source_sizes(queries: Mapping[str, set[str]]) -> dict[str, int]:
    """Distinct queries per source (a query from two sources counts in both), by name."""
    sizes: Counter[str] = Counter()
    for sources in queries.values():
        sizes.update(sources)
    return dict(sorted(sizes.items()))


def to_tsv(queries: Mapping[str, set[str]]) -> bytes:
    """`query<TAB>sources` lines under a header, sorted by query so a rebuild is byte-identical."""
    lines = [f"{HEADER}\tsources"]
    lines += [f"{q}\t{','.join(sorted(s))}" for q, s in sorted(queries.items())]
    return ("\n".join(lines) + "\n").encode("utf-8")


def installed_pypi_sources() -> list[str]:
    """The offline PyPI lists whose package is installed: the default when no source is named."""
    return [s for s, pkg in PYPI_PACKAGES.items() if importlib.util.find_spec(pkg) is not None]


def build_queries(
    *,
    wordnet_dir: str | None = None,
    corpus_path: str | None = None,
    min_count: int = 100,
    min_pmi: float = 30.0,
    min_bigram_count: int = 5,
    titles_path: str | None = None,
    min_views: int = 70,
    wordfreq: int | None = None,
    wordninja: bool = False,
    symspell: bool = False,
    min_bigram_pmi: float = 1.0,
    pad_to: int = 0,
) -> dict[str, set[str]]:
    """query -> the names of the sources that gave it, from the sources asked for.

    With none asked for, every installed offline PyPI list is used. The symspell bigrams come
    last, so `pad_to` counts everything else before deciding how far down their ranking to go.
    """
    named = [wordnet_dir, corpus_path, titles_path, wordfreq, wordninja, symspell]
    if not any(named):
        defaults = installed_pypi_sources()
        if not defaults:
            raise ValueError(
                "no source given and none of wordfreq, wordninja, symspellpy installed"
            )
        wordfreq = WORDFREQ_DEFAULT if "wordfreq" in defaults else None
        wordninja, symspell = "wikipedia_unigram" in defaults, "bigram" in defaults
    queries: dict[str, set[str]] = {}
    if wordnet_dir:
        merge_into(queries, "wordnet", wordnet_lemmas(wordnet_dir))
    if corpus_path:
        unigrams, bigrams = corpus_terms(
            lambda: open_lines(corpus_path), min_count, min_pmi, min_bigram_count
        )
        merge_into(queries, "corpus_unigram", unigrams)
        merge_into(queries, "corpus_bigram", bigrams)
    if titles_path:
        merge_into(queries, "title", titles(open_lines(titles_path), min_views))
    if wordfreq:
        merge_into(queries, "wordfreq", wordfreq_words(wordfreq))
    if wordninja:
        merge_into(queries, "wikipedia_unigram", wordninja_words())
    if symspell or pad_to:
        pad_ranked(queries, "bigram", symspell_bigrams(), min_bigram_pmi, pad_to)
    return queries


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m manifests.queries",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="build a query list (see above)")
    b.add_argument("--out", required=True, help="the TSV to write (any Beam filesystem)")
    b.add_argument("--wordnet", metavar="DIR", help="WordNet 3.0 dict folder")
    b.add_argument("--corpus", metavar="FILE", help="plain-text corpus, .gz fine")
    b.add_argument("--min-count", type=int, default=100, help="corpus words (default 100)")
    b.add_argument("--min-pmi", type=float, default=30.0, help="corpus bigrams' PMI ratio")
    b.add_argument("--min-bigram-count", type=int, default=5, help="corpus bigrams (default 5)")
    b.add_argument("--titles", metavar="FILE", help="`title<TAB>views` lines, .gz fine")
    b.add_argument("--min-views", type=int, default=70, help="titles (default 70)")
    b.add_argument("--wordfreq", type=int, metavar="N", help="wordfreq's top N English words")
    b.add_argument("--wordninja", action="store_true", help="wordninja's Wikipedia unigrams")
    b.add_argument("--symspell-bigrams", action="store_true", help="symspellpy's bigrams")
    b.add_argument("--min-bigram-pmi", type=float, default=1.0, help="their PMI ratio (1.0)")
    b.add_argument("--pad-to", type=int, default=0, metavar="N", help="fill up to N queries")
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Run the CLI; returns the summary it prints (sizes per source, total, seconds)."""
    args = _parser().parse_args(argv)
    started = time.monotonic()
    queries = build_queries(
        wordnet_dir=args.wordnet,
        corpus_path=args.corpus,
        min_count=args.min_count,
        min_pmi=args.min_pmi,
        min_bigram_count=args.min_bigram_count,
        titles_path=args.titles,
        min_views=args.min_views,
        wordfreq=args.wordfreq,
        wordninja=args.wordninja,
        symspell=args.symspell_bigrams,
        min_bigram_pmi=args.min_bigram_pmi,
        pad_to=args.pad_to,
    )
    write_atomic(args.out, to_tsv(queries))
    summary = {
        "out": args.out,
        "queries": len(queries),
        "per_source": source_sizes(queries),
        "seconds": round(time.monotonic() - started, 1),
    }
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s", force=True
    )
    main()
