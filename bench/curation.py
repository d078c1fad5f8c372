"""Does curation make a better CLIP? The same model, seed and steps on the raw and curated pools.

    python bench/curation.py [--corpus synthetic|real|styles] [--pairs 3000] [--steps 200]
                             [--seeds 0,1] [--jobs 2]
                             [--ablate [--pools LIST] [--score-keep 0.7] [--score-scope query]
                                       [--out DIR] [--work DIR]]

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

`--ablate` (bench/ablation.py) trains on raw, on each stage alone (text filters, dedup with
decontamination, balancing, image filters, the score filter keeping the best `--score-keep`
of each query's pairs, `--score-scope query`, under a model trained on the raw pool: the first
seed's raw run), on all of them, each
configured as the recipe configures it, on all of them balanced only after the download and the
dedup (`all_balance_last`: `--prebalance-headroom 0`), and on the recipe's own curation (`recipe`:
every stage but the score filter). Every run sees the same samples (steps x batch),
however large its pool. Per held-out style (`styles`: Twemoji and Facebook's emoji, by English
name): zero-shot top-1/top-5 averaged over seeds, a 95% bootstrap interval over the evaluation
images, the seeds' spread, the gain over raw with a paired interval, and retrieval recall. It
prints the JSON line, writes it to `OUT/ablation.json` and `OUT/report.html` (the "all" pool's
crawl report, with the ablation's plot and table). Each finished run is stored at once in
`OUT/runs/POOL-SEED.json` with its settings and the corpus' digest; the same command run again
(in another session: the files are small enough to commit) trains only the runs missing, and
crawls only their pools. `--work DIR` keeps the crawls and checkpoints, so a run cut short
also resumes from its last quarter's checkpoint, and each input row's origin
(`origins.parquet`, for `bench/ablation.py --by-origin`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import beam_runner  # noqa: E402
import recipe  # noqa: E402
from bench import ablation  # noqa: E402
from demo.__main__ import CORPORA, RECIPE, build_corpus, write_heldout, write_queries  # noqa: E402
from demo.server import CorpusServer  # noqa: E402
from demo.webcorpus import WebCorpus  # noqa: E402
from filters.score import SCOPES  # noqa: E402
from manifests.report import build_report  # noqa: E402
from manifests.schema import Pair  # noqa: E402
from pipeline.writers import write_samples  # noqa: E402
from trainer.checkpoint import load_model, read_step  # noqa: E402
from trainer.evaluate import load_folder, retrieval  # noqa: E402
from trainer.train import TrainConfig, train  # noqa: E402

COMMON = ["--allowed-networks", "127.0.0.0/8", "--samples-per-shard", "1000", "--timeout", "2"]
RAW = ["--dedup", "none"]


def recipe_crawl(work: Path) -> dict:
    """The demo recipe's crawl options, with its `{output}` at `work` (where the bench writes
    the URL list, queries and held-out images under the same names)."""
    options = recipe.load_recipe(str(RECIPE), [f"output={work}"])["crawl"]
    return {k: v for k, v in options.items() if k != "input"}


def curated(work: Path) -> list[str]:
    return recipe.as_flags(recipe_crawl(work))


def heldout_shard(heldout: list[tuple[bytes, str]], path: Path) -> None:
    """The held-out images as a retrieval set, each captioned with its concept."""
    pairs = [Pair(key=f"{i:06d}", url="", caption=f"a photo of a {concept}", image=jpeg)
             for i, (jpeg, concept) in enumerate(heldout)]  # fmt: skip
    with path.open("wb") as stream:
        write_samples(stream, pairs)


def crawl(work: Path, name: str, flags: list[str]) -> dict:
    out = work / name
    beam_runner.run(["--input", str(work / "urls.parquet"), "--output", str(out), *flags])
    return json.loads((out / "stats.json").read_text())


def crawled(work: Path, name: str, flags: list[str]) -> dict:
    """`crawl`, unless a finished crawl of this pool with these flags is in `work` already (a
    kept `--work` folder serves one corpus: the same each time, its URLs' port is not)."""
    stats, made_with = work / name / "stats.json", work / name / "flags.json"
    if stats.exists() and made_with.exists() and json.loads(made_with.read_text()) == flags:
        return json.loads(stats.read_text())
    shutil.rmtree(work / name, ignore_errors=True)  # made with other flags, or cut short
    found = crawl(work, name, flags)
    made_with.write_text(json.dumps(flags))
    return found


def train_config(work: Path, pool: str, seed: int, steps: int, batch: int, threads: int,
                 **evaluation) -> TrainConfig:  # fmt: skip
    """The tiny CLIP on `pool`'s shards: every pool, seed and bench the same but for these. A
    checkpoint every quarter and `resume latest`: a run cut short goes on where it stopped."""
    return TrainConfig(
        shards=str(work / pool / "shards" / "*.tar"), output=str(work / f"train-{pool}-{seed}"),
        model="tiny", batch_size=batch, steps=steps, warmup=max(1, steps // 10), seed=seed,
        checkpoint_every=max(1, steps // 4), log_every=steps, threads=threads, resume="latest",
        **evaluation,
    )  # fmt: skip


def train_and_evaluate(work: Path, pool: str, seed: int, steps: int, batch: int, threads: int,
                       styles: dict[str, Path]) -> dict:  # fmt: skip
    """One ablation run: trained, then each held-out style evaluated image by image."""
    config = train_config(work, pool, seed, steps, batch, threads)
    start = time.monotonic()
    train(config)
    found = ablation.evaluate(Path(config.output) / "checkpoints" / "latest.pt", styles)
    return {"styles": found, "seconds": round(time.monotonic() - start)}


def train_and_score(work: Path, pool: str, seed: int, steps: int, batch: int, threads: int) -> dict:
    config = train_config(work, pool, seed, steps, batch, threads,
                          eval_folder=str(work / "heldout"), eval_shards=str(work / "heldout.tar"))  # fmt: skip
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


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--corpus", choices=CORPORA, default="synthetic")
    parser.add_argument("--jobs", type=int, default=1, help="training runs at once")
    parser.add_argument("--ablate", action="store_true", help="each stage alone (see above)")
    parser.add_argument("--pools", default=None,
                        help="--ablate: train only these pools now, in this order (a comma "
                        f"list of {', '.join(ablation.pools())}); default every one")  # fmt: skip
    parser.add_argument("--score-keep", type=float, default=0.7,
                        help="--ablate: the score filter's --keep-top-fraction")  # fmt: skip
    parser.add_argument("--score-scope", choices=SCOPES, default="query",
                        help="--ablate: the score filter's --score-scope (query: a model "
                        "trained on the raw pool empties rare concepts under one global "
                        "threshold)")  # fmt: skip
    parser.add_argument("--same-corpus-as", default="",
                        help="--ablate: a comma list of corpus digests whose stored runs count "
                        "as this corpus' (the styles corpus built on another machine can differ "
                        "in a few bytes); the result says which run came from which")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("curation_out"),
                        help="--ablate: where ablation.json, report.html and runs/ go")  # fmt: skip
    parser.add_argument("--work", type=Path, default=None,
                        help="--ablate: the crawls and checkpoints, kept for a rerun (default: "
                        "a temporary folder, removed)")  # fmt: skip
    return parser.parse_args(argv)


def compare(args: argparse.Namespace, work: Path, seeds: list[int]) -> dict:
    """Raw against the recipe's curation, every figure of each run and the means."""
    pools = {"raw": crawl(work, "raw", [*COMMON, *RAW]),
             "curated": crawl(work, "curated", curated(work))}  # fmt: skip
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
    return result


def write_styles(corpus: WebCorpus, folder: Path) -> dict[str, Path]:
    """The held-out images, a class folder tree per style (one, `heldout`, without styles)."""
    groups: dict[str, list[tuple[bytes, str]]] = {}
    styles = corpus.heldout_style or ["heldout"] * len(corpus.heldout)
    for item, style in zip(corpus.heldout, styles, strict=True):
        groups.setdefault(style, []).append(item)
    for style, items in groups.items():
        write_heldout(items, folder / style)
    return {style: folder / style for style in groups}


def corpus_digest(corpus: WebCorpus) -> str:
    """What the corpus holds (rows, served images, held-out images): runs are comparable only
    on one corpus, and the packages it is built from could change between machines."""
    digest = hashlib.sha256()
    for _, chunk in corpus_chunks(corpus):
        digest.update(chunk)
    return digest.hexdigest()


def corpus_chunks(corpus: WebCorpus):
    """(part, bytes) in digest order: each row's path and caption, each served image (by its
    source, "noise" for the noise rows'), each held-out image with its concept."""
    for row in corpus.rows:
        yield "rows", json.dumps([row["path"], row["caption"]]).encode()
    source = {row["path"].removeprefix("img/"): row["source"] for row in corpus.rows
              if "source" in row}  # fmt: skip
    for name in sorted(corpus.images):
        image = name.encode() + hashlib.sha256(corpus.images[name]).digest()
        yield f"images:{source.get(name, 'noise')}", image
    for jpeg, concept in corpus.heldout:
        yield "heldout", concept.encode() + hashlib.sha256(jpeg).digest()


def corpus_environment(corpus: WebCorpus) -> dict:
    """What the corpus was built with and a digest of each of its parts, kept in every run: when
    the whole digest differs on another machine, these say which part and which package."""
    from importlib import metadata

    from demo.stylecorpus import APT

    parts: dict = {}  # part -> its running sha256
    for part, chunk in corpus_chunks(corpus):
        parts.setdefault(part, hashlib.sha256()).update(chunk)
    versions = {}
    for package in ("pillow", "emoji", "cairosvg", "cairocffi"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    if shutil.which("dpkg-query"):
        listed = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\\n",
                                 *APT, "libcairo2", "libjpeg62-turbo"],
                                capture_output=True, text=True).stdout  # fmt: skip
        versions |= dict(line.split(" ", 1) for line in listed.splitlines() if " " in line)
    return {"digests": {k: v.hexdigest()[:16] for k, v in sorted(parts.items())},
            "versions": versions}  # fmt: skip


class RunStore:
    """The finished ablation runs, one JSON file each under `OUT/runs/`, so a rerun of the same
    settings (in a later session, on another machine) trains only what is missing. A file made
    under other settings, or for a pool whose flags have changed since (a recipe default), is
    not a finished run of these; one made on a corpus of another digest is, only when that
    digest is named in `same_corpus_as`."""

    def __init__(self, folder: Path, settings: dict, flags: dict[str, list[str]],
                 same_corpus_as: frozenset[str] = frozenset(), environment: dict | None = None):  # fmt: skip
        self.folder, self.settings, self.flags = folder, settings, flags
        self.digests = {settings.get("corpus_sha256"), *same_corpus_as}
        self.environment = environment or {}
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, pool: str, seed: int) -> Path:
        return self.folder / f"{pool}-{seed}.json"

    def get(self, pool: str, seed: int) -> dict | None:
        path = self.path(pool, seed)
        if not path.exists():
            return None
        run = json.loads(path.read_text())
        same = (run["settings"].get("corpus_sha256") in self.digests
                and ablation.settings_but_corpus(run)
                == ablation.settings_but_corpus({"settings": self.settings})
                and run.get("flags") == self.flags[pool])  # fmt: skip
        return run if same else None

    def put(self, pool: str, seed: int, run: dict, samples: int) -> None:
        run = {"settings": self.settings, "flags": self.flags[pool], "pool": pool, "seed": seed,
               "samples": samples, "environment": self.environment, **run}  # fmt: skip
        tmp = self.path(pool, seed).with_suffix(".tmp")
        tmp.write_text(json.dumps(run))
        tmp.replace(self.path(pool, seed))


def corpora_of(runs: dict[str, list[dict]]) -> dict[str, list[str]]:
    """Which runs were made on which corpus digest (one, unless `--same-corpus-as` joined some)."""
    found: dict[str, list[str]] = {}
    for pool, pool_runs in runs.items():
        for run in pool_runs:
            found.setdefault(run["settings"]["corpus_sha256"], []).append(f"{pool}-{run['seed']}")
    return found


def portable(flags: list[str], work: Path) -> list[str]:
    """`flags` with the work folder written `{work}`: the same pool in another one is the same."""
    return [flag.replace(str(work), "{work}") for flag in flags]


def train_missing(args, work: Path, store: RunStore, runs: list[tuple[str, int]],
                  samples: dict, styles: dict) -> None:  # fmt: skip
    """Train `runs` (pool, seed), `--jobs` at a time, storing each as soon as it finishes."""
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as executor:
        futures = {executor.submit(train_and_evaluate, work, pool, seed, args.steps,
                                   args.batch_size, threads, styles): (pool, seed)
                   for pool, seed in runs}  # fmt: skip
        for future in as_completed(futures):
            pool, seed = futures[future]
            store.put(pool, seed, future.result(), samples[pool])


def ablate(args: argparse.Namespace, work: Path, seeds: list[int], corpus: WebCorpus) -> dict:
    """Raw first (its first seed's model scores the pools that use the score filter), then
    the others seed by seed, in `--pools` order ("all" first by default: a cut-short ablation
    has the curated pool and then every stage at its first seeds); the same samples seen by
    every run. Runs already in `OUT/runs/` under the same settings and flags are taken as they
    are; only the pools with runs missing are crawled. The result holds every finished run."""
    start = time.monotonic()
    styles = write_styles(corpus, work / "styles")
    options = recipe_crawl(work)
    options["filters"] = f"{options['filters']},score"
    scorer = work / f"train-raw-{seeds[0]}" / "checkpoints" / "latest.pt"
    options["score-checkpoint"] = str(scorer)
    options["keep-top-fraction"] = args.score_keep
    options["score-scope"] = args.score_scope
    pools = ablation.pools()
    chosen = training_order(args.pools, pools)
    flags = ablation.flags_of_pools(options)
    settings = {"corpus": args.corpus, "pairs": args.pairs, "steps": args.steps,
                "batch_size": args.batch_size, "score_keep": args.score_keep,
                "corpus_sha256": corpus_digest(corpus)}  # fmt: skip
    same_corpus_as = frozenset(filter(None, args.same_corpus_as.split(",")))
    store = RunStore(args.out / "runs", settings,
                     {pool: portable(f, work) for pool, f in flags.items()},
                     same_corpus_as, corpus_environment(corpus))  # fmt: skip
    missing = {pool: [s for s in seeds if store.get(pool, s) is None] for pool in chosen}
    raw_runs = [("raw", s) for s in missing.get("raw", [])]
    remake_scorer = (
        (not scorer.exists() or read_step(scorer) < args.steps)  # absent, or cut short
        and ("raw", seeds[0]) not in raw_runs
        and any(missing[p] for p in chosen if "score" in pools[p])
    )  # its run is stored but its model is not in this work folder: trained (on) again, the
    # same at the same thread count (at another, 28 against 27 Twemoji hits: summation order)
    samples = {}
    if raw_runs or remake_scorer:
        samples["raw"] = crawled(work, "raw", flags["raw"])["samples"]
    if remake_scorer:
        train(train_config(work, "raw", seeds[0], args.steps, args.batch_size, os.cpu_count()))
    train_missing(args, work, store, raw_runs, samples, styles)
    for pool in chosen:
        if pool != "raw" and missing[pool]:
            samples[pool] = crawled(work, pool, flags[pool])["samples"]
    rest = [(pool, seed) for seed in seeds for pool in chosen
            if pool != "raw" and seed in missing[pool]]  # fmt: skip
    train_missing(args, work, store, rest, samples, styles)
    runs = {pool: [run for seed in seeds if (run := store.get(pool, seed))] for pool in pools}
    runs = {pool: rs for pool, rs in runs.items() if rs}
    if "raw" not in runs:
        raise SystemExit("no raw run is finished: every gain is measured against raw")
    samples = {pool: rs[0]["samples"] for pool, rs in runs.items()}
    seen = args.steps * args.batch_size
    hits = {p: [r["styles"] for r in rs] for p, rs in runs.items()}
    result = {
        "corpus": args.corpus, "pairs": args.pairs, "steps": args.steps, "batch_size": args.batch_size,
        "seeds": seeds, "seeds_done": {p: [r["seed"] for r in rs] for p, rs in runs.items()},
        "complete": all(len(runs.get(pool, [])) == len(seeds) for pool in pools),
        "samples_seen_per_run": seen, "equal_samples_seen": True,
        "note": f"every run: the tiny CLIP, {args.steps} steps of {args.batch_size} = {seen} "
                "samples seen, whatever its pool's size; intervals: 95% bootstrap over the "
                "evaluation images of the seed-averaged hits; score filter: keep the best "
                f"{args.score_keep} ({args.score_scope} scope) under the raw pool's "
                f"seed-{seeds[0]} model",
        "samples": samples, "epochs": {p: round(seen / max(n, 1), 2) for p, n in samples.items()},
        "heldout_images": {s: len(list(f.rglob("*.jpg"))) for s, f in styles.items()},
        "flags": {pool: store.flags[pool] for pool in runs},
        "corpora": corpora_of(runs),
        "summary": ablation.summarise(hits),
        "by_frequency": ablation.by_frequency(hits, ablation.heldout_name_counts(work)),
        "run_seconds": {p: [r["seconds"] for r in rs] for p, rs in runs.items()},
        "trained_now": len(raw_runs) + len(rest),
    }  # fmt: skip
    result["wall_seconds"] = round(time.monotonic() - start)
    (args.out / "ablation.json").write_text(json.dumps(result, indent=1))
    trained = work / f"train-all-{seeds[0]}"
    if (work / "all" / "stats.json").exists():  # not crawled again when its runs were all done
        build_report(work / "all", trained if trained.exists() else None,
                     args.out / "report.html", [ablation.section(result)])  # fmt: skip
    return result


def training_order(names: str | None, pools: dict[str, set[str]]) -> list[str]:
    """The pools `--pools` names, in its order (raw, when named, always first); by default
    every pool, "all" first after raw."""
    if names is None:
        return ["raw", "all", *(pool for pool in pools if pool not in ("raw", "all"))]
    chosen = names.split(",")
    unknown = sorted(set(chosen) - set(pools))
    if unknown:
        raise SystemExit(f"--pools: no pool {unknown}; the pools are {', '.join(pools)}")
    return sorted(chosen, key=lambda pool: pool != "raw")


def main(argv: list[str] | None = None) -> None:
    args = arguments(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="openwit-curation-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        corpus = build_corpus(args.corpus, args.pairs, seed=0)
        write_heldout(corpus.heldout, work / "heldout")
        heldout_shard(corpus.heldout, work / "heldout.tar")
        write_queries(corpus.queries, work / "queries.txt")
        with CorpusServer(corpus.images) as server:
            rows = [{"url": server.url(r["path"]), "caption": r["caption"]} for r in corpus.rows]
            pq.write_table(pa.Table.from_pylist(rows), work / "urls.parquet")
            origin = pa.table({"origin": ablation.origins(corpus.rows)})
            pq.write_table(origin, work / "origins.parquet")  # for `ablation.py --by-origin`
            result = (
                ablate(args, work, seeds, corpus) if args.ablate else compare(args, work, seeds)
            )
        print(json.dumps({k: v for k, v in result.items() if k != "flags"}))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
