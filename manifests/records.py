"""The records of a text input list, as its format defines them, each with its line number.

Both the reader (records -> Pairs) and the source count (`input_rows`) walk these records, so
the count comes from the input itself, not from what the reader managed to turn into pairs.

- jsonl, txt: one record per non-blank physical line (`\\n`, `\\r\\n` or `\\r` ends a line).
- tsv: the same, fields split on tabs with no quoting at all (IANA TSV, what a `.tsv` holds).
- csv: RFC 4180 quoting, but a quoted field may span at most `MAX_RECORD_LINES` lines; a record
  that goes on past that, breaks the quoting rules or has the wrong number of fields costs its
  first physical line alone (a problem record), and reading resumes on the next line, so a
  stray opening quote cannot swallow the rows after it.

A UTF-8 byte-order mark at the start of a file is dropped; other undecodable bytes survive as
surrogates (`surrogateescape`) so the reader can flag the row.
"""

from __future__ import annotations

import csv
import gzip
import io
import sys
from collections import deque
from collections.abc import Callable, Iterator

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

MAX_RECORD_LINES = 5  # physical lines one CSV record may span (4 line breaks in a quoted field)
MAX_HEADER_CHARS = 1 << 20

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

Line = tuple[int, str]  # (1-based physical line number, text with its line break)
# (line number, fields or None, problem or None); the header is the first record
Fields = tuple[int, list[str] | None, str | None]


def open_text(path: str) -> io.TextIOWrapper:
    """Stream `path` as text (gunzipped when it ends in .gz), never the whole file at once."""
    raw = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    if path.endswith(".gz"):
        raw = gzip.GzipFile(fileobj=raw)
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")


def physical_lines(stream: io.TextIOBase) -> Iterator[Line]:
    return enumerate(stream, start=1)


def line_records(stream: io.TextIOBase) -> Iterator[Line]:
    """The non-blank lines (jsonl, txt records)."""
    return ((number, text) for number, text in physical_lines(stream) if text.strip())


def delimited_records(stream: io.TextIOBase, fmt: str) -> Iterator[Fields]:
    """Header first, then each record; records are checked against the header's field count."""
    if fmt == "tsv":
        records = ((n, _split_tsv(text), None) for n, text in line_records(stream))
    else:
        records = _csv_records(physical_lines(stream))
    header = next(records, None)
    if header is None:
        return
    yield header
    width = len(header[1]) if header[1] is not None else None
    for number, fields, problem in records:
        if problem is None and width is not None and len(fields) != width:
            fields, problem = None, f"expected {width} fields, got {len(fields)}"
        yield number, fields, problem


def read_header(path: str, fmt: str) -> list[str]:
    """The column names of a csv/tsv file, reading only its first line."""
    with open_text(path) as stream:
        text = stream.readline(MAX_HEADER_CHARS)
    if fmt == "tsv":
        return _split_tsv(text)
    return next(csv.reader([text.rstrip("\r\n")]), [])


def count_records(path: str, fmt: str) -> int:
    """Rows of a text input (the header excluded); a file that breaks off counts one more row
    for its unreadable remainder, as the reader reports it."""
    header = 1 if fmt in ("csv", "tsv") else 0
    records = 0
    try:
        with open_text(path) as stream:
            found = delimited_records(stream, fmt) if header else line_records(stream)
            for _ in found:
                records += 1
    except Exception:  # the reader meets the same failure and reports it as one row
        return max(records - header, 0) + 1
    return max(records - header, 0)


def _split_tsv(text: str) -> list[str]:
    return text.rstrip("\r\n").split("\t")


def _csv_records(lines: Iterator[Line]) -> Iterator[Fields]:
    """CSV records with their quoting, a bounded number of lines each (see the module doc)."""
    pending: deque[Line] = deque()
    width = None  # the header's field count, once read

    def pull() -> Line | None:
        return pending.popleft() if pending else next(lines, None)

    while (first := pull()) is not None:
        if not first[1].strip():
            continue
        if '"' not in first[1]:  # the common case: no quoting, one line, a plain split
            fields, problem = first[1].rstrip("\r\n").split(","), None
        else:
            taken, fields, problem = _one_csv_record(first, pull, pending)
            if problem is None and len(taken) > 1 and width is not None and len(fields) != width:
                problem = f"a record over {len(taken)} lines has {len(fields)} fields, not {width}"
            if problem is not None:
                fields = None
                pending.extendleft(reversed(taken[1:]))  # re-read the lines it swallowed
        if width is None and fields is not None:
            width = len(fields)
        yield first[0], fields, problem


def _one_csv_record(first: Line, pull: Callable[[], Line | None], pending: deque[Line]):
    """(lines taken, fields, problem) of the record starting at `first`, at most
    MAX_RECORD_LINES lines pulled."""
    taken = [first]
    overflow = False

    def feed() -> Iterator[str]:
        nonlocal overflow
        yield first[1]
        while (nxt := pull()) is not None:
            if len(taken) >= MAX_RECORD_LINES:
                overflow = True
                pending.appendleft(nxt)
                return
            taken.append(nxt)
            yield nxt[1]

    try:
        fields, problem = next(csv.reader(feed(), strict=True)), None
    except csv.Error as exc:
        fields, problem = None, f"unparsable CSV record: {exc}"
    if overflow:
        problem = f"a quoted field is not closed within {MAX_RECORD_LINES} lines"
    return taken, fields, problem
