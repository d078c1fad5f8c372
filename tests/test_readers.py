"""Input lists in every format become one Pair per row, bad rows included with a status."""

from __future__ import annotations

import gzip

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
