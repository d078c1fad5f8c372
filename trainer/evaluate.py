"""Zero-shot classification and image-text retrieval, the way CLIP is judged."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from trainer.data import expand_shards, preprocess_eval
from trainer.model import CLIP
from trainer.tokenizer import CaptionTokenizer

TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "{}")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".gif", ".webp"}


@torch.no_grad()
def _embed_images(
    model: CLIP, images: list[Image.Image], size: int, batch: int = 64
) -> torch.Tensor:
    out = [model.encode_image(torch.stack([preprocess_eval(i, size) for i in images[s : s + batch]]))
           for s in range(0, len(images), batch)]  # fmt: skip
    return torch.cat(out)


@torch.no_grad()
def _embed_texts(model: CLIP, tokenizer: CaptionTokenizer, texts: list[str], batch: int = 256):
    return torch.cat(
        [model.encode_text(tokenizer(texts[s : s + batch])) for s in range(0, len(texts), batch)]
    )


def load_folder(folder: str | Path) -> tuple[list[Image.Image], list[int], list[str]]:
    """Images of a folder per class (the folder name is the class name)."""
    classes = sorted(p.name for p in Path(folder).iterdir() if p.is_dir())
    images, labels = [], []
    for index, name in enumerate(classes):
        for file in sorted((Path(folder) / name).iterdir()):
            if file.suffix.lower() in IMAGE_EXTENSIONS:
                images.append(Image.open(file).copy())
                labels.append(index)
    return images, labels, classes


@torch.no_grad()
def zero_shot(model: CLIP, tokenizer: CaptionTokenizer, images: list[Image.Image],
              labels: list[int], classes: list[str], templates=TEMPLATES) -> dict:  # fmt: skip
    """Top-1, top-5 and mean per-class recall, classifying by the classes' English names."""
    model.eval()
    weights = []
    for name in classes:
        embedded = _embed_texts(model, tokenizer, [t.format(name) for t in templates]).mean(0)
        weights.append(embedded / embedded.norm())
    logits = _embed_images(model, images, model.config.image_size) @ torch.stack(weights).T
    target = torch.tensor(labels)
    top = logits.topk(min(5, len(classes)), dim=1).indices
    hit1, hit5 = top[:, 0] == target, (top == target[:, None]).any(1)
    recalls = [
        hit1[target == c].float().mean().item() for c in range(len(classes)) if (target == c).any()
    ]
    return {"top1": hit1.float().mean().item(), "top5": hit5.float().mean().item(),
            "mean_per_class_recall": float(np.mean(recalls)), "images": len(images),
            "classes": len(classes)}  # fmt: skip


def load_shards(pattern: str, limit: int = 5000) -> tuple[list[Image.Image], list[str]]:
    images, captions = [], []
    for sample in wds.WebDataset(expand_shards(pattern), shardshuffle=False, empty_check=False):
        images.append(Image.open(io.BytesIO(sample["jpg"])).copy())
        captions.append(sample["txt"].decode("utf-8"))
        if len(images) >= limit:
            break
    return images, captions


@torch.no_grad()
def retrieval(model: CLIP, tokenizer: CaptionTokenizer, images: list[Image.Image],
              captions: list[str]) -> dict:  # fmt: skip
    """Image->text and text->image recall@1/5/10 over paired images and captions."""
    model.eval()
    sims = (
        _embed_images(model, images, model.config.image_size)
        @ _embed_texts(model, tokenizer, captions).T
    )
    truth = torch.arange(len(images))
    out = {}
    for name, matrix in (("image_to_text", sims), ("text_to_image", sims.T)):
        ranks = (matrix > matrix[truth, truth][:, None]).sum(1)  # how many beat the true pair
        for k in (1, 5, 10):
            out[f"{name}_R@{k}"] = (ranks < k).float().mean().item()
    return out
