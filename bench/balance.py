"""Query-matching benchmark: our two matchers against MetaCLIP's reference loop.

    python bench/balance.py [--queries 500000] [--captions 1000000] [--reference-sample 100]

The query list is built from offline sources that install from PyPI: wordfreq's English list
(320k words, Wikipedia among its sources), wordninja's Wikipedia unigrams, and symspellpy's
bigram dictionary ranked by PMI against its unigram counts, taken until the list reaches
`--queries` entries. Captions are drawn from a word-frequency model (wordfreq frequencies of
the top 100k words, lengths 1 + Poisson(11.5), so 12.5 words on average), so the head is as
heavy as on the web: almost every caption matches "a", "the", "of".

Each matcher is built and run in its own process on one core, so build time, memory (the
process's peak RSS over its RSS with the list loaded) and captions/s are its own. MetaCLIP's
approach (`reference_match`: for each caption, a Python loop over every entry) is timed on a
sample and extrapolated. All three must return the same matches (checked on the sample, and
between the two matchers on every caption). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from manifests.queries import symspell_bigrams, wordfreq_words, wordninja_words  # noqa: E402
from pipeline.balance import MATCHERS  # noqa: E402
from pipeline.matching import reference_match  # noqa: E402

BATCH = 4096


def offline_queries(size: int) -> list[str]:
    """`size` distinct queries: wordfreq and wordninja unigrams, then bigrams by PMI."""
    words = wordfreq_words(320_000) + wordninja_words()
    bigrams = [bigram for _, bigram in symspell_bigrams()]
    queries = list(dict.fromkeys(q for q in words + bigrams if q.strip() == q and q))
    if len(queries) < size:
        raise SystemExit(f"only {len(queries)} offline queries, fewer than {size}")
    return queries[:size]


def captions(count: int, seed: int) -> list[str]:
    """Captions drawn word by word from English word frequencies."""
    from wordfreq import top_n_list, word_frequency

    vocabulary = top_n_list("en", 100_000, "large")
    weights = np.array([word_frequency(w, "en", "large") for w in vocabulary])
    rng = np.random.default_rng(seed)
    lengths = 1 + rng.poisson(11.5, count)
    words = rng.choice(len(vocabulary), size=int(lengths.sum()), p=weights / weights.sum())
    bounds = np.concatenate(([0], np.cumsum(lengths))).tolist()
    flat = [vocabulary[i] for i in words.tolist()]
    return [" ".join(flat[bounds[i] : bounds[i + 1]]) for i in range(count)]


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1])


def run_matcher(name: str, queries: list[str], texts: list[str], out: multiprocessing.Queue):
    """In a child process: build, match every caption, report figures and a checksum."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    before = rss_kib()
    start = time.perf_counter()
    matcher = MATCHERS[name](queries)
    build = time.perf_counter() - start
    built = rss_kib()
    digest, matches, sample, seconds = hashlib.blake2b(), 0, None, 0.0
    for i in range(0, len(texts), BATCH):  # results are consumed per batch, as the DoFn does
        start = time.perf_counter()
        found = matcher.match_batch(texts[i : i + BATCH])
        seconds += time.perf_counter() - start  # the checksum below is not matching time
        digest.update(repr(found).encode())
        matches += sum(map(len, found))
        sample = sample or found[:200]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out.put(
        {
            "build_s": round(build, 2),
            "memory_mb": round((built - before) / 1024),
            "peak_over_list_mb": round((peak - before) / 1024),
            "captions_per_s": round(len(texts) / seconds),
            "mean_matches": round(matches / len(texts), 2),
            "digest": digest.hexdigest(),
            "sample": sample,
        }
    )


def measure(name: str, queries: list[str], texts: list[str]) -> dict:
    out: multiprocessing.Queue = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(
        target=run_matcher, args=(name, queries, texts, out)
    )
    child.start()
    result = out.get()
    child.join()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=500_000)
    parser.add_argument("--captions", type=int, default=1_000_000)
    parser.add_argument("--reference-sample", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    queries = offline_queries(args.queries)
    texts = captions(args.captions, args.seed)
    figures = {name: measure(name, queries, texts) for name in MATCHERS}
    sample = texts[: args.reference_sample]
    start = time.perf_counter()
    reference = [reference_match(text, queries) for text in sample]
    reference_rate = len(sample) / (time.perf_counter() - start)
    for name, result in figures.items():
        assert result.pop("sample")[: len(sample)] == reference, f"{name} differs from MetaCLIP"
    digests = {result.pop("digest") for result in figures.values()}
    assert len(digests) == 1, "the two matchers disagree on some caption"
    tokens = figures["tokens"]["captions_per_s"]
    result = {
        "queries": len(queries),
        "captions": len(texts),
        "mean_words": round(float(np.mean([len(t.split()) for t in texts[:10000]])), 2),
        "cores": 1,
        **{name.replace("-", "_"): figures[name] for name in figures},
        "metaclip_loop_captions_per_s": round(reference_rate, 2),
        "metaclip_loop_hours_for_all": round(len(texts) / reference_rate / 3600, 1),
        "tokens_over_metaclip": round(tokens / reference_rate),
        "tokens_over_aho_corasick": round(tokens / figures["aho-corasick"]["captions_per_s"], 2),
        "identical_to_reference_on_sample": len(sample),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
