"""A stage from outside the package, for tests/test_stages.py: one description, registered the
way filter plugins register their filters, and named on the command line with
`--stage-plugins stage_plugin`. It drops, before the download, pairs whose caption holds a
blocked word.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import apache_beam as beam

from manifests.schema import Pair
from pipeline.stage import Options, Stage, register, whole
from pipeline.stats import CountEvents

BLOCKED = "blocked:word"


@dataclass(frozen=True)
class BlockConfig:
    blocked_words: tuple[str, ...] = field(
        default=(), metadata={"help": "captions holding one of these words are not fetched"}
    )


def block(pair: Pair, words: tuple[str, ...]) -> Pair:
    if pair.is_ok and set(pair.caption.lower().split()) & set(words):
        return pair.with_status(BLOCKED, "the caption holds a blocked word")
    return pair


class BlockWords(beam.PTransform):
    def __init__(self, config: BlockConfig):
        super().__init__()
        self._config = config

    def expand(self, pairs):
        out = pairs | "Block" >> beam.Map(block, self._config.blocked_words)
        events = out | "Events" >> beam.FlatMap(
            lambda p: ["blocked"] if p.status == BLOCKED else []
        )
        return {"pairs": out, "stats": events | "Stats" >> CountEvents(("blocked",), "block")}


def _transform(config: BlockConfig, ctx) -> BlockWords:
    return BlockWords(config)


STAGE = register(
    Stage(
        "block_words",
        Options("block_words", BlockConfig, "blocked words (a plugin stage)"),
        _transform,
        statuses=(BLOCKED,),
        crawl_key=whole,  # it decides which pairs are downloaded
        doc="captions with a blocked word, before the download",
    ),
    after="dedup_url",
)
