"""Model FLOPs, counted from the config, for model FLOPs utilisation (MFU).

MFU is the convention of the PaLM paper: the FLOPs the model needs (3x the forward's matrix
multiplications for forward and backward; recomputation by gradient checkpointing not counted)
per second, over the accelerator's peak. Attention counts the full T x T score matrix, also for
the causal text tower, as `torch.utils.flop_counter` does.
"""

from __future__ import annotations

from trainer.model import CLIPConfig

# Dense bf16 peak of one accelerator, in FLOP/s (vendor datasheets, without sparsity).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def _transformer(tokens: int, width: int, layers: int, mlp_ratio: float) -> float:
    hidden = int(width * mlp_ratio)
    projections = 2 * tokens * width * (3 * width + width + 2 * hidden)  # qkv, out, MLP
    attention = 2 * 2 * tokens * tokens * width  # scores and the weighted sum
    return layers * (projections + attention)


def forward_flops(c: CLIPConfig, batch: int = 1) -> float:
    """Forward FLOPs of one sample (an image and its caption), the batch's logits included."""
    patches = (c.image_size // c.patch_size) ** 2
    image = 2 * patches * 3 * c.patch_size**2 * c.vision_width  # patch embedding
    image += _transformer(patches + 1, c.vision_width, c.vision_layers, c.mlp_ratio)
    image += 2 * c.vision_width * c.embed_dim  # projection of the class token
    text = _transformer(c.context_length, c.text_width, c.text_layers, c.mlp_ratio)
    text += 2 * c.text_width * c.embed_dim
    logits = 2 * 2 * batch * c.embed_dim  # this sample's row of both similarity matrices
    return image + text + logits


def train_flops(c: CLIPConfig, batch: int = 1) -> float:
    """Forward and backward FLOPs of one sample (backward costs twice the forward)."""
    return 3 * forward_flops(c, batch)


def peak_flops(device_name: str) -> float | None:
    """The bf16 peak of a CUDA device from its name (`NVIDIA H200`), or None when unknown."""
    for name, peak in PEAK_BF16.items():
        if name in device_name:
            return peak
    return None
