"""Substring matching of captions against the query list, with MetaCLIP's rule.

The rule (MetaCLIP's `substr_matching`): pad the caption with spaces, wrap the punctuation
`, . ; : ? ! `` ` in spaces, turn tabs and newlines into spaces; a query matches when
` query ` occurs in that text, case-sensitively. `reference_match` is that rule written as
MetaCLIP writes it (a loop over every query), kept as the oracle for tests and the benchmark.

`QueryMatcher` gives the same answer with one Aho-Corasick automaton (pyahocorasick) over the
padded queries, and matches a whole batch of captions in one pass: the captions are joined by
a separator no query contains, spaced together, scanned once, and each match is assigned to
its caption by its position. That removes the per-caption Python overhead, which is what
limits a per-caption scan.
"""

from __future__ import annotations

from collections.abc import Sequence

import ahocorasick
import numpy as np

PUNCTUATION = (",", ".", ";", ":", "?", "!", "`")
SPACED = ("\t", "\n", "\r")
_SEPARATOR = "\x00"  # between captions in a batch; no query may contain it
_SEPARATOR_STANDIN = "\x01"  # what a caption's own NULs become; no query may contain it either


def spacing(text: str) -> str:
    """MetaCLIP's normalisation of a caption before matching."""
    spaced = f" {text} "
    for punct in PUNCTUATION:
        spaced = spaced.replace(punct, f" {punct} ")
    for char in SPACED:
        spaced = spaced.replace(char, " ")
    return spaced


def _joined(captions: Sequence[str], fold_case: bool) -> str:
    """The batch as one spaced text, captions separated by ` \x00 `."""
    if any(_SEPARATOR in c for c in captions):
        captions = [c.replace(_SEPARATOR, _SEPARATOR_STANDIN) for c in captions]
    joined = f" {_SEPARATOR} ".join(captions)
    return spacing(joined.lower() if fold_case else joined)


def reference_match(caption: str, queries: Sequence[str]) -> list[int]:
    """MetaCLIP's reference: the ids of the queries whose ` query ` occurs in the spaced text."""
    text = spacing(caption)
    return [i for i, query in enumerate(queries) if f" {query} " in text]


def distinct_queries(queries: Sequence[str], fold_case: bool) -> tuple[list[tuple[int, str]], dict]:
    """(id, matched form) of each distinct query, and first id -> the ids repeating it: a list
    may hold a query twice (or twice once case is folded), and each id must still be reported."""
    first: dict[str, int] = {}
    distinct, aliases = [], {}
    for query_id, query in enumerate(queries):
        if _SEPARATOR in query or _SEPARATOR_STANDIN in query:
            raise ValueError(f"query {query_id} contains a control character: {query!r}")
        form = query.lower() if fold_case else query
        if form in first:
            aliases.setdefault(first[form], []).append(query_id)
        else:
            first[form] = query_id
            distinct.append((query_id, form))
    return distinct, aliases


def with_aliases(found: list[list[int]], aliases: dict) -> list[list[int]]:
    """Add the repeated ids of every matched query."""
    if not aliases:
        return found
    return [
        sorted({*ids, *(a for i in ids for a in aliases.get(i, ()))})
        if any(i in aliases for i in ids)
        else ids
        for ids in found
    ]


class QueryMatcher:
    """Matches captions against `queries` (ids are list positions), as `reference_match` does.

    `fold_case` lower-cases captions and queries alike, for users who want "paris" to match
    "Paris"; the default keeps MetaCLIP's case-sensitive rule.
    """

    def __init__(self, queries: Sequence[str], fold_case: bool = False):
        self.fold_case = fold_case
        self.size = len(queries)
        distinct, self._aliases = distinct_queries(queries, fold_case)
        automaton = ahocorasick.Automaton(ahocorasick.STORE_INTS)
        for query_id, form in distinct:
            automaton.add_word(f" {form} ", query_id)
        automaton.make_automaton()
        self._automaton = automaton

    def match(self, caption: str) -> list[int]:
        """Sorted ids of the queries `caption` matches."""
        return self.match_batch([caption])[0]

    def match_batch(self, captions: Sequence[str]) -> list[list[int]]:
        """Sorted matched query ids of each caption, in one scan of the joined batch."""
        if not captions:
            return []
        text = _joined(captions, self.fold_case)
        found = [(end, query_id) for end, query_id in self._automaton.iter(text)]
        out: list[list[int]] = [[] for _ in captions]
        if not found:
            return out
        separators = _positions(text, _SEPARATOR)
        hits = np.asarray(found, dtype=np.int64)
        owner = np.searchsorted(separators, hits[:, 0])
        order = np.lexsort((hits[:, 1], owner))
        owner, ids = owner[order].tolist(), hits[order, 1].tolist()
        last = (-1, -1)
        for caption_index, query_id in zip(owner, ids, strict=True):
            if (caption_index, query_id) != last:
                out[caption_index].append(query_id)
                last = (caption_index, query_id)
        return with_aliases(out, self._aliases)


def _positions(text: str, char: str) -> np.ndarray:
    """Offsets of every `char` in `text`, ascending."""
    positions = []
    index = text.find(char)
    while index >= 0:
        positions.append(index)
        index = text.find(char, index + 1)
    return np.asarray(positions, dtype=np.int64)


class TokenMatcher:
    """The same matches as `QueryMatcher`, found by looking up token n-grams with numpy.

    Why it is exact: the spaced caption is `" ".join(tokens)` for `tokens = text.split(" ")`,
    and a query's padded form ` q ` can only start and end on those separators, so ` q ` occurs
    exactly when `q.split(" ")` is a run of consecutive tokens. Tokens become ids with one C-level
    dict lookup each; one-word queries are then an array lookup, and each longer n-gram length
    that some query has is looked up at once over the whole batch (windows whose first token
    starts no such query are skipped): bigrams by exact integer keys, longer ones by a 64-bit
    hash whose hits are checked token by token. No Python code runs per match, which is what
    limits an automaton's iterator.
    """

    _HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)

    def __init__(self, queries: Sequence[str], fold_case: bool = False):
        self.fold_case = fold_case
        self.size = len(queries)
        self._vocab: dict[str, int] = {_SEPARATOR: 0}
        by_length: dict[int, list[tuple[tuple[int, ...], int]]] = {}
        distinct, self._aliases = distinct_queries(queries, fold_case)
        for query_id, form in distinct:
            ids = tuple(self._vocab.setdefault(t, len(self._vocab)) for t in form.split(" "))
            by_length.setdefault(len(ids), []).append((ids, query_id))
        self._hashes = _TokenHashes()
        vocab_hashes = self._hashes.of_tokens(list(self._vocab))
        if len(np.unique(vocab_hashes)) != len(vocab_hashes):
            raise ValueError("two query words share a 64-bit hash; report this with the list")
        self._token_index = _HashIndex(vocab_hashes, np.arange(len(vocab_hashes)))
        self._unigram = np.full(len(self._vocab), -1, dtype=np.int64)  # token id -> query id
        for (token,), query_id in by_length.pop(1, []):
            self._unigram[token] = query_id
        self._tables = {n: self._table(n, entries) for n, entries in sorted(by_length.items())}

    def _table(self, n: int, entries: list[tuple[tuple[int, ...], int]]):
        """Which tokens start an n-word query, the sorted keys, their query ids and tokens."""
        tokens = np.array([ids for ids, _ in entries], dtype=np.int64).reshape(len(entries), n)
        keys = self._keys(tokens)
        if len(np.unique(keys)) != len(keys):  # distinct queries, so only a hash can collide
            raise ValueError(f"two {n}-word queries share a hash; report this with the list")
        starts = np.zeros(len(self._vocab), dtype=bool)
        starts[tokens[:, 0]] = True
        query_ids = np.array([query_id for _, query_id in entries], dtype=np.int64)
        return starts, _HashIndex(keys, np.arange(len(keys))), query_ids, tokens

    def _keys(self, windows: np.ndarray) -> np.ndarray:
        """One uint64 key per row of token ids: exact for two words, a hash beyond."""
        if windows.shape[1] == 2:
            high = windows[:, 0].astype(np.uint64) << np.uint64(32)
            return high | windows[:, 1].astype(np.uint64)
        key = np.zeros(len(windows), dtype=np.uint64)
        for column in windows.T:
            key = (key ^ column.astype(np.uint64)) * self._HASH_MULTIPLIER
        return key

    def match(self, caption: str) -> list[int]:
        return self.match_batch([caption])[0]

    def match_batch(self, captions: Sequence[str]) -> list[list[int]]:
        if not captions:
            return []
        ids = self._token_ids(_joined(captions, self.fold_case))
        owner = np.cumsum(ids == 0)  # the caption each token belongs to
        known = np.flatnonzero(ids > 0)  # not unknown, not a caption boundary
        unigram = self._unigram[ids[known]]
        found_owner, found_query = [owner[known[unigram >= 0]]], [unigram[unigram >= 0]]
        for n, (starts_query, index, query_ids, query_tokens) in self._tables.items():
            starts = known[starts_query[ids[known]] & (known <= len(ids) - n)]
            windows = ids[starts[:, None] + np.arange(n)]
            starts, windows = starts[(windows > 0).all(axis=1)], windows[(windows > 0).all(axis=1)]
            row = index.get(self._keys(windows))
            hit = row >= 0
            if n > 2:  # a hash: check the tokens themselves
                hit[hit] = (windows[hit] == query_tokens[row[hit]]).all(axis=1)
            found_owner.append(owner[starts[hit]])
            found_query.append(query_ids[row[hit]])
        found = self._per_caption(len(captions), found_owner, found_query)
        return with_aliases(found, self._aliases)

    def _token_ids(self, text: str) -> np.ndarray:
        """The vocabulary id of every space-separated token of `text` (-1: not a query word)."""
        return self._token_index.get(self._hashes.of_text(text))

    def _per_caption(self, count: int, owners: list, queries: list) -> list[list[int]]:
        """Sorted distinct query ids per caption."""
        pairs = np.sort(np.concatenate(owners) * self.size + np.concatenate(queries))
        if len(pairs):
            pairs = pairs[np.concatenate(([True], pairs[1:] != pairs[:-1]))]
        owner, query = np.divmod(pairs, self.size)
        bounds = np.searchsorted(owner, np.arange(count + 1)).tolist()
        query = query.tolist()
        return [query[bounds[i] : bounds[i + 1]] for i in range(count)]


class _TokenHashes:
    """64-bit polynomial hashes of the space-separated tokens of a UTF-8 text, all at once.

    With prefix sums of (byte + 1) * P^i, a token's hash is a difference of two prefix sums
    scaled by P^-start (P is odd, so it has an inverse modulo 2^64): numpy does the whole text in
    a few passes, where a dict lookup per token would cost a Python call each. Two different
    words share a hash with probability 2^-64 per comparison, about once in 10^13 tokens against a
    500k-word vocabulary; the vocabulary itself is checked for collisions when it is built.
    """

    _P = np.uint64(0x100000001B3)  # odd
    _P_INVERSE = np.uint64(pow(0x100000001B3, -1, 2**64))

    def __init__(self) -> None:
        self._powers = np.ones(1, dtype=np.uint64)
        self._inverse_powers = np.ones(1, dtype=np.uint64)

    def _grow(self, length: int) -> None:
        if len(self._powers) >= length:
            return
        length = max(length, 2 * len(self._powers))
        one = np.ones(1, dtype=np.uint64)
        powers = np.cumprod(np.full(length - 1, self._P, dtype=np.uint64))
        inverse = np.cumprod(np.full(length - 1, self._P_INVERSE, dtype=np.uint64))
        self._powers = np.concatenate((one, powers))  # P^i modulo 2^64 (uint64 wraps)
        self._inverse_powers = np.concatenate((one, inverse))

    def of_text(self, text: str) -> np.ndarray:
        """Hashes of the tokens between consecutive spaces of `text`, which starts and ends with
        a space (what `split(" ")` gives, less the empty ends)."""
        data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        self._grow(len(data) + 1)
        prefix = np.zeros(len(data) + 1, dtype=np.uint64)
        np.cumsum(
            (data.astype(np.uint64) + np.uint64(1)) * self._powers[: len(data)], out=prefix[1:]
        )
        spaces = np.flatnonzero(data == 32)
        starts, ends = spaces[:-1] + 1, spaces[1:]
        return (prefix[ends] - prefix[starts]) * self._inverse_powers[starts]

    def of_tokens(self, tokens: list[str]) -> np.ndarray:
        return self.of_text(" " + " ".join(tokens) + " ")


class _HashIndex:
    """A read-only open-addressing hash table from uint64 keys to int64 values, probed for a
    whole array of keys at once: about one random memory access per lookup, where a binary
    search over a sorted array costs twenty."""

    _MIX = np.uint64(0x9E3779B97F4A7C15)

    def __init__(self, keys: np.ndarray, values: np.ndarray):
        if len(np.unique(keys)) != len(keys):
            raise ValueError("keys must be distinct")
        self._bits = max(4, int(2 * max(len(keys), 1) - 1).bit_length())  # load factor <= 1/2
        self._mask = (1 << self._bits) - 1
        self._keys = np.zeros(1 << self._bits, dtype=np.uint64)
        self._values = np.full(1 << self._bits, -1, dtype=np.int64)
        self._used = np.zeros(1 << self._bits, dtype=bool)
        pending = np.arange(len(keys))
        slots = self._home(keys)
        while len(pending):
            free = ~self._used[slots]
            claim, first = np.unique(slots[free], return_index=True)
            placed = pending[free][first]
            self._keys[claim], self._values[claim], self._used[claim] = (
                keys[placed],
                values[placed],
                True,
            )
            waiting = np.ones(len(pending), dtype=bool)
            waiting[np.flatnonzero(free)[first]] = False
            pending, slots = pending[waiting], (slots[waiting] + 1) & self._mask

    def _home(self, keys: np.ndarray) -> np.ndarray:
        return ((keys * self._MIX) >> np.uint64(64 - self._bits)).astype(np.int64)

    def get(self, keys: np.ndarray) -> np.ndarray:
        """The value of each key, -1 where it is absent."""
        out = np.full(len(keys), -1, dtype=np.int64)
        pending = np.arange(len(keys))
        slots = self._home(keys)
        while len(pending):
            used = self._used[slots]
            found = used & (self._keys[slots] == keys[pending])
            out[pending[found]] = self._values[slots[found]]
            going_on = used & ~found
            pending, slots = pending[going_on], (slots[going_on] + 1) & self._mask
        return out
