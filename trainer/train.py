"""The training loop: flat and readable, one process or many (torchrun), CPU or GPU.

A run is defined in steps; every rank runs the same number. Checkpoints carry the model,
optimizer, step, RNG states and data position, so `--resume latest` continues exactly where a
run stopped: the same losses as an uninterrupted run (the schedule is a function of the step).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from trainer import checkpoint
from trainer.data import DataState, ShardStream, prefetch
from trainer.evaluate import load_folder, load_shards, retrieval, zero_shot
from trainer.loss import clip_loss, siglip_loss
from trainer.model import CLIP, CONFIGS
from trainer.tokenizer import CaptionTokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    shards: str
    output: str
    model: str = "tiny"
    batch_size: int = 64  # per rank, per micro-step
    accumulate: int = 1
    steps: int = 500
    stop_after: int | None = None  # end this invocation early (the schedule still spans `steps`)
    lr: float = 5e-4
    weight_decay: float = 0.2
    warmup: int = 50
    grad_clip: float = 1.0
    loss: str = "clip"  # or "siglip"
    seed: int = 0
    vocab_size: int = 4096
    context_length: int | None = None  # default: the model config's
    shuffle_buffer: int = 1000
    checkpoint_every: int = 100
    eval_every: int = 0
    eval_folder: str | None = None  # zero-shot: a folder per class
    eval_shards: str | None = None  # retrieval: held-out shards
    resume: str | None = None  # a checkpoint path, or "latest"
    grad_checkpointing: bool = False
    compile: bool = False
    threads: int | None = None


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to zero over the run."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on norms, biases, embeddings' positions and the temperature."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.ndim < 2 or "logit_" in name or name.endswith(("pos", "cls")):
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _distributed() -> tuple[int, int, torch.device]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def _tokenizer(cfg: TrainConfig, context_length: int) -> CaptionTokenizer:
    """Trained on the first captions of the shards: every rank gets the same one."""
    captions = ShardStream(cfg.shards, 1, 8, seed=cfg.seed, shuffle_buffer=1).captions(20000)
    return CaptionTokenizer.train(captions, cfg.vocab_size, context_length)


def _evaluate(model: CLIP, tokenizer: CaptionTokenizer, cfg: TrainConfig) -> dict:
    metrics = {}
    if cfg.eval_folder:
        images, labels, classes = load_folder(cfg.eval_folder)
        metrics.update(
            {
                f"zeroshot_{k}": v
                for k, v in zero_shot(model, tokenizer, images, labels, classes).items()
            }
        )
    if cfg.eval_shards:
        metrics.update(retrieval(model, tokenizer, *load_shards(cfg.eval_shards, 1000)))
    model.train()
    return metrics


def train(cfg: TrainConfig) -> dict:
    """Train per `cfg`; returns the losses of the steps this invocation ran and the metrics."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rank, world, device = _distributed()
    out = Path(cfg.output)
    resume_path = checkpoint.latest(out) if cfg.resume == "latest" else cfg.resume
    payload = (
        torch.load(resume_path, map_location="cpu", weights_only=False) if resume_path else None
    )
    model_cfg = replace(CONFIGS[cfg.model], grad_checkpointing=cfg.grad_checkpointing,
                        siglip=cfg.loss == "siglip")  # fmt: skip
    if cfg.context_length:
        model_cfg = replace(model_cfg, context_length=cfg.context_length)
    if payload:
        tokenizer = CaptionTokenizer.from_json(payload["tokenizer"], model_cfg.context_length)
    else:
        tokenizer = _tokenizer(cfg, model_cfg.context_length)
    model_cfg = replace(model_cfg, vocab_size=tokenizer.vocab_size)
    torch.manual_seed(cfg.seed)
    model = CLIP(model_cfg, tokenizer.eot_id).to(device)
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6
    )
    stream = ShardStream(
        cfg.shards, cfg.batch_size, model_cfg.image_size, cfg.seed, rank, world, cfg.shuffle_buffer
    )
    start = 0
    if payload:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        stream.state = DataState(**payload["data"][rank])
        checkpoint.restore_rng(payload["rng"])
        start = payload["step"]
    ddp = DistributedDataParallel(model) if world > 1 else model
    step_fn = torch.compile(ddp) if cfg.compile else ddp
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    batches = prefetch(iter(stream))
    position = stream.state
    losses, log_rows, end = [], [], min(cfg.steps, cfg.stop_after or cfg.steps)
    model.train()
    for step in tqdm(
        range(start, end), disable=rank != 0, desc="train", initial=start, total=cfg.steps
    ):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        started, waited, total = time.perf_counter(), 0.0, 0.0
        for _ in range(cfg.accumulate):
            t0 = time.perf_counter()
            images, captions, position = next(batches)
            waited += time.perf_counter() - t0
            tokens = tokenizer(captions).to(device)
            with autocast:
                image_f, text_f, scale = step_fn(images.to(device), tokens)
                if cfg.loss == "siglip":
                    loss = siglip_loss(image_f.float(), text_f.float(), scale, model.logit_bias)
                else:
                    loss = clip_loss(image_f.float(), text_f.float(), scale)
            (loss / cfg.accumulate).backward()
            total += loss.item() / cfg.accumulate
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(total)
        row = {"step": step + 1, "loss": total, "lr": lr_at(step, cfg),
               "step_s": time.perf_counter() - started, "data_wait_s": waited}  # fmt: skip
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and rank == 0:
            row.update(_evaluate(model, tokenizer, cfg))
        log_rows.append(row)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == end:
            _save(model, optimizer, tokenizer, position, step + 1, cfg, rank, world)
    metrics = _evaluate(model, tokenizer, cfg) if rank == 0 and end == cfg.steps else {}
    if rank == 0:
        _write_log(out, log_rows, metrics)
    return {"losses": losses, "metrics": metrics, "skipped_samples": stream.skipped}


def _save(model, optimizer, tokenizer, position: DataState, step, cfg, rank, world) -> None:
    positions = [None] * world
    state = asdict(position)
    if world > 1:
        dist.all_gather_object(positions, state)
    else:
        positions = [state]
    if rank == 0:
        payload = {**checkpoint.model_payload(model, tokenizer), "optimizer": optimizer.state_dict(),
                   "step": step, "data": positions, "rng": checkpoint.rng_states(), "train": asdict(cfg)}  # fmt: skip
        checkpoint.save(Path(cfg.output) / "checkpoints" / "latest.pt", payload)


def _write_log(out: Path, rows: list[dict], metrics: dict) -> None:
    """Append the steps to metrics.csv and draw loss (and accuracy) curves to curves.png."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "metrics.csv"
    fields = sorted({k for r in rows for k in r}, key=lambda k: (k != "step", k))
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)
    if metrics:
        (out / "final_metrics.json").write_text(json.dumps(metrics, indent=2))
    _plot(path, out / "curves.png")


def _plot(csv_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with csv_path.open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit()]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows], label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    accuracy = [(int(r["step"]), float(r["zeroshot_top1"])) for r in rows if r.get("zeroshot_top1")]
    if accuracy:
        twin = ax.twinx()
        twin.plot(*zip(*accuracy, strict=True), "o-", color="tab:orange", label="zero-shot top-1")
        twin.set_ylabel("zero-shot top-1")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
