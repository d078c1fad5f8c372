"""Entry point: crawl URL-caption lists into WebDataset shards on any Beam runner.

    python beam_runner.py --input 'lists/*.parquet' --output out/ [options] [Beam options]

Known options are parsed here; everything else (--runner, --direct_num_workers, Dataflow's
--project/--region/--temp_location, ...) goes to Beam's PipelineOptions, as in Beam's examples.

Runner: with no --runner, Beam's FnApiRunner in this process, the runner the tests use (add
--direct_num_workers N --direct_running_mode multi_processing for N processes); Beam's own
default, the DirectRunner, would first download and try Prism. --runner DataflowRunner,
FlinkRunner, SparkRunner or PortableRunner for a cluster (docs/scaling.md); DaskRunner is
refused, it loses data.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions

from filters import options as filter_options
from filters.image_size import ImageSizeConfig
from manifests.io import join, read_bytes
from manifests.readers import FORMATS, InputSpec
from pipeline import balance as balance_options
from pipeline import dedup as dedup_options
from pipeline import progress, runners
from pipeline.console import CrawlBar, summary_table
from pipeline.crawl import CrawlConfig
from pipeline.fetch import USER_AGENT, FetchPolicy
from pipeline.graph import PipelineConfig, build
from pipeline.imaging import ALLOWED_FORMATS, RESIZE_MODES, SAFE_FORMATS, ImageConfig

ALL_ADDRESSES = ("0.0.0.0/0", "::/0")
# Runners that run the DoFns in this process, where the progress bar can hear them.
LOCAL_RUNNERS = (None, "DirectRunner", "direct", "FnApiRunner", "BundleBasedDirectRunner")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    io_group = parser.add_argument_group("input and output")
    io_group.add_argument("--input", required=True, help="path, glob or comma-separated list")
    io_group.add_argument("--output", required=True, help="output folder (local, gs://, s3://)")
    io_group.add_argument("--input-format", choices=FORMATS, help="default: from extension")
    io_group.add_argument("--url-col", default="url")
    io_group.add_argument("--caption-col", default="caption")
    io_group.add_argument("--samples-per-shard", type=int, default=10_000)
    io_group.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="redo everything: ignore a finished output and the crawl cache of a killed run",
    )
    io_group.add_argument(
        "--keep-crawl-cache", action="store_true", help="keep OUTPUT/_crawl_cache after success"
    )
    io_group.add_argument(
        "--batch-rows", type=int, default=1000, help="input rows per crawl batch (resume unit)"
    )

    image = parser.add_argument_group("images")
    image.add_argument("--image-size", type=int, default=256)
    image.add_argument("--resize-mode", choices=RESIZE_MODES, default="center_crop")
    image.add_argument("--encode-quality", type=int, default=95, help="JPEG quality")
    image.add_argument("--min-image-size", type=int, default=0, help="shorter side, px")
    image.add_argument("--max-aspect-ratio", type=float, default=0.0, help="0: no limit")
    image.add_argument("--max-pixels", type=int, default=100_000_000, help="bomb guard")
    image.add_argument(
        "--image-formats",
        default=",".join(SAFE_FORMATS),
        help=f"comma-separated formats that may be opened, among {','.join(ALLOWED_FORMATS)}",
    )

    net = parser.add_argument_group("downloading")
    net.add_argument("--timeout", type=float, default=10.0, help="connect/read timeout, s")
    net.add_argument("--deadline", type=float, default=60.0, help="whole fetch per URL, s")
    net.add_argument("--retries", type=int, default=2)
    net.add_argument(
        "--threads",
        type=int,
        default=0,
        help="downloads in flight per worker process (default 0: 128 per core, at most 1024)",
    )
    net.add_argument(
        "--decode-processes",
        type=int,
        default=0,
        help="decoding processes per worker (default 0: one per core; -1: threads in the worker)",
    )
    net.add_argument("--max-bytes", type=int, default=20 * 1024 * 1024)
    net.add_argument("--per-host-connections", type=int, default=2)
    net.add_argument("--user-agent", default=USER_AGENT)
    net.add_argument(
        "--ignore-opt-out-headers",
        action="store_true",
        help="do not honour X-Robots-Tag noai/noimageai/noindex/noimageindex (own corpora only)",
    )
    net.add_argument("--per-host-delay", type=float, default=0.0, help="seconds between requests")
    net.add_argument(
        "--host-failures",
        type=int,
        default=3,
        help="give a host up after this many connection failures in a row (0: never)",
    )
    net.add_argument(
        "--ignore-robots-txt",
        action="store_true",
        help="do not fetch or honour robots.txt (only for corpora you own)",
    )
    net.add_argument("--robots-timeout", type=float, default=5.0, help="robots.txt fetch, s")
    net.add_argument(
        "--allow-private-addresses",
        action="store_true",
        help="allow loopback and private addresses (local corpora and tests); off by default",
    )
    net.add_argument(
        "--allowed-networks",
        default="",
        help="comma-separated CIDRs allowed although not public, e.g. 127.0.0.0/8",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="log Beam's and openwit's INFO lines"
    )
    filter_options.add_arguments(parser)
    dedup_options.add_arguments(parser)
    balance_options.add_arguments(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    fetch = FetchPolicy(
        timeout=args.timeout,
        deadline=args.deadline,
        retries=args.retries,
        max_bytes=args.max_bytes,
        per_host_connections=args.per_host_connections,
        user_agent=args.user_agent,
        honor_opt_out=not args.ignore_opt_out_headers,
        respect_robots_txt=not args.ignore_robots_txt,
        robots_timeout=args.robots_timeout,
        per_host_delay=args.per_host_delay,
        host_failures=args.host_failures,
        allowed_networks=ALL_ADDRESSES
        if args.allow_private_addresses
        else tuple(c.strip() for c in args.allowed_networks.split(",") if c.strip()),
    )
    image = ImageConfig(
        image_size=args.image_size,
        resize_mode=args.resize_mode,
        quality=args.encode_quality,
        max_pixels=args.max_pixels,
        formats=tuple(f.strip().upper() for f in args.image_formats.split(",") if f.strip()),
    )
    sizes = ImageSizeConfig(args.min_image_size, args.max_aspect_ratio)
    return PipelineConfig(
        input=args.input,
        output=args.output,
        spec=InputSpec(args.input_format, args.url_col, args.caption_col),
        crawl=CrawlConfig(
            fetch=fetch,
            image=image,
            size_filter=sizes,
            threads=args.threads,
            decode_processes=args.decode_processes,
            batch_rows=args.batch_rows,
        ),
        samples_per_shard=args.samples_per_shard,
        resume=args.resume,
        keep_crawl_cache=args.keep_crawl_cache,
        filters=filter_options.config_from_args(args),
        dedup=dedup_options.config_from_args(args),
        balance=balance_options.config_from_args(args),
    )


def run(argv: list[str] | None = None) -> beam.runners.runner.PipelineResult | None:
    """Parse `argv`, build the graph and run it to completion (None: output already complete)."""
    parser = make_parser()
    args, beam_args = parser.parse_known_args(argv)
    options = PipelineOptions(beam_args)
    options.view_as(SetupOptions).save_main_session = False
    try:
        runner = runners.select(options)  # the pinned local default unless --runner names one
    except runners.RefusedRunner as refused:
        parser.exit(2, f"{parser.prog}: error: {refused}\n")  # no usage: it is not a typo
    config = config_from_args(args)
    pipeline = beam.Pipeline(runner=runner, options=options)
    if build(pipeline, config) is None:
        return None
    result = pipeline.run()
    result.wait_until_finish()
    return result


def configure_logging(verbose: bool) -> None:
    """INFO lines with --verbose; otherwise warnings, and from Beam's own code only errors (its
    type-hint, runner and optional-dependency notices are not the user's business)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, force=True)
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(
                lambda r: (
                    r.levelno >= logging.ERROR or f"{os.sep}apache_beam{os.sep}" not in r.pathname
                )
            )


def main(argv: list[str] | None = None) -> None:
    """The command line: a quiet console with a live crawl bar on local runs, then a summary."""
    args, beam_args = make_parser().parse_known_args(argv)
    configure_logging(args.verbose)
    local = PipelineOptions(beam_args).view_as(StandardOptions).runner in LOCAL_RUNNERS
    bar = CrawlBar() if local else None
    progress.install(bar)
    start = time.monotonic()
    try:
        result = run(argv)
    finally:
        progress.install(None)
        if bar is not None:
            bar.close()
    if result is None:
        print(f"{args.output} is already complete; nothing to do (--no-resume redoes it)")
        return
    stats = json.loads(read_bytes(join(args.output, "stats.json")))
    print(summary_table(stats, time.monotonic() - start))


if __name__ == "__main__":
    main()
