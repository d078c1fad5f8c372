"""`bench/curation.py --ablate`'s parts: the pools (each curation stage alone), per-image
evaluation on every held-out style, bootstrap intervals, and the report's table and plot.

    python bench/ablation.py DIR [MORE...] [--baseline POOL] [--markdown]
    python bench/ablation.py --unseen WORK

prints the summary of the runs finished so far in DIR/runs/ (or DIR) as one JSON line, or as
the README's table; the runs of MORE folders (kept runs of other settings of a pool, measured
against DIR's raw) join as "POOL (FOLDER)". `--baseline POOL` measures every gain against
POOL instead of raw, paired on the same images: two pools compared directly, not by whether
their intervals against raw overlap. `--unseen WORK` prints, for each pool crawled in
an ablation's `--work` folder, the held-out concepts that no kept caption names.

    python bench/ablation.py --by-frequency WORK DIR [MORE...] [--markdown]

splits the held-out classes into three equal groups by how often WORK's input list names them
and prints each pool's top-1 and gain over raw per group.

    python bench/ablation.py --by-origin WORK POOL [--markdown]

prints, per origin of the input rows (each source's clean pictures, each kind of noise), how
many rows of POOL's manifest ended in each status: which pictures a stage drops.

A pool's flags are the demo recipe's crawl options of its stages only, so "all" is the recipe
(plus the score filter) and every stage alone is configured exactly as in "all".
"""

from __future__ import annotations

import base64
import html
import json
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import recipe  # noqa: E402
from manifests.report import figure_png  # noqa: E402

BASE = ("allowed-networks", "samples-per-shard", "timeout")  # every pool's
STAGE_FILTERS = {"text_filters": ("lang", "caption"), "image_filters": ("image",),
                 "score": ("score",)}  # fmt: skip
STAGE_KEYS = {"image_filters": ("min-side",), "dedup": ("dedup-scope", "decontaminate"),
              "balancing": ("queries", "max-per-query", "prebalance-headroom"),
              "score": ("score-checkpoint", "keep-top-fraction", "score-scope")}  # fmt: skip
STAGES = ("text_filters", "dedup", "balancing", "image_filters", "score")
VARIANTS = {  # of "all": its stages and options over the recipe's
    # balanced once, after the download and the dedup: the recipe's pass before the download
    # fills a head query's t x h slots with copies of a few pictures, which the dedup removes
    "all_balance_last": (set(STAGES), {"prebalance-headroom": 0}),
    # the demo recipe's own curation: every stage but the score filter, which needs a model
    "recipe": (set(STAGES) - {"score"}, {}),
    # the recipe with its repeats kept: whether the dedup's smaller pool, seen ten times,
    # costs top-1 at equal samples seen (balancing alone keeps the repeats and scores more)
    "recipe_no_dedup": (set(STAGES) - {"score", "dedup"}, {}),
}
BOOTSTRAP = 1000  # resamples of the evaluation images


def pool_flags(crawl: dict, stages: set[str]) -> list[str]:
    """The crawl flags of the recipe options `crawl` with only `stages` on."""
    known = {*BASE, "filters", *(k for keys in STAGE_KEYS.values() for k in keys)}
    if set(crawl) - known:  # else "all" would silently differ from the recipe
        raise ValueError(f"no ablation stage owns the recipe's {sorted(set(crawl) - known)}")
    options = {k: v for k, v in crawl.items() if k in BASE}
    for stage in (s for s in STAGES if s in stages):  # a set's order changes between processes
        options |= {k: v for k, v in crawl.items() if k in STAGE_KEYS.get(stage, ())}
    wanted = {f for stage in stages for f in STAGE_FILTERS.get(stage, ())}
    filters = [f for f in str(crawl.get("filters", "")).split(",") if f in wanted]
    if filters:
        options["filters"] = ",".join(filters)
    if "dedup" not in stages:
        options["dedup"] = "none"
    return recipe.as_flags(options)


def pools() -> dict[str, set[str]]:
    """raw, each stage alone, all of them (the score stage needs a model: last), and the
    variants of "all"."""
    variants = {variant: stages for variant, (stages, _) in VARIANTS.items()}
    return {"raw": set(), **{stage: {stage} for stage in STAGES}, "all": set(STAGES), **variants}


def flags_of_pools(crawl: dict) -> dict[str, list[str]]:
    """Every pool's crawl flags: its stages' options from `crawl`, and its variant's."""
    return {pool: pool_flags({**crawl, **VARIANTS.get(pool, (None, {}))[1]}, stages)
            for pool, stages in pools().items()}  # fmt: skip


def evaluate(checkpoint: Path, styles: dict[str, Path]) -> dict:
    """Per held-out style: each image's top-1 and top-5 hit (for the bootstrap) and retrieval
    recall of the images against their bare class names."""
    from trainer.checkpoint import load_model
    from trainer.evaluate import class_logits, load_folder, retrieval

    model, tokenizer, _ = load_model(checkpoint)
    out = {}
    for style, folder in styles.items():
        images, labels, classes = load_folder(folder)
        top = class_logits(model, tokenizer, images, classes).topk(min(5, len(classes)), 1)
        target = np.asarray(labels)
        predicted = top.indices.numpy()
        named = retrieval(model, tokenizer, images, [classes[label] for label in labels])
        out[style] = {
            "hits1": (predicted[:, 0] == target).astype(int).tolist(),
            "hits5": (predicted == target[:, None]).any(1).astype(int).tolist(),
            **{k: round(v, 4) for k, v in named.items() if k.endswith(("R@1", "R@5"))},
        }
    return out


def interval(hits: np.ndarray, rng: np.random.Generator) -> list[float]:
    """95% bootstrap interval of the mean of `hits` (one value per evaluation image)."""
    picks = rng.integers(0, len(hits), size=(BOOTSTRAP, len(hits)))
    return [round(float(q), 4) for q in np.percentile(hits[picks].mean(1), [2.5, 97.5])]


def summarise(runs: dict[str, list[dict]], seed: int = 0, baseline: str = "raw") -> dict:
    """Per pool and style: means over seeds, their spread, bootstrap intervals over images of
    the seed-averaged hits, and the gain over `baseline` with a paired interval (same
    resamples)."""
    out = {}
    for pool, seeds in runs.items():
        out[pool] = {}
        for style in seeds[0]:
            row = {}
            for k in ("hits1", "hits5"):
                per_seed = np.array([run[style][k] for run in seeds], dtype=float)  # (S, N)
                base = np.array([run[style][k] for run in runs[baseline]], dtype=float).mean(0)
                name = "top1" if k == "hits1" else "top5"
                rng = np.random.default_rng(seed)
                row[name] = round(float(per_seed.mean()), 4)
                row[f"{name}_ci"] = interval(per_seed.mean(0), rng)
                row[f"{name}_seeds"] = [round(float(v), 4) for v in per_seed.mean(1)]
                row[f"{name}_seed_std"] = (
                    round(float(per_seed.mean(1).std(ddof=1)), 4) if len(seeds) > 1 else 0.0
                )
                row[f"{name}_gain"] = round(float(per_seed.mean() - base.mean()), 4)
                row[f"{name}_gain_ci"] = interval(
                    per_seed.mean(0) - base, np.random.default_rng(seed)
                )
            for k in seeds[0][style]:
                if k.endswith(("R@1", "R@5")):
                    row[k] = round(float(np.mean([run[style][k] for run in seeds])), 4)
            out[pool][style] = row
    return out


def plot(summary: dict) -> bytes:
    """Top-1 per pool and held-out style, with the bootstrap intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    styles = list(summary[names[0]])
    figure, axis = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(styles)
    for i, style in enumerate(styles):
        means = [summary[p][style]["top1"] for p in names]
        low = [m - summary[p][style]["top1_ci"][0] for p, m in zip(names, means, strict=True)]
        high = [summary[p][style]["top1_ci"][1] - m for p, m in zip(names, means, strict=True)]
        x = np.arange(len(names)) + i * width
        axis.bar(x, means, width, yerr=[low, high], capsize=3, label=style)
    axis.set_xticks(np.arange(len(names)) + width * (len(styles) - 1) / 2, names, rotation=20)
    axis.set_ylabel("zero-shot top-1")
    axis.legend()
    data = figure_png(figure)
    plt.close(figure)
    return data


def section(result: dict) -> str:
    """The report's ablation section: the plot and one table row per pool and style."""
    summary = result["summary"]
    rows = []
    for pool, styles in summary.items():
        for style, row in styles.items():
            cells = [pool, style, result["samples"][pool], row["top1"], row["top1_ci"],
                     row["top1_seed_std"], row["top1_gain"], row["top1_gain_ci"], row["top5"],
                     row["top5_ci"], row.get("image_to_text_R@1"), row.get("text_to_image_R@1")]  # fmt: skip
            rows.append(
                "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"
            )
    head = ("pool", "held-out style", "pool size", "top-1", "95% CI", "seed std", "gain vs raw",
            "gain 95% CI", "top-5", "top-5 CI", "i2t R@1", "t2i R@1")  # fmt: skip
    image = base64.b64encode(plot(summary)).decode()
    return (
        f"<h2>Curation ablation</h2><p>{html.escape(result['note'])}</p>"
        f'<img src="data:image/png;base64,{image}"><table><tr>'
        + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>"
        + frequency_section(result["by_frequency"])
    )  # fmt: skip


def frequency_section(table: dict) -> str:
    """The report's table of `by_frequency`: top-1 and its gain per group of held-out classes."""
    groups = next(iter(table["groups"].values()))
    head = ["pool", "held-out style"] + [
        f"named {lo}-{hi}x: top-1 (gain, 95% CI)" for lo, hi in groups
    ]
    rows = []
    for pool, per_style in table.items():
        if pool == "groups":
            continue
        for style, cells in per_style.items():
            text = [f"{c['top1']:.3f} ({c['top1_gain']:+.3f}, {c['top1_gain_ci']})" for c in cells]
            rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>"
                                         for c in [pool, style, *text]) + "</tr>")  # fmt: skip
    return (
        "<h3>By how often the input list names the class</h3><table><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>"
    )  # fmt: skip


def settings_but_corpus(run: dict) -> str:
    """A run's settings but its corpus' digest: runs on corpora `--same-corpus-as` joined are
    one ablation, and the table marks them."""
    return json.dumps({**run["settings"], "corpus_sha256": None}, sort_keys=True)


def finished(folder: Path) -> dict[str, list[dict]]:
    """The runs stored in `folder` (`OUT/runs/`), per pool in `pools()` order and by seed; all
    made under one set of settings, or they are not one ablation."""
    runs = [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]
    if len({settings_but_corpus(run) for run in runs}) > 1:
        raise ValueError(f"{folder} holds runs made under different settings")
    by_pool = {pool: sorted((r for r in runs if r["pool"] == pool), key=lambda r: r["seed"])
               for pool in pools()}  # fmt: skip
    return {pool: rs for pool, rs in by_pool.items() if rs}


def gathered(folders: list[Path]) -> dict[str, list[dict]]:
    """The finished runs of every folder, the first one's under their pool's name and the
    others' as "POOL (FOLDER)"; all made under one set of settings."""
    runs: dict[str, list[dict]] = {}
    for i, folder in enumerate(folders):
        folder = folder / "runs" if (folder / "runs").is_dir() else folder
        for pool, rs in finished(folder).items():
            runs[pool if i == 0 else f"{pool} ({folder.name})"] = rs
    settings = {settings_but_corpus(run) for rs in runs.values() for run in rs}
    if len(settings) > 1:
        raise ValueError("the folders hold runs made under different settings")
    return runs


def markdown(runs: dict[str, list[dict]], summary: dict, baseline: str = "raw") -> str:
    """The README's table: a row per pool and held-out style, gains against `baseline`; a
    seed made on another corpus than raw's first run is marked with a dagger."""
    corpus = runs["raw"][0]["settings"].get("corpus_sha256")

    def number(value: float) -> str:
        return f"{value:.3f}"

    def span(pair: list[float]) -> str:
        return f"[{pair[0]:.3f}, {pair[1]:.3f}]"

    def gain(pool: str, row: dict, name: str) -> str:
        if pool == baseline:
            return ""
        return f"{row[name + '_gain']:+.3f} {span(row[name + '_gain_ci'])}"

    rows = [f"| pool (samples) | seeds | style | top-1 [95% CI] (per seed) | gain vs {baseline} [95% CI] "
            "| top-5 | top-5 gain [95% CI] | i->t R@1 | t->i R@1 |", "|---" * 9 + "|"]  # fmt: skip
    for pool, styles in summary.items():
        seeds = ",".join(f"{run['seed']}{'' if run['settings'].get('corpus_sha256') == corpus else '†'}"
                         for run in runs[pool])  # fmt: skip
        for i, (style, row) in enumerate(styles.items()):
            name = f"{pool} ({runs[pool][0]['samples']:,})" if i == 0 else pool
            per_seed = ", ".join(number(v) for v in row["top1_seeds"])
            rows.append(
                f"| {name} | {seeds} | {style} | {number(row['top1'])} {span(row['top1_ci'])} "
                f"({per_seed}) | {gain(pool, row, 'top1')} | {number(row['top5'])} "
                f"| {gain(pool, row, 'top5')} "
                f"| {number(row['image_to_text_R@1'])} | {number(row['text_to_image_R@1'])} |"
            )  # fmt: skip
    return "\n".join(rows)


def naming(captions, concept: str):
    """Which of the lower-cased `captions` (an Arrow array) name `concept`: whole words, any
    case, as the balancer's query matching sees them."""
    import pyarrow.compute as pc

    return pc.match_substring_regex(captions, rf"(^|\W){re.escape(concept.lower())}($|\W)")


def unseen_concepts(manifest: Path, concepts: list[str]) -> list[str]:
    """The concepts no kept pair's caption names (whole words, any case): zero-shot classes
    the model is never shown by name."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(manifest, columns=["caption", "status"])
    captions = pc.utf8_lower(table.filter(pc.equal(table["status"], "ok"))["caption"])
    return [concept for concept in concepts if not pc.any(naming(captions, concept)).as_py()]


def name_counts(captions, concepts: list[str]) -> list[int]:
    """How many of the lower-cased `captions` (an Arrow array) name each concept."""
    import pyarrow.compute as pc

    return [pc.sum(naming(captions, concept)).as_py() or 0 for concept in concepts]


def by_frequency(runs: dict[str, list[dict]], counts: dict[str, list[int]], parts: int = 3,
                 seed: int = 0) -> dict:  # fmt: skip
    """Per pool and style, top-1 and top-5 over the held-out classes split into `parts` equal
    groups by how often the input list names them (`counts`, in class order), and the gain over
    raw in each group with a paired bootstrap interval: where curation's gain comes from, since
    zero-shot accuracy follows how often a concept was seen."""
    counts_of = {style: np.asarray(c) for style, c in counts.items()}
    groups = {style: np.array_split(np.argsort(c, kind="stable"), parts)
              for style, c in counts_of.items()}  # fmt: skip
    out: dict = {"groups": {style: [[int(counts_of[style][g].min()), int(counts_of[style][g].max())]
                                    for g in gs] for style, gs in groups.items()}}  # fmt: skip

    def seed_mean(seeds: list[dict], style: str, k: str) -> np.ndarray:
        return np.array([run[style][k] for run in seeds], float).mean(0)

    for pool, seeds in runs.items():
        out[pool] = {}
        for style, parts_of_style in groups.items():
            rows = [{} for _ in parts_of_style]
            for k, name in (("hits1", "top1"), ("hits5", "top5")):
                mean, raw = seed_mean(seeds, style, k), seed_mean(runs["raw"], style, k)
                for row, group in zip(rows, parts_of_style, strict=True):
                    row[name] = round(float(mean[group].mean()), 4)
                    row[f"{name}_gain"] = round(float(mean[group].mean() - raw[group].mean()), 4)
                    row[f"{name}_gain_ci"] = interval(mean[group] - raw[group],
                                                      np.random.default_rng(seed))  # fmt: skip
            out[pool][style] = rows
    return out


def frequency_markdown(table: dict) -> str:
    """The README's table of `by_frequency`: a row per pool and style, a column per group."""
    styles = table["groups"]
    style = next(iter(styles))
    head = " | ".join(f"named {lo}-{hi}x: top-1 (gain [95% CI])" for lo, hi in styles[style])
    rows = [f"| pool | style | {head} |", "|---" * (2 + len(styles[style])) + "|"]
    for pool, per_style in table.items():
        if pool == "groups":
            continue
        for name, groups in per_style.items():
            cells = " | ".join(f"{g['top1']:.3f}" + ("" if pool == "raw" else
                               f" ({g['top1_gain']:+.3f} [{g['top1_gain_ci'][0]:+.3f}, "
                               f"{g['top1_gain_ci'][1]:+.3f}])") for g in groups)  # fmt: skip
            rows.append(f"| {pool} | {name} | {cells} |")
    return "\n".join(rows)


def unseen_per_pool(work: Path) -> dict[str, dict[str, int]]:
    """Per pool crawled in `work` and per held-out style: how many of its concepts are unseen."""
    styles = sorted(folder for folder in (work / "styles").iterdir() if folder.is_dir())
    crawled = [pool for pool in pools() if (work / pool / "stats.json").exists()]
    return {pool: {style.name: len(unseen_concepts(work / pool / "manifest",
                                                   sorted(c.name for c in style.iterdir())))
                   for style in styles} for pool in crawled}  # fmt: skip


def origins(rows: list[dict]) -> list[str]:
    """Each input row's origin: its source for a clean row (a picture's art style or
    collection), else the kind of noise it is; in the input list's order."""
    return [row.get("source") or row["kind"] for row in rows]


def status_group(status: str) -> str:
    """A manifest status as a column of `--by-origin`'s table: a filter's drops together,
    every dup and every error together."""
    parts = status.split(":")
    return ":".join(parts[:2]) if parts[0] == "filtered" else parts[0]


def statuses_by_origin(work: Path, pool: str) -> dict[str, dict[str, int]]:
    """Per origin (`WORK/origins.parquet`, one per input row), the rows of `pool`'s manifest
    in each status group: what each stage kept and dropped of each source."""
    import pyarrow.parquet as pq

    origin = pq.read_table(work / "origins.parquet")["origin"].to_pylist()
    table = pq.read_table(work / pool / "manifest", columns=["key", "status"]).to_pydict()
    out: dict[str, dict[str, int]] = {}
    for (source, group), n in Counter(
        (origin[int(key)], status_group(status))
        for key, status in zip(table["key"], table["status"], strict=True)
    ).items():
        out.setdefault(source, {})[group] = n
    return dict(sorted(out.items(), key=lambda kv: (-sum(kv[1].values()), kv[0])))


def origins_markdown(table: dict[str, dict[str, int]]) -> str:
    groups = sorted({group for counts in table.values() for group in counts},
                    key=lambda g: (g != "ok", g))  # fmt: skip
    rows = [f"| origin | rows | {' | '.join(groups)} |", "|---" * (2 + len(groups)) + "|"]
    for origin, counts in table.items():
        cells = " | ".join(f"{counts.get(group, 0):,}" for group in groups)
        rows.append(f"| {origin} | {sum(counts.values()):,} | {cells} |")
    return "\n".join(rows)


def heldout_name_counts(work: Path) -> dict[str, list[int]]:
    """Per held-out style of an ablation's `--work` folder, how often the input list names each
    class, in the order the evaluation numbers the classes."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from trainer.evaluate import class_folders

    captions = pc.utf8_lower(pq.read_table(work / "urls.parquet", columns=["caption"])["caption"])
    return {style.name: name_counts(captions, [c.name for c in class_folders(style)])
            for style in class_folders(work / "styles")}  # fmt: skip


def main(argv: list[str]) -> None:
    """Per pool, its seeds done and the summary of its finished runs (gains against raw or
    `--baseline POOL`): JSON, or `--markdown`; or `--unseen WORK`; or `--by-frequency WORK
    DIR...`; or `--by-origin WORK POOL`."""
    if argv[:1] == ["--unseen"]:
        print(json.dumps(unseen_per_pool(Path(argv[1]))))
        return
    if argv[:1] == ["--by-origin"]:
        table = statuses_by_origin(Path(argv[1]), argv[2])
        print(origins_markdown(table) if "--markdown" in argv else json.dumps(table))
        return
    if argv[:1] == ["--by-frequency"]:
        runs = gathered([Path(arg) for arg in argv[2:] if arg != "--markdown"])
        table = by_frequency({pool: [run["styles"] for run in rs] for pool, rs in runs.items()},
                             heldout_name_counts(Path(argv[1])))  # fmt: skip
        print(frequency_markdown(table) if "--markdown" in argv else json.dumps(table))
        return
    baseline = "raw"
    if "--baseline" in argv:
        at = argv.index("--baseline")
        baseline, argv = argv[at + 1], argv[:at] + argv[at + 2 :]
    runs = gathered([Path(arg) for arg in argv if arg != "--markdown"])
    if baseline not in runs:
        raise SystemExit(
            f"--baseline: no finished run of pool {baseline!r}; pools: {', '.join(runs)}"
        )
    summary = summarise({pool: [run["styles"] for run in rs] for pool, rs in runs.items()},
                        baseline=baseline)  # fmt: skip
    if "--markdown" in argv:
        print(markdown(runs, summary, baseline))
        return
    seeds = {pool: [run["seed"] for run in rs] for pool, rs in runs.items()}
    print(json.dumps({"seeds": seeds, "baseline": baseline, "summary": summary}))


if __name__ == "__main__":
    main(sys.argv[1:])
