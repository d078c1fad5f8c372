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
from itertools import pairwise

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
    """The batch as one text, captions separated by ` \x00 ` (not yet spaced)."""
    joined = f" {_SEPARATOR} ".join(captions)
    if joined.count(_SEPARATOR) != len(captions) - 1:  # a caption holds the separator itself
        captions = [c.replace(_SEPARATOR, _SEPARATOR_STANDIN) for c in captions]
        joined = f" {_SEPARATOR} ".join(captions)
    return joined.lower() if fold_case else joined


_SPACE_BYTES = [ord(" "), *(ord(c) for c in SPACED)]


def spaced_tokens(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The UTF-8 bytes of `text`, and the start and end offsets in them of the tokens of
    `spacing(text).split(" ")` (empty tokens included), found without building the spaced text.

    Spacing cuts the text at each space, tab or newline (the token ends before it and the next
    starts after it) and on both sides of each punctuation mark (which becomes a token of its
    own). All of them are ASCII, hence single bytes that no multi-byte character contains. Each
    cut is the key 2 * end + (start - end), so the cuts in text order are the sorted keys."""
    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    low = np.flatnonzero(data <= ord(" "))  # one pass; then only these few bytes are compared
    low_bytes = data[low]
    spaces = low[np.logical_or.reduce([low_bytes == byte for byte in _SPACE_BYTES])]
    runs = [2 * spaces + 1]  # (end, start) = (i, i + 1)
    for mark in PUNCTUATION:
        if mark in text:  # (i, i) and (i + 1, i + 1)
            at = np.flatnonzero(data == ord(mark))
            runs += [2 * at, 2 * at + 2]
    # a stable sort is timsort, which merges the already sorted runs in linear time
    keys = np.sort(np.concatenate(runs), kind="stable") if len(runs) > 1 else runs[0]
    ends = np.concatenate((keys >> 1, [len(data)]))
    starts = np.concatenate(([0], (keys >> 1) + (keys & 1)))
    return data, starts, ends


def spaced_query(query: str) -> str:
    """How `query` reads in a spaced caption: its punctuation marks spaced apart."""
    return " ".join(spacing(query).split())


def never_matching(queries: Sequence[str]) -> list[int]:
    """The ids of the (normalised) queries that no caption can match under the rule: spacing
    puts a space on both sides of every punctuation mark of the caption, and two between
    adjacent marks, but does nothing to the query, so "The letter P." or "St. Louis" matches
    nothing, not even the caption "The letter P." (under MetaCLIP's rule too), while its
    spaced form "The letter P ." would."""

    def can_match(query: str) -> bool:
        tokens = query.split(" ")
        adjacent_marks = any(a in PUNCTUATION and b in PUNCTUATION for a, b in pairwise(tokens))
        return spaced_query(query) == query and not adjacent_marks

    return [i for i, query in enumerate(queries) if not can_match(query)]


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
        text = spacing(_joined(captions, self.fold_case))
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
        vocab_hashes = self._hashes.of_words(list(self._vocab))
        if len(np.unique(vocab_hashes)) != len(vocab_hashes):
            raise ValueError("two query words share a 64-bit hash; report this with the list")
        self._token_index = _HashIndex(vocab_hashes, np.arange(len(vocab_hashes)))
        # token id -> query id, with a last entry (-1) that token id -1 (unknown) reads
        self._unigram = np.full(len(self._vocab) + 1, -1, dtype=np.int64)
        for (token,), query_id in by_length.pop(1, []):
            self._unigram[token] = query_id
        self._tables = {n: self._table(n, entries) for n, entries in sorted(by_length.items())}

    def _table(self, n: int, entries: list[tuple[tuple[int, ...], int]]):
        """Which tokens start an n-word query, the sorted keys, their query ids and tokens."""
        tokens = np.array([ids for ids, _ in entries], dtype=np.int64).reshape(len(entries), n)
        keys = self._keys(tokens)
        if len(np.unique(keys)) != len(keys):  # distinct queries, so only a hash can collide
            raise ValueError(f"two {n}-word queries share a hash; report this with the list")
        starts = np.zeros(len(self._vocab) + 1, dtype=bool)  # the last entry, for token id -1
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
        data, starts, ends = spaced_tokens(_joined(captions, self.fold_case))
        ids = self._token_index.get(self._hashes.of_tokens(data, starts, ends))
        owner = np.cumsum(ids == 0)  # the caption each token belongs to
        unigram = self._unigram[ids]  # id -1 (not a query word) reads the table's last entry: -1
        at = np.flatnonzero(unigram >= 0)
        found_owner, found_query = [owner[at]], [unigram[at]]
        inside = ids > 0  # a query word, not a caption boundary
        for n, (starts_query, index, query_ids, query_tokens) in self._tables.items():
            count = max(len(ids) - n + 1, 0)
            candidate = starts_query[ids[:count]]  # False for id -1 too: see `_table`
            for offset in range(1, n):
                candidate &= inside[offset : offset + count]
            starts = np.flatnonzero(candidate)
            windows = ids[starts[:, None] + np.arange(n)]
            row = index.get(self._keys(windows))
            hit = row >= 0
            if n > 2:  # a hash: check the tokens themselves
                hit[hit] = (windows[hit] == query_tokens[row[hit]]).all(axis=1)
            found_owner.append(owner[starts[hit]])
            found_query.append(query_ids[row[hit]])
        found = self._per_caption(len(captions), found_owner, found_query)
        return with_aliases(found, self._aliases)

    def _per_caption(self, count: int, owners: list, queries: list) -> list[list[int]]:
        """Sorted distinct query ids per caption."""
        shift = max(self.size - 1, 1).bit_length()  # a shift and a mask, cheaper than divmod
        pairs = np.sort((np.concatenate(owners) << shift) | np.concatenate(queries))
        if len(pairs):
            pairs = pairs[np.concatenate(([True], pairs[1:] != pairs[:-1]))]
        owner, query = pairs >> shift, pairs & ((1 << shift) - 1)
        bounds = np.concatenate(([0], np.cumsum(np.bincount(owner, minlength=count)))).tolist()
        return list(map(query.tolist().__getitem__, map(slice, bounds[:-1], bounds[1:])))


class _TokenHashes:
    """64-bit polynomial hashes of many byte ranges (tokens) of a UTF-8 text, all at once.

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

    def of_tokens(self, data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Hashes of the byte ranges [starts, ends) of `data`."""
        self._grow(len(data) + 1)
        prefix = np.zeros(len(data) + 1, dtype=np.uint64)
        np.cumsum(
            (data.astype(np.uint64) + np.uint64(1)) * self._powers[: len(data)], out=prefix[1:]
        )
        return (prefix[ends] - prefix[starts]) * self._inverse_powers[starts]

    def of_words(self, words: list[str]) -> np.ndarray:
        """Hashes of `words`, each taken whole."""
        data = np.frombuffer(" ".join(words).encode("utf-8"), dtype=np.uint8)
        lengths = np.array([len(w.encode("utf-8")) for w in words], dtype=np.int64)
        starts = np.concatenate(([0], np.cumsum(lengths + 1)[:-1])).astype(np.int64)
        return self.of_tokens(data, starts, starts + lengths)


class _HashIndex:
    """A read-only open-addressing hash table from uint64 keys to int64 values, probed for a
    whole array of keys at once: about one random memory access per lookup (a key and its value
    share a row of the table, hence a cache line), where a binary search costs twenty."""

    _MIX = np.uint64(0x9E3779B97F4A7C15)
    _EMPTY = np.uint64(2**64 - 1)  # the value of a free row: -1 as int64, "absent"
    _ROWS_PER_KEY = 4  # a load factor of at most 1/4 keeps probe chains short

    def __init__(self, keys: np.ndarray, values: np.ndarray):
        if len(np.unique(keys)) != len(keys):
            raise ValueError("keys must be distinct")
        self._bits = max(4, int(self._ROWS_PER_KEY * max(len(keys), 1) - 1).bit_length())
        self._mask = (1 << self._bits) - 1
        self._rows = np.zeros((1 << self._bits, 2), dtype=np.uint64)  # (key, value)
        self._rows[:, 1] = self._EMPTY
        pending = np.arange(len(keys))
        slots = self._home(keys)
        while len(pending):
            free = self._rows.take(slots, axis=0)[:, 1] == self._EMPTY
            claim, first = np.unique(slots[free], return_index=True)
            placed = pending[free][first]
            self._rows[claim, 0] = keys[placed]
            self._rows[claim, 1] = values[placed].astype(np.uint64)
            waiting = np.ones(len(pending), dtype=bool)
            waiting[np.flatnonzero(free)[first]] = False
            pending, slots = pending[waiting], (slots[waiting] + 1) & self._mask

    def _home(self, keys: np.ndarray) -> np.ndarray:
        return ((keys * self._MIX) >> np.uint64(64 - self._bits)).astype(np.int64)

    def get(self, keys: np.ndarray) -> np.ndarray:
        """The value of each key, -1 where it is absent."""
        out = np.full(len(keys), -1, dtype=np.int64)
        pending, slots, wanted = np.arange(len(keys)), self._home(keys), keys
        while len(pending):
            rows = self._rows.take(slots, axis=0)  # far faster than fancy indexing of rows
            found = rows[:, 0] == wanted  # a free row holding key 0 gives -1: absent, as it must
            out[pending[found]] = rows[found, 1].view(np.int64)
            going_on = ~found & (rows[:, 1] != self._EMPTY)
            pending, slots = pending[going_on], (slots[going_on] + 1) & self._mask
            wanted = keys[pending]
        return out
