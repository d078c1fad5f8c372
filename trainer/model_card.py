"""The exported model's README.md: what it is, the data it saw, its training and its scores.

The data section is the curation funnel of the shards' `stats.json` (found beside the shards
or one folder up, or given with `--stats`); the evaluation is the run's `final_metrics.json`
and the last row of `eval.csv`, next to the checkpoint's folder. What is unknown says so.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from trainer.export import Source
from trainer.shards import expand_shards

USAGE = {
    "hf": """```python
from transformers import AutoProcessor, CLIPModel
model, processor = CLIPModel.from_pretrained(FOLDER), AutoProcessor.from_pretrained(FOLDER)
inputs = processor(text=["a photo of a dog"], images=image, return_tensors="pt", padding=True, truncation=True)
outputs = model(**inputs)  # outputs.logits_per_image, image_embeds, text_embeds
```""",
    "open_clip": """```python
import open_clip
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:FOLDER")
tokenizer = open_clip.get_tokenizer("local-dir:FOLDER")
```""",
}


def find_stats(shards: str | None) -> Path | None:
    """stats.json of the pipeline output the (local) shards came from."""
    specs = expand_shards(shards) if shards else []
    if not specs or "://" in specs[0] or specs[0].startswith("pipe:"):
        return None
    folder = Path(specs[0]).parent
    return next((p for p in (folder / "stats.json", folder.parent / "stats.json")
                 if p.is_file()), None)  # fmt: skip


def _data(stats_path: Path | None) -> list[str]:
    if stats_path is None:
        return ["Curation statistics: unknown (no stats.json found beside the shards)."]
    from manifests.report import funnel

    stats = json.loads(stats_path.read_text())
    lines = [f"Curated by openwit from {stats['input_rows']} URL-caption rows to "
             f"{stats.get('samples', '?')} image-text pairs (`{stats_path}`):", "",
             "| stage | in | dropped | out |", "|---|---:|---:|---:|"]  # fmt: skip
    lines += [f"| {r['stage']} | {r['rows_in']} | {sum(r['dropped'].values())} | {r['rows_out']} |"
              for r in funnel(stats)]  # fmt: skip
    return lines


def _evaluation(run: Path) -> list[str]:
    found: dict = {}
    if (run / "eval.csv").is_file():
        with (run / "eval.csv").open() as f:
            rows = list(csv.DictReader(f))
        found = dict(rows[-1]) if rows else {}
    if (run / "final_metrics.json").is_file():
        found.update(json.loads((run / "final_metrics.json").read_text()))
    if not found:
        return ["Evaluation: none recorded with this checkpoint."]
    lines = ["| metric | value |", "|---|---:|"]
    for name, value in found.items():
        try:
            lines.append(f"| {name} | {float(value):.4g} |")
        except (TypeError, ValueError):
            lines.append(f"| {name} | {value} |")
    return lines


def render(source: Source, fmt: str, stats: str | None = None) -> str:
    c, train = source.model.config, source.payload.get("train", {})
    run = source.checkpoint_path.parent
    run = run.parent if run.name == "checkpoints" else run
    world = len(source.payload.get("data", [])) or 1
    step = source.payload.get("step", 0)
    per_step = train.get("batch_size", 0) * train.get("accumulate", 1) * world
    stats_path = Path(stats) if stats else find_stats(train.get("shards"))
    lines = [
        "---", "library_name: " + ("transformers" if fmt == "hf" else "open_clip"),
        "tags: [clip, openwit, zero-shot-image-classification]", "---", "",
        "# CLIP pretrained with openwit", "",
        f"A ViT image tower ({c.image_size} px, patch {c.patch_size}, width {c.vision_width}, "
        f"layers {c.vision_layers}, heads {c.vision_heads}) and a causal text tower (context "
        f"{c.context_length}, vocabulary {c.vocab_size}, width {c.text_width}, layers "
        f"{c.text_layers}, heads {c.text_heads}) projected to {c.embed_dim} dimensions; exact "
        "GELU; a byte-level BPE tokenizer trained on the captions.", "",
        "## Use", "", USAGE[fmt], "",
        "## Data", "", f"Shards: `{train.get('shards', 'unknown')}`", "", *_data(stats_path), "",
        "## Training", "",
        f"{step} steps of {train.get('steps', step)} ({step * per_step} samples seen, "
        f"{per_step} per step over {world} processes); loss `{train.get('loss', '?')}`, "
        f"lr {train.get('lr', '?')}, warmup {train.get('warmup', '?')}, weight decay "
        f"{train.get('weight_decay', '?')}, seed {train.get('seed', '?')}.", "",
        "## Evaluation", "", *_evaluation(run), "",
    ]  # fmt: skip
    if source.logit_bias is not None:
        lines += [f"Trained with the sigmoid loss: logit bias {source.logit_bias:.4f}"
                  + (" (not part of transformers' CLIPModel: add it to logits_per_image)."
                     if fmt == "hf" else "."), ""]  # fmt: skip
    return "\n".join(lines)
