"""The Hugging Face transformers layout: `CLIPModel.from_pretrained(folder)` loads the export.

Weights are mapped by name (openwit's fused qkv split into q/k/v); the configuration says
what the model computes: exact (erf) GELU, `hidden_act="gelu"`, not OpenAI's quick_gelu;
LayerNorm eps 1e-5; text pooled at the end-of-text id (moved to the last id, see
`trainer.export`); the image processor resizes the shorter side, centre-crops and normalises
as `trainer.data.preprocess_eval` does. HF's CLIPModel has no logit bias: a SigLIP-trained
model's bias is recorded in config.json (`openwit_logit_bias`) and the model card only.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from trainer.data import MEAN, STD
from trainer.export import Source

LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which the model uses
ACTIVATION = "gelu"  # nn.GELU() (erf), transformers' GELUActivation


def _blocks(state: dict, source: str, target: str, layers: int) -> dict[str, torch.Tensor]:
    out = {}
    for i in range(layers):
        s, t = f"{source}.transformer.blocks.{i}", f"{target}.encoder.layers.{i}"
        for name in ("weight", "bias"):
            q, k, v = state[f"{s}.attn.qkv.{name}"].chunk(3, dim=0)  # rows: q | k | v
            out.update({f"{t}.self_attn.q_proj.{name}": q, f"{t}.self_attn.k_proj.{name}": k,
                        f"{t}.self_attn.v_proj.{name}": v,
                        f"{t}.self_attn.out_proj.{name}": state[f"{s}.attn.out.{name}"],
                        f"{t}.layer_norm1.{name}": state[f"{s}.ln_1.{name}"],
                        f"{t}.layer_norm2.{name}": state[f"{s}.ln_2.{name}"],
                        f"{t}.mlp.fc1.{name}": state[f"{s}.mlp.0.{name}"],
                        f"{t}.mlp.fc2.{name}": state[f"{s}.mlp.2.{name}"]})  # fmt: skip
    return out


def state_dict(source: Source) -> dict[str, torch.Tensor]:
    """openwit's weights under transformers' CLIPModel names."""
    c, state = source.model.config, source.model.state_dict()
    out = {
        "vision_model.embeddings.patch_embedding.weight": state["visual.patch.weight"],
        "vision_model.embeddings.class_embedding": state["visual.cls"],
        "vision_model.embeddings.position_embedding.weight": state["visual.pos"],
        "vision_model.pre_layrnorm.weight": state["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": state["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": state["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": state["visual.ln_post.bias"],
        "visual_projection.weight": state["visual.proj.weight"],
        "text_model.embeddings.token_embedding.weight": source.token_embedding,
        "text_model.embeddings.position_embedding.weight": state["text.pos"],
        "text_model.final_layer_norm.weight": state["text.ln_final.weight"],
        "text_model.final_layer_norm.bias": state["text.ln_final.bias"],
        "text_projection.weight": state["text.proj.weight"],
        "logit_scale": torch.tensor(source.logit_scale),
        **_blocks(state, "visual", "vision_model", c.vision_layers),
        **_blocks(state, "text", "text_model", c.text_layers),
    }
    return {k: v.detach().float().contiguous().clone() for k, v in out.items()}


def config(source: Source) -> dict:
    c = source.model.config
    tower = {"hidden_act": ACTIVATION, "layer_norm_eps": LAYER_NORM_EPS,
             "attention_dropout": 0.0, "projection_dim": c.embed_dim}  # fmt: skip
    text = {**tower, "model_type": "clip_text_model", "vocab_size": c.vocab_size,
            "hidden_size": c.text_width, "intermediate_size": int(c.text_width * c.mlp_ratio),
            "num_hidden_layers": c.text_layers, "num_attention_heads": c.text_heads,
            "max_position_embeddings": c.context_length, "pad_token_id": source.pad_id,
            "bos_token_id": source.sot_id, "eos_token_id": source.eot_id}  # fmt: skip
    vision = {**tower, "model_type": "clip_vision_model", "hidden_size": c.vision_width,
              "intermediate_size": int(c.vision_width * c.mlp_ratio), "num_channels": 3,
              "num_hidden_layers": c.vision_layers, "num_attention_heads": c.vision_heads,
              "image_size": c.image_size, "patch_size": c.patch_size}  # fmt: skip
    out = {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": c.embed_dim,
           "logit_scale_init_value": source.logit_scale, "text_config": text,
           "vision_config": vision, "dtype": "float32"}  # fmt: skip
    if source.logit_bias is not None:
        out["openwit_logit_bias"] = source.logit_bias
    return out


def preprocessor_config(source: Source) -> dict:
    size = source.model.config.image_size
    return {"image_processor_type": "CLIPImageProcessor", "do_convert_rgb": True,
            "do_resize": True, "size": {"shortest_edge": size}, "resample": 3,  # bicubic
            "do_center_crop": True, "crop_size": {"height": size, "width": size},
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": MEAN.tolist(), "image_std": STD.tolist()}  # fmt: skip


def write(source: Source, folder: Path) -> None:
    save_file(state_dict(source), str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config(source), indent=2))
    (folder / "preprocessor_config.json").write_text(
        json.dumps(preprocessor_config(source), indent=2)
    )
    (folder / "processor_config.json").write_text(json.dumps({"processor_class": "CLIPProcessor"}))
