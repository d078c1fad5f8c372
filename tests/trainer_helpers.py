"""For the trainer's tests: tiny shards (webdataset) of separable classes, and a micro CLIP."""

from __future__ import annotations

import dataclasses
import io
import random
from pathlib import Path

import torch
import torch.distributed as dist
import webdataset as wds
from PIL import Image
from torch.nn.parallel import DistributedDataParallel

from demo.corpus import draw_shape
from trainer.loss import clip_loss, siglip_loss
from trainer.model import CLIP, CONFIGS

CLASSES = [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("yellow", "cross")]


def jpeg(color: str, shape: str, rng: random.Random, size: int = 40) -> bytes:
    out = io.BytesIO()
    draw_shape(shape, color, rng.choice(["grey", "sand", "sky"]), (size, size)).save(
        out, format="JPEG"
    )
    return out.getvalue()


def write_shards(folder: Path, shards: int = 2, per_shard: int = 64, seed: int = 0,
                 corrupt: int = 0) -> str:  # fmt: skip
    """`shards` tars of samples of CLASSES; the first `corrupt` samples have broken JPEGs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng, index = random.Random(seed), 0
    for shard in range(shards):
        with wds.TarWriter(str(folder / f"{shard:05d}.tar")) as tar:
            for _ in range(per_shard):
                color, shape = CLASSES[index % len(CLASSES)]
                data = jpeg(color, shape, rng)
                if index < corrupt:
                    data = data[:100]
                tar.write({"__key__": f"{index:015d}", "jpg": data, "txt": f"a {color} {shape}"})
                index += 1
    return str(folder / f"{{00000..{shards - 1:05d}}}.tar")


def write_class_folder(folder: Path, per_class: int = 8, seed: int = 99) -> Path:
    rng = random.Random(seed)
    for color, shape in CLASSES:
        target = folder / f"{color} {shape}"
        target.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (target / f"{i}.jpg").write_bytes(jpeg(color, shape, rng))
    return folder


def write_numbered_shards(folder: Path, shards: int, per_shard: int) -> str:
    """Small grey JPEGs whose caption names the sample ("sample 7"), to follow each one."""
    folder.mkdir(parents=True, exist_ok=True)
    index = 0
    for shard in range(shards):
        with wds.TarWriter(str(folder / f"{shard:05d}.tar")) as tar:
            for _ in range(per_shard):
                out = io.BytesIO()
                Image.new("L", (12, 10), index % 256).save(out, format="JPEG")
                tar.write({"__key__": f"{index:015d}", "jpg": out.getvalue(),
                           "txt": f"sample {index}"})  # fmt: skip
                index += 1
    return str(folder / f"{{00000..{shards - 1:05d}}}.tar")


# A CLIP small enough for a CPU test (the `tiny` tower shapes, narrower and shallower).
MICRO = dataclasses.replace(
    CONFIGS["tiny"], embed_dim=32, image_size=32, vision_width=64, vision_layers=2,
    text_width=64, text_layers=2, context_length=12, vocab_size=50,
)  # fmt: skip


def loss_and_grads(loss: str, rank: int = 0, world: int = 1) -> dict:
    """The MICRO CLIP's loss and gradients on one fixed global batch of 8, this rank's rows
    under DistributedDataParallel when world > 1 (the loss averaged over ranks, as logged)."""
    torch.manual_seed(0)
    model = CLIP(dataclasses.replace(MICRO, siglip=loss == "siglip"), eot_id=2)
    images = torch.randn(8, 3, 32, 32)  # (B, 3, H, W)
    tokens = torch.randint(3, 50, (8, 12))  # (B, T)
    tokens[:, 5], tokens[:, 6:] = 2, 0
    rows = slice(rank * 8 // world, (rank + 1) * 8 // world)
    net = DistributedDataParallel(model) if world > 1 else model
    image, text, scale, bias = net(images[rows], tokens[rows])
    value = (
        siglip_loss(image, text, scale, bias) if bias is not None else clip_loss(image, text, scale)
    )
    value.backward()  # DDP averages the gradients over the ranks
    total = value.detach().clone()
    if world > 1:
        dist.all_reduce(total)
        total /= world
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    return {"loss": total.item(), "grad": grads.tolist()}
