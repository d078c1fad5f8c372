"""A run killed with SIGKILL at a random point, then rerun, gives byte-identical outputs."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import LOOPBACK

import beam_runner

ROOT = Path(__file__).resolve().parent.parent
ROWS = 48


def command(input_path: Path, output: Path) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "beam_runner.py"),
        "--input",
        str(input_path),
        "--output",
        str(output),
        "--allowed-networks",
        LOOPBACK,
        "--image-size",
        "48",
        "--samples-per-shard",
        "10",
        "--batch-rows",
        "6",
        "--threads",
        "2",
    ]


def outputs(folder: Path) -> dict[str, bytes]:
    files = {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for sub in ("shards", "manifest")
        for p in sorted((folder / sub).iterdir())
    }
    stats = json.loads((folder / "stats.json").read_text())
    for varying in ("config", "fingerprint"):  # they name the output folder
        stats.pop(varying)
    files["stats"] = json.dumps(stats, sort_keys=True).encode()
    return files


def slow_requests(server) -> int:
    return sum(count for path, count in server.hits.items() if path.startswith("/slow/"))


def test_kill_and_rerun_gives_identical_outputs(tmp_path, server, corpus):
    # distinct URLs (the query differs), so URL dedup keeps all ROWS rows and batches
    urls = [server.url(f"slow/0.15/{corpus[i % len(corpus)].name}?row={i}") for i in range(ROWS)]
    lines = "".join(f"{url},caption {i}\n" for i, url in enumerate(urls))
    input_path = tmp_path / "list.csv"
    input_path.write_text("url,caption\n" + lines)

    reference = tmp_path / "reference"
    subprocess.run(
        command(input_path, reference), cwd=ROOT, check=True, capture_output=True, timeout=300
    )

    killed = tmp_path / "killed"
    batches_before_kill = random.Random(time.time_ns()).randint(1, 5)
    proc = subprocess.Popen(
        command(input_path, killed), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while len(list(killed.glob("_crawl_cache/*/*.parquet"))) < batches_before_kill:
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before the kill"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "stats.json").exists()

    fetched_before = slow_requests(server)
    subprocess.run(
        command(input_path, killed), cwd=ROOT, check=True, capture_output=True, timeout=300
    )
    refetched = slow_requests(server) - fetched_before

    assert outputs(killed) == outputs(reference)
    assert refetched <= ROWS - 6 * batches_before_kill  # finished batches were not fetched again
    assert not list(killed.glob("_crawl_cache/*/*"))  # the cache is gone once the run is complete


def test_a_complete_output_is_not_redone(tmp_path, server, corpus):
    input_path = tmp_path / "list.csv"
    input_path.write_text(f"url,caption\n{server.url('img/' + corpus[0].name)},one\n")
    argv = command(input_path, tmp_path / "out")[2:]
    assert beam_runner.run(argv) is not None
    first = (tmp_path / "out" / "stats.json").read_bytes()
    assert beam_runner.run(argv) is None  # complete: nothing runs
    assert (tmp_path / "out" / "stats.json").read_bytes() == first
    assert beam_runner.run([*argv, "--no-resume"]) is not None
