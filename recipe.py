"""One command from URL lists to an evaluated CLIP: crawl and curate, train, evaluate, report.

    python recipe.py RECIPE.yaml [--only crawl,train,eval,report] [--set KEY=VALUE ...]

A recipe (YAML) names the output folder and each step's options:

    output: runs/my-corpus          # train -> OUTPUT/train, eval.json, report.html
    crawl_output: gs://b/corpus     # optional; default OUTPUT/crawl (a runner's workers write it)
    crawl:                          # beam_runner options, flag names without the dashes
      input: gs://my-bucket/lists/*.parquet
      filters: lang,caption,image
      queries: gs://my-bucket/queries.tsv
    runner:                         # Beam pipeline options; without: the local FnApiRunner
      runner: DataflowRunner        # or FlinkRunner, SparkRunner, PortableRunner (DaskRunner: refused)
      project: my-project
    train:                          # trainer options (`python -m trainer train --help`)
      model: ViT-B-32
      steps: 20000
    launch: {mode: torchrun, nnodes: 4, nproc_per_node: 8, rdzv_endpoint: head:29500}
    eval:                           # zero-shot folder and/or retrieval shards
      folder: /data/eval/imagenet-val

Strings may use `{output}` and `{recipe_dir}`. Each step is skipped when its output is already
complete: the crawl by its fingerprint in `stats.json` (beam_runner's own resume), training by
`final_metrics.json` reaching the recipe's steps, evaluation by `eval.json`. With `launch.mode:
torchrun` the training command for the cluster is printed rather than run, and the recipe stops
there; rerun it when training is done to evaluate and report.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
from pathlib import Path

import yaml

import beam_runner
from manifests.report import build_report
from pipeline import runners

STEPS = ("crawl", "train", "eval", "report")
log = logging.getLogger("recipe")


def load_recipe(path: str, overrides: list[str] = ()) -> dict:
    """The recipe with `{output}`/`{recipe_dir}` filled in; `overrides` are `section.key=value`."""
    recipe = yaml.safe_load(Path(path).read_text()) or {}
    for item in overrides:
        dotted, _, value = item.partition("=")
        *sections, key = dotted.split(".")
        target = recipe
        for section in sections:
            target = target.setdefault(section, {})
        target[key] = yaml.safe_load(value)
    if "output" not in recipe or "crawl" not in recipe:
        raise ValueError(f"{path}: a recipe needs `output` and a `crawl` section")
    names = {"recipe_dir": str(Path(path).resolve().parent)}
    names["output"] = str(recipe["output"]).format(**names)
    return _fill(recipe, names)


def _fill(value, names: dict):
    if isinstance(value, str):
        return value.format(**names)
    if isinstance(value, dict):
        return {k: _fill(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, names) for v in value]
    return value


def as_flags(options: dict) -> list[str]:
    """`{"max-per-query": 80, "no-resume": true}` -> `["--max-per-query", "80", "--no-resume"]`."""
    flags = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is not False and value is not None:  # `0 in (False,)`: 0 is a value
            flags += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return flags


def crawl_output(recipe: dict) -> str:
    return recipe.get("crawl_output") or str(Path(recipe["output"]) / "crawl")


def crawl_argv(recipe: dict) -> list[str]:
    """beam_runner's arguments for the crawl section; an option that no stage of the list (nor
    the run) takes is an error here, before any step runs, not a flag Beam would ignore."""
    argv = ["--output", crawl_output(recipe), *as_flags(recipe["crawl"])]
    _, unknown = beam_runner.make_parser(argv).parse_known_args(argv)
    if unknown:
        raise ValueError(f"crawl: no stage takes {' '.join(unknown)} (beam_runner.py --help)")
    return argv + [f"--{k}={v}" for k, v in (recipe.get("runner") or {}).items()]


def crawl(recipe: dict) -> str:
    out = crawl_output(recipe)
    argv = crawl_argv(recipe)
    log.info("crawl: beam_runner %s", shlex.join(argv))
    if beam_runner.run(argv) is None:
        log.info("crawl: %s is already complete", out)
    return out


def train_options(recipe: dict) -> dict:
    out = Path(recipe["output"])
    options = {"shards": f"{crawl_output(recipe)}/shards/*.tar", "output": str(out / "train")}
    options.update({k.replace("_", "-"): v for k, v in (recipe.get("train") or {}).items()})
    if (recipe.get("eval") or {}).get("folder") and "eval-folder" not in options:
        options["eval-folder"] = recipe["eval"]["folder"]
    return options


def torchrun_command(recipe: dict) -> str:
    launch = recipe.get("launch") or {}
    flags = {k: launch[k] for k in ("nnodes", "nproc_per_node", "rdzv_endpoint") if k in launch}
    flags = {"nnodes": 1, "nproc_per_node": 1, **flags}
    rendezvous = ["--rdzv_backend=c10d", f"--rdzv_endpoint={flags.pop('rdzv_endpoint')}"] if (
        "rdzv_endpoint" in flags) else ["--standalone"]  # fmt: skip
    head = ["torchrun", *(f"--{k}={v}" for k, v in flags.items()), *rendezvous]
    options = {**train_options(recipe), "resume": "latest"}  # a restarted job continues
    return shlex.join([*head, "-m", "trainer", "train", *as_flags(options)])


def trained_steps(folder: Path) -> int:
    """The step of the latest checkpoint in a training output folder (0 when there is none)."""
    path = folder / "checkpoints" / "latest.pt"
    if not path.exists():
        return 0
    from trainer.checkpoint import read_step

    return read_step(path)


def train(recipe: dict) -> bool:
    """Train locally, or print the torchrun command; True when training is finished."""
    options = train_options(recipe)
    from trainer.train import TrainConfig

    steps = int(options.get("steps", TrainConfig.steps))
    if trained_steps(Path(options["output"])) >= steps:
        log.info("train: %s already holds step %d", options["output"], steps)
        return True
    if (recipe.get("launch") or {}).get("mode", "local") == "torchrun":
        print("Run the training on the cluster (each node), then rerun this recipe:")
        print("  " + torchrun_command(recipe))
        return False
    from trainer.__main__ import main as trainer_main

    trainer_main(["train", *as_flags({**options, "resume": "latest"})])
    return True


def evaluate(recipe: dict) -> dict | None:
    settings = recipe.get("eval") or {}
    out = Path(recipe["output"])
    target = out / "eval.json"
    if target.exists():
        log.info("eval: %s is already complete", target)
        return json.loads(target.read_text())
    if not settings:
        return None
    from trainer.__main__ import main as trainer_main

    checkpoint = out / "train" / "checkpoints" / "latest.pt"
    options = {"checkpoint": str(checkpoint), "output": str(target), **settings}
    return trainer_main(["eval", *as_flags(options)])


def run(path: str, only: tuple[str, ...] = STEPS, overrides: list[str] = ()) -> dict:
    """Run the recipe's steps in order; returns what each produced."""
    recipe = load_recipe(path, overrides)
    runners.check((recipe.get("runner") or {}).get("runner"))  # before any step runs
    crawl_argv(recipe)
    out = Path(recipe["output"])
    done: dict = {}
    if "crawl" in only:
        done["crawl"] = crawl(recipe)
    if "train" in only and recipe.get("train") is not None:
        if not train(recipe):
            return done
        done["train"] = str(out / "train")
    if "eval" in only:
        done["eval"] = evaluate(recipe)
    if "report" in only:
        train_dir = out / "train" if (out / "train").exists() else None
        if "://" in crawl_output(recipe):
            log.info(
                "report: copy or mount %s, then python -m manifests.report", crawl_output(recipe)
            )
        else:
            report = build_report(Path(crawl_output(recipe)), train_dir, out / "report.html")
            done["report"] = str(report)
    return done


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("recipe")
    parser.add_argument("--only", default=",".join(STEPS), help="steps to run, comma-separated")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a recipe value, e.g. --set train.steps=100")  # fmt: skip
    args = parser.parse_args(argv)
    only = tuple(step.strip() for step in args.only.split(",") if step.strip())
    unknown = set(only) - set(STEPS)
    if unknown:
        parser.error(f"unknown steps {sorted(unknown)}; choose from {', '.join(STEPS)}")
    try:
        return run(args.recipe, only, args.set)
    except runners.RefusedRunner as refused:
        parser.exit(2, f"{parser.prog}: error: {args.recipe}: {refused}\n")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    main()
