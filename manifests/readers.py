"""Read URL-caption lists (parquet, csv, tsv, jsonl, txt; each optionally gzipped) into Pairs.

One Pair per input row, keyed `FFFFFRRRRRRRRRR` (file index, row index): deterministic from the
input and never taken from it. A row that cannot be parsed still becomes a Pair, with status
`error:bad_row` or `error:bad_encoding`, so the manifest accounts for every input row.
Large parquet files are split into row groups (`ReadUnit`s) so one file can spread over workers.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from manifests.io import read_bytes
from manifests.schema import Pair, error

FORMATS = ("parquet", "csv", "tsv", "jsonl", "txt")
_EXTENSION_ALIASES = {"json": "jsonl", "ndjson": "jsonl"}

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass(frozen=True)
class InputSpec:
    """How to read the input lists: format (None: from each file's extension) and columns."""

    input_format: str | None = None
    url_col: str = "url"
    caption_col: str = "caption"


@dataclass(frozen=True)
class ReadUnit:
    """A piece of one input file that one worker reads: a whole file, or one parquet row group."""

    path: str
    file_index: int
    input_format: str
    row_group: int | None = None
    first_row: int = 0


def detect_format(path: str, declared: str | None = None) -> str:
    """The input format of `path`: `declared` if given, else from its extension (`.gz` ignored)."""
    if declared:
        if declared not in FORMATS:
            raise ValueError(f"unknown input format {declared!r}; expected one of {FORMATS}")
        return declared
    name = path.rsplit("/", 1)[-1].lower()
    if name.endswith(".gz"):
        name = name[:-3]
    ext = name.rsplit(".", 1)[-1] if "." in name else ""
    ext = _EXTENSION_ALIASES.get(ext, ext)
    if ext not in FORMATS:
        raise ValueError(f"cannot tell the format of {path!r}; pass --input-format ({FORMATS})")
    return ext


def make_key(file_index: int, row_index: int) -> str:
    return f"{file_index:05d}{row_index:010d}"


def plan_units(path: str, file_index: int, spec: InputSpec) -> list[ReadUnit]:
    """Split one input file into the units workers read; parquet splits by row group."""
    fmt = detect_format(path, spec.input_format)
    if fmt != "parquet" or path.endswith(".gz"):
        return [ReadUnit(path, file_index, fmt)]
    with FileSystems.open(path) as f:
        meta = pq.ParquetFile(f).metadata
    units, first = [], 0
    for group in range(meta.num_row_groups):
        units.append(ReadUnit(path, file_index, fmt, group, first))
        first += meta.row_group(group).num_rows
    return units or [ReadUnit(path, file_index, fmt, None, 0)]


def check_columns(path: str, spec: InputSpec) -> None:
    """Fail fast when a file lacks the URL column: a wrong `--url-col` is a user error, not bad rows."""
    fmt = detect_format(path, spec.input_format)
    if fmt == "txt":
        return
    if fmt == "parquet":
        data = read_bytes(path) if path.endswith(".gz") else None
        with io.BytesIO(data) if data is not None else FileSystems.open(path) as f:
            names = pq.ParquetFile(f).schema_arrow.names
    elif fmt == "jsonl":
        return  # column presence is per row in jsonl; rows without it become error:bad_row
    else:
        head = read_bytes(path).split(b"\n", 1)[0].decode("utf-8", "replace").rstrip("\r")
        names = next(csv.reader([head], delimiter="\t" if fmt == "tsv" else ","), [])
    if spec.url_col not in names:
        raise ValueError(
            f"{path}: no URL column {spec.url_col!r} (columns: {names}); see --url-col"
        )


def read_unit(unit: ReadUnit, spec: InputSpec) -> Iterator[Pair]:
    """All rows of one unit as Pairs, bad rows included with an error status."""
    source = unit.path.rsplit("/", 1)[-1]
    rows = _ROW_READERS[unit.input_format](unit, spec)
    for offset, (url, caption, problem) in enumerate(rows):
        key = make_key(unit.file_index, unit.first_row + offset)
        pair = Pair(key=key, url=url or "", caption=caption or "", source=source)
        if problem is not None:
            pair = pair.with_status(*problem)
        elif not pair.url.strip():
            pair = pair.with_status(error("missing_url"), "empty URL")
        yield pair


Row = tuple[str | None, str | None, tuple[str, str] | None]


def _bad_row(message: str) -> Row:
    return None, None, (error("bad_row"), message)


def _check_text(url: str | None, caption: str | None) -> Row:
    """Rows are decoded with surrogateescape; a surrogate means bytes that are not UTF-8."""
    for name, value in (("url", url), ("caption", caption)):
        if value is not None and _has_surrogates(value):
            problem = (error("bad_encoding"), f"{name} is not valid UTF-8")
            return _replace_surrogates(url), _replace_surrogates(caption), problem
    return url, caption, None


def _replace_surrogates(text: str | None) -> str | None:
    if text is None:
        return None
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _text_stream(unit: ReadUnit) -> io.TextIOBase:
    """Stream the file as text; undecodable bytes survive as surrogates for `_check_text`."""
    raw = FileSystems.open(unit.path, compression_type=CompressionTypes.UNCOMPRESSED)
    if unit.path.endswith(".gz"):
        raw = gzip.GzipFile(fileobj=raw)
    return io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="")


def _read_delimited(unit: ReadUnit, spec: InputSpec) -> Iterator[Row]:
    reader = csv.reader(_text_stream(unit), delimiter="\t" if unit.input_format == "tsv" else ",")
    header = next(reader, None)
    if header is None:
        return
    try:
        url_at = header.index(spec.url_col)
    except ValueError:
        raise ValueError(f"{unit.path}: no URL column {spec.url_col!r}") from None
    caption_at = header.index(spec.caption_col) if spec.caption_col in header else None
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield _bad_row(f"unparsable line: {exc}")
            continue
        if not fields:
            continue
        if len(fields) != len(header):
            yield _bad_row(f"expected {len(header)} fields, got {len(fields)}")
            continue
        caption = fields[caption_at] if caption_at is not None else ""
        yield _check_text(fields[url_at], caption)


def _read_jsonl(unit: ReadUnit, spec: InputSpec) -> Iterator[Row]:
    for line in _text_stream(unit):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            yield _bad_row(f"invalid JSON: {exc}")
            continue
        if not isinstance(record, dict) or spec.url_col not in record:
            yield _bad_row(f"no {spec.url_col!r} field")
            continue
        url, caption = record.get(spec.url_col), record.get(spec.caption_col)
        yield _check_text(_as_text(url), _as_text(caption))


def _read_txt(unit: ReadUnit, spec: InputSpec) -> Iterator[Row]:
    for line in _text_stream(unit):
        url = line.strip()
        if url:
            yield _check_text(url, "")


def _read_parquet(unit: ReadUnit, spec: InputSpec) -> Iterator[Row]:
    if unit.path.endswith(".gz"):
        handle = io.BytesIO(read_bytes(unit.path))
    else:
        handle = FileSystems.open(unit.path)
    with handle as f:
        parquet = pq.ParquetFile(f)
        names = parquet.schema_arrow.names
        columns = [c for c in (spec.url_col, spec.caption_col) if c in names]
        if unit.row_group is None:
            table = parquet.read(columns=columns)
        else:
            table = parquet.read_row_group(unit.row_group, columns=columns)
    urls = table.column(spec.url_col).to_pylist()
    captions = (
        table.column(spec.caption_col).to_pylist()
        if spec.caption_col in columns
        else [""] * len(urls)
    )
    for url, caption in zip(urls, captions, strict=True):
        yield _check_text(_as_text(url), _as_text(caption))


def _as_text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


_ROW_READERS = {
    "csv": _read_delimited,
    "tsv": _read_delimited,
    "jsonl": _read_jsonl,
    "txt": _read_txt,
    "parquet": _read_parquet,
}
