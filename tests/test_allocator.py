"""pipeline.allocator: a tuned process hands freed large buffers back to the OS.

Each case runs in a fresh interpreter: it frees one 4 MiB buffer (which makes an untuned glibc
raise its mmap threshold to 4 MiB, as a crawl's first large free does), then allocates 400
buffers of 200 kB, each followed by a small object that outlives it, and frees the buffers.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.allocator import tune

ROOT = Path(__file__).resolve().parent.parent
RETAINED = """
import sys
from pipeline.allocator import tune

if sys.argv[1] == "tuned":
    tune()


def resident() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * 4096


first = bytearray(4 << 20)
del first
before = resident()
buffers, survivors = [], []
for _ in range(400):
    buffers.append(bytearray(200_000))
    survivors.append(bytearray(600))
del buffers
print(resident() - before)
"""


def retained_bytes(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", RETAINED, mode], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return int(done.stdout)


@pytest.mark.skipif(not tune(), reason="the allocator settings apply to glibc only")
def test_tuned_process_returns_freed_buffers_and_untuned_one_keeps_them():
    untuned, tuned = retained_bytes("untuned"), retained_bytes("tuned")
    assert untuned > 40e6  # 80 MB freed, most still resident: the failure the module prevents
    assert tuned < 8e6, (tuned, untuned)
