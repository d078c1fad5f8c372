"""CLIP: a ViT image tower and a causal text transformer, projected into one embedding space.

Configs are dataclasses; `tiny` is the configuration OpenCLIP was measured at here (embedding
256; image 64 px, patch 8, width 256, 4 layers, 4 heads; text context 32, width 256, 4 layers,
4 heads), so the two can be compared at equal work.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class CLIPConfig:
    embed_dim: int = 256
    image_size: int = 64
    patch_size: int = 8
    vision_width: int = 256
    vision_layers: int = 4
    vision_heads: int = 4
    context_length: int = 32
    vocab_size: int = 4096
    text_width: int = 256
    text_layers: int = 4
    text_heads: int = 4
    mlp_ratio: float = 4.0
    grad_checkpointing: bool = False
    siglip: bool = False  # a learnable logit bias for the sigmoid loss

    def to_dict(self) -> dict:
        return asdict(self)


CONFIGS = {
    "tiny": CLIPConfig(),
    "small": CLIPConfig(
        embed_dim=512, image_size=128, patch_size=16, vision_width=384, vision_layers=8,
        vision_heads=6, context_length=77, text_width=384, text_layers=8, text_heads=6,
    ),
    "ViT-B-32": CLIPConfig(
        embed_dim=512, image_size=224, patch_size=32, vision_width=768, vision_layers=12,
        vision_heads=12, context_length=77, vocab_size=49408, text_width=512, text_layers=12,
        text_heads=8,
    ),
}  # fmt: skip


class Attention(nn.Module):
    """Multi-head self-attention through `scaled_dot_product_attention`, which picks a fused
    kernel (flash attention on recent GPUs; `is_causal` keeps the text tower eligible)."""

    def __init__(self, width: int, heads: int, causal: bool):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.heads, c // self.heads)  # (B, T, 3, H, C/H)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, C/H)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B, H, T, C/H)
        return self.out(y.transpose(1, 2).reshape(b, t, c))  # (B, T, C)


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, causal: bool):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, causal)
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))  # (B, T, C)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, causal: bool,
                 checkpointed: bool):  # fmt: skip
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, causal) for _ in range(layers))
        self.checkpointed = checkpointed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.checkpointed and self.training:
                # Recompute the block's activations in backward instead of keeping them.
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class VisionTower(nn.Module):
    def __init__(self, c: CLIPConfig):
        super().__init__()
        self.patch = nn.Conv2d(3, c.vision_width, c.patch_size, c.patch_size, bias=False)
        patches = (c.image_size // c.patch_size) ** 2
        scale = c.vision_width**-0.5
        self.cls = nn.Parameter(scale * torch.randn(c.vision_width))
        self.pos = nn.Parameter(scale * torch.randn(patches + 1, c.vision_width))
        self.ln_pre = nn.LayerNorm(c.vision_width)
        self.transformer = Transformer(c.vision_width, c.vision_layers, c.vision_heads,
                                       c.mlp_ratio, False, c.grad_checkpointing)  # fmt: skip
        self.ln_post = nn.LayerNorm(c.vision_width)
        self.proj = nn.Linear(c.vision_width, c.embed_dim, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch(images).flatten(2).transpose(1, 2)  # (B, N, C)
        cls = self.cls.expand(x.shape[0], 1, -1)  # (B, 1, C)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.pos)  # (B, N+1, C)
        x = self.transformer(x)
        return self.proj(self.ln_post(x[:, 0]))  # (B, D)


class TextTower(nn.Module):
    def __init__(self, c: CLIPConfig):
        super().__init__()
        self.token = nn.Embedding(c.vocab_size, c.text_width)
        self.pos = nn.Parameter(0.01 * torch.randn(c.context_length, c.text_width))
        self.transformer = Transformer(
            c.text_width, c.text_layers, c.text_heads, c.mlp_ratio, True, c.grad_checkpointing
        )
        self.ln_final = nn.LayerNorm(c.text_width)
        self.proj = nn.Linear(c.text_width, c.embed_dim, bias=False)

    def forward(self, tokens: torch.Tensor, eot_positions: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        x = self.token(tokens) + self.pos[:t]  # (B, T, C)
        x = self.ln_final(self.transformer(x))  # causal: a token sees only those before it
        pooled = x[torch.arange(x.shape[0], device=x.device), eot_positions]  # (B, C)
        return self.proj(pooled)  # (B, D)


class CLIP(nn.Module):
    def __init__(self, config: CLIPConfig, eot_id: int):
        super().__init__()
        self.config = config
        self.eot_id = eot_id
        self.visual = VisionTower(config)
        self.text = TextTower(config)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10 if config.siglip else 1 / 0.07)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0)) if config.siglip else None

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings (B, D)."""
        return F.normalize(self.visual(images), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """L2-normalised text embeddings (B, D), pooled at each row's end-of-text token."""
        eot = (tokens == self.eot_id).int().argmax(dim=-1)
        return F.normalize(self.text(tokens, eot), dim=-1)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor):
        """Normalised (B, D) image and text features, the logit scale and (SigLIP) bias.

        The clamp keeps the logit scale at or under 100, as CLIP does.
        """
        scale = self.logit_scale.clamp(max=math.log(100)).exp()
        return self.encode_image(images), self.encode_text(tokens), scale, self.logit_bias
