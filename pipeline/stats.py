"""Stage stats as a singleton dict of event counts, also counted on Beam metrics."""

from __future__ import annotations

from collections import Counter

import apache_beam as beam
from apache_beam.metrics import Metrics


class CountFn(beam.CombineFn):
    """Counts of string events; an empty input gives an empty dict (a singleton either way)."""

    def create_accumulator(self) -> Counter:
        return Counter()

    def add_input(self, acc: Counter, event: str) -> Counter:
        acc[event] += 1
        return acc

    def merge_accumulators(self, accs) -> Counter:
        total = Counter()
        for acc in accs:
            total.update(acc)
        return total

    def extract_output(self, acc: Counter) -> dict:
        return dict(sorted(acc.items()))


def _counted(event: str, namespace: str) -> str:
    Metrics.counter(namespace, event).inc()
    return event


class CountEvents(beam.PTransform):
    """Events in; a singleton dict out with a count for each of `names` (zeros included).
    Each event also counts on a Beam counter in `namespace`."""

    def __init__(self, names: tuple[str, ...], namespace: str):
        super().__init__()
        self._names = names
        self._namespace = namespace

    def expand(self, events):
        names = self._names
        return (
            events
            | "Metrics" >> beam.Map(_counted, self._namespace)
            | "Count" >> beam.CombineGlobally(CountFn())
            | "Fill" >> beam.Map(lambda counts: {n: counts.get(n, 0) for n in names})
        )
