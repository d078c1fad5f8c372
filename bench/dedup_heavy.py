"""The dedup benchmark's heavy-cluster case, `python bench/dedup.py --heavy` (bench/dedup.py puts
the repository root on sys.path and dispatches here).

The web's worst case (needs no Debian package): a few photo-like pictures repeated thousands
of times at other sizes and JPEG qualities (placeholders, logos, memes) among thousands of
distinct photo-like pictures, served on 127.0.0.1 and crawled end to end by `beam_runner.py`
with `--dedup none` and with the default dedup, `--heavy-repeats` pairs of crawls in turn (a
loaded machine moves one crawl's time by 20%). It prints one JSON line: the median crawl times
and share dedup adds, every pair's times, the survivors per repeated picture and the distinct
pictures merged by mistake.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from demo.photos import photo

ROOT = Path(__file__).resolve().parent.parent


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--heavy", action="store_true", help="run the heavy-cluster crawl only")
    parser.add_argument("--heavy-pictures", type=int, default=3)
    parser.add_argument("--heavy-copies", type=int, default=1500)
    parser.add_argument("--heavy-distinct", type=int, default=3000)
    parser.add_argument("--heavy-repeats", type=int, default=3,
                        help="crawl pairs (without, then with dedup); medians are reported")  # fmt: skip


def heavy_corpus(folder: Path, pictures: int, copies: int, distinct: int, seed: int) -> dict:
    """Write the heavy-cluster corpus once; returns {file name: picture id} (`d...` distinct)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for p in range(pictures):
        base = photo(p, seed, min_side=300, max_side=500)
        for c in range(copies):
            name = f"h{p}-{c:05d}.jpg"
            truth[name] = f"h{p}"
            if not (folder / name).exists():
                scale = float(rng.uniform(0.4, 1.6))
                size = (round(base.width * scale), round(base.height * scale))
                copy = base.resize(size, Image.LANCZOS)
                copy.save(folder / name, format="JPEG", quality=int(rng.integers(30, 96)))
    for d in range(distinct):
        name = f"d{d:05d}.jpg"
        truth[name] = name
        if not (folder / name).exists():
            photo(pictures + d, seed, 300, 500).save(folder / name, format="JPEG", quality=90)
    return truth


def crawl(urls: Path, out: Path, extra: list[str]) -> float:
    """Seconds for `beam_runner.py` to crawl `urls` into `out` (a fresh process)."""
    subprocess.run(["rm", "-rf", str(out)], check=True)
    command = [sys.executable, str(ROOT / "beam_runner.py"), "--input", str(urls)]
    command += ["--output", str(out), "--allowed-networks", "127.0.0.0/8", *extra]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def heavy(args: argparse.Namespace) -> dict:
    """Crawl the heavy-cluster corpus without and with dedup; survivors and false merges."""
    work = ROOT / "bench_out" / "dedup_heavy"
    folder = work / f"corpus-{args.heavy_pictures}x{args.heavy_copies}-{args.heavy_distinct}"
    truth = heavy_corpus(
        folder, args.heavy_pictures, args.heavy_copies, args.heavy_distinct, args.seed
    )
    url_file = work / "server_url"
    url_file.unlink(missing_ok=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "demo.server", "--folder", str(folder), "--url-file", str(url_file)],
        cwd=ROOT,
    )
    try:
        while not (url_file.exists() and url_file.read_text()):
            time.sleep(0.1)
        base = url_file.read_text()
        names = sorted(truth)
        random.Random(args.seed).shuffle(names)
        urls = work / "urls.parquet"
        rows = [{"url": f"{base}/img/{n}", "caption": "a photo"} for n in names]
        pq.write_table(pa.Table.from_pylist(rows), urls)
        # one host here, so it gets the connections a crawl spreads over many hosts
        fast = ["--per-host-connections", "32"]
        times = [(crawl(urls, work / "no_dedup", [*fast, "--dedup", "none"]),
                  crawl(urls, work / "dedup", fast)) for _ in range(args.heavy_repeats)]  # fmt: skip
    finally:
        server.kill()
    survivors: dict[str, int] = {}
    merged = 0
    for row in pq.read_table(work / "dedup" / "manifest").to_pylist():
        picture = truth[row["url"].rsplit("/", 1)[1]]
        if picture.startswith("h"):
            survivors[picture] = survivors.get(picture, 0) + (row["status"] == "ok")
        else:
            merged += row["status"] != "ok"
    stats = json.loads((work / "dedup" / "stats.json").read_text())
    return {
        "case": "heavy",
        "urls": len(rows),
        "pictures": args.heavy_pictures,
        "copies_each": args.heavy_copies,
        "distinct": args.heavy_distinct,
        "crawl_no_dedup_s": round(statistics.median(plain for plain, _ in times), 1),
        "crawl_dedup_s": round(statistics.median(deduped for _, deduped in times), 1),
        "dedup_added_fraction": round(statistics.median(d / p - 1 for p, d in times), 3),
        "runs_s": [[round(p, 1), round(d, 1)] for p, d in times],
        "survivors_per_repeated_picture": dict(sorted(survivors.items())),
        "distinct_merged": merged,
        "status_counts": stats["status_counts"],
        "residual_edges": stats["dedup_image"].get("residual_edges"),
    }
