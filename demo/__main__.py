"""`python -m demo` (what `make demo` runs): the crawl and curation on an embedded corpus.

Builds the deterministic web-like corpus of `demo.webcorpus` (colour-shape concepts with a
quarter of web noise), serves it on 127.0.0.1, runs `beam_runner` on its URL list with the
text and image filters on, and prints where every row went. The held-out images are written
per concept under `OUTPUT/heldout/` for zero-shot evaluation.
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

import beam_runner
from demo.server import CorpusServer
from demo.webcorpus import build

log = logging.getLogger("demo")


def write_heldout(heldout: list[tuple[bytes, str]], folder: Path) -> None:
    """One folder per concept (`red circle/`), the layout zero-shot evaluation reads."""
    shutil.rmtree(folder, ignore_errors=True)
    for index, (jpeg, concept) in enumerate(heldout):
        target = folder / concept
        target.mkdir(parents=True, exist_ok=True)
        (target / f"{index:05d}.jpg").write_bytes(jpeg)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default="demo_out")
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    start = time.monotonic()
    print(f"[1/3] building a corpus of {args.pairs} pairs", flush=True)
    corpus = build(args.pairs, seed=args.seed)
    write_heldout(corpus.heldout, out / "heldout")
    with CorpusServer(corpus.images) as server:
        rows = [{"url": server.url(r["path"]), "caption": r["caption"]} for r in corpus.rows]
        pq.write_table(pa.Table.from_pylist(rows), out / "urls.parquet")
        print(f"[2/3] crawling {len(rows)} URLs served at {server.base_url}", flush=True)
        beam_runner.run([
            "--input", str(out / "urls.parquet"), "--output", str(out / "crawl"),
            "--allowed-networks", "127.0.0.0/8", "--samples-per-shard", "1000",
            "--timeout", "2", "--filters", "lang,caption,image", "--min-side", "64",
            "--no-resume",
        ])  # fmt: skip
    stats = json.loads((out / "crawl" / "stats.json").read_text())
    print(f"[3/3] crawled {stats['input_rows']} rows in {time.monotonic() - start:.1f}s")
    for status, count in stats["status_counts"].items():
        print(f"  {status:34s} {count:6d}")
    print(
        f"shards:   {out / 'crawl' / 'shards'} ({len(stats['shards'])} tars, {stats['samples']} samples)"
    )
    print(f"manifest: {out / 'crawl' / 'manifest'}")
    print(f"stats:    {out / 'crawl' / 'stats.json'}")
    print(f"held-out: {out / 'heldout'} ({len(corpus.heldout)} images, one folder per class)")
    return stats


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    main()
