"""`python -m trainer train|eval|init|export ...` (train also under torchrun, on many processes)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import typing

import torch

from trainer import checkpoint, resume
from trainer.evaluate import (
    TEMPLATES,
    load_folder,
    load_labelled_shards,
    load_shards,
    read_classes,
    retrieval,
    zero_shot,
)
from trainer.export import FORMATS, export
from trainer.model import CONFIGS
from trainer.tokenizer import CaptionTokenizer
from trainer.train import TrainConfig, train


def _add_dataclass_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field; a flag not given is absent from the parsed namespace (the
    dataclass's default applies, or, on resume, the checkpoint's setting)."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        flag = "--" + field.name.replace("_", "-")
        hint = hints[field.name]
        kind = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
        if kind is bool:
            parser.add_argument(flag, action="store_true", default=argparse.SUPPRESS)
        else:
            required = field.default is dataclasses.MISSING
            parser.add_argument(flag, type=kind, required=required, default=argparse.SUPPRESS)


def evaluate(args: argparse.Namespace) -> dict:
    """Zero-shot (folder or labelled shards) and retrieval metrics of a checkpoint."""
    model, tokenizer, _ = checkpoint.load_model(args.checkpoint, args.device)
    names = read_classes(args.classes) if args.classes else None
    templates = args.templates.split("|")
    summary = {"checkpoint": args.checkpoint}
    if args.folder:
        found = zero_shot(model, tokenizer, *load_folder(args.folder, names), templates)
        summary.update({f"zeroshot_{k}": v for k, v in found.items()})
    if args.label_shards:
        labelled = load_labelled_shards(args.label_shards, args.label_field, names)
        found = zero_shot(model, tokenizer, *labelled, templates)
        summary.update({f"zeroshot_shards_{k}": v for k, v in found.items()})
    if args.shards:
        summary.update(retrieval(model, tokenizer, *load_shards(args.shards, args.limit)))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(summary, f, indent=2)
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser("train", help="pretrain CLIP on shards")
    _add_dataclass_args(train_parser, TrainConfig)
    ev = commands.add_parser("eval", help="zero-shot and retrieval of a checkpoint")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--folder", help="zero-shot: a folder per class, named in English")
    ev.add_argument("--label-shards", help="zero-shot: shards whose JSON has --label-field")
    ev.add_argument("--label-field", default="label", help="a class index or a class name")
    ev.add_argument("--classes", help="class names, one a line (per sorted folder, or index)")
    ev.add_argument("--templates", default="|".join(TEMPLATES), help="'|'-separated, {} = class")
    ev.add_argument("--shards", help="retrieval: held-out shards")
    ev.add_argument("--limit", type=int, default=5000, help="at most this many retrieval pairs")
    ev.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ev.add_argument("--output", help="write the JSON here too")
    init = commands.add_parser("init", help="a randomly initialised checkpoint")
    init.add_argument("--model", default="tiny", choices=sorted(CONFIGS))
    init.add_argument("--captions", required=True, help="a text file, one caption a line")
    init.add_argument("--vocab-size", type=int, default=4096)
    init.add_argument("--output", required=True)
    ex = commands.add_parser("export", help="a checkpoint for transformers or open_clip")
    ex.add_argument("--checkpoint", required=True)
    ex.add_argument("--format", required=True, choices=FORMATS)
    ex.add_argument("--output", required=True, help="a folder")
    ex.add_argument("--stats", help="the shards' stats.json (default: found beside them)")
    args = parser.parse_args(argv)

    if args.command == "train":
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        try:
            settings = resume.inherit({k: v for k, v in vars(args).items() if k in fields})
        except (ValueError, OSError) as exc:  # a conflicting flag, no such checkpoint
            train_parser.error(str(exc))
        result = train(TrainConfig(**settings))
        summary = {"final_loss": result["losses"][-1] if result["losses"] else None,
                   "skipped_samples": result["skipped_samples"],
                   "read_errors": result["read_errors"], **result["metrics"]}  # fmt: skip
    elif args.command == "eval":
        summary = evaluate(args)
    elif args.command == "export":
        folder = export(args.checkpoint, args.format, args.output, args.stats)
        summary = {"export": str(folder), "format": args.format}
    else:
        with open(args.captions, encoding="utf-8") as f:
            captions = [line.strip() for line in f if line.strip()]
        config = CONFIGS[args.model]
        tokenizer = CaptionTokenizer.train(captions, args.vocab_size, config.context_length)
        config = dataclasses.replace(config, vocab_size=tokenizer.vocab_size)
        checkpoint.save_initial(args.output, config, tokenizer)
        summary = {"checkpoint": args.output, "vocab_size": tokenizer.vocab_size}
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line from rank 0
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    main()
