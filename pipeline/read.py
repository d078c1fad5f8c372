"""Read stage: input lists into one Pair per row, spread over workers by file and row group.

Each unit's rows are also counted from the input itself (`count_rows`: parquet metadata, the
records of a text format), apart from what the reader turns into pairs; that count is the
run's `input_rows`, which the shard stage checks against the manifest.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from manifests.readers import InputSpec, ReadUnit, count_rows, plan_units, read_unit_safely
from pipeline.stage import Options, Stage, whole

ROWS = "input_rows"


class _ReadUnitFn(beam.DoFn):
    """Rows of one unit as Pairs; its source row count on the `input_rows` output."""

    def __init__(self, spec: InputSpec):
        self._spec = spec
        self._rows = Metrics.counter("read", "rows")
        self._counted = Metrics.counter("read", "source_rows")

    def process(self, unit: ReadUnit):
        expected = count_rows(unit)
        self._counted.inc(expected)
        yield beam.pvalue.TaggedOutput(ROWS, expected)
        for pair in read_unit_safely(unit, self._spec, expected):
            self._rows.inc()
            yield pair


class ReadPairs(beam.PTransform):
    """Sorted input paths in; `pairs` (bad rows included with an error status) and
    `input_rows` (a singleton: the rows the inputs hold) out."""

    def __init__(self, paths: list[str], spec: InputSpec):
        super().__init__()
        self._paths = paths
        self._spec = spec

    def expand(self, pbegin):
        spec = self._spec
        out = (
            pbegin
            | "Files" >> beam.Create(list(enumerate(self._paths)))
            | "PlanUnits" >> beam.FlatMap(lambda item: plan_units(item[1], item[0], spec))
            | "SpreadUnits" >> beam.Reshuffle()
            | "ReadRows" >> beam.ParDo(_ReadUnitFn(spec)).with_outputs(ROWS, main="pairs")
        )
        rows = out[ROWS] | "SumRows" >> beam.CombineGlobally(sum)
        return {"pairs": out.pairs, ROWS: rows}


def _read(spec: InputSpec, ctx) -> ReadPairs:
    return ReadPairs(ctx.paths, spec)


def _keep_rows(out: dict, spec: InputSpec, ctx) -> None:
    ctx.shared[ROWS] = out[ROWS]


INPUT = Options("input", InputSpec, "input lists", required=True)
STAGE = Stage(
    "read",
    INPUT,
    _read,
    statuses=("error:missing_url", "error:bad_row", "error:bad_encoding", "error:unreadable_input"),
    enabled=lambda spec: True,
    crawl_key=whole,
    collect=_keep_rows,
    doc="input rows into pairs; rows that cannot be read keep an error status",
)
