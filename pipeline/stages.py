"""The pipeline: its stages, in order. The graph wires them, the CLI makes their flags, the
fingerprints hash their configs and stats.json's funnel counts them, all from this list; a
new built-in stage is its module (which describes it, `pipeline.stage.Stage`) and a line here.
The order: text first, pixels once, metadata after (see the README).
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline import balance, crawl, dedup_image, dedup_url, filtering, read, shard
from pipeline.stage import Options, Stage, ordered

BUILTIN: tuple[Stage, ...] = (
    read.STAGE,
    filtering.TEXT_STAGE,
    dedup_url.STAGE,
    balance.MATCH_STAGE,
    balance.PRE_STAGE,
    crawl.STAGE,
    filtering.IMAGE_STAGE,
    dedup_image.STAGE,
    filtering.BATCH_STAGE,
    balance.FINAL_STAGE,
    shard.STAGE,  # the writer: always last
)


def stages(plugins: Sequence[str] = ()) -> list[Stage]:
    """The built-in stages with those the `plugins` modules register (`--stage-plugins`)."""
    return ordered(BUILTIN, plugins)


def options(plugins: Sequence[str] = ()) -> list[Options]:
    """The stages' configs, each once, in the order of the first stage that reads it."""
    seen: dict[str, Options] = {}
    for stage in stages(plugins):
        if stage.options is not None:
            seen.setdefault(stage.options.name, stage.options)
    return list(seen.values())
