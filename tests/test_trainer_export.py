"""The export: a trained checkpoint in transformers' and open_clip's layouts gives the same
embeddings and the same zero-shot answers as openwit itself.

transformers is installed (the test extra) and loads the folder offline. open_clip cannot be
installed here (its torchvision dependency is a multi-GB CUDA wheel), so its export is checked
at the state-dict level: open_clip's key names and shapes, and a forward pass written below
the way open_clip's CLIP computes it (transformer.py, model.py).
"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from trainer_helpers import write_class_folder, write_shards

from demo.__main__ import write_heldout
from demo.webcorpus import build
from trainer import checkpoint
from trainer.__main__ import main
from trainer.data import preprocess_eval
from trainer.evaluate import TEMPLATES, class_logits, load_folder
from trainer.model import CONFIGS, CLIPConfig
from trainer.tokenizer import CaptionTokenizer

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may come from the hub
transformers = pytest.importorskip("transformers")

MICRO = CLIPConfig(
    embed_dim=32, image_size=32, patch_size=8, vision_width=64, vision_layers=2, vision_heads=4,
    context_length=16, text_width=64, text_layers=2, text_heads=4,
)  # fmt: skip
CAPTIONS = ["a red circle", "A BLUE square!", "a photo of a green triangle.", "",
            "ünïcode émoji 🐶 and   extra   spaces", "yellow cross " * 20]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A MICRO CLIP trained 6 steps (evaluated), and the demo's held-out folder."""
    tmp = tmp_path_factory.mktemp("export")
    shards = write_shards(tmp / "crawl" / "shards", shards=2, per_shard=32)
    funnel = [
        {"stage": "read", "rows_in": 80, "rows_out": 80, "dropped": {}},
        {"stage": "crawl", "rows_in": 80, "rows_out": 64, "dropped": {"error:http_404": 16}},
    ]
    stats = {"input_rows": 80, "samples": 64, "status_counts": {"ok": 64, "error:http_404": 16},
             "funnel": funnel}  # fmt: skip
    (tmp / "crawl" / "stats.json").write_text(json.dumps(stats))
    heldout = tmp / "heldout"
    write_heldout(build(pairs=8, seed=0).heldout, heldout)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(CONFIGS, "micro", MICRO)
        main(["train", "--shards", shards, "--output", str(tmp / "run"), "--model", "micro",
              "--batch-size", "16", "--steps", "6", "--warmup", "2", "--lr", "2e-3",
              "--vocab-size", "300", "--shuffle-buffer", "16",
              "--eval-folder", str(write_class_folder(tmp / "eval", per_class=2))])  # fmt: skip
    return tmp / "run" / "checkpoints" / "latest.pt", heldout


def features(output) -> torch.Tensor:
    """get_*_features' projection (transformers 5: the output's pooler_output), L2-normalised
    as openwit's."""
    return F.normalize(output.pooler_output, dim=-1)


def openwit_predictions(model, tokenizer, images, classes) -> list[int]:
    return class_logits(model, tokenizer, images, classes).argmax(1).tolist()


def test_hf_export_loads_in_transformers_and_matches(run, tmp_path):
    path, heldout = run
    out = tmp_path / "hf"
    main(["export", "--checkpoint", str(path), "--format", "hf", "--output", str(out)])
    model, tokenizer, config = checkpoint.load_model(path)
    hf = transformers.CLIPModel.from_pretrained(out, local_files_only=True).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    processor = transformers.AutoProcessor.from_pretrained(out, local_files_only=True)
    assert (
        hf.config.text_config.hidden_act == "gelu"
        and hf.config.vision_config.layer_norm_eps == 1e-5
    )
    assert hf.config.text_config.eos_token_id == tokenizer.vocab_size - 1 != 2

    ids = hf_tokenizer(CAPTIONS, padding="max_length", truncation=True, return_tensors="pt")
    ours = tokenizer(CAPTIONS)
    eot, last = tokenizer.eot_id, tokenizer.vocab_size - 1
    renumbered = torch.where(ours == eot, last, torch.where(ours == last, eot, ours))
    assert torch.equal(ids.input_ids, renumbered)  # the long caption truncated, EOT kept

    images, labels, classes = load_folder(heldout)
    pixels = processor(images=images, return_tensors="pt").pixel_values
    assert torch.allclose(pixels, torch.stack([preprocess_eval(i, 32) for i in images]), atol=1e-5)
    with torch.no_grad():
        image_hf = features(hf.get_image_features(pixel_values=pixels))
        text_hf = features(hf.get_text_features(**ids))
        logits = hf(input_ids=ids.input_ids, attention_mask=ids.attention_mask,
                    pixel_values=pixels[:6]).logits_per_image  # fmt: skip
        image_ow = model.encode_image(pixels)
        text_ow = model.encode_text(ours)
        _, _, scale, _ = model(pixels[:6], ours)
    assert (image_hf - image_ow).abs().max() < 1e-4
    assert (text_hf - text_ow).abs().max() < 1e-4
    assert torch.allclose(logits, scale * image_ow[:6] @ text_ow.T, atol=1e-3)

    # Zero-shot over the demo's held-out folder: the same class for every image.
    with torch.no_grad():
        weights = []
        for name in classes:
            prompts = processor(text=[t.format(name) for t in TEMPLATES], padding=True, truncation=True,
                                return_tensors="pt")  # fmt: skip
            mean = features(hf.get_text_features(**prompts)).mean(0)
            weights.append(mean / mean.norm())
        predicted = (image_hf @ torch.stack(weights).T).argmax(1).tolist()
    assert len(images) >= 40 and len(set(predicted)) > 1
    assert predicted == openwit_predictions(model, tokenizer, images, classes)

    card = (out / "README.md").read_text()
    assert "6 steps of 6" in card and "| read | 80 |" in card and "zeroshot_top1" in card
    assert "| crawl | 80 | 16 | 64 |" in card


def open_clip_keys(c: CLIPConfig) -> dict[str, tuple[int, ...]]:
    """The state dict of open_clip's CLIP(embed_dim, CLIPVisionCfg, CLIPTextCfg) for a ViT
    with class-token pooling and a bias-free text projection (open_clip model.py and
    transformer.py: VisionTransformer, TextTransformer, ResidualAttentionBlock, Attention)."""
    grid = c.image_size // c.patch_size

    def blocks(prefix: str, width: int, layers: int) -> dict:
        hidden = int(width * c.mlp_ratio)
        shapes = {"ln_1.weight": (width,), "ln_1.bias": (width,),
                  "attn.in_proj_weight": (3 * width, width), "attn.in_proj_bias": (3 * width,),
                  "attn.out_proj.weight": (width, width), "attn.out_proj.bias": (width,),
                  "ln_2.weight": (width,), "ln_2.bias": (width,),
                  "mlp.c_fc.weight": (hidden, width), "mlp.c_fc.bias": (hidden,),
                  "mlp.c_proj.weight": (width, hidden), "mlp.c_proj.bias": (width,)}  # fmt: skip
        return {f"{prefix}.resblocks.{i}.{k}": v for i in range(layers) for k, v in shapes.items()}

    v, t = c.vision_width, c.text_width
    return {
        "visual.conv1.weight": (v, 3, c.patch_size, c.patch_size),
        "visual.class_embedding": (v,), "visual.positional_embedding": (grid * grid + 1, v),
        "visual.ln_pre.weight": (v,), "visual.ln_pre.bias": (v,),
        "visual.ln_post.weight": (v,), "visual.ln_post.bias": (v,),
        "visual.proj": (v, c.embed_dim),
        **blocks("visual.transformer", v, c.vision_layers),
        "token_embedding.weight": (c.vocab_size, t), "positional_embedding": (c.context_length, t),
        **blocks("transformer", t, c.text_layers),
        "ln_final.weight": (t,), "ln_final.bias": (t,), "text_projection": (t, c.embed_dim),
        "logit_scale": (),
    }  # fmt: skip


def oc_transformer(x, sd, prefix, layers, heads, mask=None):
    """open_clip's Transformer: pre-norm ResidualAttentionBlocks, nn.GELU (quick_gelu false),
    attention as its Attention module computes it from in_proj_weight."""
    b, n, w = x.shape
    for i in range(layers):
        p = f"{prefix}.resblocks.{i}."
        y = F.layer_norm(x, (w,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"], eps=1e-5)
        q, k, v = F.linear(y, sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"]).chunk(
            3, -1
        )
        q, k, v = (z.view(b, n, heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, n, w)
        x = x + F.linear(y, sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"])
        y = F.layer_norm(x, (w,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"], eps=1e-5)
        y = F.gelu(F.linear(y, sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"]))
        x = x + F.linear(y, sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
    return x


def oc_encode_image(sd, cfg, pixels):
    """open_clip's VisionTransformer.forward, then F.normalize (encode_image(normalize=True))."""
    vision, width = cfg["vision_cfg"], cfg["vision_cfg"]["width"]
    x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=vision["patch_size"])
    x = x.reshape(x.shape[0], width, -1).permute(0, 2, 1)
    x = torch.cat([sd["visual.class_embedding"].expand(x.shape[0], 1, -1), x], dim=1)
    x = F.layer_norm(x + sd["visual.positional_embedding"], (width,), sd["visual.ln_pre.weight"],
                     sd["visual.ln_pre.bias"])  # fmt: skip
    x = oc_transformer(x, sd, "visual.transformer", vision["layers"], width // vision["head_width"])
    x = F.layer_norm(x, (width,), sd["visual.ln_post.weight"], sd["visual.ln_post.bias"])
    return F.normalize(x[:, 0] @ sd["visual.proj"], dim=-1)


def oc_encode_text(sd, cfg, text):
    """open_clip's CLIP.encode_text: full-context positions, causal mask, argmax pooling."""
    t = cfg["text_cfg"]
    x = F.embedding(text, sd["token_embedding.weight"]) + sd["positional_embedding"]
    n = t["context_length"]
    mask = torch.full((n, n), float("-inf")).triu(1)  # build_causal_mask
    x = oc_transformer(x, sd, "transformer", t["layers"], t["heads"], mask)
    x = F.layer_norm(x, (t["width"],), sd["ln_final.weight"], sd["ln_final.bias"])
    pooled = x[torch.arange(x.shape[0]), text.argmax(dim=-1)]  # text_global_pool 'argmax'
    return F.normalize(pooled @ sd["text_projection"], dim=-1)


def test_open_clip_export_has_open_clips_layout_and_matches(run, tmp_path):
    path, heldout = run
    out = tmp_path / "oc"
    main(["export", "--checkpoint", str(path), "--format", "open_clip", "--output", str(out)])
    model, tokenizer, c = checkpoint.load_model(path)
    sd = load_file(out / "open_clip_model.safetensors")
    cfg = json.loads((out / "open_clip_config.json").read_text())["model_cfg"]
    assert {k: tuple(v.shape) for k, v in sd.items()} == open_clip_keys(c)
    assert cfg["quick_gelu"] is False and cfg["text_cfg"]["pool_type"] == "argmax"
    assert cfg["vision_cfg"]["width"] // cfg["vision_cfg"]["head_width"] == c.vision_heads

    # open_clip's HFTokenizer: AutoTokenizer on the folder, padded to the context length.
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    text = hf_tokenizer(CAPTIONS, max_length=c.context_length, padding="max_length",
                        truncation=True, return_tensors="pt").input_ids  # fmt: skip
    images, labels, classes = load_folder(heldout)
    pixels = torch.stack([preprocess_eval(i, c.image_size) for i in images])
    with torch.no_grad():
        assert (oc_encode_image(sd, cfg, pixels) - model.encode_image(pixels)).abs().max() < 1e-4
        assert (
            oc_encode_text(sd, cfg, text) - model.encode_text(tokenizer(CAPTIONS))
        ).abs().max() < 1e-4
        weights = []
        for name in classes:
            prompts = hf_tokenizer([t.format(name) for t in TEMPLATES], max_length=c.context_length,
                                   padding="max_length", truncation=True, return_tensors="pt")  # fmt: skip
            mean = oc_encode_text(sd, cfg, prompts.input_ids).mean(0)
            weights.append(mean / mean.norm())
        predicted = (oc_encode_image(sd, cfg, pixels) @ torch.stack(weights).T).argmax(1).tolist()
    assert predicted == openwit_predictions(model, tokenizer, images, classes)


def test_a_sigmoid_loss_models_bias_is_kept(tmp_path):
    """An untrained SigLIP checkpoint (no run records): its logit bias goes to open_clip's
    `logit_bias` and to HF's config and card (CLIPModel has none), and HF still loads it."""
    tokenizer = CaptionTokenizer.train(CAPTIONS * 4, 300, MICRO.context_length)
    config = dataclasses.replace(MICRO, vocab_size=tokenizer.vocab_size, siglip=True)
    checkpoint.save_initial(tmp_path / "init.pt", config, tokenizer)
    for fmt in ("hf", "open_clip"):
        main(["export", "--checkpoint", str(tmp_path / "init.pt"), "--format", fmt,
              "--output", str(tmp_path / fmt)])  # fmt: skip
    assert load_file(tmp_path / "open_clip" / "open_clip_model.safetensors")["logit_bias"] == -10
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["openwit_logit_bias"] == -10
    transformers.CLIPModel.from_pretrained(tmp_path / "hf", local_files_only=True)
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "logit bias -10" in card and "Evaluation: none recorded" in card
