"""The pipeline graph: the stages of `pipeline.stages`, in order, from the read to the shards.

Every pair flows on to the manifest; each stage hands its stats to stats.json, and the graph
counts each stage's output by status for the funnel (`stage.funnel_rows`).

`build()` only builds: it checks the inputs and the output folder and wires the graph.
`prepare()`, called at run time, removes what a killed run left half-written (and, without
resume, the crawl cache). Reruns resume: finished crawl batches are cached under
`OUTPUT/_crawl_cache/<fingerprint>/` and reused; a run whose `stats.json` already carries the
same fingerprint is complete and is skipped. Both fingerprints hold each input's size and
modification time, so an edited or appended input is a new run. Shards, manifest and stats
are written anew each run (they depend on global counts) under `OUTPUT/_staging/`, and replace
the previous run's only once all of them are complete; the cache is removed after that,
unless asked to keep it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner

from manifests.io import ensure_writable_dir, file_versions, join, match_files, read_bytes
from manifests.readers import check_columns
from manifests.schema import error
from pipeline.config_flags import settings
from pipeline.crawl_cache import CrawlCache, fingerprint
from pipeline.dedup_image import EXAMPLES
from pipeline.image_store import STORE_ERROR
from pipeline.read import ROWS
from pipeline.shuffle import ShuffleOptions
from pipeline.stage import Context, CountStatuses, Stage, funnel_rows
from pipeline.stages import options, stages

log = logging.getLogger(__name__)
STAGING = "_staging"  # where a run writes its outputs before they replace the previous ones
OUTPUTS = ("shards", "manifest", "balance", EXAMPLES, "stats.json")  # stats.json last


@dataclass(frozen=True)
class PipelineConfig:
    """One run: where from, where to, and each stage's config (`stages`, by `Options.name`;
    a config left out is off, or the default one for the stages that always run)."""

    input: str = field(metadata={"help": "path, glob or comma-separated list"})
    output: str = field(metadata={"help": "output folder (local, gs://, s3://)"})
    resume: bool = field(default=True, metadata={
        "flag": "--no-resume",
        "help": "redo everything: ignore a finished output and the crawl cache of a killed run",
    })  # fmt: skip
    keep_crawl_cache: bool = field(
        default=False, metadata={"help": "keep OUTPUT/_crawl_cache after success"}
    )
    plugins: tuple[str, ...] = field(default=(), metadata={
        "flag": "--stage-plugins", "help": "comma-separated modules that add stages"})  # fmt: skip
    stages: dict = field(default_factory=dict, metadata={"cli": False})

    def __post_init__(self) -> None:
        required = {o.name: o.config_class() for o in options(self.plugins) if o.required}
        object.__setattr__(self, "stages", {**required, **self.stages})

    def running(self) -> list[Stage]:
        """The stages this config switches on, in order."""
        return [s for s in stages(self.plugins) if s.enabled(s.config(self.stages))]


def run_fingerprint(config: PipelineConfig, paths: list[str]) -> str:
    """Everything that determines the outputs (not how fast they are made), the inputs' sizes
    and modification times included: rows appended to a finished input make a new run."""
    return fingerprint({"inputs": file_versions(paths), **settings(config)})


def crawl_fingerprint(config: PipelineConfig, paths: list[str]) -> str:
    """Everything that determines crawl results, so a cached batch is never stale: the inputs'
    versions and what each stage that decides the downloads says of its config (`crawl_key`)."""
    keys = {
        stage.name: stage.crawl_key(stage.config(config.stages))
        for stage in config.running()
        if stage.crawl_key is not None
    }
    return fingerprint({"inputs": file_versions(paths), **keys})


def _cache_folder(config: PipelineConfig, paths: list[str]) -> str:
    return join(config.output, "_crawl_cache", crawl_fingerprint(config, paths))


def is_complete(output: str, run_id: str) -> bool:
    """True when `output` holds a finished run with fingerprint `run_id` that lost no image
    from the store (a rerun fetches those again)."""
    path = join(output, "stats.json")
    if not FileSystems.exists(path):
        return False
    try:
        stats = json.loads(read_bytes(path))
    except ValueError:
        return False
    lost = stats.get("status_counts", {}).get(error(STORE_ERROR), 0)
    return stats.get("fingerprint") == run_id and not lost


def _files_under(path: str) -> list[str]:
    """Every file below `path` (object stores have no folders, only names with slashes)."""
    return [m.path for m in FileSystems.match([join(path, "**")])[0].metadata_list]


def _remove(path: str) -> None:
    """Delete a file, or a folder and all it holds, if there."""
    files = _files_under(path)
    if files:
        FileSystems.delete(files)
    if FileSystems.exists(path):
        FileSystems.delete([path])


def publish(staging: str, output: str) -> None:
    """Replace the previous run's outputs by this run's, complete in `staging`: stats.json goes
    first and comes back last, so a kill half-way leaves an output that is not complete."""
    for name in OUTPUTS[::-1]:
        _remove(join(output, name))
    for name in OUTPUTS:
        source, target = join(staging, name), join(output, name)
        files = _files_under(source) or ([source] if FileSystems.exists(source) else [])
        targets = [target + path[len(source) :] for path in files]
        for folder in {t.rsplit("/", 1)[0] for t in targets if t != target}:
            if not FileSystems.exists(folder):
                FileSystems.mkdirs(folder)
        if files:
            FileSystems.rename(files, targets)
    _remove(staging)


def prepare(config: PipelineConfig) -> None:
    """At run time, before the pipeline runs: remove what a killed run left half-written in the
    staging folder and, when not resuming, the crawl cache. The previous run's outputs stay
    until the new ones replace them (`publish`)."""
    if not config.resume:
        CrawlCache(_cache_folder(config, match_files(config.input))).delete()
    _remove(join(config.output, STAGING))


def _apply(stage: Stage, pairs, ctx: Context):
    config = stage.config(ctx.config.stages)
    out = pairs | stage.name >> stage.transform(config, ctx)
    if "stats" in out:
        ctx.stats[stage.name] = out["stats"]
    if stage.collect is not None:
        stage.collect(out, config, ctx)
    return out["pairs"]


def _spill_locally(pipeline: beam.Pipeline, folder: str) -> None:
    """On the local runner, the group-by-key steps spill to `folder` (`pipeline.shuffle`)."""
    shuffle = pipeline.options.view_as(ShuffleOptions)
    if isinstance(pipeline.runner, FnApiRunner) and not shuffle.local_shuffle_dir:
        shuffle.local_shuffle_dir = folder


def build(pipeline: beam.Pipeline, config: PipelineConfig) -> beam.PCollection | None:
    """Wire the stages onto `pipeline`; None when the output is already complete. Deletes
    nothing (`prepare` does, at run time).

    Fails fast on missing inputs, a missing URL column or an unwritable output folder.
    """
    paths = match_files(config.input)
    check_columns(paths[0], config.stages["input"])
    ensure_writable_dir(config.output)
    run_id = run_fingerprint(config, paths)
    if config.resume and is_complete(config.output, run_id):
        log.info("%s is already complete (fingerprint %s); nothing to do", config.output, run_id)
        return None
    staging = join(config.output, STAGING)
    _spill_locally(pipeline, join(staging, "shuffle"))
    ctx = Context(config, paths, staging, _cache_folder(config, paths))
    ctx.shared["extra"] = {"fingerprint": run_id, "inputs": paths, "config": asdict(config)}
    *curation, writer = config.running()
    pairs, counts = pipeline, {}
    for stage in curation:
        pairs = _apply(stage, pairs, ctx)
        counts[stage.name] = pairs | f"{stage.name}_statuses" >> CountStatuses()
    counts[writer.name] = counts[curation[-1].name]  # the writer drops nothing
    order = [s.name for s in (*curation, writer)]
    declared = {s.name: s.statuses for s in (*curation, writer)}
    ctx.stats["funnel"] = ctx.shared[ROWS] | "funnel" >> beam.Map(
        lambda rows, **c: funnel_rows(order, rows, c, declared),
        **{name: beam.pvalue.AsSingleton(c) for name, c in counts.items()},
    )
    written = pairs | writer.name >> writer.transform(writer.config(config.stages), ctx)
    waits = [beam.pvalue.AsList(sink) for sink in ctx.sinks]  # the other writers must be done
    published = written | "Publish" >> beam.Map(
        lambda stats, *_: publish(staging, config.output) or stats, *waits
    )
    if not config.keep_crawl_cache:
        cache = CrawlCache(ctx.cache_folder)
        published | "DropCrawlCache" >> beam.Map(lambda _: cache.delete())
    return published
