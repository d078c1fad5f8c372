"""Which Beam runner a run gets: a pinned local default, and refusals for runners that lose data.

With no `--runner`, Beam's DirectRunner first tries Prism (on a connected machine it downloads
the Prism binary from GitHub), then falls back to other runners: the graph would silently run
on a runner nobody tested it on. openwit pins the local default to the FnApiRunner, the runner
the test suite runs every graph on (in this process; `--direct_num_workers N
--direct_running_mode multi_processing` for N worker processes), and leaves `--runner` to
choose any other. A runner known to lose data in this graph is refused before anything runs,
with the reason and what to use instead. `beam_runner.py` and `recipe.py` both ask here.
"""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.portability.portable_runner import JobServiceHandle
from apache_beam.runners.runner import PipelineRunner

DEFAULT_RUNNER = "FnApiRunner"
INSTEAD = (
    "On one machine leave --runner out (the FnApiRunner; add --direct_num_workers N "
    "--direct_running_mode multi_processing for N processes); on a cluster use DataflowRunner, "
    "FlinkRunner, SparkRunner or PortableRunner (docs/scaling.md)."
)


REFUSED = {  # runner -> why it is refused
    "DaskRunner": (
        "Beam's Dask translation (2.77) loses data silently: tagged outputs are merged into "
        "the main output, finish_bundle output is dropped, only the last sink runs, Top.Smallest "
        "returns [], and side inputs are recomputed per consuming task (one count differed "
        "between tasks). The whole graph fails on it (Crawl/CheckUrls receives a str, "
        "ImageDedup a Pair where a tagged output was expected), and with the crawl made "
        "picklable a 307-row run wrote 253 manifest rows."
    ),
}


class RefusedRunner(ValueError):
    """The chosen runner is known to lose data; the message says why and what to use."""


def runner_key(runner: str) -> str:
    """`apache_beam.runners.dask.dask_runner.DaskRunner`, `DaskRunner`, `dask` -> `dask`."""
    name = runner.rsplit(".", 1)[-1].lower()
    return name.removesuffix("runner") or name


def check(runner: str | None) -> None:
    """Raise RefusedRunner when `runner` (a --runner value; None: the default) loses data."""
    for name, why in REFUSED.items():
        if runner and runner_key(runner) == runner_key(name):
            raise RefusedRunner(f"--runner {runner} is refused: {why} {INSTEAD}")


def select(options: PipelineOptions) -> PipelineRunner | None:
    """The runner for `options`: the FnApiRunner when none is named (or it is named), Beam's
    choice for any other name; raises RefusedRunner for a runner that loses data."""
    runner = options.view_as(StandardOptions).runner
    check(runner)
    if runner and runner_key(runner) != runner_key(DEFAULT_RUNNER):
        return None  # Beam creates it from the option
    return local_runner(options)


def local_runner(options: PipelineOptions) -> fn_runner.FnApiRunner:
    """An FnApiRunner built as the DirectRunner builds its fallback: with the pipeline options
    in the provision info, so worker processes see them (filesystem credentials, for one)."""
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(info))
