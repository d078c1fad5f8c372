"""Group-by-key steps that measure what they shuffle, as Beam counters on every runner.

`MeteredGroupByKey` and `MeteredCoGroupByKey` are drop-in replacements of Beam's that count
the elements and the pickled bytes crossing them under `shuffle:<name>_elements` and
`shuffle:<name>_bytes` (pickle is what Beam's fallback coder writes for a `Pair`, so the count
is close to the bytes the runner moves). The capacity plan reads these counters from a run
instead of assuming a size per row.
"""

from __future__ import annotations

import pickle

import apache_beam as beam
from apache_beam.metrics import Metrics

NAMESPACE = "shuffle"


class _MeterFn(beam.DoFn):
    def __init__(self, name: str):
        self._name = name

    def setup(self) -> None:
        self._elements = Metrics.counter(NAMESPACE, f"{self._name}_elements")
        self._bytes = Metrics.counter(NAMESPACE, f"{self._name}_bytes")

    def process(self, element):
        self._elements.inc()
        self._bytes.inc(len(pickle.dumps(element, pickle.HIGHEST_PROTOCOL)))
        yield element


class MeteredGroupByKey(beam.PTransform):
    """`beam.GroupByKey()`, counting what goes in under `name`."""

    def __init__(self, name: str):
        super().__init__()
        self._name = name

    def expand(self, pcoll):
        return pcoll | "Meter" >> beam.ParDo(_MeterFn(self._name)) | beam.GroupByKey()


class MeteredCoGroupByKey(beam.PTransform):
    """`beam.CoGroupByKey()` of a dict of keyed PCollections, counting all of them under `name`."""

    def __init__(self, name: str):
        super().__init__()
        self._name = name

    def expand(self, inputs: dict):
        metered = {
            tag: pcoll | f"Meter_{tag}" >> beam.ParDo(_MeterFn(self._name))
            for tag, pcoll in inputs.items()
        }
        return metered | beam.CoGroupByKey()


def shuffle_counters(result) -> dict[str, dict[str, int]]:
    """{name: {"elements": n, "bytes": b}} from a finished pipeline's `result`."""
    from apache_beam.metrics.metric import MetricsFilter

    query = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    out: dict[str, dict[str, int]] = {}
    for counter in query["counters"]:
        name, kind = counter.key.metric.name.rsplit("_", 1)
        out.setdefault(name, {})[kind] = out.get(name, {}).get(kind, 0) + counter.committed
    return dict(sorted(out.items()))
