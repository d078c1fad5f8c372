"""What a pipeline stage is, described once, so the graph, the CLI, the fingerprints and the
report all read the same list (`pipeline.stages.STAGES`), as datatrove's pipeline is a plain
list of steps.

A `Stage` names its transform, its `Options` (a config dataclass whose fields become the
flags; several stages may share one, as the three balancing steps share `--queries`),
whether its config decides which pairs are downloaded (then it enters the crawl cache's
fingerprint) and the statuses it can give. The graph counts each stage's pairs by status on
the way out, so stats.json's `funnel` says, per stage in list order, rows in, rows out and
drops by status without any stage counting for it, and no status needs guessing afterwards.

A stage from outside the package is one module that calls `register(stage, after=NAME)` when
imported; `--stage-plugins my.module` imports it (as `--filter-plugins` does for filters).
Its transform must pickle by reference, so workers must be able to import the module too.
"""

from __future__ import annotations

import fnmatch
import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam

from manifests.schema import OK
from pipeline.config_flags import settings
from pipeline.stats import CountFn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    """A config on the command line: `PipelineConfig.stages[name]`, one flag per field of
    `config_class` (`config_flags`), in a `--help` group titled `title`. `add_flags(group)`
    adds flags that select rather than set (`--filters`, `--dedup`); `from_args(args)` then
    makes the config (default: from the fields' flags), None when it switches the stages off."""

    name: str
    config_class: type
    title: str
    add_flags: Callable[[Any], None] | None = None
    from_args: Callable[[Any], Any] | None = None
    required: bool = False  # always configured: a config left out is the default one


@dataclass(frozen=True)
class Stage:
    """One step of the graph. `transform(config, ctx)` returns a PTransform from pairs (from
    the pipeline, for the first stage) to a dict holding "pairs" and, if it has any, "stats"
    (which go to stats.json under `name`); `collect(out, config, ctx)` takes its other outputs.
    `statuses` are the patterns (`fnmatch`) of the statuses it may give. `crawl_key(config)`,
    when set, is what of its config decides the downloads (the crawl cache's fingerprint)."""

    name: str
    options: Options | None
    transform: Callable[[Any, Any], beam.PTransform]
    statuses: tuple[str, ...] = ()
    enabled: Callable[[Any], bool] = lambda config: config is not None
    crawl_key: Callable[[Any], Any] | None = None
    collect: Callable[[dict, Any, Any], None] | None = None
    doc: str = ""

    def config(self, stages: dict) -> Any:
        """This stage's config among `PipelineConfig.stages` (None: not configured, off)."""
        if self.options is None:
            return None
        if self.options.required and self.options.name not in stages:
            return self.options.config_class()
        return stages.get(self.options.name)

    def gives(self, status: str) -> bool:
        return any(fnmatch.fnmatchcase(status, pattern) for pattern in self.statuses)


def whole(config: Any) -> Any:
    """A `crawl_key`: all the config's settings decide the downloads."""
    return settings(config)


_PLUGINS: dict[str, dict[str, tuple[str, Stage]]] = {}  # module -> name -> (after, stage)


def register(stage: Stage, after: str) -> Stage:
    """Add `stage`, right after the stage named `after`, to the runs that name the module of its
    transform in `--stage-plugins`. Registering it again (a module imported twice) is harmless."""
    module = stage.transform.__module__
    old = _PLUGINS.get(module, {}).get(stage.name)
    if old and old[1].transform.__qualname__ != stage.transform.__qualname__:
        raise ValueError(f"stage {stage.name!r} is already registered by {module}")
    _PLUGINS.setdefault(module, {})[stage.name] = (after, stage)
    return stage


def ordered(builtins: Sequence[Stage], plugins: Sequence[str] = ()) -> list[Stage]:
    """The built-in stages with those the `plugins` modules register inserted where they ask."""
    stages = list(builtins)
    for module in plugins:
        importlib.import_module(module)
        for after, stage in _PLUGINS.get(module, {}).values():
            names = [s.name for s in stages]
            if stage.name in names:
                raise ValueError(f"stage name {stage.name!r} is taken")
            if after not in names[:-1]:
                raise ValueError(f"stage {stage.name!r} wants to follow {after!r}: no such stage")
            stages.insert(names.index(after) + 1, stage)
    return stages


class StageError(RuntimeError):
    """A stage changed the status of a pair it was given already dropped."""


def funnel_rows(
    order: Sequence[str], input_rows: int, counts: dict, declared: dict | None = None
) -> list[dict]:
    """Rows in, rows out and drops by status of each stage in `order`, from the status counts of
    every stage's output (`counts[name]`): a dropped pair keeps its status, so what a stage
    added to a status's count is what it dropped with that status. A status a stage gave but
    does not declare (`declared[name]`: its patterns) is logged."""
    rows, before, previous = [], {}, input_rows
    for name in order:
        after = counts[name]
        changed = {s: n for s, n in before.items() if s != OK and after.get(s, 0) < n}
        if changed:
            raise StageError(f"stage {name} changed statuses of dropped pairs: {changed}")
        dropped = {s: n - before.get(s, 0) for s, n in sorted(after.items()) if s != OK}
        dropped = {s: n for s, n in dropped.items() if n}
        patterns = (declared or {}).get(name)
        for status in dropped if patterns is not None else ():
            if not any(fnmatch.fnmatchcase(status, p) for p in patterns):
                log.warning("stage %s gave status %s, which it does not declare", name, status)
        rows.append({"stage": name, "rows_in": previous, "rows_out": after.get(OK, 0),
                     "dropped": dropped})  # fmt: skip
        before, previous = after, after.get(OK, 0)
    return rows


class CountStatuses(beam.PTransform):
    """Pairs in; a singleton dict of their status counts out."""

    def expand(self, pairs):
        return (
            pairs
            | "Status" >> beam.Map(lambda p: p.status)
            | "Count" >> beam.CombineGlobally(CountFn())
        )


@dataclass
class Context:
    """What the stages share while the graph is wired: the run's config, inputs and folders,
    the writers the publish step must wait for (`sinks`), and what one stage leaves for a later
    one (`shared`: the read's row count, the balance's query counts)."""

    config: Any
    paths: list[str]
    staging: str
    cache_folder: str
    sinks: list = field(default_factory=list)
    shared: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)

    def options(self, name: str) -> Any:
        return self.config.stages.get(name)
