"""Filter benchmark: langdetect's accuracy and speed on real multilingual names, and the score
filter's speed.

    python bench/filters.py [--captions 300] [--score-pairs 512] [--corpus styles [--pairs 30000]]

Captions are CLDR emoji names from the `emoji` package (the same ~1,660 base emoji named in 14
languages; skin-tone variants and flags left out): one name ("cara de perro", the hard case)
and three names joined ("medalla de bronce, cantante hombre, doce y media", like an alt text).
Accuracy is langdetect's top language against the name's language (`zh` counts `zh-cn` and
`zh-tw`), per language and overall; `keep_rate_en_*` is the share of each language's captions
that `--filters lang --lang en` keeps with its defaults (short ones are kept unjudged).
Throughput is captions/s in one process (one core). The score part scores real JPEGs at batch
64 on CPU with a tiny random checkpoint; `--checkpoint` adds how a trained one scores held-out
demo pairs against the same images under another caption. `--corpus styles` adds the language
filter's drop rates on that corpus' rows (`demo.stylecorpus`, the ablation's: short English alt
texts of emoji, icons and clip art, and its foreign noise), with and without `--lang-words`:
the English rows are the clean ones and their copies, the foreign ones its translated names.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import io
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import emoji  # noqa: E402

from filters.caption import CaptionConfig, caption_reason  # noqa: E402
from filters.lang import LangConfig, check_language, detect, is_wanted  # noqa: E402
from manifests.schema import Pair  # noqa: E402

_MODIFIERS = set(range(0x1F3FB, 0x1F400)) | set(range(0x1F1E6, 0x1F200))


def emoji_names() -> dict[str, list[str]]:
    """Names of the base emoji per language, aligned (index i names the same emoji)."""
    emoji.config.load_language()
    rows = [
        data
        for char, data in sorted(emoji.EMOJI_DATA.items())
        if data["status"] == emoji.STATUS["fully_qualified"]
        and not any(ord(c) in _MODIFIERS for c in char)
    ]
    return {code: [r[code].strip(":").replace("_", " ") for r in rows] for code in emoji.LANGUAGES}


def lang_bench(names: dict[str, list[str]], count: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    total = len(next(iter(names.values())))
    per_language, detections, elapsed = {}, 0, 0.0
    filter_config = LangConfig(lang=("en",))
    for code, words in names.items():
        single = [words[i] for i in rng.sample(range(total), count)]
        joined = [", ".join(words[i] for i in rng.sample(range(total), 3)) for _ in range(count)]
        start = time.perf_counter()
        found = [detect(text) for text in single + joined]
        elapsed += time.perf_counter() - start
        detections += len(found)
        right = [f is not None and is_wanted(f[0], (code,)) for f in found]
        kept = [_kept(c, filter_config) for c in single + joined]
        per_language[code] = {
            "one_name": round(sum(right[:count]) / count, 3),
            "three_names": round(sum(right[count:]) / count, 3),
            "keep_rate_en_one_name": round(sum(kept[:count]) / count, 3),
            "keep_rate_en_three_names": round(sum(kept[count:]) / count, 3),
        }
    overall = {
        key: round(sum(v[key] for v in per_language.values()) / len(per_language), 3)
        for key in ("one_name", "three_names")
    }
    return {
        "emoji": len(next(iter(names.values()))),
        "captions_per_language": 2 * count,
        "accuracy_mean": overall,
        "per_language": per_language,
        "captions_per_s_per_core": round(detections / elapsed, 1),
    }


def caption_bench(names: dict[str, list[str]]) -> dict:
    """The caption filter's speed and drop rate on every name in every language."""
    config = CaptionConfig()
    captions = [name for words in names.values() for name in words]
    start = time.perf_counter()
    dropped = sum(caption_reason(c, config) is not None for c in captions)
    elapsed = time.perf_counter() - start
    return {
        "captions": len(captions),
        "drop_rate": round(dropped / len(captions), 4),
        "captions_per_s_per_core": round(len(captions) / elapsed, 1),
    }


def _kept(caption: str, config: LangConfig) -> bool:
    verdict = check_language(Pair("k", "u", caption), config)
    return verdict is None or verdict.reason is None


ENGLISH_KINDS = ("clean", "near_duplicate", "repeat_url", "tiny")  # rows with the clean caption


def corpus_lang_bench(corpus: str, pairs: int) -> dict:
    """The share of a demo corpus' English and foreign rows that `--filters lang --lang en`
    drops, with its defaults and without the word check (each caption judged once)."""
    from demo.__main__ import build_corpus

    rows = collections.Counter()
    for row in build_corpus(corpus, pairs, seed=0).rows:
        if row["kind"] in ENGLISH_KINDS or row["kind"].startswith("foreign_"):
            rows[row["caption"], row["kind"] in ENGLISH_KINDS] += 1
    out = {"rows": {"english": sum(n for (_, en), n in rows.items() if en),
                    "foreign": sum(n for (_, en), n in rows.items() if not en)}}  # fmt: skip
    for name, config in (("default", LangConfig()), ("no_words", LangConfig(lang_words=False))):
        dropped = collections.Counter()
        for (caption, english), n in rows.items():
            dropped[english] += 0 if _kept(caption, config) else n
        out[name] = {"english_dropped": round(dropped[True] / out["rows"]["english"], 4),
                     "foreign_dropped": round(dropped[False] / out["rows"]["foreign"], 4)}  # fmt: skip
    return out


def score_bench(pairs_count: int, batch: int = 64) -> dict:
    """pairs/s of the Scorer at `batch` on CPU, with a tiny random checkpoint."""
    try:
        import torch

        from trainer import checkpoint
        from trainer.model import CONFIGS
        from trainer.tokenizer import CaptionTokenizer
    except ImportError as exc:
        return {"skipped": f"trainer not available: {exc}"}
    from demo.corpus import generate
    from filters.score import Scorer

    images = generate(64, seed=1, min_side=256, max_side=256)
    pairs = [
        Pair(f"00000{i:010d}", "u", images[i % 64].caption, image=_jpeg(images[i % 64].data))
        for i in range(pairs_count)
    ]
    tokenizer = CaptionTokenizer.train([im.caption for im in images], 512)
    config = dataclasses.replace(CONFIGS["tiny"], vocab_size=tokenizer.vocab_size)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tiny.pt"
        checkpoint.save_initial(path, config, tokenizer)
        scorer = Scorer(str(path))
        for threads in sorted({1, torch.get_num_threads()}):
            torch.set_num_threads(threads)
            scorer.score(pairs[:batch])  # warm-up
            start = time.perf_counter()
            for i in range(0, pairs_count, batch):
                scorer.score(pairs[i : i + batch])
            elapsed = time.perf_counter() - start
            results[f"pairs_per_s_{threads}_threads"] = round(pairs_count / elapsed, 1)
    return {"model": "tiny (random init)", "batch": batch, "pairs": pairs_count, **results}


def separation(checkpoint_path: str, count: int = 100) -> dict:
    """How a (trained) checkpoint scores held-out demo pairs against the same images with
    another pair's caption: the score filter's premise, that agreement scores higher."""
    from demo.corpus import generate
    from filters.score import Scorer

    images = generate(count, seed=23, min_side=64, max_side=96)
    pairs = [
        Pair(f"00000{i:010d}", "u", im.caption, image=_jpeg(im.data)) for i, im in enumerate(images)
    ]
    wrong = [
        dataclasses.replace(p, caption=pairs[(i + 37) % count].caption) for i, p in enumerate(pairs)
    ]
    scorer = Scorer(checkpoint_path)
    right_scores, wrong_scores = scorer.score(pairs), scorer.score(wrong)
    return {
        "matched_mean": round(sum(right_scores) / count, 4),
        "mismatched_mean": round(sum(wrong_scores) / count, 4),
        "matched_beats_mismatched": sum(
            a > b for a, b in zip(right_scores, wrong_scores, strict=True)
        )
        / count,
    }


def _jpeg(data: bytes) -> bytes:
    """The image re-encoded as the crawl stores it: RGB JPEG."""
    from PIL import Image

    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(out, format="JPEG", quality=95)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=300, help="per language and length")
    parser.add_argument("--score-pairs", type=int, default=512)
    parser.add_argument("--checkpoint", help="a trained checkpoint: report its score separation")
    parser.add_argument("--corpus", choices=["styles"], help="the lang filter on this corpus too")
    parser.add_argument("--pairs", type=int, default=30000, help="the corpus' rows")
    args = parser.parse_args()
    names = emoji_names()
    result = {"lang": lang_bench(names, args.captions), "caption": caption_bench(names)}
    result["score"] = score_bench(args.score_pairs)
    if args.checkpoint:
        result["score"]["trained_separation"] = separation(args.checkpoint)
    if args.corpus:
        result["lang_on_corpus"] = {"corpus": args.corpus, "pairs": args.pairs,
                                    **corpus_lang_bench(args.corpus, args.pairs)}  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
