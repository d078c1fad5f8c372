"""The training loop: flat and readable, one process or many (torchrun), CPU or GPU.

A run is defined in steps; every rank runs the same number (the data stream is endless).
Checkpoints carry the model, optimizer, step, every rank's RNG states and data position, and
the configs, so `--resume latest` continues exactly where a run stopped: the same losses as
an uninterrupted run (the learning-rate schedule is a function of the step).
"""

from __future__ import annotations

import contextlib
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

from trainer import checkpoint, logs, resume
from trainer.data import ShardStream
from trainer.evaluate import load_folder, load_shards, retrieval, zero_shot
from trainer.loss import clip_loss, siglip_loss
from trainer.model import CLIP, CONFIGS, CLIPConfig
from trainer.shards import MAX_MEMBER_BYTES
from trainer.tokenizer import CaptionTokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    shards: str
    output: str
    model: str = "tiny"
    batch_size: int = 64  # per rank, per micro-step
    accumulate: int = 1  # micro-steps per optimizer step (each its own contrastive batch)
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
    max_member_bytes: int = MAX_MEMBER_BYTES  # a bigger tar member is skipped unread, counted
    workers: int | None = None  # data loader processes per rank; default: 0 on CPU, up to 8 on GPU
    resample: bool = False  # draw each epoch's shards with replacement
    checkpoint_every: int = 100
    log_every: int = 50
    eval_every: int = 0
    eval_folder: str | None = None  # zero-shot: a folder per class
    eval_shards: str | None = None  # retrieval: held-out shards
    resume: str | None = None  # a checkpoint path, or "latest"
    grad_checkpointing: bool = False
    compile: bool = False
    threads: int | None = None
    device: str | None = None  # "cpu" or "cuda"; default: CUDA when there is one


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to zero over the run."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on norms, biases, positional embeddings, class token and temperature."""
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


def _distributed(device: str | None) -> tuple[int, int, torch.device]:
    """Join torchrun's process group (NCCL on GPUs, gloo on CPU) when there is one."""
    cuda = torch.cuda.is_available() if device is None else device == "cuda"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def _workers(cfg: TrainConfig, device: torch.device) -> int:
    if cfg.workers is not None:
        return cfg.workers
    if device.type != "cuda":
        return 0  # a CPU run needs its cores for the model; a thread decodes ahead
    per_rank = (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, per_rank - 1))


def _broadcast(value: object) -> object:
    """Rank 0's value on every rank."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _tokenizer(cfg: TrainConfig, context_length: int, rank: int) -> CaptionTokenizer:
    """Trained on rank 0 from the shards' first captions and sent to the others."""
    text = None
    if rank == 0:
        captions = ShardStream(cfg.shards, 1, 8, cfg.seed, shuffle_buffer=1).captions(20000)
        text = CaptionTokenizer.train(captions, cfg.vocab_size, context_length).to_json()
    return CaptionTokenizer.from_json(_broadcast(text), context_length)


def _model_config(cfg: TrainConfig, payload: dict | None, rank: int):
    """The model config and tokenizer: a resumed run's from its checkpoint, else new ones."""
    if payload:
        model_cfg = replace(CLIPConfig(**payload["config"]),
                            grad_checkpointing=cfg.grad_checkpointing)  # fmt: skip
        return model_cfg, CaptionTokenizer.from_json(payload["tokenizer"], model_cfg.context_length)
    model_cfg = replace(CONFIGS[cfg.model], grad_checkpointing=cfg.grad_checkpointing,
                        siglip=cfg.loss == "siglip")  # fmt: skip
    if cfg.context_length:
        model_cfg = replace(model_cfg, context_length=cfg.context_length)
    tokenizer = _tokenizer(cfg, model_cfg.context_length, rank)
    return replace(model_cfg, vocab_size=tokenizer.vocab_size), tokenizer


def _evaluate(model: CLIP, tokenizer: CaptionTokenizer, cfg: TrainConfig) -> dict:
    metrics = {}
    if cfg.eval_folder:
        found = zero_shot(model, tokenizer, *load_folder(cfg.eval_folder))
        metrics.update({f"zeroshot_{k}": v for k, v in found.items()})
    if cfg.eval_shards:
        metrics.update(retrieval(model, tokenizer, *load_shards(cfg.eval_shards, 1000)))
    model.train()
    return metrics


def train(cfg: TrainConfig) -> dict:
    """Train per `cfg`; returns the losses of the steps this invocation ran and the metrics."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rank, world, device = _distributed(cfg.device)
    out = Path(cfg.output)
    # Rank 0 names the checkpoint: every rank must restore the same one (or none).
    resume_path = _broadcast(resume.checkpoint_path(out, cfg.resume))
    payload = checkpoint.load(resume_path) if resume_path else None
    if payload:
        resume.check(cfg, payload, resume_path)
    model_cfg, tokenizer = _model_config(cfg, payload, rank)
    torch.manual_seed(cfg.seed)
    model = CLIP(model_cfg, tokenizer.eot_id).to(device)
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6,
        fused=device.type == "cuda",
    )  # fmt: skip
    stream = ShardStream(cfg.shards, cfg.batch_size, model_cfg.image_size, cfg.seed, rank, world,
                         cfg.shuffle_buffer, _workers(cfg, device), cfg.resample,
                         tokenizer, cfg.max_member_bytes)  # fmt: skip
    start = _restore(payload, model, optimizer, stream, rank, world) if payload else 0
    ddp = DistributedDataParallel(model) if world > 1 else model
    forward = torch.compile(ddp) if cfg.compile else ddp
    batches = stream.batches(pin_memory=device.type == "cuda")
    end, losses, rows, evals = min(cfg.steps, cfg.stop_after or cfg.steps), [], [], []
    model.train()
    progress = tqdm(range(start, end), disable=rank != 0, desc="train", initial=start,
                    total=cfg.steps)  # fmt: skip
    for step in progress:
        row = _step(step, cfg, model, ddp, forward, optimizer, batches, world)
        losses.append(row["loss"])
        rows.append(row)
        progress.set_postfix(loss=f"{row['loss']:.4f}")
        if rank == 0 and cfg.log_every and (step + 1) % cfg.log_every == 0:
            log.info("step %d loss %.4f %.1f samples/s data wait %.1f%%", step + 1, row["loss"],
                     row["samples_per_s"], 100 * row["data_wait_s"] / row["step_s"])  # fmt: skip
        if rank == 0 and cfg.eval_every and (step + 1) % cfg.eval_every == 0:
            evals.append({"step": step + 1, **_evaluate(model, tokenizer, cfg)})
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == end:
            _save(model, optimizer, tokenizer, stream, step + 1, cfg, rank, world)
            if rank == 0:
                logs.append_rows(out / "metrics.csv", rows, logs.STEP_FIELDS)
                logs.append_evals(out / "eval.csv", evals)
            rows, evals = [], []
    metrics = _evaluate(model, tokenizer, cfg) if rank == 0 and end == cfg.steps else {}
    if rank == 0:
        _finish(out, metrics)
    log.info("rank %d skipped %d undecodable samples and %d unreadable shard reads", rank,
             stream.skipped, stream.read_errors)  # fmt: skip
    return {"losses": losses, "metrics": metrics, "skipped_samples": stream.skipped,
            "read_errors": stream.read_errors}  # fmt: skip


def _step(step, cfg, model, ddp, forward, optimizer, batches, world) -> dict:
    """One optimizer step over `accumulate` micro-batches; its record for metrics.csv."""
    lr = lr_at(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    device = next(model.parameters()).device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    started, waited, total = time.perf_counter(), 0.0, torch.zeros((), device=device)
    for micro in range(cfg.accumulate):
        t0 = time.perf_counter()
        images, tokens = next(batches)  # (B, 3, S, S), (B, T)
        waited += time.perf_counter() - t0
        images = images.to(device, non_blocking=True)
        tokens = tokens.to(device, non_blocking=True)
        # Gradients are all-reduced once per optimizer step, on the last micro-batch.
        last = micro == cfg.accumulate - 1
        sync = ddp.no_sync() if world > 1 and not last else contextlib.nullcontext()
        with sync:
            with autocast:
                image_f, text_f, scale, bias = forward(images, tokens)  # (B, D), (B, D)
                if cfg.loss == "siglip":
                    loss = siglip_loss(image_f.float(), text_f.float(), scale, bias)
                else:
                    loss = clip_loss(image_f.float(), text_f.float(), scale)
            (loss / cfg.accumulate).backward()
        total += loss.detach() / cfg.accumulate
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if world > 1:  # the logged loss is the global batch's, as one process would compute it
        dist.all_reduce(total)
        total /= world
    loss_value = total.item()  # also waits for the device: step_s is the step's real time
    step_s = time.perf_counter() - started
    return {"step": step + 1, "loss": loss_value, "lr": lr,
            "logit_scale": model.logit_scale.exp().item(), "grad_norm": grad_norm.item(),
            "samples_per_s": cfg.batch_size * cfg.accumulate * world / step_s,
            "step_s": step_s, "data_wait_s": waited}  # fmt: skip


def _gather(value: object, world: int) -> list:
    """Every rank's value, in rank order, on every rank."""
    if world == 1:
        return [value]
    values = [None] * world
    dist.all_gather_object(values, value)
    return values


def _save(model, optimizer, tokenizer, stream: ShardStream, step, cfg, rank, world) -> None:
    positions = _gather(stream.position(), world)
    rngs = _gather(checkpoint.rng_states(), world)
    if rank == 0:
        payload = {
            **checkpoint.model_payload(model, tokenizer), "step": step, "data": positions,
            "rng": rngs, "optimizer": optimizer.state_dict(), "train": asdict(cfg),
        }  # fmt: skip
        checkpoint.save(Path(cfg.output) / "checkpoints" / "latest.pt", payload)
    if world > 1:
        dist.barrier()  # no rank runs ahead of a checkpoint that is not yet on disk


def _restore(payload: dict, model, optimizer, stream: ShardStream, rank: int, world: int) -> int:
    """Load a checkpoint's state into this rank's objects; the step to continue from."""
    if len(payload["data"]) != world:
        raise ValueError(f"the checkpoint was written by {len(payload['data'])} processes: "
                         f"resume with the same number ({world} now)")  # fmt: skip
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    stream.restore(payload["data"][rank])
    checkpoint.restore_rng(payload["rng"][rank])
    log.info("resumed from step %d", payload["step"])
    return payload["step"]


def _finish(out: Path, metrics: dict) -> None:
    if metrics:
        (out / "final_metrics.json").write_text(json.dumps(metrics, indent=2))
    logs.plot(out)
