"""The crawl survives the web's faults: each ends as its status, with no crash and no lost row.

One pipeline run over every fault mixed with good URLs; then one test per fault kind, and the
conservation test over the whole list.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

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
}
RAW_URLS = {
    "file:///etc/passwd": "error:bad_url",
    "ftp://example.com/x.jpg": "error:bad_url",
    "data:image/png;base64,iVBORw0KGgo=": "error:bad_url",
    "javascript:alert(1)": "error:bad_url",
    "http://exa mple.com/x.jpg": "error:bad_url",
    "http://[::1/x.jpg": "error:bad_url",
}
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


def run_subprocess(input_path: Path, output: Path, *extra: str) -> tuple[int, str, int]:
    """Run beam_runner; return its exit code, its stderr and its own peak RSS in KiB."""
    command = [sys.executable, str(ROOT / "beam_runner.py"), "--input", str(input_path),
               "--output", str(output), *ARGS, *extra]  # fmt: skip
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's usage alone, not earlier ones'
        proc.returncode = os.waitstatus_to_exitcode(status)
        stderr.seek(0)
        return proc.returncode, stderr.read().decode(errors="replace"), usage.ru_maxrss


@pytest.fixture(scope="module")
def faulted(tmp_path_factory, server, corpus):
    tmp = tmp_path_factory.mktemp("faults")
    rows = faulty_list(server, corpus)
    path = tmp / "list.csv"
    path.write_bytes(b"url,caption\n" + b"".join(line for line, _ in rows))
    returncode, stderr, peak_kib = run_subprocess(path, tmp / "out")
    assert returncode == 0, stderr[-3000:]
    stats = json.loads((tmp / "out" / "stats.json").read_text())
    manifest = [
        r for f in (tmp / "out/manifest").glob("*.parquet") for r in pq.read_table(f).to_pylist()
    ]
    by_key = {r["key"]: r for r in manifest}
    statuses = [by_key[f"00000{i:010d}"]["status"] for i in range(len(rows))]
    return rows, statuses, stats, manifest, peak_kib


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


def test_conservation(faulted):
    rows, statuses, stats, manifest, _ = faulted
    assert stats["input_rows"] == len(rows) == len(manifest)
    assert sum(stats["status_counts"].values()) == stats["input_rows"]
    assert statuses == [expected for _, expected in rows]  # every good URL ok, every fault named


def test_memory_stays_flat_through_huge_and_bomb(faulted):
    *_, peak_kib = faulted
    # The endless body would take 6.5 GB if buffered; precise bounds: test_fetch, test_imaging.
    assert peak_kib < 1_500_000
