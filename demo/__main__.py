"""`python -m demo` (what `make demo` runs): crawl, curate, train and evaluate, end to end.

Builds the deterministic web-like corpus of `demo.webcorpus` (colour-shape concepts with a
quarter of web noise), serves it on 127.0.0.1, runs `beam_runner` on its URL list with the
text and image filters, dedup, decontamination against the held-out images and query
balancing on, trains the `tiny` CLIP on the shards on CPU, evaluates it zero-shot on held-out
images (a folder per concept under `OUTPUT/heldout/`) and writes `OUTPUT/report.html`.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import recipe
from demo.server import CorpusServer
from demo.webcorpus import WebCorpus, build

log = logging.getLogger("demo")
CORPORA = ("synthetic", "real", "styles")


def write_queries(queries: list[str], path: Path) -> None:
    path.write_text("\n".join(queries) + "\n")


def build_corpus(kind: str, pairs: int, seed: int) -> WebCorpus:
    """The synthetic colour-shape corpus, (`real`) emoji and clip art (demo.realcorpus) or
    (`styles`) emoji in several art styles, clip art, stamps and icons (demo.stylecorpus)."""
    if kind == "real":
        from demo import realcorpus

        return realcorpus.build(pairs, seed)
    if kind == "styles":
        from demo import stylecorpus

        return stylecorpus.build(pairs, seed)
    return build(pairs, seed=seed)


def write_heldout(heldout: list[tuple[bytes, str]], folder: Path) -> None:
    """One folder per concept (`red circle/`), the layout zero-shot evaluation reads."""
    shutil.rmtree(folder, ignore_errors=True)
    for index, (jpeg, concept) in enumerate(heldout):
        target = folder / concept
        target.mkdir(parents=True, exist_ok=True)
        (target / f"{index:05d}.jpg").write_bytes(jpeg)


RECIPE = Path(__file__).with_name("recipe.yaml")


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default="demo_out")
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--corpus", choices=CORPORA, default="synthetic",
                        help="real: emoji and clip art installed from the package registries "
                        "(see demo/realcorpus.py); styles: the larger one of several art "
                        "styles (demo/stylecorpus.py)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-steps", type=int, default=150, help="0 skips training")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-per-query", type=int, default=80, help="t of the balancing")
    return parser.parse_args(argv)


def recipe_overrides(out: Path, args: argparse.Namespace) -> list[str]:
    """The recipe's settings this run changes: its output, the balancing's t, the training."""
    steps = args.train_steps
    return [f"output={out}", f"crawl.max-per-query={args.max_per_query}",
            f"train.steps={steps}", f"train.batch-size={args.batch_size}",
            f"train.seed={args.seed}", f"train.warmup={max(1, steps // 10)}",
            f"train.eval-every={max(1, steps // 3)}", f"train.checkpoint-every={max(1, steps)}"]  # fmt: skip


def crawl(corpus: WebCorpus, out: Path, overrides: list[str], start: float) -> dict:
    """Serve the corpus, crawl and curate its URL list with the recipe; print and return the
    run's stats."""
    with CorpusServer(corpus.images) as server:
        rows = [{"url": server.url(r["path"]), "caption": r["caption"]} for r in corpus.rows]
        pq.write_table(pa.Table.from_pylist(rows), out / "urls.parquet")
        print(
            f"[2/5] crawling and curating {len(rows)} URLs served at {server.base_url}", flush=True
        )
        recipe.run(str(RECIPE), ("crawl",), overrides)
    stats = json.loads((out / "crawl" / "stats.json").read_text())
    print(
        f"[2/5] crawled and curated {stats['input_rows']} rows in {time.monotonic() - start:.1f}s"
    )
    for status, count in stats["status_counts"].items():
        print(f"  {status:34s} {count:6d}")
    shards = out / "crawl" / "shards"
    print(f"shards:   {shards} ({len(stats['shards'])} tars, {stats['samples']} samples)")
    print(f"manifest: {out / 'crawl' / 'manifest'}")
    print(f"stats:    {out / 'crawl' / 'stats.json'}")
    print(f"held-out: {out / 'heldout'} ({len(corpus.heldout)} images, one folder per class)")
    return stats


def main(argv: list[str] | None = None) -> dict:
    args = arguments(argv)
    out = Path(args.output)
    shutil.rmtree(out / "crawl", ignore_errors=True)  # the demo always starts afresh
    shutil.rmtree(out / "train", ignore_errors=True)
    (out / "eval.json").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    steps = args.train_steps
    overrides = recipe_overrides(out, args)

    start = time.monotonic()
    print(f"[1/5] building a {args.corpus} corpus of {args.pairs} pairs", flush=True)
    corpus = build_corpus(args.corpus, args.pairs, args.seed)
    write_heldout(corpus.heldout, out / "heldout")
    write_queries(corpus.queries, out / "queries.txt")
    stats = crawl(corpus, out, overrides, start)
    if steps:
        print(
            f"[3/5] training the tiny CLIP for {steps} steps of {args.batch_size} on CPU",
            flush=True,
        )
    done = recipe.run(str(RECIPE), ("train", "eval", "report") if steps else ("report",), overrides)
    if steps:
        stats["training"] = metrics = done["eval"]
        print(f"[4/5] zero-shot on {metrics['zeroshot_images']} held-out images of "
              f"{metrics['zeroshot_classes']} classes: top-1 {metrics['zeroshot_top1']:.3f}, "
              f"top-5 {metrics['zeroshot_top5']:.3f}")  # fmt: skip
        print(f"model:    {out / 'train' / 'checkpoints' / 'latest.pt'}")
        print(f"curves:   {out / 'train' / 'curves.png'} (loss, zero-shot top-1)")
    print(f"[5/5] done in {time.monotonic() - start:.0f}s")
    print(f"report:   {done['report']}")
    if steps:
        print(f"headline: {stats['status_counts'].get('ok', 0)} of {stats['input_rows']} pairs kept; "
              f"zero-shot top-1 {metrics['zeroshot_top1']:.3f}, top-5 {metrics['zeroshot_top5']:.3f} "
              f"(chance {1 / metrics['zeroshot_classes']:.3f})")  # fmt: skip
    return stats


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    main()
