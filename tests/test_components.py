"""Near-duplicate components: buckets resolved locally into stars, stars joined in rounds."""

from __future__ import annotations

import random

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.components import (
    ROUNDS,
    BucketRows,
    ConnectedComponents,
    bucket_labels,
    bucket_stars,
    large_star,
    small_star,
)
from pipeline.hashing import Groups, colours_agree, hamming


def brute_force_components(edges) -> dict[str, str]:
    """{vertex: smallest key of its component} for vertices that are not that key."""
    groups = Groups()
    for a, b in edges:
        groups.add(a, a)
        groups.add(b, b)
        groups.union(a, b)
    return {v: root for v, root in groups.survivors().items() if v != root}


def flip(value: int, bits: int, rng: random.Random) -> int:
    for bit in rng.sample(range(64), bits):
        value ^= 1 << bit
    return value


def colour(rng: random.Random, base: int) -> bytes:
    """A 32-byte signature near `base` chroma (0: greyscale)."""
    return bytes((base + rng.randint(-2, 2)) % 256 for _ in range(32)) if base else bytes(32)


def random_bucket(
    rng: random.Random, size: int, values_per_centre: int | None = None
) -> tuple[list, list, list, list]:
    """Rows of clusters around a few centres: copies, recoloured copies, greyscale copies,
    another caption, and rows with the same key twice (a hash and a view). With
    `values_per_centre`, copies repeat a few hash values, as the web's recompressed copies do."""
    centres = [rng.getrandbits(64) for _ in range(6)]
    if values_per_centre:
        pools = {c: [flip(c, rng.randint(0, 7), rng) for _ in range(values_per_centre)]
                 for c in centres}  # fmt: skip
    keys, values, texts, colours = [], [], [], []
    for i in range(size):
        centre = rng.choice(centres)
        keys.append(f"k{rng.randrange(size):05d}" if i % 7 == 0 else f"k{i:05d}")
        near = (
            rng.choice(pools[centre]) if values_per_centre else flip(centre, rng.randint(0, 7), rng)
        )
        values.append(near)
        texts.append(rng.choice(["", "", "", "other"]))
        colours.append(colour(rng, rng.choice([0, 20, 20, 100])))
    return keys, values, texts, colours


def bucket_truth(keys, values, texts, colours, threshold: int, distance: float) -> dict:
    edges = [(k, k) for k in keys]
    for i in range(len(keys)):
        for j in range(i + 1, len(keys)):
            if (
                hamming(values[i], values[j]) <= threshold
                and texts[i] == texts[j]
                and colours_agree(colours[i], colours[j], distance)
            ):
                edges.append((keys[i], keys[j]))
    return brute_force_components(edges)


@pytest.mark.parametrize("seed,size,values_per_centre", [(0, 60, None), (1, 300, None),
                                                         (2, 1300, None), (3, 1300, 4)])  # fmt: skip
def test_a_bucket_resolves_to_the_components_of_its_matches(seed, size, values_per_centre):
    rng = random.Random(seed)
    keys, values, texts, colours = random_bucket(rng, size, values_per_centre)
    rows = BucketRows(keys, values, texts, colours)
    assert dict(bucket_stars(rows, 8, 12.0)) == bucket_truth(keys, values, texts, colours, 8, 12.0)


def test_recoloured_copies_stay_apart_unless_a_greyscale_copy_joins_them():
    keys, values = ["a", "b", "c"], [0, 1, 3]
    red, blue = bytes([40] * 32), bytes([256 - 40] * 32)
    rows = BucketRows(keys[:2], values[:2], ["", ""], [red, blue])
    assert list(bucket_labels(rows, 8, 12.0)) == [0, 1]
    rows = BucketRows(keys, values, ["", "", ""], [red, blue, bytes(32)])
    assert list(bucket_labels(rows, 8, 12.0)) == [0, 0, 0]


def test_n_copies_of_one_picture_cost_n_minus_one_edges():
    rng = random.Random(3)
    centre = rng.getrandbits(64)
    n = 3000
    keys = [f"k{i:05d}" for i in range(n)]
    values = [flip(centre, rng.randint(0, 4), rng) for _ in range(n)]
    rows = BucketRows(keys, values, [""] * n, [colour(rng, 30) for _ in range(n)])
    edges = list(bucket_stars(rows, 8, 12.0))
    assert len(edges) == n - 1 and {root for _, root in edges} == {"k00000"}


def test_star_operations_only_point_at_smaller_keys():
    assert sorted(large_star("c", ["a", "d", "e"])) == [("d", "a"), ("e", "a")]
    assert sorted(large_star("a", ["b"])) == [("b", "a")]
    assert sorted(small_star("d", ["b", "c"])) == [("c", "b"), ("d", "b")]
    assert list(small_star("a", [])) == []


def graph(seed: int) -> list[tuple[str, str]]:
    """Random sparse edges, a long chain and a star, as (larger, smaller) pairs."""
    rng = random.Random(seed)
    vertices = [f"v{i:04d}" for i in range(400)]
    edges = [tuple(sorted(rng.sample(vertices, 2), reverse=True)) for _ in range(300)]
    chain = [f"c{i:04d}" for i in rng.sample(range(200), 200)]  # keys out of chain order
    edges += [tuple(sorted(pair, reverse=True)) for pair in zip(chain, chain[1:], strict=False)]
    edges += [(f"s{i:04d}", "s0000") for i in range(1, 50)]
    return edges


@pytest.mark.parametrize("rounds", [0, 1, ROUNDS])
def test_components_in_rounds_equal_a_global_union(rounds):
    edges = graph(rounds)
    expected = sorted(brute_force_components(edges).items())
    with TestPipeline() as p:
        out = p | beam.Create(edges) | ConnectedComponents(rounds)
        assert_that(out["labels"], equal_to(expected), label="labels")
        residual = out["events"] | beam.combiners.Count.Globally()
        if rounds == 0:  # nothing settled by rounds: the chain's edges are all residual
            assert_that(residual, lambda counts: _check(counts[0] > 150), label="residual")


def test_enough_rounds_leave_no_residual_on_stars_and_short_chains():
    rng = random.Random(5)
    edges = []
    for cluster in range(30):
        members = [f"m{cluster:02d}-{i:03d}" for i in range(rng.randint(2, 40))]
        for member in members[1:]:  # each bucket's star, through a random member
            edges.append((member, rng.choice(members[: members.index(member)])))
    with TestPipeline() as p:
        out = p | beam.Create(edges) | ConnectedComponents()
        assert_that(out["labels"], equal_to(sorted(brute_force_components(edges).items())))
        assert_that(out["events"], equal_to([]), label="no residual")


def _check(ok: bool) -> None:
    assert ok


def test_bucket_rows_colour_check_matches_colours_agree():
    rng = np.random.default_rng(0)
    signatures = [bytes(rng.integers(0, 256, 32, dtype=np.uint8)) for _ in range(20)]
    signatures += [bytes(32), b""]
    rows = BucketRows([f"k{i}" for i in range(22)], list(range(22)), [""] * 22, signatures)
    for i, a in enumerate(signatures):
        got = rows.colour_ok(np.array(i), np.arange(22), 12.0).tolist()
        assert got == [colours_agree(a, b, 12.0) for b in signatures]
