"""`python -m demo`: the whole crawl on an embedded corpus served over loopback.

Generates a deterministic corpus of coloured shapes with web-like noise (dead links, HTML
pages, broken and tiny images, a redirect to a private address, a non-http URL), serves it on
127.0.0.1, runs `beam_runner` on its URL list and prints where everything went.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import beam_runner
from demo.corpus import generate
from demo.server import CorpusServer

log = logging.getLogger("demo")


def noisy_rows(
    server: CorpusServer, names: list[str], captions: list[str], seed: int
) -> list[dict]:
    """The corpus's URL list with about 10% of the web's usual failures mixed in."""
    rng = random.Random(seed)
    rows = [
        {"url": server.url(f"img/{n}"), "caption": c} for n, c in zip(names, captions, strict=True)
    ]
    noise = [
        ("status/404", "a dead link"),
        ("html", "a page, not an image"),
        ("img/broken.jpg", "a broken image"),
        ("img/tiny.jpg", "a tiny icon"),
        ("redirect?to=http://169.254.169.254/latest/meta-data/", "a metadata grab"),
        (f"robots-tag/noai/{names[0]}", "an opted-out image"),
    ]
    for _ in range(len(rows) // 10):
        path, caption = rng.choice(noise)
        rows.insert(rng.randrange(len(rows) + 1), {"url": server.url(path), "caption": caption})
    rows.append({"url": "ftp://example.com/a.jpg", "caption": "not http"})
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default="demo_out")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.output)
    shutil.rmtree(out / "crawl", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)

    start = time.monotonic()
    log.info("generating %d images", args.images)
    corpus = generate(args.images, seed=args.seed)
    images = {i.name: i.data for i in corpus}
    images["broken.jpg"] = corpus[0].data[: len(corpus[0].data) // 3]
    images["tiny.jpg"] = generate(1, seed=1, min_side=12, max_side=16)[0].data
    with CorpusServer(images) as server:
        rows = noisy_rows(server, [i.name for i in corpus], [i.caption for i in corpus], args.seed)
        pq.write_table(pa.Table.from_pylist(rows), out / "urls.parquet")
        log.info("serving %d URLs at %s; crawling", len(rows), server.base_url)
        beam_runner.run(
            [
                "--input",
                str(out / "urls.parquet"),
                "--output",
                str(out / "crawl"),
                "--allowed-networks",
                "127.0.0.0/8",
                "--min-image-size",
                "64",
                "--samples-per-shard",
                "500",
                "--timeout",
                "2",
            ]
        )
    stats = json.loads((out / "crawl" / "stats.json").read_text())
    print(f"crawled {stats['input_rows']} rows in {time.monotonic() - start:.1f}s")
    for status, count in stats["status_counts"].items():
        print(f"  {status:28s} {count}")
    print(
        f"shards: {out / 'crawl' / 'shards'} ({len(stats['shards'])} tars, {stats['samples']} samples)"
    )
    print(f"manifest: {out / 'crawl' / 'manifest'}  stats: {out / 'crawl' / 'stats.json'}")
    return stats


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    main()
