"""Build a query list as CLIP's was built: words, bigrams, titles and WordNet synsets.

    python -m manifests.queries build --out queries.tsv [sources]

CLIP searched for ~500,000 queries: every word occurring at least 100 times in English
Wikipedia, bigrams with high pointwise mutual information, the titles of Wikipedia articles
above a search volume, and all WordNet synsets. Each source here is optional:

  --wordnet DIR          WordNet 3.0's dict folder (Debian `wordnet-base`: /usr/share/wordnet):
                         every lemma of every synset, `_` read as a space
  --corpus FILE          a plain-text corpus (a Wikipedia dump's text, say; .gz fine): words
                         seen at least --min-count times (MetaCLIP: 100) and bigrams whose PMI,
                         p(a b) / (p(a) p(b)) as a plain ratio, is at least --min-pmi (MetaCLIP:
                         30) among bigrams seen at least --min-bigram-count times
  --titles FILE          article titles, `title<TAB>views` a line (views optional), kept with
                         at least --min-views views (MetaCLIP: 70)
  --wordfreq N           the N most frequent English words of PyPI's `wordfreq` (Wikipedia
                         among its sources)
  --wordninja            the Wikipedia unigram list that PyPI's `wordninja` ships
  --symspell-bigrams     the bigram dictionary that PyPI's `symspellpy` ships, by PMI against
                         its unigram counts (--min-pmi); --pad-to N lowers the bar until the
                         whole list holds N entries

With no source flag, the offline PyPI lists are used (`pip install -e '.[queries]'`).
Entries keep their case (titles and proper nouns keep capitals: matching is case-sensitive),
whitespace is normalised, duplicates merge their sources. The output is `query<TAB>sources`
sorted by query, which `--queries` loads; the sizes per source go to stdout as one JSON line.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import logging
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from manifests.io import read_bytes, write_atomic
from manifests.query_list import HEADER, normalize_query

log = logging.getLogger(__name__)
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
_ADJECTIVE_MARKER = re.compile(r"\((a|p|ip)\)$")
_TOKEN_EDGES = "\"'()[]{}<>,.;:!?`*_|«»“”‘’"


def wordnet_lemmas(folder: str) -> Iterator[str]:
    """Every lemma of every synset in WordNet's `data.*` files (the licence header skipped)."""
    for name in WORDNET_FILES:
        path = Path(folder) / name
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or not line.strip():
                continue
            fields = line.split(" ")
            count = int(fields[3], 16)
            for word in fields[4 : 4 + 2 * count : 2]:
                yield _ADJECTIVE_MARKER.sub("", word).replace("_", " ")


def _lines(path: str) -> Iterator[str]:
    data = read_bytes(path)
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    yield from io.StringIO(data.decode("utf-8", errors="replace"))


def tokens(line: str) -> list[str]:
    """Whitespace words with surrounding punctuation stripped (case kept)."""
    return [w for w in (t.strip(_TOKEN_EDGES) for t in line.split()) if w]


def corpus_terms(
    lines: Iterable[str], min_count: int, min_pmi: float, min_bigram_count: int
) -> tuple[list[str], list[str]]:
    """(unigrams seen >= min_count times, bigrams with PMI >= min_pmi), streaming the lines."""
    words, pairs = Counter(), Counter()
    for line in lines:
        seen = tokens(line)
        words.update(seen)
        pairs.update(zip(seen, seen[1:], strict=False))
    total_words, total_pairs = sum(words.values()), max(1, sum(pairs.values()))
    unigrams = [w for w, c in words.items() if c >= min_count]
    bigrams = []
    for (a, b), count in pairs.items():
        if count >= min_bigram_count:
            pmi = (count / total_pairs) / ((words[a] / total_words) * (words[b] / total_words))
            if pmi >= min_pmi:
                bigrams.append(f"{a} {b}")
    return unigrams, bigrams


def titles(lines: Iterable[str], min_views: int) -> Iterator[str]:
    for line in lines:
        title, _, views = line.rstrip("\n").partition("\t")
        if title and (not views.strip() or int(views) >= min_views):
            yield title.replace("_", " ")


def wordfreq_words(count: int) -> list[str]:
    from wordfreq import top_n_list

    return top_n_list("en", count, "large")


def wordninja_words() -> list[str]:
    import wordninja

    path = Path(wordninja.__file__).parent / "wordninja" / "wordninja_words.txt.gz"
    return gzip.decompress(path.read_bytes()).decode().split()


def symspell_bigrams() -> list[tuple[float, str]]:
    """(PMI, bigram) of symspellpy's bigram dictionary, highest PMI first."""
    import symspellpy

    folder = Path(symspellpy.__file__).parent
    unigram = {}
    for line in (folder / "frequency_dictionary_en_82_765.txt").read_text().splitlines():
        word, count = line.split()
        unigram[word] = int(count)
    pairs = []
    for line in (folder / "frequency_bigramdictionary_en_243_342.txt").read_text().splitlines():
        a, b, count = line.split()
        pairs.append((a, b, int(count)))
    total_words, total_pairs = sum(unigram.values()), sum(c for *_, c in pairs)
    scored = [
        ((c / total_pairs) / ((unigram[a] / total_words) * (unigram[b] / total_words)), f"{a} {b}")
        for a, b, c in pairs
        if a in unigram and b in unigram
    ]
    return sorted(scored, reverse=True)


class QueryList:
    """Queries and the sources that gave each, normalised and deduplicated."""

    def __init__(self) -> None:
        self.sources: dict[str, set[str]] = {}
        self.sizes: Counter = Counter()

    def add(self, source: str, queries: Iterable[str]) -> None:
        added = 0
        for query in map(normalize_query, queries):
            if query and "\t" not in query:
                self.sources.setdefault(query, set()).add(source)
                added += 1
        self.sizes[source] += added

    def pad_with(self, source: str, ranked: list[tuple[float, str]], min_score: float, size: int):
        """Add the ranked entries scoring >= min_score, then more, best first, up to `size`."""
        for score, query in ranked:
            if score < min_score and len(self.sources) >= size:
                break
            self.add(source, [query])

    def tsv(self) -> bytes:
        lines = [f"{HEADER}\tsources"]
        lines += [f"{q}\t{','.join(sorted(s))}" for q, s in sorted(self.sources.items())]
        return ("\n".join(lines) + "\n").encode()


def build(args: argparse.Namespace) -> QueryList:
    queries = QueryList()
    chosen = [args.wordnet, args.corpus, args.titles, args.wordfreq, args.wordninja]
    offline_default = not any(chosen) and not args.symspell_bigrams
    if args.wordnet:
        queries.add("wordnet", wordnet_lemmas(args.wordnet))
    if args.corpus:
        unigrams, bigrams = corpus_terms(
            _lines(args.corpus), args.min_count, args.min_pmi, args.min_bigram_count
        )
        queries.add("corpus_unigram", unigrams)
        queries.add("corpus_bigram", bigrams)
    if args.titles:
        queries.add("title", titles(_lines(args.titles), args.min_views))
    if args.wordfreq or offline_default:
        queries.add("wordfreq", wordfreq_words(args.wordfreq or 320_000))
    if args.wordninja or offline_default:
        queries.add("wikipedia_unigram", wordninja_words())
    if args.symspell_bigrams or offline_default:
        queries.pad_with("bigram", symspell_bigrams(), args.min_pmi, args.pad_to)
    return queries


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m manifests.queries",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="build a query list")
    b.add_argument("--out", required=True, help="the TSV to write (any Beam filesystem)")
    b.add_argument("--wordnet", metavar="DIR")
    b.add_argument("--corpus", metavar="FILE")
    b.add_argument("--min-count", type=int, default=100)
    b.add_argument("--min-pmi", type=float, default=30.0)
    b.add_argument("--min-bigram-count", type=int, default=5)
    b.add_argument("--titles", metavar="FILE")
    b.add_argument("--min-views", type=int, default=70)
    b.add_argument("--wordfreq", type=int, metavar="N")
    b.add_argument("--wordninja", action="store_true")
    b.add_argument("--symspell-bigrams", action="store_true")
    b.add_argument("--pad-to", type=int, default=0, metavar="N")
    args = parser.parse_args(argv)
    queries = build(args)
    write_atomic(args.out, queries.tsv())
    summary = {"out": args.out, "queries": len(queries.sources), "per_source": dict(queries.sizes)}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    main()
