"""Property tests: whatever bytes a text list holds, every record the writer wrote is one row.

Random records with quotes, tabs, CR/LF, BOMs, NUL bytes, invalid UTF-8, lone surrogates and
very long fields are written in each text format (plain and gzipped); the source count equals
the records written, and the reader turns each into exactly one pair with a deterministic key.
One full run through `beam_runner.run` checks the same over every format at once, against
stats.json and the manifest.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_readers import read_counted

import beam_runner
from manifests.records import MAX_RECORD_LINES

NASTY = ['"', "'", ",", "\t", "\r", "\n", "\r\n", "\ufeff", "\x00", "\udcff", "\udc80", "\ud83d"]
NASTY += ["\udfff", "é", "字", "😀", "\u2028", "\x85", "[", "{", "\\", " ", "x"]
FIELD = st.one_of(
    st.lists(st.sampled_from(NASTY) | st.text(max_size=3), max_size=12).map("".join),
    st.integers(10_000, 60_000).map(lambda n: "x" * n),  # very long
)
RECORD = st.tuples(FIELD, FIELD)
SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _bad_bytes(exc: UnicodeEncodeError) -> tuple[bytes, int]:
    out = bytearray()
    for char in exc.object[exc.start : exc.end]:
        if "\udc80" <= char <= "\udcff":
            out.append(ord(char) - 0xDC00)
        else:
            out += char.encode("utf-8", "surrogatepass")
    return bytes(out), exc.end


codecs.register_error("test_bad_bytes", _bad_bytes)


def encode(text: str) -> bytes:
    """UTF-8, but escaped bytes (U+DC80..U+DCFF) are written raw and lone surrogates as their
    (invalid) three bytes: the file holds exactly the bad bytes the record stands for."""
    return text.encode("utf-8", "test_bad_bytes")


def line_breaks(text: str) -> int:
    return len(text.replace("\r\n", "\n").replace("\r", "\n").split("\n")) - 1


def one_line(text: str) -> str:
    """A field of a line-based format cannot hold a line break: it becomes a space."""
    return text.replace("\r", " ").replace("\n", " ")


def write_csv(records: list[tuple[str, str]]) -> tuple[str, int]:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["url", "caption"])
    # a quoted field may span MAX_RECORD_LINES lines (see manifests.records); past that the
    # record is not trusted, so the records written here stay within it
    kept = [r for r in records if line_breaks(r[0] + r[1]) < MAX_RECORD_LINES]
    writer.writerows(kept)
    return text.getvalue(), len(kept)


def write_tsv(records, terminators) -> tuple[str, int]:
    lines = [f"{one_line(u)}\t{one_line(c)}" for u, c in records]
    return "url\tcaption\n" + _join(lines, terminators), _non_blank(lines)


def write_jsonl(records, terminators, ascii_only: bool, depth: int) -> tuple[str, int]:
    lines = [json.dumps({"url": u, "caption": c}, ensure_ascii=ascii_only) for u, c in records]
    lines += ["not json {", "[" * depth + "]" * depth, one_line("".join(NASTY))]
    return _join(lines, terminators), len(lines)


def write_txt(records, terminators) -> tuple[str, int]:
    lines = [one_line(u + c) for u, c in records]
    # a byte-order mark that opens the file marks the encoding: it is not the first line's text
    counted = [lines[0].removeprefix("\ufeff"), *lines[1:]] if lines else []
    return _join(lines, terminators), _non_blank(counted)


def _join(lines: list[str], terminators: list[str]) -> str:
    return "".join(line + terminators[i % len(terminators)] for i, line in enumerate(lines))


def _non_blank(lines: list[str]) -> int:
    return sum(1 for line in lines if line.strip())


TERMINATORS = st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=1, max_size=3)


@st.composite
def list_files(draw, fmt: str):
    """(file body as bytes, records written) of a random list in `fmt`."""
    records = draw(st.lists(RECORD, max_size=12))
    if fmt == "csv":
        text, rows = write_csv(records)
    elif fmt == "tsv":
        text, rows = write_tsv(records, draw(TERMINATORS))
    elif fmt == "jsonl":
        depth = draw(st.integers(1, 200_000))
        text, rows = write_jsonl(records, draw(TERMINATORS), draw(st.booleans()), depth)
    else:
        text, rows = write_txt(records, draw(TERMINATORS))
    bom = "\ufeff" if draw(st.booleans()) else ""
    return encode(bom + text), rows


def read_file(data: bytes, fmt: str, gzipped: bool) -> tuple[int, list]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"list.{fmt}{'.gz' if gzipped else ''}"
        path.write_bytes(gzip.compress(data, mtime=0) if gzipped else data)
        return read_counted(path)


def check(fmt: str, data: bytes, rows: int, gzipped: bool) -> None:
    counted, pairs = read_file(data, fmt, gzipped)
    assert counted == rows
    assert [p.key for p in pairs] == [f"00000{i:010d}" for i in range(rows)]
    for pair in pairs:
        assert isinstance((pair.url + pair.caption).encode("utf-8"), bytes)  # valid UTF-8
        assert pair.is_ok or pair.status.startswith("error:")
        assert pair.status != "error:unreadable_input", pair.error_message


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "txt"])
@SETTINGS
@given(data=st.data(), gzipped=st.booleans())
def test_each_record_written_becomes_one_row(fmt, data, gzipped):
    check(fmt, *data.draw(list_files(fmt)), gzipped)


FIXED = [  # one record of each kind of trouble, for the full run
    ("http://127.0.0.1:9/a.jpg", 'say "cheese"'),
    ("http://127.0.0.1:9/b.jpg", 'tab\there, quote" and\r\nCRLF'),
    ("http://user:pw@127.0.0.1:9/c.jpg", "half an emoji \ud83d"),
    ("http://127.0.0.1:9/d.jpg", "bad byte \udcff NUL \x00 BOM \ufeff"),
    ("\ufeffhttp://127.0.0.1:9/e.jpg", "x" * 50_000),
    ("", "no url"),
]


def test_full_run_counts_every_record_of_every_format(tmp_path):
    written = 0
    writers = {
        "csv": lambda: write_csv(FIXED),
        "tsv": lambda: write_tsv(FIXED, ["\r\n"]),
        "jsonl": lambda: write_jsonl(FIXED, ["\n", "\r\n"], False, 100_000),
        "txt": lambda: write_txt(FIXED, ["\r"]),
    }
    for fmt, write in writers.items():
        text, rows = write()
        for gzipped in (False, True):
            data = encode("\ufeff" + text)
            path = tmp_path / "in" / f"list-{gzipped:d}.{fmt}{'.gz' if gzipped else ''}"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(gzip.compress(data, mtime=0) if gzipped else data)
            written += rows
    out = tmp_path / "out"
    assert beam_runner.run(["--input", f"{tmp_path}/in/*", "--output", str(out)]) is not None
    stats = json.loads((out / "stats.json").read_text())
    manifest = [
        r for f in (out / "manifest").glob("*.parquet") for r in pq.read_table(f).to_pylist()
    ]
    assert stats["input_rows"] == written == len(manifest) == stats["manifest_rows"]
    assert sum(stats["status_counts"].values()) == written
    assert stats["status_counts"].get("error:unreadable_input", 0) == 0
    assert not any("pw@" in (r["url"] + (r["error_message"] or "")) for r in manifest)
