"""Zero-shot classification and image-text retrieval, the way CLIP is judged.

Zero-shot names each class in English through prompt templates and picks the class whose
averaged text embedding is nearest the image's; its images come from a folder per class or
from shards whose metadata carries a label. Retrieval ranks held-out shards' captions for each
image and images for each caption.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from trainer.data import preprocess_eval
from trainer.model import CLIP
from trainer.shards import IMAGE_KEYS, expand_shards, read_shards
from trainer.tokenizer import CaptionTokenizer

log = logging.getLogger(__name__)
TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "{}")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".gif", ".webp"}


def _device(model: CLIP) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def _embed_images(model: CLIP, images: list[Image.Image], batch: int = 64) -> torch.Tensor:
    size, device = model.config.image_size, _device(model)
    out = []
    for s in range(0, len(images), batch):
        pixels = torch.stack([preprocess_eval(i, size) for i in images[s : s + batch]])
        out.append(model.encode_image(pixels.to(device)).float().cpu())  # (b, D)
    return torch.cat(out)  # (N, D)


@torch.no_grad()
def _embed_texts(model: CLIP, tokenizer: CaptionTokenizer, texts: list[str], batch: int = 256):
    device = _device(model)
    out = [model.encode_text(tokenizer(texts[s : s + batch]).to(device)).float().cpu()
           for s in range(0, len(texts), batch)]  # fmt: skip
    return torch.cat(out)  # (N, D)


def read_classes(path: str | Path) -> list[str]:
    """Class names, one a line (ImageNet's, say, in the order of its sorted folders)."""
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def class_folders(folder: str | Path) -> list[Path]:
    """A class-per-folder tree's class folders, in the order their labels are numbered."""
    return sorted(p for p in Path(folder).iterdir() if p.is_dir())


def load_folder(folder: str | Path, names: list[str] | None = None):
    """Images of a folder per class: (images, labels, class names). The names are the folders'
    unless `names` gives one per folder (sorted), as for ImageNet's synset folders."""
    folders = class_folders(folder)
    if names is not None and len(names) != len(folders):
        raise ValueError(f"{len(names)} class names for {len(folders)} class folders")
    images, labels = [], []
    for index, path in enumerate(folders):
        for file in sorted(path.iterdir()):
            if file.suffix.lower() in IMAGE_EXTENSIONS:
                images.append(Image.open(file).copy())
                labels.append(index)
    return images, labels, names or [p.name for p in folders]


def _shard_samples(pattern: str, limit: int):
    """(image, caption, metadata) of the shards' samples, undecodable ones skipped and logged."""
    errors = 0

    def read_error(exc: Exception) -> bool:
        nonlocal errors
        errors += 1
        log.warning("eval: skipped unreadable shard data (%d so far): %s", errors, exc)
        return True

    reader = read_shards(expand_shards(pattern), read_error)  # tar members capped in size
    count, skipped = 0, 0
    for sample in reader:
        if count >= limit:
            break
        try:
            data = next(sample[k] for k in IMAGE_KEYS if k in sample)
            image = Image.open(io.BytesIO(data))
            image.load()
            meta = json.loads(sample["json"]) if "json" in sample else {}
            yield image, sample.get("txt", b"").decode("utf-8"), meta
            count += 1
        except Exception as exc:
            skipped += 1
            log.warning("eval: skipped sample %s (%d so far): %r", sample.get("__key__"),
                        skipped, exc)  # fmt: skip


def load_shards(pattern: str, limit: int = 5000) -> tuple[list[Image.Image], list[str]]:
    """Paired images and captions of held-out shards (retrieval)."""
    pairs = [(image, caption) for image, caption, _ in _shard_samples(pattern, limit)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def load_labelled_shards(pattern: str, field: str = "label", names: list[str] | None = None,
                         limit: int = 50000):  # fmt: skip
    """Images of shards whose JSON metadata has `field`: a class index into `names`, or the
    class name itself. Returns (images, labels, class names)."""
    images, raw = [], []
    for image, _, meta in _shard_samples(pattern, limit):
        if field in meta:
            images.append(image)
            raw.append(meta[field])
    if names is None:
        names = sorted({str(r) for r in raw})
    index = {name: i for i, name in enumerate(names)}
    labels = [r if isinstance(r, int) else index[str(r)] for r in raw]
    return images, labels, names


@torch.no_grad()
def class_logits(model: CLIP, tokenizer: CaptionTokenizer, images: list[Image.Image],
                 classes: list[str], templates=TEMPLATES) -> torch.Tensor:  # fmt: skip
    """(N, classes) cosines of each image with each class's mean prompt embedding."""
    model.eval()
    weights = []
    for name in classes:
        embedded = _embed_texts(model, tokenizer, [t.format(name) for t in templates]).mean(0)
        weights.append(embedded / embedded.norm())
    return _embed_images(model, images) @ torch.stack(weights).T


@torch.no_grad()
def zero_shot(model: CLIP, tokenizer: CaptionTokenizer, images: list[Image.Image],
              labels: list[int], classes: list[str], templates=TEMPLATES) -> dict:  # fmt: skip
    """Top-1, top-5 and mean per-class recall, classifying by the classes' English names."""
    logits = class_logits(model, tokenizer, images, classes, templates)  # (N, classes)
    target = torch.tensor(labels)
    top = logits.topk(min(5, len(classes)), dim=1).indices
    hit1, hit5 = top[:, 0] == target, (top == target[:, None]).any(1)
    recalls = [
        hit1[target == c].float().mean().item() for c in range(len(classes)) if (target == c).any()
    ]
    return {"top1": hit1.float().mean().item(), "top5": hit5.float().mean().item(),
            "mean_per_class_recall": float(np.mean(recalls)), "images": len(images),
            "classes": len(classes)}  # fmt: skip


@torch.no_grad()
def retrieval(model: CLIP, tokenizer: CaptionTokenizer, images: list[Image.Image],
              captions: list[str]) -> dict:  # fmt: skip
    """Image->text and text->image recall@1/5/10 over paired images and captions."""
    model.eval()
    sims = _embed_images(model, images) @ _embed_texts(model, tokenizer, captions).T  # (N, N)
    truth = torch.arange(len(images))
    out = {}
    for name, matrix in (("image_to_text", sims), ("text_to_image", sims.T)):
        ranks = (matrix > matrix[truth, truth][:, None]).sum(1)  # how many beat the true pair
        for k in (1, 5, 10):
            out[f"{name}_R@{k}"] = (ranks < k).float().mean().item()
    return out
