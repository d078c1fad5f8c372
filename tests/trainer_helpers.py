"""Tiny shards of separable classes for the trainer's tests, written with webdataset."""

from __future__ import annotations

import io
import random
from pathlib import Path

import webdataset as wds

from demo.corpus import draw_shape

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
