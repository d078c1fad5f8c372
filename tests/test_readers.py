"""Input lists in every format become one Pair per row, bad rows included with a status."""

from __future__ import annotations

import gzip
import random

import pytest
from conftest import write_list

from manifests.io import match_files
from manifests.readers import InputSpec, check_columns, detect_format, plan_units, read_unit

ROWS = [
    {"url": f"http://example.com/{i}.jpg", "caption": f"caption {i} ünïcode"} for i in range(12)
]


DEFAULT_SPEC = InputSpec()


def read_all(path, spec=DEFAULT_SPEC, file_index=0):
    return [p for unit in plan_units(str(path), file_index, spec) for p in read_unit(unit, spec)]


@pytest.mark.parametrize("fmt", ["parquet", "csv", "tsv", "jsonl", "txt"])
@pytest.mark.parametrize("compress", [False, True])
def test_every_format_reads_every_row(tmp_path, fmt, compress):
    path = write_list(tmp_path / f"list.{fmt}", ROWS, fmt, compress)
    pairs = read_all(path, file_index=3)
    assert [p.url for p in pairs] == [r["url"] for r in ROWS]
    expected_captions = [""] * len(ROWS) if fmt == "txt" else [r["caption"] for r in ROWS]
    assert [p.caption for p in pairs] == expected_captions
    assert [p.key for p in pairs] == [f"00003{i:010d}" for i in range(len(ROWS))]
    assert all(p.is_ok for p in pairs)


def test_parquet_splits_into_row_groups_with_continuous_keys(tmp_path):
    path = write_list(tmp_path / "list.parquet", ROWS, "parquet")  # row groups of 5
    units = plan_units(str(path), 0, InputSpec())
    assert [u.first_row for u in units] == [0, 5, 10]
    keys = [p.key for u in units for p in read_unit(u, InputSpec())]
    assert keys == [f"00000{i:010d}" for i in range(12)]


def test_custom_columns(tmp_path):
    rows = [{"URL": "http://a/x.jpg", "TEXT": "hello", "other": 1}]
    path = write_list(tmp_path / "list.parquet", rows, "parquet")
    (pair,) = read_all(path, InputSpec(url_col="URL", caption_col="TEXT"))
    assert (pair.url, pair.caption) == ("http://a/x.jpg", "hello")


def test_bad_csv_rows_become_error_rows(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(
        b"url,caption\n"
        b"http://a/1.jpg,fine\n"
        b",no url\n"
        b"http://a/2.jpg,not utf8 \xff\xfe here\n"
        b"just-one-field\n"
        b'http://a/3.jpg,"a ' + b"x" * 100_000 + b'"\n'
    )
    pairs = read_all(path)
    assert [p.status for p in pairs] == [
        "ok",
        "error:missing_url",
        "error:bad_encoding",
        "error:bad_row",
        "ok",
    ]
    assert "\ufffd" in pairs[2].caption  # the bad bytes are shown, replaced, in the manifest
    assert len(pairs[4].caption) == 100_002


def test_bad_jsonl_rows_become_error_rows(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"url": "http://a/1.jpg", "caption": "ok"}\nnot json\n[1, 2]\n{"caption": "x"}\n'
    )
    assert [p.status for p in read_all(path)] == ["ok"] + ["error:bad_row"] * 3


def test_format_detection():
    assert detect_format("gs://b/x/part-1.PARQUET") == "parquet"
    assert detect_format("a/b.tsv.gz") == "tsv"
    assert detect_format("a/b.json") == "jsonl"
    with pytest.raises(ValueError, match="--input-format"):
        detect_format("a/b.xlsx")


def test_missing_url_column_fails_fast(tmp_path):
    path = write_list(tmp_path / "list.csv", [{"link": "http://a", "caption": "x"}], "csv")
    with pytest.raises(ValueError, match="no URL column 'url'"):
        check_columns(str(path), InputSpec())


def test_missing_input_fails_fast(tmp_path):
    with pytest.raises(FileNotFoundError, match="no input file matches"):
        match_files(str(tmp_path / "nothing-*.parquet"))


def test_match_files_sorts_and_deduplicates(tmp_path):
    for name in ("b.csv", "a.csv"):
        (tmp_path / name).write_text("url\n")
    pattern = f"{tmp_path}/*.csv,{tmp_path}/a.csv"
    assert [p.rsplit("/", 1)[-1] for p in match_files(pattern)] == ["a.csv", "b.csv"]


def test_gzip_of_csv_with_bad_bytes(tmp_path):
    path = tmp_path / "x.csv.gz"
    path.write_bytes(gzip.compress(b"url,caption\nhttp://a/1.jpg,\xc3\n"))
    (pair,) = read_all(path)
    assert pair.status == "error:bad_encoding"


def read_counted(path, spec=DEFAULT_SPEC):
    """(rows counted from the source, pairs read), as the read stage produces them. Imported
    here so that the defect tests below fail on their behaviour on code without a source count."""
    from manifests.readers import count_rows, read_unit_safely

    counted, pairs = 0, []
    for unit in plan_units(str(path), 0, spec):
        expected = count_rows(unit)
        counted += expected
        pairs += list(read_unit_safely(unit, spec, expected))
    return counted, pairs


def test_one_bad_jsonl_record_costs_that_record_alone(tmp_path):
    """Defect 1: a lone surrogate escape (half an emoji) or deep nesting lost the file's rest."""
    lines = [f'{{"url": "http://a/{i}.jpg", "caption": "c{i}"}}' for i in range(6)]
    lines[1] = '{"url": "http://a/1.jpg", "caption": "half an emoji \\ud83d"}'
    lines[3] = '{"url": "http://a/3.jpg", "caption": ' + "[" * 100_000 + "]" * 100_000 + "}"
    path = tmp_path / "six.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"url": "http://a/6.jpg\xff"}\n')
    pairs = read_all(path)
    assert len(pairs) == 7
    assert read_counted(path)[0] == 7
    assert [p.status for p in pairs] == [
        "ok", "error:bad_encoding", "ok", "error:bad_row", "ok", "ok", "error:bad_encoding"
    ]  # fmt: skip
    assert pairs[3].error_message.startswith("line 4: RecursionError")
    assert pairs[1].caption == "half an emoji \ufffd"
    assert pairs[6].error_message == "line 7: url is not valid UTF-8"


def test_a_quote_in_a_tsv_caption_is_text(tmp_path):
    """Defect 2: a caption opening with `"` made the csv module swallow the following rows."""
    rows = [f"http://a/{i}.jpg\tcaption {i}" for i in range(6)]
    rows[1] = 'http://a/1.jpg\t"a caption that opens with a quote'
    path = tmp_path / "six.tsv"
    path.write_text("url\tcaption\n" + "\n".join(rows) + "\n")
    pairs = read_all(path)
    assert len(pairs) == 6
    assert read_counted(path)[0] == 6
    assert all(p.is_ok for p in pairs)
    assert pairs[1].caption == '"a caption that opens with a quote'
    assert [p.url for p in pairs] == [f"http://a/{i}.jpg" for i in range(6)]


def test_an_unclosed_csv_quote_costs_its_line_alone(tmp_path):
    """Defect 2 (csv): a quoted field may span a few lines; one left open past that bound is
    flagged on its first line, and the lines it would have swallowed are read as rows."""
    rows = [f"http://a/{i}.jpg,caption {i}" for i in range(10)]
    rows[1] = 'http://a/1.jpg,"a caption left open'
    rows[7] = 'http://a/7.jpg,"two\nlines"'
    path = tmp_path / "rows.csv"
    path.write_text("url,caption\n" + "\n".join(rows) + "\n" + 'http://a/x.jpg,"open at the end\n')
    pairs = read_all(path)
    assert len(pairs) == 11
    statuses = [p.status for p in pairs]
    assert statuses == ["ok", "error:bad_row"] + ["ok"] * 8 + ["error:bad_row"]
    assert pairs[1].error_message == "line 3: a quoted field is not closed within 5 lines"
    assert pairs[7].caption == "two\nlines"
    assert [p.url for p in pairs[2:10]] == [f"http://a/{i}.jpg" for i in range(2, 10)]
    assert read_counted(path)[0] == 11


def test_a_swallowing_record_with_the_wrong_field_count_is_reread(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text(
        'url,caption\nhttp://a/0.jpg,"open\nhttp://a/1.jpg,one\nhttp://a/2.jpg,"two",x\n'
    )
    pairs = read_all(path)
    assert len(pairs) == read_counted(path)[0] == 3
    assert [p.status for p in pairs] == ["error:bad_row", "ok", "error:bad_row"]


def test_byte_order_mark_and_crlf(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfurl,caption\r\nhttp://a/1.jpg,one\r\nhttp://a/2.jpg,two\r")
    check_columns(str(path), DEFAULT_SPEC)
    pairs = read_all(path)
    assert read_counted(path)[0] == 2
    assert [(p.url, p.caption, p.status) for p in pairs] == [
        ("http://a/1.jpg", "one", "ok"),
        ("http://a/2.jpg", "two", "ok"),
    ]


def test_check_columns_reads_the_header_only(tmp_path):
    """Defect 8: check_columns read (and gunzipped) the whole first input to see its header.
    Here the gzip stream is broken past its first block: only the header may be read."""
    noise = random.Random(0)
    rows = "".join(f"http://a/{i}.jpg,{noise.getrandbits(128):x}\n" for i in range(20_000))
    good = gzip.compress(("url,caption\n" + rows).encode(), mtime=0)
    path = tmp_path / "big.csv.gz"
    path.write_bytes(good[: len(good) // 2])
    check_columns(str(path), DEFAULT_SPEC)  # no error: the broken tail is never read
    counted, pairs = read_counted(path)  # reading it all costs the tail one row
    assert 1000 < counted == len(pairs) < 20_000
    assert all(p.is_ok for p in pairs[:-1])
    assert pairs[-1].status == "error:unreadable_input"


def test_a_corrupt_parquet_costs_its_rows_not_the_run(tmp_path):
    """Defect 4: a corrupt parquet input raised in Read/PlanUnits and failed the whole run."""
    path = write_list(tmp_path / "list.parquet", ROWS, "parquet")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(path.read_bytes()[:-100])  # footer cut off
    counted, pairs = read_counted(broken)
    assert counted == len(pairs) == 1
    assert pairs[0].status == "error:unreadable_input"
    data = bytearray(path.read_bytes())
    data[4:200] = b"\x00" * 196  # the first row group's pages, footer intact
    broken.write_bytes(bytes(data))
    counted, pairs = read_counted(broken)
    assert counted == len(pairs) == len(ROWS)  # the footer's row counts, each row accounted for
    assert [p.key for p in pairs] == [f"00000{i:010d}" for i in range(len(ROWS))]
    assert "error:unreadable_input" in {p.status for p in pairs}


def test_userinfo_never_reaches_the_pair(tmp_path):
    """Defect 11: `user:password@` in a URL was published in the manifest and KEY.json."""
    rows = [{"url": "http://alice:s3cret@example.com/1.jpg?x=a@b", "caption": "one"}]
    path = write_list(tmp_path / "list.csv", rows, "csv")
    (pair,) = read_all(path)
    assert pair.url == "http://example.com/1.jpg?x=a@b"
    dropped = pair.with_status("error:redirect_loop", "loop at https://bob:pw@example.com/x")
    assert dropped.error_message == "loop at https://example.com/x"
