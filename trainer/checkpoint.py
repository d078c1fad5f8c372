"""Checkpoints: model, optimizer, scheduler, step, RNG states, data position, config, tokenizer.

A checkpoint is self-contained: `load_model` needs nothing else, which is how `evaluate` and
the pipeline's model-score filter use it. Files are written atomically (temp name, rename).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from trainer.model import CLIP, CLIPConfig
from trainer.tokenizer import CaptionTokenizer


def save(path: str | Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def model_payload(model: CLIP, tokenizer: CaptionTokenizer) -> dict:
    return {
        "config": model.config.to_dict(),
        "tokenizer": tokenizer.to_json(),
        "model": model.state_dict(),
    }


def save_initial(path: str | Path, config: CLIPConfig, tokenizer: CaptionTokenizer) -> CLIP:
    """A randomly initialised model's checkpoint (tests, and a first scorer)."""
    model = CLIP(config, tokenizer.eot_id)
    save(path, {**model_payload(model, tokenizer), "step": 0})
    return model


def load_model(path: str | Path, device: str = "cpu") -> tuple[CLIP, CaptionTokenizer, CLIPConfig]:
    """The model (in eval mode), its tokenizer and config from a checkpoint."""
    payload = torch.load(path, map_location=device, weights_only=False)
    config = CLIPConfig(**payload["config"])
    tokenizer = CaptionTokenizer.from_json(payload["tokenizer"], config.context_length)
    model = CLIP(config, tokenizer.eot_id)
    model.load_state_dict(payload["model"])
    return model.to(device).eval(), tokenizer, config


def load(path: str | Path) -> dict:
    """A training checkpoint's whole payload, on the CPU."""
    return torch.load(path, map_location="cpu", weights_only=False)


def rng_states() -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(),
              "torch": torch.get_rng_state()}  # fmt: skip
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def restore_rng(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


def latest(folder: str | Path) -> Path | None:
    path = Path(folder) / "checkpoints" / "latest.pt"
    return path if path.exists() else None
