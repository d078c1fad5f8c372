"""A run killed with SIGKILL at a random point, then rerun, gives byte-identical outputs."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import LOOPBACK, output_files

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

    assert output_files(killed) == output_files(reference)
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


def _shard_texts(folder: Path) -> list[str]:
    import tarfile

    texts = []
    for shard in sorted((folder / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            texts += [tar.extractfile(m).read().decode() for m in tar if m.name.endswith(".txt")]
    return sorted(texts)


def test_rows_appended_to_a_finished_input_make_a_new_run(tmp_path, server, corpus):
    """Defect 3: resume was keyed on paths, so appended rows were skipped as complete."""
    input_path = tmp_path / "list.csv"
    input_path.write_text(f"url,caption\n{server.url('img/' + corpus[0].name)},one\n")
    argv = command(input_path, tmp_path / "out")[2:]
    assert beam_runner.run(argv) is not None
    with input_path.open("a") as f:
        f.write(f"{server.url('img/' + corpus[1].name)},two\n")
    assert beam_runner.run(argv) is not None
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["input_rows"] == 2 and stats["status_counts"] == {"ok": 2}


def test_a_cached_batch_never_brings_back_old_captions(tmp_path, server, corpus):
    """Defect 3: after a kill, captions edited in the input came back from the crawl cache.
    The edit here even keeps the file's size and modification time, so the cache is used."""
    import os

    input_path = tmp_path / "list.csv"
    input_path.write_text(f"url,caption\n{server.url('img/' + corpus[0].name)},one\n")
    out = tmp_path / "out"
    argv = [*command(input_path, out)[2:], "--keep-crawl-cache"]
    assert beam_runner.run(argv) is not None
    (out / "stats.json").unlink()  # as if killed before the end
    stat = input_path.stat()
    input_path.write_text(input_path.read_text().replace(",one", ",uno"))
    os.utime(input_path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    fetched = server.hits.get("/img/" + corpus[0].name, 0)
    assert beam_runner.run(argv) is not None
    assert server.hits.get("/img/" + corpus[0].name, 0) == fetched  # the cache was used
    assert _shard_texts(out) == ["uno"]


def test_an_unreadable_cache_file_is_fetched_again(tmp_path, server, corpus):
    """Defect 4: a truncated crawl-cache file failed every rerun in Crawl/Download."""
    input_path = tmp_path / "list.csv"
    rows = "".join(f"{server.url('img/' + corpus[i].name)},c{i}\n" for i in range(4))
    input_path.write_text("url,caption\n" + rows)
    out = tmp_path / "out"
    argv = [*command(input_path, out)[2:], "--keep-crawl-cache", "--batch-rows", "2"]
    assert beam_runner.run(argv) is not None
    reference = output_files(out)
    (out / "stats.json").unlink()
    cached = sorted(out.glob("_crawl_cache/*/*.parquet"))
    cached[0].write_bytes(cached[0].read_bytes()[:100])  # truncated
    assert beam_runner.run(argv) is not None
    assert output_files(out) == reference


FAILING_SETUP = """
from dataclasses import dataclass
from filters.base import register

@dataclass(frozen=True)
class BoomConfig:
    pass

def _setup(config):
    raise RuntimeError("this filter cannot start")

@register("boom", "text", BoomConfig, setup=_setup)
def boom(pair, config):
    return None
"""


def test_a_failed_run_leaves_the_previous_outputs_in_place(tmp_path, server, corpus, monkeypatch):
    """Defect 4: build() deleted the previous outputs before the new run had written any."""
    import pytest

    (tmp_path / "boom_filter.py").write_text(FAILING_SETUP)
    monkeypatch.syspath_prepend(str(tmp_path))
    input_path = tmp_path / "list.csv"
    input_path.write_text(f"url,caption\n{server.url('img/' + corpus[0].name)},one\n")
    out = tmp_path / "out"
    argv = command(input_path, out)[2:]
    assert beam_runner.run(argv) is not None
    before = output_files(out)
    with pytest.raises(Exception, match="this filter cannot start"):
        beam_runner.run([*argv, "--filter-plugins", "boom_filter", "--filters", "boom"])
    assert output_files(out) == before
    assert beam_runner.run(argv) is None  # still complete
