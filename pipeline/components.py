"""Connected components of the near-duplicate graph in bounded GroupByKey rounds.

Vertices are keys; a component is named by its smallest key (the survivor rule). Edges are
`(larger, smaller)` tuples. Each LSH bucket is first resolved locally (`bucket_labels`), so a
bucket of n near-copies yields at most n - 1 edges, a star to its smallest key, not n^2 / 2.
Buckets overlap, so the stars still have to be joined: the rounds alternate the large-star and
small-star operations of Kiveris et al., "Connected Components in MapReduce and Beyond" (2014),
one GroupByKey each, neither of which adds edges. What is left after the last round either
already forms stars around roots with no smaller neighbour (settled: the leaf's label is its
root) or not (residual: unioned in one combine that holds only those edges, none in practice
after a few rounds; their count is in the stats). No step holds every match of the run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import apache_beam as beam
import numpy as np

from pipeline.hashing import ACHROMATIC, Groups
from pipeline.shuffle import MeteredCoGroupByKey, MeteredGroupByKey

Edge = tuple[str, str]  # (larger key, smaller key)
ROUNDS = 7  # large-star / small-star alternations, ending on a large-star (which settles most)
_CHUNK = 1024  # rows of the bucket's distance matrix computed at once
_NONE = np.iinfo(np.int64).max  # no match: never taken, every row matches itself


# ---- one bucket, resolved locally ----------------------------------------------------------


class BucketRows:
    """The rows of one LSH bucket as arrays: hash values, vertex ids (ranks of their keys, so the
    smallest id is the smallest key), caption-key codes and colour signatures. Rows with one
    hash value and caption key match the same rows, so they form one class: the web repeats a
    picture thousands of times, its recompressed copies under a handful of hash values, and the
    distance matrix is computed between classes, not rows."""

    def __init__(self, keys: list[str], values: list[int], texts: list[str], colours: list[bytes]):
        self.keys = sorted(set(keys))
        rank = {key: i for i, key in enumerate(self.keys)}
        self.vertex = np.fromiter((rank[k] for k in keys), dtype=np.int64, count=len(keys))
        classes: dict[tuple[int, str], int] = {}  # (value, text) -> class, in order of rows
        row_class = [classes.setdefault(vt, len(classes)) for vt in zip(values, texts, strict=True)]
        self.row_class = np.array(row_class, dtype=np.int64)
        codes = {text: i for i, text in enumerate(sorted(set(texts)))}
        self.class_values = np.fromiter((v for v, _ in classes), np.uint64, count=len(classes))
        self.class_text = np.fromiter((codes[t] for _, t in classes), np.int64, count=len(classes))
        self.has_colour = np.array([bool(c) for c in colours])
        width = max((len(c) for c in colours), default=0)
        padded = [c if c else bytes(width) for c in colours]
        signed = np.frombuffer(b"".join(padded), dtype=np.int8).reshape(len(colours), width)
        self.chroma = signed.astype(np.int16) * 2
        achromatic = np.abs(self.chroma).max(axis=1, initial=0) < ACHROMATIC
        self.any_colour_passes = ~self.has_colour | achromatic

    def class_matches(self, start: int, stop: int, threshold: int) -> np.ndarray:
        """Which classes each of classes start..stop matches: within `threshold` bits, same text."""
        values, text = self.class_values, self.class_text
        match = np.bitwise_count(values[start:stop, None] ^ values[None, :]) <= threshold
        return match & (text[start:stop, None] == text[None, :])

    def colour_ok(self, a: np.ndarray, b: np.ndarray, max_distance: float | None) -> np.ndarray:
        """`colours_agree` of rows `a` and rows `b`, element by element, vectorised."""
        a, b = np.broadcast_arrays(a, b)
        if max_distance is None:
            return np.ones(a.shape, dtype=bool)
        distance = np.abs(self.chroma[a] - self.chroma[b]).mean(axis=-1)
        passes = self.any_colour_passes[a] | self.any_colour_passes[b]
        return passes | (distance <= max_distance)


def bucket_labels(rows: BucketRows, threshold: int, colour_distance: float | None) -> np.ndarray:
    """Each vertex's smallest connected vertex id, where rows match within `threshold` bits,
    with the same caption key and colours that agree.

    Min-label propagation until nothing changes (the bucket's diameter in passes, usually two);
    labels then agree across every match, so each is its component's smallest id. Each pass
    takes every class's smallest label and the row holding it, finds per class the smallest
    among the classes it matches (the class distance matrix, chunk by chunk), and checks each
    row's colours against that one row; only a row that fails is checked against every row it
    matches. So n copies under u hash values cost u^2 popcounts and O(n) colour checks a pass.
    """
    label = np.arange(len(rows.keys), dtype=np.int64)
    all_rows = np.arange(len(rows.vertex))
    changed = True
    while changed:
        row_label = label[rows.vertex]
        class_label = np.full(len(rows.class_values), _NONE, dtype=np.int64)
        np.minimum.at(class_label, rows.row_class, row_label)
        holder = np.empty(len(rows.class_values), dtype=np.int64)
        holding = row_label == class_label[rows.row_class]
        holder[rows.row_class[holding]] = all_rows[holding]
        best_class = np.empty(len(rows.class_values), dtype=np.int64)
        for start in range(0, len(rows.class_values), _CHUNK):
            stop = min(start + _CHUNK, len(rows.class_values))
            candidates = np.where(rows.class_matches(start, stop, threshold), class_label, _NONE)
            best_class[start:stop] = candidates.argmin(axis=1)
        via = holder[best_class[rows.row_class]]
        best = row_label[via]
        for i in np.flatnonzero(~rows.colour_ok(all_rows, via, colour_distance)).tolist():
            own = rows.row_class[i]
            matched = rows.class_matches(own, own + 1, threshold)[0][rows.row_class]
            cols = np.flatnonzero(matched)
            agree = cols[rows.colour_ok(i, cols, colour_distance)]
            best[i] = row_label[agree].min()  # the row itself always agrees
        lower = best < row_label
        changed = bool(lower.any())
        np.minimum.at(label, rows.vertex[lower], best[lower])
    return label


def bucket_stars(rows: BucketRows, threshold: int, colour_distance) -> Iterator[Edge]:
    """The bucket's components as stars: (key, smallest key of its component) per non-root."""
    label = bucket_labels(rows, threshold, colour_distance)
    for vertex in np.flatnonzero(label != np.arange(len(label))).tolist():
        yield rows.keys[vertex], rows.keys[label[vertex]]


# ---- the rounds ----------------------------------------------------------------------------


def large_star(vertex: str, neighbours: Iterable[str]) -> Iterator[Edge]:
    """Hang every larger neighbour of `vertex` on the smallest of its neighbourhood."""
    neighbours = set(neighbours)
    smallest = min(neighbours | {vertex})
    for other in sorted(neighbours):
        if other > vertex:
            yield other, smallest


def small_star(vertex: str, smaller: Iterable[str]) -> Iterator[Edge]:
    """Hang `vertex` and its smaller neighbours on the smallest of them."""
    smaller = set(smaller)
    smallest = min(smaller | {vertex})
    for other in sorted(smaller | {vertex}):
        if other != smallest:
            yield other, smallest


def both_ways(edge: Edge) -> tuple[Edge, Edge]:
    return edge, (edge[1], edge[0])


def vertex_links(vertex: str, links: Iterable[tuple[str, str]]) -> Iterator[tuple]:
    """Settling, first step: a vertex's parents (smaller neighbours) and whether it has
    children; each parent hears from the child whether the child is a plain leaf."""
    parents = sorted({other for kind, other in links if kind == "up"})
    has_children = any(kind == "down" for kind, _ in links)
    plain_leaf = len(parents) == 1 and not has_children
    yield vertex, ("self", bool(parents))
    for parent in parents:
        yield parent, ("child", (vertex, plain_leaf))


def settle(vertex: str, notes: Iterable[tuple]) -> Iterator[tuple[str, Edge]]:
    """Settling, second step: a child edge is settled when the child is a plain leaf and its
    parent a root; every other edge is residual."""
    notes = list(notes)
    has_parent = any(kind == "self" and value for kind, value in notes)
    for kind, value in notes:
        if kind == "child":
            child, plain_leaf = value
            yield ("settled" if plain_leaf and not has_parent else "residual"), (child, vertex)


class _UnionFn(beam.CombineFn):
    """The residual edges' components: {vertex: smallest key of its component}."""

    def create_accumulator(self) -> set:
        return set()

    def add_input(self, acc: set, edge: Edge) -> set:
        acc.add(edge)
        return acc

    def merge_accumulators(self, accs) -> set:
        return set().union(*accs)

    def extract_output(self, acc: set) -> dict:
        groups = Groups()
        for a, b in sorted(acc):
            groups.add(a, a)
            groups.add(b, b)
            groups.union(a, b)
        return groups.survivors()


def leaf_labels(root: str, joined: dict) -> Iterator[tuple[str, str]]:
    """(leaf, label) of a root's settled leaves: the root's own label when it is residual."""
    label = joined["residual"][0] if joined["residual"] else root
    for leaf in sorted(joined["leaves"]):
        yield leaf, label


class ConnectedComponents(beam.PTransform):
    """Edges (larger, smaller) in; "labels": (vertex, smallest key of its component) for every
    vertex that is not that smallest key; "events": one "residual_edges" per residual edge."""

    def __init__(self, rounds: int = ROUNDS):
        super().__init__()
        self._rounds = rounds

    def expand(self, edges):
        edges = edges | "Distinct" >> beam.Distinct()
        for i in range(self._rounds):
            if i % 2 == 0:
                edges = (
                    edges
                    | f"BothWays{i}" >> beam.FlatMap(both_ways)
                    | f"Neighbours{i}" >> MeteredGroupByKey("dedup_components")
                    | f"LargeStar{i}" >> beam.FlatMapTuple(large_star)
                )
            else:
                edges = (
                    edges
                    | f"Smaller{i}" >> MeteredGroupByKey("dedup_components")
                    | f"SmallStar{i}" >> beam.FlatMapTuple(small_star)
                )
        settled = (
            edges
            | "Links" >> beam.FlatMap(lambda e: [(e[0], ("up", e[1])), (e[1], ("down", e[0]))])
            | "GroupLinks" >> MeteredGroupByKey("dedup_components")
            | "VertexLinks" >> beam.FlatMapTuple(vertex_links)
            | "GroupNotes" >> MeteredGroupByKey("dedup_components")
            | "Settle" >> beam.FlatMapTuple(settle)
        )
        residual = settled | "Residual" >> beam.Filter(lambda s: s[0] == "residual")
        residual_labels = (
            residual
            | "ResidualEdges" >> beam.Map(lambda s: s[1])
            | "Union" >> beam.CombineGlobally(_UnionFn())
            | "ResidualLabels" >> beam.FlatMap(lambda labels: sorted(labels.items()))
        )
        leaves = (
            settled
            | "Settled" >> beam.Filter(lambda s: s[0] == "settled")
            | "ByRoot" >> beam.Map(lambda s: (s[1][1], s[1][0]))
        )
        leaf = (
            {"leaves": leaves, "residual": residual_labels}
            | "JoinRoots" >> MeteredCoGroupByKey("dedup_components")
            | "LeafLabels" >> beam.FlatMapTuple(leaf_labels)
        )
        labels = (
            (leaf, residual_labels)
            | "AllLabels" >> beam.Flatten()
            | "NotRoots" >> beam.Filter(lambda vl: vl[0] != vl[1])
        )
        return {
            "labels": labels,
            "events": residual | "Events" >> beam.Map(lambda _: "residual_edges"),
        }
