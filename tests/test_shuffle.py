"""pipeline.shuffle: the spilled group-by-key groups as Beam's does, on hostile keys and sizes,
and leaves nothing on disk; both paths count what they move."""

from __future__ import annotations

import random
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from pipeline.runners import local_runner
from pipeline.shuffle import (
    PARTITIONS,
    MeteredCoGroupByKey,
    MeteredGroupByKey,
    SpillError,
    _SpillFn,
    read_partition,
    shuffle_counters,
)


def elements() -> list[tuple]:
    """One key with 5,000 values (a heavy near-duplicate cluster), 3,000 singletons, keys of
    several types (str, bytes, int, tuple), values that are tuples with bytes and None."""
    rng = random.Random(7)
    rows = [("heavy", (i, rng.randbytes(20))) for i in range(5000)]
    rows += [(f"url-{i}", (i, None)) for i in range(3000)]
    rows += [(b"\x00\xff", ("bytes", 1)), (17, ("int", 2)), (("a", 3), ("tuple", 3))]
    rng.shuffle(rows)
    return rows


def grouped(rows: list[tuple]) -> list[tuple]:
    """What a group-by-key must give, with each group's values sorted (order is not promised)."""
    groups: dict = {}
    for key, value in rows:
        groups.setdefault(key, []).append(value)
    return [(key, sorted(values, key=repr)) for key, values in groups.items()]


def run(build, folder: str | None):
    argv = [f"--local_shuffle_dir={folder}"] if folder else []
    options = PipelineOptions(argv)
    pipeline = beam.Pipeline(runner=local_runner(options), options=options)
    build(pipeline)
    result = pipeline.run()
    result.wait_until_finish()
    return result


def test_spilled_group_by_key_equals_beams_and_cleans_up(tmp_path):
    rows = elements()
    folder = tmp_path / "spill"
    counters = []
    for where in (str(folder), None):

        def build(p):
            out = (
                p
                | beam.Create(rows)
                | MeteredGroupByKey("test")
                | beam.MapTuple(lambda k, vs: (k, sorted(vs, key=repr)))
            )
            assert_that(out, equal_to(grouped(rows)))

        counters.append(shuffle_counters(run(build, where))["test"])
    assert counters[0] == counters[1]  # both paths count the same records and bytes
    assert counters[0]["elements"] == len(rows)
    assert counters[0]["bytes"] > 20 * 5000
    assert folder.exists() and not any(folder.iterdir())  # every spill file read and deleted


def test_spilled_cogroup_gives_every_tag_even_when_empty(tmp_path):
    left = [(f"k{i}", i) for i in range(2000)]
    right = [(f"k{i}", str(i)) for i in range(0, 4000, 2)]
    expected = [
        (f"k{i}", {"left": [i] if i < 2000 else [], "right": [str(i)] if i % 2 == 0 else []})
        for i in range(4000)
        if i < 2000 or i % 2 == 0
    ]

    def build(p):
        joined = {
            "left": p | "Left" >> beam.Create(left),
            "right": p | "Right" >> beam.Create(right),
        } | MeteredCoGroupByKey("join")
        assert_that(joined, equal_to(expected))

    run(build, str(tmp_path / "spill"))


def test_spilled_group_by_key_of_nothing_is_nothing(tmp_path):
    def build(p):
        out = p | beam.Create([]) | MeteredGroupByKey("none")
        assert_that(out, equal_to([]))

    run(build, str(tmp_path / "spill"))
    assert not (tmp_path / "spill").exists()


def spill_files(folder) -> list[str]:
    """The spill files one bundle of `elements()` writes, as the local runner's step does."""
    spill = _SpillFn("test", None, str(folder))
    spill.setup()
    spill.start_bundle()
    for element in elements():
        spill.process(element)
    return [value.value[1] for value in spill.finish_bundle()]


def test_a_spill_file_cut_short_or_removed_stops_the_step_with_its_name(tmp_path):
    files = spill_files(tmp_path)
    assert len(files) == PARTITIONS and sum(map(len, read_partition(files[:1]).values())) > 0
    for n, cut in enumerate((8, 3, 2000)):  # the end record exactly, inside it, further in
        truncated = files[1 + n]
        data = Path(truncated).read_bytes()
        Path(truncated).write_bytes(data[: len(data) - cut])
        with pytest.raises(SpillError, match=rf"{truncated} is cut short"):
            read_partition([truncated])
    with pytest.raises(SpillError, match=rf"{files[0]} is missing"):
        read_partition([files[0]])  # read (and deleted) above
