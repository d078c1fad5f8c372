"""Two processes under torchrun (gloo) compute the same loss and gradients as one process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = """
import json, sys, torch, torch.distributed as dist
from trainer.loss import clip_loss
torch.manual_seed(0)
image, text = torch.randn(8, 16), torch.randn(8, 16)
weight = torch.nn.Parameter(torch.eye(16))
scale = torch.tensor(10.0)
distributed = len(sys.argv) > 2
if distributed:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = slice(rank * 4, rank * 4 + 4)
    image, text = image[rows], text[rows]
img = torch.nn.functional.normalize(image @ weight, dim=-1)
txt = torch.nn.functional.normalize(text @ weight, dim=-1)
loss = clip_loss(img, txt, scale)
loss.backward()
grad = weight.grad
if distributed:
    dist.all_reduce(grad)
    grad /= world
    total = loss.detach().clone()
    dist.all_reduce(total)
    loss = total / world
    if rank != 0:
        sys.exit(0)
json.dump({"loss": loss.item(), "grad": grad.flatten().tolist()}, open(sys.argv[1], "w"))
"""


def test_gathered_loss_and_gradients_equal_single_process(tmp_path):
    script = tmp_path / "loss.py"
    script.write_text(SCRIPT)
    single, double = tmp_path / "single.json", tmp_path / "double.json"
    subprocess.run([sys.executable, str(script), str(single)], cwd=ROOT, check=True, timeout=120)
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--standalone", str(script), str(double), "distributed"],
        cwd=ROOT, check=True, timeout=120, capture_output=True,
    )  # fmt: skip
    one, two = json.loads(single.read_text()), json.loads(double.read_text())
    assert abs(one["loss"] - two["loss"]) < 1e-5
    assert torch.allclose(torch.tensor(one["grad"]), torch.tensor(two["grad"]), atol=1e-5)
