"""Grouping logic of the image dedup stage, unit-tested without Beam.

Records are small tuples (never the pairs or their JPEGs): `Sig` per image, `ExactGroup` per
set of identical pixels (and, in the `pair` scope, captions with one `caption_key`); a node is
the exact groups that share one perceptual hash, colour signature and caption key, and is
named in the graph by its smallest key. LSH buckets yield matches between nodes (and
evaluation images): within the Hamming threshold on some hash (an image's own, or one of its
views against the other's), with colours that agree and, between nodes, the same caption key.
`bucket_hits` finds the contaminated nodes; `bucket_edges` resolves each bucket into stars,
which `components.ConnectedComponents` joins; `node_decisions` turns a node's verdict into a
status per pair. Components are transitive: a greyscale copy, which agrees with every
colouring, joins two recoloured versions it matches.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import NamedTuple

from manifests.schema import Pair
from pipeline.components import BucketRows, Edge, bucket_stars
from pipeline.hashing import band_keys, close_pairs, colours_agree

DUP_EXACT = "dup:exact"
DUP_NEAR = "dup:near"
CONTAMINATED = "contaminated"


class Sig(NamedTuple):
    key: str
    digest: str
    phash: int
    views: tuple[int, ...]  # hashes of the mirrored and zoomed image
    colour: bytes
    text: str  # `caption_key` in the pair scope, "" in the image scope

    @property
    def node(self) -> tuple[int, bytes, str]:
        return self.phash, self.colour, self.text


class ExactGroup(NamedTuple):
    """Pairs with identical pixels (and caption key): the survivor `rep` (smallest key) and the
    others."""

    rep: str
    dups: tuple[str, ...]
    phash: int
    views: tuple[int, ...]
    colour: bytes
    text: str


class Decision(NamedTuple):
    status: str
    dup_of: str
    message: str


def resolve_urls(url_key: tuple[str, str], pairs: list[Pair]) -> list[Pair]:
    """Keep the smallest key of pairs with one (normalised URL, caption key) - the caption key
    is "" outside the pair scope; the others are `dup:exact`."""
    pairs = sorted(pairs, key=lambda p: p.key)
    first = pairs[0].key
    message = f"same URL{' and caption' if url_key[1] else ''} as {first}"
    dups = [replace(p.with_status(DUP_EXACT, message), dup_of=first) for p in pairs[1:]]
    return [pairs[0], *dups]


def exact_group(_pixels, sigs: list[Sig]) -> ExactGroup:
    sigs = sorted(sigs)
    first = sigs[0]
    dups = tuple(s.key for s in sigs[1:])
    return ExactGroup(first.key, dups, first.phash, first.views, first.colour, first.text)


def node_groups(node: tuple[int, bytes, str], sigs: list[Sig], exact: bool):
    """(smallest key, (node, its exact groups in order)) of one node. Identical pixels have
    identical hashes, so a node holds whole exact groups, and grouping by node alone finds
    both; without exact dedup each image is a group of its own."""
    members: dict[str, list[Sig]] = {}
    for sig in sigs:
        members.setdefault(sig.digest if exact else sig.key, []).append(sig)
    groups = sorted(exact_group(pixels, sigs) for pixels, sigs in members.items())
    return groups[0].rep, (node, groups)


def bucket_entries(node: tuple[int, bytes, str], groups: list[ExactGroup], layout):
    """The LSH bucket entries of one node: its hash and its views' hashes, each banded."""
    key = min(g.rep for g in groups)
    phash, colour, text = node
    for value in sorted({phash, *min(groups).views}):
        for bucket in band_keys(value, layout):  # flat: the most numerous record of the run
            yield bucket, ("node", key, value, colour, text)


def eval_entries(ident: str, values: tuple[int, ...], colour: bytes, layout):
    """The LSH bucket entries of one evaluation image (its hash and its views' hashes)."""
    for value in sorted(set(values)):
        for bucket in band_keys(value, layout):
            yield bucket, ("eval", ident, value, colour)


def bucket_edges(entries: list[tuple], threshold: int, colour_distance) -> Iterator[Edge]:
    """One bucket's matches between nodes, resolved locally into stars: (key, smallest key of
    its component in this bucket), so n copies in one bucket cost n - 1 edges."""
    nodes = sorted({e[1:] for e in entries if e[0] == "node"})
    if len(nodes) < 2:
        return iter(())
    rows = BucketRows(
        [n[0] for n in nodes],
        [n[1] for n in nodes],
        [n[3] for n in nodes],
        [n[2] for n in nodes],
    )
    return bucket_stars(rows, threshold, colour_distance)


def bucket_hits(entries: list[tuple], threshold: int, colour_distance):
    """(node key, smallest evaluation id) of each node in one bucket near an evaluation image,
    whatever its caption."""
    nodes = sorted({e[1:4] for e in entries if e[0] == "node"})
    evals = sorted({e[1:] for e in entries if e[0] == "eval"})
    if not (nodes and evals):
        return
    hits: dict[str, str] = {}
    for i, j in close_pairs((n[1] for n in nodes), (e[1] for e in evals), threshold):
        (key, _value, colour), ident = nodes[i], evals[j][0]
        if colours_agree(colour, evals[j][2], colour_distance):
            hits[key] = min(ident, hits.get(key, ident))
    yield from sorted(hits.items())


def node_decisions(groups: list[ExactGroup], verdict: tuple | None, near: bool, threshold: int):
    """(key, Decision) for every dropped pair of one node, given its group's verdict."""
    groups = sorted(groups)
    if verdict and verdict[0] == CONTAMINATED:
        message = f"near-duplicate of evaluation image {verdict[1]}"
        for group in groups:
            for key in (group.rep, *group.dups):
                yield key, Decision(CONTAMINATED, verdict[1], message)
        return
    survivor = verdict[1] if verdict else groups[0].rep
    for group in groups:
        kept = group.rep == survivor or not near
        if not kept:
            message = f"within {threshold} bits of {survivor}"
            yield group.rep, Decision(DUP_NEAR, survivor, message)
        for key in group.dups:
            target = group.rep if kept else survivor
            same = "same pixels and caption" if group.text else "same pixels"
            yield key, Decision(DUP_EXACT, target, f"{same} as {group.rep}")


def apply_decision(_key: str, joined: dict) -> list[Pair]:
    (pair,) = joined["pair"]
    decisions = joined["decision"]
    if not decisions:
        return [pair]
    (decision,) = decisions
    return [replace(pair.with_status(decision.status, decision.message), dup_of=decision.dup_of)]
