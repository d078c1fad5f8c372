"""End to end through `beam_runner.run`: a real Beam pipeline, a real server, real tar files."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from conftest import LOOPBACK, write_list
from PIL import Image

import beam_runner

COMMON = [  # dedup off: the synthetic shapes are near-duplicates of each other by design
    "--dedup",
    "none",
    "--allowed-networks",
    LOOPBACK,
    "--image-size",
    "64",
    "--samples-per-shard",
    "8",
    "--timeout",
    "1",
    "--deadline",
    "4",
    "--retries",
    "2",
    "--min-image-size",
    "40",
    "--max-bytes",
    "3000000",
    "--threads",
    "8",
]


def fault_rows(server, corpus) -> list[tuple[dict, str]]:
    """(row, expected status) for every good image and every fault the spine must survive."""
    good = [({"url": server.url(f"img/{i.name}"), "caption": i.caption}, "ok") for i in corpus]
    name = corpus[0].name
    faults = {
        "status/404": "error:http_404",
        f"flaky/pipeline/1/{name}": "ok",
        f"slow/3/{name}": "error:timeout",
        f"truncated/{name}": "error:truncated",
        "html": "error:not_image",
        "huge": "error:too_large",
        f"robots-tag/noai/{name}": "error:opted_out",
        "redirect?to=http://10.255.255.1/x.jpg": "error:private_address",
        "img/corrupt.jpg": "error:decode",
        "img/bomb.png": "error:decompression_bomb",
        "img/tiny.jpg": "filtered:image:too_small",
    }
    rows = [
        ({"url": server.url(path), "caption": f"fault {path}"}, s) for path, s in faults.items()
    ]
    rows.append(({"url": "ftp://example.com/x.jpg", "caption": "ftp"}, "error:bad_url"))
    rows.append(({"url": "", "caption": "empty url"}, "error:missing_url"))
    return good + rows


def run(input_path, output: Path, *extra: str) -> dict:
    beam_runner.run(["--input", str(input_path), "--output", str(output), *COMMON, *extra])
    return json.loads((output / "stats.json").read_text())


def manifest(output: Path) -> list[dict]:
    rows = [
        r
        for f in sorted((output / "manifest").glob("*.parquet"))
        for r in pq.read_table(f).to_pylist()
    ]
    return sorted(rows, key=lambda r: r["key"])


@pytest.fixture(scope="module")
def crawled(tmp_path_factory, server, corpus):
    tmp = tmp_path_factory.mktemp("crawl")
    expected = fault_rows(server, corpus)
    path = write_list(tmp / "list.parquet", [row for row, _ in expected], "parquet")
    return path, expected, tmp / "out", run(path, tmp / "out")


def test_every_row_is_accounted_for(crawled):
    _, expected, out, stats = crawled
    assert stats["input_rows"] == len(expected)
    assert sum(stats["status_counts"].values()) == stats["input_rows"]
    rows = manifest(out)
    assert len(rows) == len(expected) and len({r["key"] for r in rows}) == len(rows)


def test_each_fault_gets_its_status(crawled):
    _, expected, out, _ = crawled
    by_key = {r["key"]: r for r in manifest(out)}
    got = [by_key[f"00000{i:010d}"]["status"] for i in range(len(expected))]
    assert got == [status for _, status in expected]
    assert all(r["error_message"] for r in by_key.values() if r["status"] != "ok")


def test_shards_read_back_with_webdataset(crawled, corpus):
    _, expected, out, stats = crawled
    shards = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    assert [Path(s).name for s in shards] == stats["shards"]
    samples = list(wds.WebDataset(shards, shardshuffle=False).decode("pil"))
    ok_rows = {f"00000{i:010d}": row for i, (row, s) in enumerate(expected) if s == "ok"}
    assert sorted(s["__key__"] for s in samples) == sorted(ok_rows)
    for sample in samples:
        row = ok_rows[sample["__key__"]]
        assert sample["txt"] == row["caption"]
        assert sample["json"]["url"] == row["url"] and sample["json"]["status"] == "ok"
        assert isinstance(sample["jpg"], Image.Image) and sample["jpg"].size == (64, 64)
        assert sample["json"]["width"] == 64
    assert stats["samples"] == len(samples) == stats["status_counts"]["ok"]


def test_shards_hold_about_samples_per_shard(crawled):
    *_, stats = crawled
    assert len(stats["shards"]) == -(-stats["samples"] // 8)


def test_manifest_keeps_img2dataset_columns(crawled):
    out = crawled[2]
    names = pq.read_schema(next((out / "manifest").glob("*.parquet"))).names
    for column in (
        "key",
        "url",
        "caption",
        "status",
        "error_message",
        "width",
        "height",
        "original_width",
        "original_height",
        "sha256",
        "shard",
    ):
        assert column in names


def test_multi_processing_gives_the_same_shards(crawled, tmp_path):
    path, _, out, stats = crawled
    other = run(path, tmp_path, "--direct_num_workers=2", "--direct_running_mode=multi_processing")
    assert other["status_counts"] == stats["status_counts"]
    for shard in stats["shards"]:
        assert (tmp_path / "shards" / shard).read_bytes() == (out / "shards" / shard).read_bytes()
    assert manifest(tmp_path) == manifest(out)


def test_shuffles_spill_to_the_folder_named_and_leave_it_empty(crawled, tmp_path):
    path, _, out, stats = crawled
    spill = tmp_path / "spill"
    other = run(path, tmp_path / "out", f"--local_shuffle_dir={spill}")
    assert spill.is_dir() and not any(spill.iterdir())  # written, then read and deleted
    assert not (tmp_path / "out" / "_staging").exists()
    for shard in stats["shards"]:
        assert (tmp_path / "out" / "shards" / shard).read_bytes() == (
            out / "shards" / shard
        ).read_bytes()
    assert other["status_counts"] == stats["status_counts"]


def test_every_input_format_in_one_run(tmp_path, server, corpus):
    lists = tmp_path / "lists"
    lists.mkdir()
    rows = [{"url": server.url(f"img/{i.name}"), "caption": i.caption} for i in corpus[:10]]
    chunks = [rows[0:2], rows[2:4], rows[4:6], rows[6:8], rows[8:10]]
    for fmt, chunk, gz in zip(
        ["parquet", "csv", "tsv", "jsonl", "txt"], chunks, [0, 1, 0, 1, 0], strict=True
    ):
        write_list(lists / f"part.{fmt}", chunk, fmt, compress=bool(gz))
    stats = run(f"{lists}/*", tmp_path / "out")
    assert stats["input_rows"] == 10 and stats["status_counts"] == {"ok": 10}
    samples = list(
        wds.WebDataset(
            sorted(map(str, (tmp_path / "out/shards").glob("*.tar"))), shardshuffle=False
        )
    )
    captions = sorted(s["txt"].decode() for s in samples)
    assert captions == sorted([r["caption"] for r in rows[:8]] + ["", ""])  # txt has no captions


def test_missing_input_fails_fast(tmp_path):
    with pytest.raises(FileNotFoundError, match="no input file matches"):
        run(tmp_path / "missing-*.csv", tmp_path / "out")


def test_unwritable_output_fails_fast(tmp_path, server, corpus):
    path = write_list(tmp_path / "l.csv", [{"url": server.url("html"), "caption": "x"}], "csv")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="not writable"):
        run(path, blocker / "out")
