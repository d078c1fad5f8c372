"""Capacity plan: workers, hours and cost on Dataflow for 10M, 100M and 1B input rows.

    python bench/capacity.py [--markdown] [--crawl-pairs-per-core-s 57.4] [...]

Every per-core rate defaults to a figure measured on this project's 2-core machine by the
benchmarks (named next to each option); the fractions describe a LAION-like list and are
assumptions to replace with your own pool's (the demo's stats.json shows them for a run).
Prices are Dataflow's batch prices as Apache Beam's own cost benchmark uses them
(apache_beam/testing/load_tests/dataflow_cost_consts.py): $0.056 per vCPU-hour, $0.003557 per
GB-hour of memory, $0.000054 per GB-hour of standard disk, $0.011 per GB shuffled; Cloud
Storage's operation prices for the image store. The shuffle is measured, not assumed: images
travel by reference (`pipeline.image_store`), and `bench/memory.py` reports the bytes that
crossed every GroupByKey of a run (`pipeline.shuffle`'s counters), per row and per download.
Prints one JSON line (and, with --markdown, the table that docs/scaling.md shows).
"""

from __future__ import annotations

import argparse
import json
import math

VCPU_HOUR, MEMORY_GB_HOUR, DISK_GB_HOUR, SHUFFLE_GB = 0.056, 0.003557, 0.000054, 0.011
READ_OP, WRITE_OP = 0.004 / 10_000, 0.05 / 10_000  # Cloud Storage class B and class A operations
ROWS = (10_000_000, 100_000_000, 1_000_000_000)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_rates(parser)
    add_shares(parser)
    add_sizes(parser)
    parser.add_argument("--markdown", action="store_true")
    return parser.parse_args()


def add_rates(parser: argparse.ArgumentParser) -> None:
    rate = parser.add_argument_group("measured rates, per core")
    rate.add_argument(
        "--crawl-pairs-per-core-s",
        type=float,
        default=57.4,
        help="bench/crawl.py, zero-latency web of photo-like pictures: 114.9 pairs/s on 2 cores "
        "(the slower of two runs on the images-by-reference tree; 128.4 in the other), "
        "end to end with dedup (so the dedup term below counts it twice: a safe margin)",
    )
    rate.add_argument(
        "--caption-filter-per-core-s",
        type=float,
        default=77_000,
        help="bench/filters.py: the caption filter",
    )
    rate.add_argument(
        "--langdetect-per-core-s",
        type=float,
        default=180,
        help="bench/filters.py: langdetect, on captions of 15+ letters",
    )
    rate.add_argument(
        "--match-per-core-s",
        type=float,
        default=150_000,
        help="bench/balance.py: 500k queries, tokens matcher, median of 5 runs",
    )
    rate.add_argument(
        "--dedup-images-per-core-s",
        type=float,
        default=300,
        help="bench/dedup.py: 50,000 images in 165.4 s (pHash, zoom view, colour signature)",
    )


def add_shares(parser: argparse.ArgumentParser) -> None:
    share = parser.add_argument_group("pool fractions (assumptions)")
    share.add_argument(
        "--langdetect-share", type=float, default=0.8, help="rows long enough for langdetect"
    )
    share.add_argument(
        "--fetch-share",
        type=float,
        default=0.5,
        help="rows left for download after text filters, URL dedup, pre-balance",
    )
    share.add_argument("--success-share", type=float, default=0.65, help="downloads that succeed")
    share.add_argument(
        "--kept-share",
        type=float,
        default=0.8,
        help="downloaded pairs left after image filters, dedup, final balance",
    )


def add_sizes(parser: argparse.ArgumentParser) -> None:
    size = parser.add_argument_group("sizes")
    size.add_argument("--stored-kb", type=float, default=25, help="a 256 px JPEG at quality 95")
    size.add_argument(
        "--shuffle-bytes-per-row",
        type=float,
        default=1017,
        help="bench/memory.py's shuffle counters: what every row moves (URL dedup, shard)",
    )
    size.add_argument(
        "--shuffle-bytes-per-download",
        type=float,
        default=3291,
        help="bench/memory.py's shuffle counters: what a downloaded image adds (crawl batches, "
        "dedup groups, bands and join); images travel by reference, so no JPEG is shuffled",
    )
    size.add_argument("--batch-rows", type=int, default=1000, help="rows per crawl batch")
    size.add_argument("--machine-vcpus", type=int, default=16, help="n2-standard-16")
    size.add_argument("--machine-memory-gb", type=float, default=64)
    size.add_argument("--disk-gb", type=float, default=250)
    size.add_argument("--workers", type=int, default=100, help="max_num_workers")
    size.add_argument(
        "--utilisation",
        type=float,
        default=0.7,
        help="share of vCPU time doing work (shuffles, stragglers, start-up)",
    )


def plan(rows: int, a: argparse.Namespace) -> dict:
    fetched = rows * a.fetch_share
    downloaded = fetched * a.success_share
    kept = downloaded * a.kept_share
    core_seconds = {
        "text_filters": rows / a.caption_filter_per_core_s
        + rows * a.langdetect_share / a.langdetect_per_core_s,
        "match_and_balance": rows / a.match_per_core_s,
        "crawl_and_shard": fetched / a.crawl_pairs_per_core_s,
        "dedup": downloaded / a.dedup_images_per_core_s,
    }
    vcpu_hours = sum(core_seconds.values()) / 3600 / a.utilisation
    worker_hours = vcpu_hours / a.machine_vcpus
    shuffle_gb = (rows * a.shuffle_bytes_per_row + fetched * a.shuffle_bytes_per_download) / 1e9
    cost = {
        "vcpu": vcpu_hours * VCPU_HOUR,
        "memory": worker_hours * a.machine_memory_gb * MEMORY_GB_HOUR,
        "disk": worker_hours * a.disk_gb * DISK_GB_HOUR,
        "shuffle": shuffle_gb * SHUFFLE_GB,
        # the image store: two files written per crawl batch, one ranged read per kept image
        "storage_ops": kept * READ_OP + 2 * fetched / a.batch_rows * WRITE_OP,
    }
    workers = min(a.workers, max(1, math.ceil(worker_hours / 1)))  # enough to finish in ~1 h
    return {
        "rows": rows,
        "downloads": round(fetched),
        "kept": round(kept),
        "core_hours": {k: round(v / 3600, 1) for k, v in core_seconds.items()},
        "vcpu_hours": round(vcpu_hours),
        "workers": workers,
        "wall_hours": round(worker_hours / workers, 1),
        "shuffle_tb": round(shuffle_gb / 1000, 2),
        "shuffle_bytes_per_kept": round(shuffle_gb * 1e9 / kept),
        "output_tb": round(kept * a.stored_kb / 1e9, 2),
        "download_tb": round(fetched * a.success_share * 0.3 / 1e6, 1),  # ~300 kB originals
        "cost_usd": {k: round(v) for k, v in cost.items()},
        "total_usd": round(sum(cost.values())),
    }


def markdown(plans: list[dict]) -> str:
    lines = [
        "| input rows | downloads | kept | vCPU-hours | workers x hours | shuffle | output | cost |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in plans:
        lines.append(
            f"| {p['rows']:,} | {p['downloads']:,} | {p['kept']:,} | {p['vcpu_hours']:,} | "
            f"{p['workers']} x {p['wall_hours']} h | {p['shuffle_tb']} TB | {p['output_tb']} TB | "
            f"${p['total_usd']:,} |"
        )
    return "\n".join(lines)


def main() -> None:
    args = arguments()
    plans = [plan(rows, args) for rows in ROWS]
    print(json.dumps({"plans": plans}))
    if args.markdown:
        print(markdown(plans))


if __name__ == "__main__":
    main()
