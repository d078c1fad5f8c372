"""Grouping logic of the image dedup stage, unit-tested without Beam.

Records are small tuples (never the pairs or their JPEGs): `Sig` per image, `ExactGroup` per
set of identical pixels (and, in the `pair` scope, captions with one `caption_key`); a node is
the exact groups that share one perceptual hash, colour signature and caption key, named by
that triple. LSH buckets yield matches between nodes (and evaluation images): within the
Hamming threshold on some hash (an image's own, or one of its views against the other's), with
colours that agree and, between nodes, the same caption key. `ResolveGroups` unions them, and
`node_decisions` turns a node's verdict into a status per pair. A union is transitive: a
greyscale copy, which agrees with every colouring, joins two recoloured versions it matches.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import apache_beam as beam

from manifests.schema import Pair
from pipeline.hashing import Groups, band_keys, close_pairs, colours_agree

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


class ExactGroup(NamedTuple):
    """Pairs with identical pixels (and caption key): the survivor `rep` (smallest key) and the
    others."""

    rep: str
    dups: tuple[str, ...]
    phash: int
    views: tuple[int, ...]
    colour: bytes
    text: str

    @property
    def node(self) -> tuple[int, bytes, str]:
        return self.phash, self.colour, self.text


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


def exact_group(_pixels: tuple[str, str], sigs: list[Sig]) -> ExactGroup:
    sigs = sorted(sigs)
    first = sigs[0]
    dups = tuple(s.key for s in sigs[1:])
    return ExactGroup(first.key, dups, first.phash, first.views, first.colour, first.text)


def bucket_entries(node: tuple[int, bytes, str], groups: list[ExactGroup], layout):
    """The LSH bucket entries of one node: its hash and its views' hashes, each banded."""
    key = min(g.rep for g in groups)
    phash, colour, _text = node
    for value in sorted({phash, *min(groups).views}):
        for bucket in band_keys(value, layout):
            yield bucket, ("node", node, key, value, colour)


def eval_entries(ident: str, values: tuple[int, ...], colour: bytes, layout):
    """The LSH bucket entries of one evaluation image (its hash and its views' hashes)."""
    for value in sorted(set(values)):
        for bucket in band_keys(value, layout):
            yield bucket, ("eval", ident, value, colour)


def compare_bucket(entries: list[tuple], threshold: int, near: bool, colour_distance):
    """Matches in one bucket: ("edge", (node, key, node, key)) between nodes within `threshold`
    whose colours agree and whose caption keys are equal, and ("hit", (node, eval id)) for a
    node near an evaluation image, whatever its caption."""
    nodes = sorted({e[1:] for e in entries if e[0] == "node"})
    evals = sorted({e[1:] for e in entries if e[0] == "eval"})
    if near and len(nodes) > 1:
        for i, j in close_pairs((n[2] for n in nodes), None, threshold):
            a, b = nodes[i], nodes[j]
            same_text = a[0][2] == b[0][2]
            if a[0] != b[0] and same_text and colours_agree(a[3], b[3], colour_distance):
                yield "edge", (a[0], a[1], b[0], b[1])
    if nodes and evals:
        for i, j in close_pairs((n[2] for n in nodes), (e[1] for e in evals), threshold):
            if colours_agree(nodes[i][3], evals[j][2], colour_distance):
                yield "hit", (nodes[i][0], evals[j][0])


class ResolveGroups(beam.CombineFn):
    """Union the matches into groups: node -> (CONTAMINATED, eval id) or (DUP_NEAR,
    smallest key of its group). Contaminated nodes are taken out before the union, so they
    never bridge two clean groups. Holds the matches only, never every image."""

    def create_accumulator(self):
        return set(), {}

    def add_input(self, acc, match):
        edges, hits = acc
        kind, payload = match
        if kind == "edge":
            edges.add(payload)
        else:
            node, ident = payload
            hits[node] = min(ident, hits.get(node, ident))
        return acc

    def merge_accumulators(self, accs):
        edges, hits = set(), {}
        for acc_edges, acc_hits in accs:
            edges |= acc_edges
            for node, ident in acc_hits.items():
                hits[node] = min(ident, hits.get(node, ident))
        return edges, hits

    def extract_output(self, acc) -> dict:
        edges, hits = acc
        groups = Groups()
        for a, key_a, b, key_b in edges:
            if a not in hits and b not in hits:
                groups.add(a, key_a)
                groups.add(b, key_b)
                groups.union(a, b)
        verdicts = {node: (DUP_NEAR, key) for node, key in groups.survivors().items()}
        verdicts.update({node: (CONTAMINATED, ident) for node, ident in hits.items()})
        return verdicts


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
