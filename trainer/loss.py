"""Contrastive losses: symmetric InfoNCE (CLIP) and the sigmoid loss (SigLIP).

With several processes, each rank's features are gathered from all ranks with gradients
(`all_gather` from torch.distributed.nn) and the local rows are scored against the global
columns, as OpenCLIP's gather-with-grad + local-loss: the result equals the single-process
loss on the same global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def gather_with_grad(features: torch.Tensor) -> torch.Tensor:
    """(world*B, D) features of every rank, differentiable; (B, D) unchanged on one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(features), dim=0)


def clip_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of the local rows against the global columns."""
    all_image, all_text = gather_with_grad(image), gather_with_grad(text)
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    labels = torch.arange(image.shape[0], device=image.device) + rank * image.shape[0]
    logits_per_image = scale * image @ all_text.T  # (B, world*B)
    logits_per_text = scale * text @ all_image.T  # (B, world*B)
    return (
        F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)
    ) / 2


def siglip_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor):
    """Sigmoid loss: every (image, text) pair is a binary match/no-match decision."""
    all_text = gather_with_grad(text)
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    logits = scale * image @ all_text.T + bias  # (B, world*B)
    targets = -torch.ones_like(logits)
    rows = torch.arange(image.shape[0], device=image.device)
    targets[rows, rows + rank * image.shape[0]] = 1.0
    return -F.logsigmoid(targets * logits).sum() / image.shape[0]
