"""The model, losses, schedule and FLOP count, and the `init` / `eval` commands."""

from __future__ import annotations

import dataclasses
import json
import math
import random

import pytest
import torch
import webdataset as wds
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from trainer_helpers import CLASSES, MICRO, jpeg, write_class_folder

from trainer import checkpoint
from trainer.__main__ import main
from trainer.flops import forward_flops, peak_flops
from trainer.loss import clip_loss, siglip_loss
from trainer.model import CLIP, CONFIGS
from trainer.tokenizer import CaptionTokenizer
from trainer.train import TrainConfig, lr_at, param_groups

EOT = 2


@pytest.fixture(autouse=True)
def threads():
    torch.set_num_threads(2)


def _batch(b: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(b, 3, 32, 32, generator=g)  # (B, 3, H, W)
    tokens = torch.randint(3, 50, (b, 12), generator=g)  # (B, T)
    tokens[:, 6], tokens[:, 7:] = EOT, 0  # text, <eot>, padding
    return images, tokens


def test_features_are_normalised_and_the_logit_scale_is_clamped():
    torch.manual_seed(0)
    model = CLIP(MICRO, EOT)
    assert model.logit_scale.exp().item() == pytest.approx(1 / 0.07)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000))
    image, text, scale, bias = model(*_batch())
    assert image.shape == text.shape == (4, 32) and bias is None
    assert torch.allclose(image.norm(dim=-1), torch.ones(4)) and scale.item() == pytest.approx(100)


def test_text_is_pooled_at_eot_and_never_sees_what_follows():
    torch.manual_seed(0)
    model = CLIP(MICRO, EOT).eval()
    _, tokens = _batch()
    changed = tokens.clone()
    changed[:, 8:] = 7  # after <eot>: must not matter
    assert torch.allclose(model.encode_text(tokens), model.encode_text(changed), atol=1e-6)
    changed[:, 3] = 9  # before <eot>: must
    assert not torch.allclose(model.encode_text(tokens), model.encode_text(changed), atol=1e-4)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        model = CLIP(dataclasses.replace(MICRO, grad_checkpointing=checkpointed), EOT)
        image, text, scale, _ = model(*_batch())
        clip_loss(image, text, scale).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_losses_match_their_definitions():
    torch.manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    logits = 10 * image @ text.T
    log_p_image, log_p_text = logits.log_softmax(1), logits.T.log_softmax(1)
    expected = -(log_p_image.diagonal().mean() + log_p_text.diagonal().mean()) / 2
    assert clip_loss(image, text, torch.tensor(10.0)).item() == pytest.approx(expected.item())
    sign = 2 * torch.eye(5) - 1
    sigmoid = -torch.nn.functional.logsigmoid(sign * (logits - 3)).sum() / 5
    got = siglip_loss(image, text, torch.tensor(10.0), torch.tensor(-3.0))
    assert got.item() == pytest.approx(sigmoid.item(), rel=1e-5)


def test_flop_count_matches_torch_flop_counter():
    model = CLIP(MICRO, EOT)
    images, tokens = _batch(b=6)
    # The math backend runs attention as matmuls, which the counter sees on a CPU too.
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        image, text, scale, _ = model(images, tokens)
        clip_loss(image, text, scale)
    assert counter.get_total_flops() == pytest.approx(6 * forward_flops(MICRO, batch=6), rel=0.01)
    assert peak_flops("NVIDIA H200") == 989e12 and peak_flops("NVIDIA A10") == 125e12


def test_schedule_and_weight_decay_groups():
    cfg = TrainConfig(shards="-", output="-", steps=100, warmup=10, lr=1e-3)
    assert lr_at(0, cfg) == pytest.approx(1e-4) and lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(55, cfg) == pytest.approx(5e-4) and lr_at(99, cfg) < 1e-6
    model = CLIP(dataclasses.replace(MICRO, siglip=True), EOT)
    decay, no_decay = param_groups(model, 0.2)
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {
        "logit_scale",
        "logit_bias",
        "visual.cls",
        "text.pos",
        "visual.ln_pre.weight",
    } <= skipped
    assert all(names[id(p)].endswith("weight") for p in decay["params"])
    assert "visual.patch.weight" in {names[id(p)] for p in decay["params"]}


def test_init_then_eval_prints_one_json_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(CONFIGS, "micro", MICRO)
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(f"a {c} {s}" for c, s in CLASSES * 20))
    ckpt = tmp_path / "init.pt"
    main(["init", "--model", "micro", "--captions", str(captions), "--vocab-size", "300",
          "--output", str(ckpt)])  # fmt: skip
    model, tokenizer, config = checkpoint.load_model(ckpt)
    assert config.vocab_size == tokenizer.vocab_size <= 300 and not model.training
    assert tokenizer(["a red circle"]).shape == (1, MICRO.context_length)
    folder = write_class_folder(tmp_path / "classes", per_class=3)
    shards = _labelled_shards(tmp_path / "labelled.tar")
    capsys.readouterr()
    main(["eval", "--checkpoint", str(ckpt), "--folder", str(folder), "--label-shards", shards,
          "--shards", shards, "--output", str(tmp_path / "eval.json")])  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary == json.loads((tmp_path / "eval.json").read_text())
    assert summary["zeroshot_images"] == 12 and summary["zeroshot_shards_images"] == 8
    assert summary["zeroshot_shards_classes"] == 4 and 0 <= summary["zeroshot_top1"] <= 1
    assert summary["image_to_text_R@10"] == 1.0  # 8 pairs: the true caption is always in 10


def _labelled_shards(path) -> str:
    rng = random.Random(0)
    with wds.TarWriter(str(path)) as tar:
        for index in range(8):
            color, shape = CLASSES[index % 4]
            tar.write({"__key__": f"{index:015d}", "jpg": jpeg(color, shape, rng),
                       "txt": f"a {color} {shape}",
                       "json": json.dumps({"label": f"{color} {shape}"}).encode()})  # fmt: skip
    return str(path)


def test_tokenizer_frames_truncates_and_pads_and_survives_its_json():
    tokenizer = CaptionTokenizer.train([f"a {c} {s}" for c, s in CLASSES] * 10, 300, 8)
    tokens = tokenizer(["a red circle", "a blue square " * 20])  # (2, 8)
    assert tokens.shape == (2, 8) and tokens.dtype == torch.long
    assert (tokens[:, 0] == tokenizer.sot_id).all() and tokens[1, -1] == tokenizer.eot_id
    eot = tokens[0].tolist().index(tokenizer.eot_id)
    assert 2 <= eot < 7 and (tokens[0, eot + 1 :] == tokenizer.pad_id).all()
    again = CaptionTokenizer.from_json(tokenizer.to_json(), 8)
    assert torch.equal(again(["a red circle", "a blue square " * 20]), tokens)
