"""Two processes under torchrun (gloo): the gathered loss and the DDP gradients equal one
process's on the same global batch, and a 2-process training run resumes exactly.

One torchrun launch runs both checks (each launch costs seconds of imports and rendezvous).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trainer_helpers import loss_and_grads, write_shards

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = f"""
import json, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import torch.distributed as dist
from trainer_helpers import MICRO, loss_and_grads
from trainer.model import CONFIGS
from trainer.__main__ import main

dist.init_process_group("gloo")
found = {{loss: loss_and_grads(loss, dist.get_rank(), dist.get_world_size())
         for loss in ("clip", "siglip")}}
if dist.get_rank() == 0:
    json.dump(found, open(sys.argv[1], "w"))
CONFIGS["micro"] = MICRO
args, out = sys.argv[3:], sys.argv[2]
main([*args, "--output", out + "/whole"])
main([*args, "--output", out + "/split", "--stop-after", "2"])
main([*args, "--output", out + "/split", "--resume", "latest"])
"""


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    """The folder of one 2-process run: two.json (losses, gradients) and the training runs."""
    folder = tmp_path_factory.mktemp("distributed")
    script = folder / "run.py"
    script.write_text(SCRIPT)
    shards = write_shards(folder / "shards", shards=3, per_shard=24)
    args = ["train", "--shards", shards, "--model", "micro", "--batch-size", "8", "--steps", "4",
            "--warmup", "1", "--vocab-size", "300", "--shuffle-buffer", "16", "--threads", "1",
            "--checkpoint-every", "2"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", str(script), str(folder / "two.json"), str(folder),
               *args]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


def test_gathered_loss_and_gradients_equal_single_process(two_processes):
    two = json.loads((two_processes / "two.json").read_text())
    torch.set_num_threads(2)
    for loss in ("clip", "siglip"):
        one = loss_and_grads(loss)
        assert two[loss]["loss"] == pytest.approx(one["loss"], abs=1e-5)
        grads = torch.tensor(two[loss]["grad"]), torch.tensor(one["grad"])
        assert grads[1].abs().max() > 1e-3 and torch.allclose(*grads, atol=1e-5)


def _losses(run: Path) -> list[float]:
    with (run / "metrics.csv").open() as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def test_two_process_training_resumes_exactly(two_processes):
    whole, split = _losses(two_processes / "whole"), _losses(two_processes / "split")
    assert len(whole) == 4 and len(set(whole)) == 4
    assert split == pytest.approx(whole, rel=1e-4, abs=1e-5)
    payload = torch.load(two_processes / "split" / "checkpoints" / "latest.pt", weights_only=True)
    assert payload["step"] == 4 and len(payload["data"]) == 2 and len(payload["rng"]) == 2
    assert all(position["served"] == 4 for position in payload["data"])
