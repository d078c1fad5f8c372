"""Resume trusts the checkpoint (as nanoGPT does): what defines the run comes from it.

A checkpoint stores the run's settings. On `--resume`, settings the command line does not
give are the checkpoint's; one it gives that defines the model or what the next step computes
(`FIXED`) must equal the checkpoint's, or the run stops at start naming the setting and both
values. The others may change and are logged when they do; `PER_INVOCATION` ones (an early
stop, the device) are never inherited.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from trainer import checkpoint

log = logging.getLogger(__name__)

# The model's shapes and the tokenizer (model, vocab_size, context_length, loss: SigLIP adds a
# bias), the optimisation and schedule, and the data order a resumed position replays.
FIXED = ("model", "vocab_size", "context_length", "loss", "lr", "weight_decay", "warmup",
         "grad_clip", "batch_size", "accumulate", "seed", "shuffle_buffer", "resample")  # fmt: skip
PER_INVOCATION = ("output", "resume", "stop_after", "threads", "device", "compile")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def checkpoint_path(output: str | Path, resume: str | None) -> Path | None:
    """The checkpoint `--resume` names: a path, or `latest` (none yet on a first run)."""
    if not resume:
        return None
    return checkpoint.latest(output) if resume == "latest" else Path(resume)


def saved_settings(payload: dict, path: str | Path) -> dict:
    if "train" not in payload or "optimizer" not in payload:
        raise ValueError(f"{path} is not a training checkpoint (no optimizer state to resume): "
                         "start a new run instead")  # fmt: skip
    return payload["train"]


def inherit(given: dict) -> dict:
    """The command line's settings (`given`: only those it names) completed from the
    checkpoint `--resume` names; a conflict on a FIXED setting raises ValueError."""
    path = checkpoint_path(given["output"], given.get("resume"))
    if path is None:
        return given
    saved = saved_settings(checkpoint.load(path, mmap=True), path)
    check_fixed(given, saved)
    inherited = {k: v for k, v in saved.items() if k not in given and k not in PER_INVOCATION}
    return {**inherited, **given}


def check_fixed(settings: dict, saved: dict) -> None:
    for name in FIXED:
        if name in settings and name in saved and settings[name] != saved[name]:
            raise ValueError(
                f"{flag(name)}: the checkpoint was trained with {saved[name]!r}, this run says "
                f"{settings[name]!r}; a resumed run keeps the checkpoint's (drop the flag, or "
                "start a new --output)"
            )


def check(cfg: object, payload: dict, path: str | Path) -> None:
    """Refuse a FIXED setting that differs from the checkpoint's; log the ones that change."""
    settings, saved = asdict(cfg), saved_settings(payload, path)
    check_fixed(settings, saved)
    for name, value in settings.items():
        if name in saved and name not in PER_INVOCATION and saved[name] != value:
            log.warning("resume: %s changed from %r to %r", flag(name), saved[name], value)
