"""A disk that fills up mid-run, on a real (tmpfs) filesystem: the run stops with one clear line,
nothing is left half-written, and the same command on a larger disk resumes from the finished
crawl batches and gives the outputs of a run that never ran out of space."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import LOOPBACK, output_files

ROOT = Path(__file__).resolve().parent.parent
ROWS = 60


def command(input_path: Path, output: Path) -> list[str]:
    return [sys.executable, str(ROOT / "beam_runner.py"), "--input", str(input_path),
            "--output", str(output), "--allowed-networks", LOOPBACK, "--image-size", "48",
            "--samples-per-shard", "10", "--batch-rows", "6", "--dedup", "none"]  # fmt: skip


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs mounted at tmp_path/disk; skipped where this process may not mount one."""
    disk = tmp_path / "disk"
    disk.mkdir()

    def mount(size: int, *options: str) -> None:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([*options, f"size={size}"]),
                               "tmpfs", str(disk)], capture_output=True, text=True)  # fmt: skip
        if done.returncode:
            pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")

    yield disk, mount
    subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_full_disk_stops_the_run_clearly_and_the_rerun_resumes(
    tmp_path, server, corpus, small_disk
):
    names = [corpus[i % len(corpus)].name for i in range(ROWS)]
    lines = "".join(f"{server.url(f'img/{n}')}?row={i},caption {i}\n" for i, n in enumerate(names))
    input_path = tmp_path / "list.csv"
    input_path.write_text("url,caption\n" + lines)
    reference = tmp_path / "reference"
    subprocess.run(command(input_path, reference), cwd=ROOT, check=True, capture_output=True)
    written = sum(p.stat().st_size for p in reference.rglob("*") if p.is_file())

    disk, mount = small_disk
    mount(written // 3)  # room for the first batches, not for the run
    out = disk / "out"
    full = subprocess.run(command(input_path, out), cwd=ROOT, capture_output=True, text=True)
    assert full.returncode == 1
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith("beam_runner.py: error: no space left on the device (writing "), last
    assert str(disk) in last and "MiB free there" in last and "run the same command again" in last
    assert not (out / "stats.json").exists()
    assert not [p for p in out.rglob("*.tmp-*")]  # no half-written file under its temporary name
    cached = sum(pq.read_metadata(p).num_rows for p in out.glob("_crawl_cache/*/*.parquet"))

    mount(64 * 2**20, "remount")
    paths = {f"/img/{n}" for n in names}
    before = sum(server.hits[p] for p in paths)
    subprocess.run(command(input_path, out), cwd=ROOT, check=True, capture_output=True)
    assert output_files(out) == output_files(reference)
    assert sum(server.hits[p] for p in paths) - before == ROWS - cached  # batches reused
