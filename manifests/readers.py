"""Read URL-caption lists (parquet, csv, tsv, jsonl, txt; each optionally gzipped) into Pairs.

One Pair per input row, keyed `FFFFFRRRRRRRRRR` (file index, row index): deterministic from the
input and never taken from it. A record that cannot be parsed, whatever the exception, still
becomes a Pair, with status `error:bad_row` (its line number in the message) or
`error:bad_encoding`, so the manifest accounts for every input row. `count_rows` counts a unit's
rows from the input itself (parquet metadata, text records as `manifests.records` defines
them), apart from the conversion to Pairs, for the run's conservation check. URLs lose their
`user:password@` here, before anything stores or logs them.
Large parquet files are split into row groups (`ReadUnit`s) so one file can spread over workers.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import BinaryIO

import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from manifests.records import count_records, delimited_records, line_records, open_text, read_header
from manifests.schema import Pair, error, strip_userinfo

log = logging.getLogger(__name__)

FORMATS = ("parquet", "csv", "tsv", "jsonl", "txt")
_EXTENSION_ALIASES = {"json": "jsonl", "ndjson": "jsonl"}


@dataclass(frozen=True)
class InputSpec:
    """How to read the input lists: format (None: from each file's extension) and columns."""

    input_format: str | None = field(
        default=None, metadata={"choices": FORMATS, "help": "none: from each file's extension"}
    )
    url_col: str = field(default="url", metadata={"help": "column holding the URL"})
    caption_col: str = field(default="caption", metadata={"help": "column holding the caption"})


@dataclass(frozen=True)
class ReadUnit:
    """A piece of one input file that one worker reads: a whole file, or one parquet row group."""

    path: str
    file_index: int
    input_format: str
    row_group: int | None = None
    first_row: int = 0
    rows: int | None = None  # from the parquet metadata; None: counted from the file


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
    """Split one input file into the units workers read; parquet splits by row group.

    A parquet file whose footer cannot be read stays one unit: reading it then costs its rows
    an `error:unreadable_input` each, not the run."""
    fmt = detect_format(path, spec.input_format)
    if fmt != "parquet" or path.endswith(".gz"):
        return [ReadUnit(path, file_index, fmt)]
    try:
        with FileSystems.open(path) as f:
            meta = pq.ParquetFile(f).metadata
    except Exception as exc:  # a corrupt file is one bad input, not a failed run
        log.warning("cannot read the parquet footer of %s: %s", path, exc)
        return [ReadUnit(path, file_index, fmt)]
    units, first = [], 0
    for group in range(meta.num_row_groups):
        rows = meta.row_group(group).num_rows
        units.append(ReadUnit(path, file_index, fmt, group, first, rows))
        first += rows
    return units or [ReadUnit(path, file_index, fmt, None, 0, 0)]


def check_columns(path: str, spec: InputSpec) -> None:
    """Fail fast when a file lacks the URL column: a wrong `--url-col` is a user error, not bad
    rows. Reads the header only (the parquet footer, the first line of a csv/tsv)."""
    fmt = detect_format(path, spec.input_format)
    if fmt in ("txt", "jsonl"):
        return  # column presence is per row in jsonl; rows without it become error:bad_row
    if fmt == "parquet":
        with _parquet_file(path) as f:
            names = pq.ParquetFile(f).schema_arrow.names
    else:
        names = read_header(path, fmt)
    if spec.url_col not in names:
        raise ValueError(
            f"{path}: no URL column {spec.url_col!r} (columns: {names}); see --url-col"
        )


def count_rows(unit: ReadUnit) -> int:
    """The rows of `unit`, counted from the input itself: parquet's metadata, the records of a
    text format (see `manifests.records`); an unreadable file counts as one row."""
    if unit.rows is not None:
        return unit.rows
    if unit.input_format != "parquet":
        return count_records(unit.path, unit.input_format)
    try:
        with _parquet_file(unit.path) as f:
            return pq.ParquetFile(f).metadata.num_rows
    except Exception:  # the reader reports the same failure as one row
        return 1


def read_unit(unit: ReadUnit, spec: InputSpec) -> Iterator[Pair]:
    """All rows of one unit as Pairs, bad rows included with an error status."""
    source = unit.path.rsplit("/", 1)[-1]
    rows = _ROW_READERS[unit.input_format](unit, spec)
    for offset, (url, caption, problem) in enumerate(rows):
        key = make_key(unit.file_index, unit.first_row + offset)
        url = strip_userinfo(url or "")
        pair = Pair(key=key, url=url, caption=caption or "", source=source)
        if problem is not None:
            pair = pair.with_status(*problem)
        elif not pair.url.strip():
            pair = pair.with_status(error("missing_url"), "empty URL")
        yield pair


def read_unit_safely(unit: ReadUnit, spec: InputSpec, expected: int) -> Iterator[Pair]:
    """`read_unit`, but a file that breaks mid-way (corrupt gzip or parquet, a missing column)
    keeps the rows read so far, and its remaining rows of the `expected` (at least one) become
    `error:unreadable_input` rows naming the failure, never a crash."""
    rows = 0
    try:
        for pair in read_unit(unit, spec):
            rows += 1
            yield pair
    except Exception as exc:  # any reader failure is the input's fault, not the run's
        log.warning("cannot read %s after %d rows: %s", unit.path, rows, exc)
        source = unit.path.rsplit("/", 1)[-1]
        message = f"unreadable after row {rows}: {type(exc).__name__}: {exc}"
        for offset in range(rows, max(expected, rows + 1)):
            key = make_key(unit.file_index, unit.first_row + offset)
            yield Pair(key=key, url="", caption="", source=source).with_status(
                error("unreadable_input"), message
            )


Row = tuple[str | None, str | None, tuple[str, str] | None]


def _bad_row(line: int, message: str) -> Row:
    return None, None, (error("bad_row"), f"line {line}: {message}")


def _check_text(url: str | None, caption: str | None, line: int | None = None) -> Row:
    """Rows are decoded with surrogateescape; a surrogate means bytes that are not UTF-8 (or,
    in JSON, an escaped lone surrogate such as half an emoji)."""
    for name, value in (("url", url), ("caption", caption)):
        if value is not None and _has_surrogates(value):
            where = f"line {line}: " if line is not None else ""
            problem = (error("bad_encoding"), f"{where}{name} is not valid UTF-8")
            return _replace_surrogates(url), _replace_surrogates(caption), problem
    return url, caption, None


_LONE_SURROGATE = re.compile("[\ud800-\udc7f]")  # U+DC80..U+DCFF are escaped bytes


def _replace_surrogates(text: str | None) -> str | None:
    if text is None:
        return None
    text = _LONE_SURROGATE.sub("\ufffd", text)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _guarded(records: Iterator, convert) -> Iterator[Row]:
    """`convert(line, record)` for each (line, record); any exception costs that record alone."""
    for line, record in records:
        try:
            yield convert(line, record)
        except Exception as exc:  # deep nesting, odd types...: one bad row, never the file
            yield _bad_row(line, f"{type(exc).__name__}: {exc}")


def _read_delimited(unit: ReadUnit, spec: InputSpec) -> Iterator[Row]:
    with open_text(unit.path) as stream:
        records = delimited_records(stream, unit.input_format)
        header = next(records, None)
        if header is None:
            return
        names = header[1] or []
        if spec.url_col not in names:
            raise ValueError(f"{unit.path}: no URL column {spec.url_col!r}")
        url_at = names.index(spec.url_col)
        caption_at = names.index(spec.caption_col) if spec.caption_col in names else None

        def convert(line: int, record: tuple) -> Row:
            fields, problem = record
            if problem is not None:
                return _bad_row(line, problem)
            caption = fields[caption_at] if caption_at is not None else ""
            return _check_text(fields[url_at], caption, line)

        yield from _guarded(((n, (f, p)) for n, f, p in records), convert)


def _read_jsonl(unit: ReadUnit, spec: InputSpec) -> Iterator[Row]:
    def convert(line: int, text: str) -> Row:
        try:
            record = json.loads(text)
        except ValueError as exc:
            return _bad_row(line, f"invalid JSON: {exc}")
        if not isinstance(record, dict) or spec.url_col not in record:
            return _bad_row(line, f"no {spec.url_col!r} field")
        url, caption = record.get(spec.url_col), record.get(spec.caption_col)
        return _check_text(_as_text(url), _as_text(caption), line)

    with open_text(unit.path) as stream:
        yield from _guarded(line_records(stream), convert)


def _read_txt(unit: ReadUnit, spec: InputSpec) -> Iterator[Row]:
    with open_text(unit.path) as stream:
        yield from _guarded(line_records(stream), lambda n, text: _check_text(text.strip(), "", n))


@contextmanager
def _parquet_file(path: str) -> Iterator[BinaryIO]:
    """A seekable handle on a parquet file; a gzipped one is unpacked to a temporary file
    chunk by chunk, so memory stays flat whatever it expands to."""
    if not path.endswith(".gz"):
        with FileSystems.open(path) as f:
            yield f
        return
    with tempfile.TemporaryFile() as spool:
        with FileSystems.open(path, compression_type=CompressionTypes.GZIP) as f:
            shutil.copyfileobj(f, spool, 1 << 20)
        spool.seek(0)
        yield spool


def _read_parquet(unit: ReadUnit, spec: InputSpec) -> Iterator[Row]:
    with _parquet_file(unit.path) as f:
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
