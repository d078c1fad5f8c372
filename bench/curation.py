"""Does curation make a better CLIP? The same model, seed and steps on the raw and curated pools.

    python bench/curation.py [--corpus synthetic|real] [--pairs 3000] [--steps 200] [--seeds 0,1]
                             [--jobs 2]

The corpus is the demo's (`--corpus synthetic`, `demo.webcorpus`: 48 colour-shape concepts
under a Zipf head; `--corpus real`, `demo.realcorpus`: Noto emoji renders and Openclipart
drawings, held-out Twemoji) with a quarter of web noise (resized and recompressed copies,
repeated URLs, foreign, placeholder captions, tiny, broken and dead images), served on loopback.

- raw: every pair that downloaded and decoded (no filters, no dedup, no balancing);
- curated: the demo recipe's curation (caption, language and image filters, URL and image
  dedup in the `pair` scope, decontamination against the held-out images, query balancing
  with t = 80).

Each pool trains the `tiny` CLIP for the same steps with the same seed, for every seed, and is
evaluated on the same held-out set, never served: zero-shot top-1/top-5 over the held-out images
of concepts named in English (synthetic: 240 images of 48 concepts; real: 100 Twemoji of 100
emoji), and image-text retrieval recall@1/5 over those images captioned "a photo of a {name}"
and (`name_*`) captioned with the bare name, the phrasing the corpora's captions use.
`--jobs N` trains N runs at once, each on its share of the cores (a run's figures do not depend
on it). Prints one JSON line with every figure, and the means per pool.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import beam_runner  # noqa: E402
import recipe  # noqa: E402
from demo.__main__ import RECIPE, build_corpus, write_heldout, write_queries  # noqa: E402
from demo.server import CorpusServer  # noqa: E402
from manifests.schema import Pair  # noqa: E402
from pipeline.writers import write_samples  # noqa: E402
from trainer.checkpoint import load_model  # noqa: E402
from trainer.evaluate import load_folder, retrieval  # noqa: E402
from trainer.train import TrainConfig, train  # noqa: E402

COMMON = ["--allowed-networks", "127.0.0.0/8", "--samples-per-shard", "1000", "--timeout", "2"]
RAW = ["--dedup", "none"]


def curated(work: Path) -> list[str]:
    """The demo recipe's crawl options, with its `{output}` at `work` (where the bench writes
    the URL list, queries and held-out images under the same names)."""
    options = recipe.load_recipe(str(RECIPE), [f"output={work}"])["crawl"]
    return recipe.as_flags({k: v for k, v in options.items() if k != "input"})


def heldout_shard(heldout: list[tuple[bytes, str]], path: Path) -> None:
    """The held-out images as a retrieval set, each captioned with its concept."""
    pairs = [Pair(key=f"{i:06d}", url="", caption=f"a photo of a {concept}", image=jpeg)
             for i, (jpeg, concept) in enumerate(heldout)]  # fmt: skip
    with path.open("wb") as stream:
        write_samples(stream, pairs)


def crawl(work: Path, name: str, extra: list[str]) -> dict:
    out = work / name
    beam_runner.run(["--input", str(work / "urls.parquet"), "--output", str(out), *COMMON, *extra])
    return json.loads((out / "stats.json").read_text())


def train_and_score(work: Path, pool: str, seed: int, steps: int, batch: int, threads: int) -> dict:
    config = TrainConfig(
        shards=str(work / pool / "shards" / "*.tar"), output=str(work / f"train-{pool}-{seed}"),
        model="tiny", batch_size=batch, steps=steps, warmup=max(1, steps // 10), seed=seed,
        eval_folder=str(work / "heldout"), eval_shards=str(work / "heldout.tar"),
        checkpoint_every=steps, log_every=steps, threads=threads,
    )  # fmt: skip
    start = time.monotonic()
    metrics = train(config)["metrics"]
    keep = ("zeroshot_top1", "zeroshot_top5", "image_to_text_R@1", "image_to_text_R@5",
            "text_to_image_R@1", "text_to_image_R@5")  # fmt: skip
    found = {k: round(v, 4) for k, v in metrics.items() if k in keep}
    model, tokenizer, _ = load_model(Path(config.output) / "checkpoints" / "latest.pt")
    images, labels, classes = load_folder(work / "heldout")
    named = retrieval(model, tokenizer, images, [classes[label] for label in labels])
    found |= {f"name_{k}": round(v, 4) for k, v in named.items() if k in keep}
    return {**found, "seconds": round(time.monotonic() - start)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--corpus", choices=("synthetic", "real"), default="synthetic")
    parser.add_argument("--jobs", type=int, default=1, help="training runs at once")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(tempfile.mkdtemp(prefix="openwit-curation-"))
    try:
        corpus = build_corpus(args.corpus, args.pairs, seed=0)
        write_heldout(corpus.heldout, work / "heldout")
        heldout_shard(corpus.heldout, work / "heldout.tar")
        write_queries(corpus.queries, work / "queries.txt")
        with CorpusServer(corpus.images) as server:
            rows = [{"url": server.url(r["path"]), "caption": r["caption"]} for r in corpus.rows]
            pq.write_table(pa.Table.from_pylist(rows), work / "urls.parquet")
            pools = {
                "raw": crawl(work, "raw", RAW),
                "curated": crawl(work, "curated", curated(work)),
            }
        result = {"corpus": args.corpus, "pairs": args.pairs, "steps": args.steps, "batch_size": args.batch_size,
                  "seeds": seeds, "samples": {p: s["samples"] for p, s in pools.items()}}  # fmt: skip
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        runs = {(pool, seed): (work, pool, seed, args.steps, args.batch_size, threads)
                for pool in pools for seed in seeds}  # fmt: skip
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as executor:
            futures = {run: executor.submit(train_and_score, *job) for run, job in runs.items()}
        for pool in pools:
            runs = [futures[pool, seed].result() for seed in seeds]
            result[pool] = runs
            result[f"{pool}_mean"] = {
                k: round(statistics.mean(r[k] for r in runs), 4) for k in runs[0] if k != "seconds"
            }
        result["top1_gain_points"] = round(
            100 * (result["curated_mean"]["zeroshot_top1"] - result["raw_mean"]["zeroshot_top1"]), 1
        )
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
