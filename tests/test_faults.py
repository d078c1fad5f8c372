"""The crawl survives the web's faults: each ends as its status, with no crash and no lost row.

One pipeline run over every fault mixed with good URLs; then one test per fault kind, and the
conservation test over the whole list.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import LOOPBACK

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "photo.jpg"

# route on the test server -> the status its row must end with
FAULTS = {
    "status/404": "error:http_404",
    "status/410": "error:http_410",
    f"flaky/f500/2/{IMAGE}": "ok",  # 503 twice, then the image: retried
    f"retry-after/f429/1/{IMAGE}": "ok",  # 429 with Retry-After: 1, then the image
    f"reset/{IMAGE}": "error:connection",
    f"slow/30/{IMAGE}": "error:timeout",  # accepts, never answers within the timeout
    f"drip/0.4/{IMAGE}": "error:timeout",  # each read is quick, the whole passes the deadline
    f"truncated/{IMAGE}": "error:truncated",
    "html": "error:not_image",
    "huge": "error:too_large",
    "img/bomb.png": "error:decompression_bomb",
    "img/corrupt.jpg": "error:decode",
    "redirect-loop": "error:redirect_loop",
    f"redirect-chain/9/{IMAGE}": "error:too_many_redirects",
    "redirect?to=http://10.255.255.1/x.jpg": "error:private_address",
    "redirect?to=http://169.254.169.254/latest/": "error:private_address",
    f"robots-tag/noai/{IMAGE}": "error:opted_out",
    f"private/{IMAGE}": "error:robots",
    "img/tiny.jpg": "filtered:image:too_small",
    "img/vector.jpg": "error:not_image",  # EPS: never opened
    "img/lying.jpg": "error:not_image",  # ICO: not an allowed format
}
RAW_URLS = {
    "file:///etc/passwd": "error:bad_url",
    "ftp://example.com/x.jpg": "error:bad_url",
    "data:image/png;base64,iVBORw0KGgo=": "error:bad_url",
    "javascript:alert(1)": "error:bad_url",
    "http://exa mple.com/x.jpg": "error:bad_url",
    "http://[::1/x.jpg": "error:bad_url",
    # IPv6 forms of private IPv4 addresses, and special ranges (loopback is allowed here)
    "http://[64:ff9b::a9fe:a9fe]/latest/": "error:private_address",  # NAT64 metadata service
    "http://[::ffff:0:a00:1]/x.jpg": "error:private_address",  # IPv4-translated 10.0.0.1
    "http://[::10.0.0.1]/x.jpg": "error:private_address",  # IPv4-compatible
    "http://[2002:a00:1::1]/x.jpg": "error:private_address",  # 6to4 of 10.0.0.1
    "http://[fec0::1]/x.jpg": "error:private_address",  # site-local
    "http://192.0.0.8/x.jpg": "error:private_address",
}
CREDENTIALS = "alice:s3cret@"
ARGS = [  # dedup off: many routes serve the same picture, and each route's own status is tested
    "--dedup",
    "none",
    "--allowed-networks",
    LOOPBACK,
    "--image-size",
    "64",
    "--samples-per-shard",
    "16",
    "--timeout",
    "1",
    "--deadline",
    "6",
    "--retries",
    "2",
    "--min-image-size",
    "40",
    "--max-bytes",
    "2000000",
    "--threads",
    "8",
    "--batch-rows",
    "8",
]


def faulty_list(server, corpus) -> list[tuple[bytes, str]]:
    """CSV lines (raw bytes, so malformed rows stay malformed) and the status each must get."""

    def line(url: str, caption: str) -> bytes:
        return f'"{url}","{caption}"\n'.encode()

    rows = [(line(server.url(f"img/{i.name}"), i.caption), "ok") for i in corpus]
    secret = server.url(f"img/{corpus[4].name}").replace("://", f"://{CREDENTIALS}")
    rows += [
        (line(secret, "credentials in the URL"), "ok"),  # fetched without, stored without
        (f'{server.url("img/" + corpus[5].name)},"opens a quote, never closes\n'.encode(),
         "error:bad_row"),  # costs its own line, not the rows after it
    ]  # fmt: skip
    rows += [(line(server.url(route), f"fault {route}"), s) for route, s in FAULTS.items()]
    rows += [(line(url, "raw"), s) for url, s in RAW_URLS.items()]
    rows += [
        (b"only-one-field\n", "error:bad_row"),
        (b',"an empty url"\n', "error:missing_url"),
        (
            server.url(f"img/{corpus[2].name}").encode() + b',"caf\xe9 latin-1"\n',
            "error:bad_encoding",
        ),
        (line(server.url(f"img/{corpus[3].name}"), "x" * 100_000), "ok"),
    ]
    return rows


def run_subprocess(input_path: Path | str, output: Path, *extra: str) -> tuple[int, str, int]:
    """Run beam_runner; return its exit code, its stderr and its own peak RSS in KiB."""
    command = [sys.executable, str(ROOT / "beam_runner.py"), "--input", str(input_path),
               "--output", str(output), *ARGS, *extra]  # fmt: skip
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's usage alone, not earlier ones'
        proc.returncode = os.waitstatus_to_exitcode(status)
        stderr.seek(0)
        return proc.returncode, stderr.read().decode(errors="replace"), usage.ru_maxrss


def other_inputs(folder: Path, server, corpus) -> dict[str, tuple[bytes, list[str]]]:
    """Inputs 1.. of the run: file name -> (bytes, the status of each of its rows)."""
    urls = [server.url(f"img/{corpus[i].name}") for i in range(6)]
    jsonl = [json.dumps({"url": url, "caption": f"c{i}"}) for i, url in enumerate(urls)]
    jsonl[1] = json.dumps({"url": urls[1]})[:-1] + ', "caption": "half an emoji \\ud83d"}'
    jsonl[3] = f'{{"url": "{urls[3]}", "caption": {"[" * 100_000 + "]" * 100_000}}}'
    tsv = [f"{url}\tcaption {i}" for i, url in enumerate(urls)]
    tsv[1] = f'{urls[1]}\t"a caption that opens with a quote'
    parquet = io.BytesIO()
    pq.write_table(pa.table({"url": urls, "caption": ["x"] * 6}), parquet)
    jsonl_statuses = ["ok", "error:bad_encoding", "ok", "error:bad_row", "ok", "ok"]
    return {
        "b_six.jsonl": ("\n".join(jsonl).encode() + b"\n", jsonl_statuses),
        "c_six.tsv": (("url\tcaption\n" + "\n".join(tsv) + "\n").encode(), ["ok"] * 6),
        "d_broken.parquet": (parquet.getvalue()[:-50], ["error:unreadable_input"]),
    }


@pytest.fixture(scope="module")
def faulted(tmp_path_factory, server, corpus):
    tmp = tmp_path_factory.mktemp("faults")
    rows = faulty_list(server, corpus)
    path = tmp / "a_list.csv"
    path.write_bytes(b"url,caption\n" + b"".join(line for line, _ in rows))
    for name, (data, _) in other_inputs(tmp, server, corpus).items():
        (tmp / name).write_bytes(data)
    inputs = ",".join(
        str(tmp / name) for name in ["a_list.csv", *other_inputs(tmp, server, corpus)]
    )
    returncode, stderr, peak_kib = run_subprocess(inputs, tmp / "out")
    assert returncode == 0, stderr[-3000:]
    stats = json.loads((tmp / "out" / "stats.json").read_text())
    manifest = [
        r for f in (tmp / "out/manifest").glob("*.parquet") for r in pq.read_table(f).to_pylist()
    ]
    by_key = {r["key"]: r for r in manifest}
    statuses = [by_key[f"00000{i:010d}"]["status"] for i in range(len(rows))]
    return rows, statuses, stats, manifest, peak_kib, tmp / "out"


def _status_of(faulted, marker: str) -> str:
    rows, statuses, *_ = faulted
    (index,) = [i for i, (line, _) in enumerate(rows) if marker.encode() in line]
    return statuses[index]


@pytest.mark.parametrize(("route", "expected"), list(FAULTS.items()))
def test_fault_route(faulted, route, expected):
    assert _status_of(faulted, f'/{route}",') == expected


@pytest.mark.parametrize(("url", "expected"), list(RAW_URLS.items()))
def test_bad_scheme_or_host(faulted, url, expected):
    assert _status_of(faulted, f'"{url}",') == expected


def test_malformed_rows(faulted):
    rows, statuses, *_ = faulted
    tail = statuses[-4:]
    assert tail == [expected for _, expected in rows[-4:]]


def test_conservation(faulted, server, corpus):
    rows, statuses, stats, manifest, *_ = faulted
    others = other_inputs(Path("."), server, corpus)
    written = len(rows) + sum(len(expected) for _, expected in others.values())
    assert stats["input_rows"] == written == len(manifest) == stats["manifest_rows"]
    assert sum(stats["status_counts"].values()) == stats["input_rows"]
    assert statuses == [expected for _, expected in rows]  # every good URL ok, every fault named


def test_hostile_lists_cost_their_bad_rows_alone(faulted, server, corpus):
    """The JSONL (lone surrogate, deep nesting) and TSV (a stray quote) of issue 16 keep every
    row; a corrupt parquet input costs its rows, not the run."""
    manifest = faulted[3]
    by_key = {r["key"]: r for r in manifest}
    for index, (name, (_, expected)) in enumerate(other_inputs(Path("."), server, corpus).items()):
        keys = [f"{index + 1:05d}{row:010d}" for row in range(len(expected))]
        assert [by_key[key]["status"] for key in keys] == expected, name
        assert all(by_key[key]["source"] == name for key in keys)


def test_no_credentials_are_stored(faulted):
    """Defect 11: `user:password@` reached the manifest and every KEY.json."""
    *_, out = faulted
    for path in [*(out / "manifest").glob("*.parquet"), *(out / "shards").glob("*.tar")]:
        data = path.read_bytes()
        if path.suffix == ".parquet":
            data = json.dumps(pq.read_table(path).to_pylist()).encode()
        assert b"s3cret" not in data and b"alice" not in data, path


def test_memory_stays_flat_through_huge_and_bomb(faulted):
    *_, peak_kib, _ = faulted
    # The endless body would take 6.5 GB if buffered; precise bounds: test_fetch, test_imaging.
    assert peak_kib < 1_500_000


def test_a_count_mismatch_fails_the_run_loudly(tmp_path):
    """input_rows is counted from the inputs; a manifest that disagrees must not pass."""
    from pipeline.shard import merge_summaries, write_stats

    summary = {"shard": None, "samples": 0, "rows": 5, "status_counts": {"error:bad_row": 5}}
    with pytest.raises(RuntimeError, match="the inputs hold 6 rows but the manifest has 5"):
        write_stats(merge_summaries([summary]), 6, str(tmp_path), {})
    assert not (tmp_path / "stats.json").exists()
    write_stats(merge_summaries([summary]), 5, str(tmp_path), {})
    assert json.loads((tmp_path / "stats.json").read_text())["input_rows"] == 5
