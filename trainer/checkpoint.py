"""Checkpoints: model, optimizer, scheduler, step, RNG states, data position, config, tokenizer.

A checkpoint is self-contained: `load_model` needs nothing else, which is how `evaluate` and
the pipeline's model-score filter use it. Files are written atomically (temp name, rename).
Everything in one is a tensor or a plain value (dicts, lists, strings, numbers), so it loads
with `torch.load(weights_only=True)`: a checkpoint someone hands you cannot run code.
"""

from __future__ import annotations

import os
import pickle
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


def load(path: str | Path, device: str = "cpu", mmap: bool = False) -> dict:
    """A checkpoint's whole payload, tensors and plain values only (`weights_only=True`).

    Anything else (a pickled object, which could run code as it loads) is refused with a
    ValueError; `mmap` maps the tensors instead of reading them (to read the step cheaply).
    """
    try:
        return torch.load(path, map_location=device, mmap=mmap, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{path}: refusing to load a checkpoint that holds more than tensors and plain "
            "values (it could run code); openwit writes none such, though its versions before "
            f"weights-only loading stored numpy RNG states ({exc})"
        ) from exc


def load_model(path: str | Path, device: str = "cpu") -> tuple[CLIP, CaptionTokenizer, CLIPConfig]:
    """The model (in eval mode), its tokenizer and config from a checkpoint."""
    return model_from_payload(load(path, device), device)


def model_from_payload(payload: dict, device: str = "cpu"):
    config = CLIPConfig(**payload["config"])
    tokenizer = CaptionTokenizer.from_json(payload["tokenizer"], config.context_length)
    model = CLIP(config, tokenizer.eot_id)
    model.load_state_dict(payload["model"])
    return model.to(device).eval(), tokenizer, config


def read_step(path: str | Path) -> int:
    """The step a checkpoint was written at, without reading its tensors."""
    return int(load(path, mmap=True)["step"])


def rng_states() -> dict:
    """Python's, numpy's and torch's generator states as tensors and plain values."""
    version, state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "python": {"version": version, "state": torch.tensor(state, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "cached_gaussian": cached},
        "torch": torch.get_rng_state(),
    }  # fmt: skip
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def restore_rng(states: dict) -> None:
    py, npy = states["python"], states["numpy"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached_gaussian"]))  # fmt: skip
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


def latest(folder: str | Path) -> Path | None:
    path = Path(folder) / "checkpoints" / "latest.pt"
    return path if path.exists() else None
