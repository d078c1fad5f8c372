"""Reading a query list ("metadata" in MetaCLIP's words), whatever form a user brings it in.

Accepted: a plain list (one query a line; a tab-separated line keeps its first column, so the
TSV that `python -m manifests.queries build` writes loads too, header included), or MetaCLIP's
`metadata.json` (a JSON list of strings); either may be gzipped. Whitespace runs collapse to
one space and the ends are stripped, since matching pads queries with single spaces; case is
kept, since matching is case-sensitive. A query's id is its position in the list as loaded.
"""

from __future__ import annotations

import gzip
import json

from manifests.io import read_bytes

HEADER = "query"


def normalize_query(text: str) -> str:
    return " ".join(text.split())


def parse_queries(data: bytes, name: str) -> list[str]:
    """The distinct queries in `data` (the bytes of file `name`), in order of first occurrence."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    text = data.decode("utf-8-sig")
    stem = name[:-3] if name.endswith(".gz") else name
    if stem.endswith(".json") or text.lstrip().startswith("["):
        try:
            entries = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{name}: not valid JSON: {exc}") from exc
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise ValueError(f"{name}: a JSON query list must be a list of strings")
    else:
        entries = [line.split("\t", 1)[0] for line in text.splitlines()]
        if entries and entries[0].strip() == HEADER and "\t" in text.splitlines()[0]:
            entries = entries[1:]
    queries = list(dict.fromkeys(q for q in map(normalize_query, entries) if q))
    if not queries:
        raise ValueError(f"{name}: holds no query")
    return queries


def load_queries(path: str) -> list[str]:
    """The queries in the file at `path` (any Beam filesystem: local, gs://, s3://...)."""
    return parse_queries(read_bytes(path), path)
