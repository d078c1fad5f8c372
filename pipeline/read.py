"""Read stage: input lists into one Pair per row, spread over workers by file and row group."""

from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.metrics import Metrics

from manifests.readers import InputSpec, ReadUnit, make_key, plan_units, read_unit
from manifests.schema import Pair, error

log = logging.getLogger(__name__)


class _ReadUnitFn(beam.DoFn):
    """Rows of one unit; a file that breaks mid-way (corrupt gzip, say) keeps the rows read so
    far and ends in one `error:unreadable_input` row that names the failure, never a crash."""

    def __init__(self, spec: InputSpec):
        self._spec = spec
        self._rows = Metrics.counter("read", "rows")
        self._broken = Metrics.counter("read", "unreadable_units")

    def process(self, unit: ReadUnit):
        rows = 0
        try:
            for pair in read_unit(unit, self._spec):
                rows += 1
                yield pair
        except Exception as exc:  # any reader failure is the input's fault, not the run's
            log.warning("cannot read %s after %d rows: %s", unit.path, rows, exc)
            self._broken.inc()
            key = make_key(unit.file_index, unit.first_row + rows)
            source = unit.path.rsplit("/", 1)[-1]
            yield Pair(key=key, url="", caption="", source=source).with_status(
                error("unreadable_input"), f"{type(exc).__name__}: {exc}"
            )
        self._rows.inc(rows)


class ReadPairs(beam.PTransform):
    """Sorted input paths in, Pairs out (bad rows included with an error status)."""

    def __init__(self, paths: list[str], spec: InputSpec):
        super().__init__()
        self._paths = paths
        self._spec = spec

    def expand(self, pbegin):
        spec = self._spec
        return (
            pbegin
            | "Files" >> beam.Create(list(enumerate(self._paths)))
            | "PlanUnits" >> beam.FlatMap(lambda item: plan_units(item[1], item[0], spec))
            | "SpreadUnits" >> beam.Reshuffle()
            | "ReadRows" >> beam.ParDo(_ReadUnitFn(spec))
        )
