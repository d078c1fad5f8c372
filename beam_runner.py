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
import dataclasses
import json
import logging
import os
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions

from manifests.io import join, read_bytes
from pipeline import allocator, disk, progress, runners
from pipeline.config_flags import add_config_flags, config_from_flags
from pipeline.console import CrawlBar, summary_table
from pipeline.graph import PipelineConfig, build, prepare
from pipeline.stages import options, stages

# Runners that run the DoFns in this process, where the progress bar can hear them.
LOCAL_RUNNERS = (None, "DirectRunner", "direct", "FnApiRunner", "BundleBasedDirectRunner")


def stage_plugins(argv: list[str] | None) -> tuple[str, ...]:
    """The modules `--stage-plugins` names in `argv`, read first: their flags join the parser."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--stage-plugins", default="")
    known, _ = early.parse_known_args(argv)
    return tuple(m.strip() for m in known.stage_plugins.split(",") if m.strip())


def make_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The run's flags, then each stage config's, made from the dataclasses (`config_flags`)
    unless the config parses its own; `argv` only names the plugin modules to include."""
    plugins = stage_plugins(argv)
    listed = "\n".join(f"  {s.name:<14} {s.doc}" for s in stages(plugins))
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog=f"stages, in order (each on when its options say so):\n{listed}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_flags(parser.add_argument_group("run"), PipelineConfig, "")
    parser.add_argument(
        "--verbose", action="store_true", help="log Beam's and openwit's INFO lines"
    )
    for config in options(plugins):
        group = parser.add_argument_group(config.title)
        add_config_flags(group, config.config_class, config.name)
        if config.add_flags is not None:
            config.add_flags(group)
    return parser


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    run = config_from_flags(args, PipelineConfig, "")
    stages = {
        config.name: config.from_args(args)
        if config.from_args is not None
        else config_from_flags(args, config.config_class, config.name)
        for config in options(run.plugins)
    }
    return dataclasses.replace(run, stages=stages)


def run(argv: list[str] | None = None) -> beam.runners.runner.PipelineResult | None:
    """Parse `argv`, build the graph and run it to completion (None: output already complete)."""
    allocator.tune()  # before the local runner's threads create their arenas
    parser = make_parser(argv)
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
    prepare(config)
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
    parser = make_parser(argv)
    args, beam_args = parser.parse_known_args(argv)
    configure_logging(args.verbose)
    local = PipelineOptions(beam_args).view_as(StandardOptions).runner in LOCAL_RUNNERS
    bar = CrawlBar() if local else None
    progress.install(bar)
    start = time.monotonic()
    full_disk = None
    try:
        result = run(argv)
    except Exception as exc:
        full_disk = disk.full_disk_message(exc, args.output)
        if full_disk is None:
            raise
    finally:
        progress.install(None)
        if bar is not None:
            bar.close()
    if full_disk is not None:  # after the bar is gone, so the line stays readable
        parser.exit(1, f"{parser.prog}: error: {full_disk}\n")
    if result is None:
        print(f"{args.output} is already complete; nothing to do (--no-resume redoes it)")
        return
    stats = json.loads(read_bytes(join(args.output, "stats.json")))
    print(summary_table(stats, time.monotonic() - start))


if __name__ == "__main__":
    main()
