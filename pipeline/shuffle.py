"""Group-by-key steps that measure what they shuffle and, on the local runner, spill it to disk.

`MeteredGroupByKey` and `MeteredCoGroupByKey` are drop-in replacements of Beam's (each group's
values arrive as a list). They count the elements and the bytes crossing them under
`shuffle:<name>_elements` and `shuffle:<name>_bytes` (the key's deterministic encoding and the
pickled value, close to what Beam's fallback coder writes for a `Pair`), so the capacity plan
reads these counters from a run instead of assuming a size per row.

A distributed runner shuffles through its own service, which spills to disk. The local
FnApiRunner holds every GroupByKey in memory until its consumer has run, decoded into Python
objects, and then encodes the whole of it once more: its peak grows with the list. When the
pipeline's `local_shuffle_dir` option is set (`pipeline.graph` sets it to the run's staging
folder on the local runner), the values go to disk instead: each bundle appends its records to
one file per partition of the key space, a GroupByKey moves only the file names, and the
consumer reads one partition at a time, groups it and deletes it. Memory then holds a
partition, a 64th of the step, instead of the whole step; the files live under the staging
folder, which the next run clears should this one be killed.
"""

from __future__ import annotations

import pickle
import struct
import uuid
import zlib
from collections import defaultdict
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.coders import FastPrimitivesCoder
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.window import GlobalWindows

from manifests.io import join

NAMESPACE = "shuffle"
PARTITIONS = 64  # files per spilled step and bundle; a partition holds 1/64 of the step
_HEADER = struct.Struct("<II")  # key length, value length
_FOOTER = struct.Struct("<4sI")  # b"SPIL", records in the file: a file cut anywhere is noticed
_MAGIC = b"SPIL"
_PROTOCOL = pickle.HIGHEST_PROTOCOL


class ShuffleOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument(
            "--local_shuffle_dir",
            default=None,
            help="a folder for the local runner's group-by-key steps to spill to (openwit "
            "sets it to OUTPUT/_staging/shuffle on the local runner)",
        )


def _keys(name: str):
    return FastPrimitivesCoder().as_deterministic_coder(name).get_impl()


class _CountFn(beam.DoFn):
    """The encoding both shuffle paths share: `_encode` turns (key, value) into (the key's
    deterministic encoding, the pickled value or (tag, value)) and counts the bytes, which go
    to the counters once a bundle (a counter's increment costs more than the encoding)."""

    def __init__(self, name: str, tag: str | None):
        self._name, self._tag = name, tag

    def setup(self) -> None:
        self._elements = Metrics.counter(NAMESPACE, f"{self._name}_elements")
        self._bytes = Metrics.counter(NAMESPACE, f"{self._name}_bytes")
        self._key_coder = _keys(self._name)

    def start_bundle(self) -> None:
        self._counted = [0, 0]  # elements, bytes

    def _encode(self, element) -> tuple[bytes, bytes]:
        key, value = element
        encoded = self._key_coder.encode(key)
        packed = pickle.dumps(value if self._tag is None else (self._tag, value), _PROTOCOL)
        self._counted[0] += 1
        self._counted[1] += len(encoded) + len(packed)
        return encoded, packed

    def finish_bundle(self):
        self._elements.inc(self._counted[0])
        self._bytes.inc(self._counted[1])
        self._counted = [0, 0]


class _PackFn(_CountFn):
    """(key, pickled value) for Beam's own GroupByKey."""

    def process(self, element):
        _, packed = self._encode(element)
        yield element[0], packed


class _SpillFn(_CountFn):
    """Appends each record to its partition's file of this bundle; at the end of the bundle,
    (partition, file) for each file written."""

    def __init__(self, name: str, tag: str | None, folder: str):
        super().__init__(name, tag)
        self._folder = folder

    def start_bundle(self) -> None:
        super().start_bundle()
        self._files: dict[int, list] = {}  # partition -> [path, file, records]

    def process(self, element):
        encoded, packed = self._encode(element)
        partition = zlib.crc32(encoded) % PARTITIONS
        if partition not in self._files:
            path = join(self._folder, f"{partition:02d}-{uuid.uuid4().hex}.spill")
            out = FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED)
            self._files[partition] = [path, out, 0]
        entry = self._files[partition]
        entry[1].write(b"".join((_HEADER.pack(len(encoded), len(packed)), encoded, packed)))
        entry[2] += 1

    def finish_bundle(self):
        super().finish_bundle()
        for partition, (path, out, records) in sorted(self._files.items()):
            out.write(_FOOTER.pack(_MAGIC, records))
            out.close()
            yield GlobalWindows.windowed_value((partition, path))
        self._files = {}


def read_partition(paths: list[str]) -> dict[bytes, list[bytes]]:
    """{encoded key: [pickled values]} of one partition's files, which are then deleted."""
    table: dict[bytes, list[bytes]] = defaultdict(list)
    for path in sorted(paths):
        data = _read_spill(path)
        end = len(data) - _FOOTER.size
        magic, records = _FOOTER.unpack_from(data, end) if end >= 0 else (b"", 0)
        offset = 0
        while offset < end and magic == _MAGIC:
            key_length, value_length = _HEADER.unpack_from(data, offset)
            offset += _HEADER.size
            key = data[offset : offset + key_length]
            offset += key_length
            table[key].append(data[offset : offset + value_length])
            offset += value_length
            records -= 1
        if magic != _MAGIC or offset != end or records != 0:
            raise SpillError(path, f"cut short ({len(data)} bytes, no intact end record)")
    FileSystems.delete(sorted(paths))
    return table


class SpillError(RuntimeError):
    """A spill file was changed under the run: the shuffle cannot be trusted, so the run stops
    (rerunning resumes from the crawl cache)."""

    def __init__(self, path: str, problem: str):
        super().__init__(
            f"local shuffle file {path} is {problem}: something removed or truncated it during "
            "the run; run the same command again (finished crawl batches are reused)"
        )


def _read_spill(path: str) -> bytes:
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            return f.read()
    except OSError as exc:  # Beam's BeamIOError is one
        if not FileSystems.exists(path):
            raise SpillError(path, "missing") from exc
        raise


class _UnspillFn(beam.DoFn):
    """(partition, files) -> each (key, values) of the partition, in key order."""

    def __init__(self, name: str, tags: tuple[str, ...] | None):
        self._name, self._tags = name, tags

    def setup(self) -> None:
        self._key_coder = _keys(self._name)

    def process(self, element) -> Iterator[tuple]:
        _, paths = element
        table = read_partition(list(paths))
        for encoded in sorted(table):
            values = table.pop(encoded)
            yield self._key_coder.decode(encoded), unpickle(values, self._tags)


def unpickle(values: list[bytes], tags: tuple[str, ...] | None):
    """The values of one group: a list, or {tag: list} with every tag when `tags` is given."""
    if tags is None:
        return [pickle.loads(v) for v in values]
    joined: dict[str, list] = {tag: [] for tag in tags}
    for data in values:
        tag, value = pickle.loads(data)
        joined[tag].append(value)
    return joined


def _unpack(key, values: list[bytes], tags: tuple[str, ...] | None = None) -> tuple:
    # the default only because MapTuple refuses extra arguments without one
    return key, unpickle(values, tags)


class _Grouped(beam.PTransform):
    """The group-by-key both public transforms share: one PCollection, or several tagged."""

    def __init__(self, name: str, tags: tuple[str, ...] | None):
        super().__init__()
        self._name, self._tags = name, tags

    def expand(self, inputs):
        tagged = inputs.items() if self._tags else [(None, inputs)]
        folder = _pipeline_of(inputs).options.view_as(ShuffleOptions).local_shuffle_dir
        if folder:
            spilled = [
                pcoll | f"Spill{tag or ''}" >> beam.ParDo(_SpillFn(self._name, tag, folder))
                for tag, pcoll in tagged
            ]
            return (
                spilled
                | "FlattenFiles" >> beam.Flatten()
                | "GroupFiles" >> beam.GroupByKey()
                | "Unspill" >> beam.ParDo(_UnspillFn(self._name, self._tags))
            )
        packed = [
            pcoll | f"Pack{tag or ''}" >> beam.ParDo(_PackFn(self._name, tag))
            for tag, pcoll in tagged
        ]
        return (
            packed
            | "Flatten" >> beam.Flatten()
            | "GroupByKey" >> beam.GroupByKey()
            | "Unpack" >> beam.MapTuple(_unpack, self._tags)
        )


def _pipeline_of(inputs) -> beam.Pipeline:
    pcoll = next(iter(inputs.values())) if isinstance(inputs, dict) else inputs
    return pcoll.pipeline


class MeteredGroupByKey(beam.PTransform):
    """`beam.GroupByKey()`, counting what goes in under `name`; each group's values arrive as a
    list."""

    def __init__(self, name: str):
        super().__init__()
        self._name = name

    def expand(self, pcoll):
        return pcoll | _Grouped(self._name, None)


class MeteredCoGroupByKey(beam.PTransform):
    """`beam.CoGroupByKey()` of a dict of keyed PCollections, counting all of them under `name`:
    (key, {tag: [values]}) with every tag present."""

    def __init__(self, name: str):
        super().__init__()
        self._name = name

    def expand(self, inputs: dict):
        return inputs | _Grouped(self._name, tuple(inputs))


def shuffle_counters(result) -> dict[str, dict[str, int]]:
    """{name: {"elements": n, "bytes": b}} from a finished pipeline's `result`."""
    from apache_beam.metrics.metric import MetricsFilter

    query = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    out: dict[str, dict[str, int]] = {}
    for counter in query["counters"]:
        name, kind = counter.key.metric.name.rsplit("_", 1)
        out.setdefault(name, {})[kind] = out.get(name, {}).get(kind, 0) + counter.committed
    return dict(sorted(out.items()))
