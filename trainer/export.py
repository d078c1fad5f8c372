"""`python -m trainer export`: a checkpoint in the layouts the ecosystem loads (HF, open_clip).

Both exports move the end-of-text token to the last id (swapping it with the token there, in
the vocabulary and in the embedding rows), as OpenAI's CLIP has it: open_clip pools the text
at `argmax(input_ids)` and transformers' CLIPTextTransformer falls back to that when
`eos_token_id == 2`, which is where openwit's tokenizer puts it. The swap changes no output.
The tokenizer is saved as a `tokenizer.json` that transformers' fast tokenizer (and
open_clip's HFTokenizer, through it) loads; weights are written as safetensors.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer import checkpoint
from trainer.model import CLIP
from trainer.tokenizer import EOT, PAD, SOT, CaptionTokenizer

FORMATS = ("hf", "open_clip")


@dataclass
class Source:
    """What an export writes: the model, its tokenizer with EOT last, and the run's records."""

    model: CLIP
    tokenizer_json: str  # EOT at the last id
    token_embedding: torch.Tensor  # (V, C), rows in the same order
    pad_id: int
    sot_id: int
    eot_id: int
    logit_scale: float  # log of the scale, clamped as the model's forward clamps it
    logit_bias: float | None
    payload: dict  # the checkpoint's other records (step, train settings)
    checkpoint_path: Path


def _swap_ids(text: str, a: int, b: int) -> str:
    """A tokenizer JSON with ids `a` and `b` exchanged, without truncation or padding (the
    caller's tokenizer arguments decide those)."""
    swap = {a: b, b: a}
    data = json.loads(text)
    vocab = data["model"]["vocab"]
    for token, index in vocab.items():
        vocab[token] = swap.get(index, index)
    for added in data["added_tokens"]:
        added["id"] = swap.get(added["id"], added["id"])
    for special in data["post_processor"]["special_tokens"].values():
        special["ids"] = [swap.get(i, i) for i in special["ids"]]
    data["truncation"] = data["padding"] = None
    return json.dumps(data, ensure_ascii=False)


def load_source(path: str | Path) -> Source:
    payload = checkpoint.load(path)
    model, tokenizer, _ = checkpoint.model_from_payload(payload)
    last = tokenizer.vocab_size - 1
    embedding = model.text.token.weight.detach().clone()
    embedding[[tokenizer.eot_id, last]] = embedding[[last, tokenizer.eot_id]]
    bias = model.logit_bias
    return Source(
        model=model,
        tokenizer_json=_swap_ids(tokenizer.to_json(), tokenizer.eot_id, last),
        token_embedding=embedding,
        pad_id=tokenizer.pad_id,
        sot_id=tokenizer.sot_id,
        eot_id=last,
        logit_scale=min(model.logit_scale.item(), math.log(100)),
        logit_bias=None if bias is None else bias.item(),
        payload={k: v for k, v in payload.items() if k not in ("model", "optimizer")},
        checkpoint_path=Path(path),
    )


def write_tokenizer(source: Source, folder: Path) -> None:
    """tokenizer.json and the configs with which `AutoTokenizer.from_pretrained` loads it."""
    context = source.model.config.context_length
    (folder / "tokenizer.json").write_text(source.tokenizer_json, encoding="utf-8")
    specials = {"bos_token": SOT, "eos_token": EOT, "pad_token": PAD}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": context,
              "padding_side": "right", "truncation_side": "right", **specials,
              "model_input_names": ["input_ids", "attention_mask"]}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))


def check_tokenizer(source: Source, captions: list[str]) -> None:
    """The exported tokenizer gives the checkpoint's ids, EOT renumbered (a guard on the swap)."""
    context = source.model.config.context_length
    original = CaptionTokenizer.from_json(source.payload["tokenizer"], context)
    exported = CaptionTokenizer.from_json(source.tokenizer_json, original.context_length)
    expected = original(captions)
    eot, last = original.eot_id, source.eot_id
    expected = torch.where(expected == eot, last, torch.where(expected == last, eot, expected))
    if not torch.equal(exported(captions), expected):
        raise RuntimeError("the exported tokenizer does not reproduce the checkpoint's")


def export(path: str | Path, fmt: str, output: str | Path, stats: str | None = None) -> Path:
    """Write the checkpoint at `path` to the folder `output` in `fmt` (hf or open_clip)."""
    from trainer import export_hf, export_open_clip, model_card

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: one of {', '.join(FORMATS)}")
    source = load_source(path)
    check_tokenizer(source, ["a photo of a red circle.", "Ünïcode, émoji 🐶 and   spaces"])
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    (export_hf if fmt == "hf" else export_open_clip).write(source, out)
    write_tokenizer(source, out)
    (out / "README.md").write_text(model_card.render(source, fmt, stats), encoding="utf-8")
    return out
