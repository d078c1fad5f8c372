"""open_clip's layout: `open_clip_config.json` and `open_clip_model.safetensors` in a folder
that `open_clip.create_model_and_transforms("local-dir:FOLDER")` reads (the hub layout).

Weights are mapped by name (openwit's fused qkv is already open_clip's `in_proj_weight`;
projections become `x @ proj` matrices); the config asks for nn.GELU (`quick_gelu: false`),
argmax pooling (EOT is the last id, see `trainer.export`) and the tokenizer saved beside.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from trainer.data import MEAN, STD
from trainer.export import Source


def _blocks(state: dict, source: str, target: str, layers: int) -> dict[str, torch.Tensor]:
    names = {"ln_1": "ln_1", "ln_2": "ln_2", "attn.out": "attn.out_proj", "mlp.0": "mlp.c_fc",
             "mlp.2": "mlp.c_proj"}  # fmt: skip
    out = {}
    for i in range(layers):
        s, t = f"{source}.transformer.blocks.{i}", f"{target}.resblocks.{i}"
        out[f"{t}.attn.in_proj_weight"] = state[f"{s}.attn.qkv.weight"]
        out[f"{t}.attn.in_proj_bias"] = state[f"{s}.attn.qkv.bias"]
        for ours, theirs in names.items():
            for kind in ("weight", "bias"):
                out[f"{t}.{theirs}.{kind}"] = state[f"{s}.{ours}.{kind}"]
    return out


def state_dict(source: Source) -> dict[str, torch.Tensor]:
    """openwit's weights under open_clip's CLIP names."""
    c, state = source.model.config, source.model.state_dict()
    out = {
        "visual.conv1.weight": state["visual.patch.weight"],
        "visual.class_embedding": state["visual.cls"],
        "visual.positional_embedding": state["visual.pos"],
        "visual.ln_pre.weight": state["visual.ln_pre.weight"],
        "visual.ln_pre.bias": state["visual.ln_pre.bias"],
        "visual.ln_post.weight": state["visual.ln_post.weight"],
        "visual.ln_post.bias": state["visual.ln_post.bias"],
        "visual.proj": state["visual.proj.weight"].T,  # (width, embed): x @ proj
        "token_embedding.weight": source.token_embedding,
        "positional_embedding": state["text.pos"],
        "ln_final.weight": state["text.ln_final.weight"],
        "ln_final.bias": state["text.ln_final.bias"],
        "text_projection": state["text.proj.weight"].T,
        "logit_scale": torch.tensor(source.logit_scale),
        **_blocks(state, "visual", "visual.transformer", c.vision_layers),
        **_blocks(state, "text", "transformer", c.text_layers),
    }
    if source.logit_bias is not None:
        out["logit_bias"] = torch.tensor(source.logit_bias)
    return {k: v.detach().float().contiguous().clone() for k, v in out.items()}


def config(source: Source) -> dict:
    """open_clip_config.json: the model config (CLIPVisionCfg, CLIPTextCfg) and preprocessing."""
    c = source.model.config
    model = {
        "embed_dim": c.embed_dim,
        "quick_gelu": False,
        "vision_cfg": {"image_size": c.image_size, "patch_size": c.patch_size,
                       "width": c.vision_width, "layers": c.vision_layers,
                       "head_width": c.vision_width // c.vision_heads, "mlp_ratio": c.mlp_ratio,
                       "pool_type": "tok"},
        "text_cfg": {"context_length": c.context_length, "vocab_size": c.vocab_size,
                     "width": c.text_width, "heads": c.text_heads, "layers": c.text_layers,
                     "mlp_ratio": c.mlp_ratio, "pool_type": "argmax", "proj_bias": False,
                     "pad_id": source.pad_id, "hf_tokenizer_name": ".",
                     "tokenizer_kwargs": {"clean": "whitespace"}},
    }  # fmt: skip
    if source.logit_bias is not None:
        model["init_logit_bias"] = source.logit_bias
    preprocess = {"size": c.image_size, "mode": "RGB", "mean": MEAN.tolist(),
                  "std": STD.tolist(), "interpolation": "bicubic", "resize_mode": "shortest"}  # fmt: skip
    return {"model_cfg": model, "preprocess_cfg": preprocess}


def write(source: Source, folder: Path) -> None:
    save_file(state_dict(source), str(folder / "open_clip_model.safetensors"),
              metadata={"format": "pt"})  # fmt: skip
    (folder / "open_clip_config.json").write_text(json.dumps(config(source), indent=2))
