"""The run's records: per-step metrics and periodic evaluations as CSV, curves as a PNG.

Rows are appended when a checkpoint is written, so after a resume the files hold each step
once: the steps after the last checkpoint are rerun, and were never written.
"""

from __future__ import annotations

import csv
from pathlib import Path

STEP_FIELDS = ("step", "loss", "lr", "logit_scale", "grad_norm", "samples_per_s", "step_s",
               "data_wait_s")  # fmt: skip


def append_rows(path: Path, rows: list[dict], fields: list[str] | tuple[str, ...]) -> None:
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)


def append_evals(path: Path, rows: list[dict]) -> None:
    """Evaluations share one header: the metric names of the first (they do not change)."""
    if rows:
        existing = path.exists() and path.open().readline().strip().split(",")
        append_rows(path, rows, existing or list(rows[0]))


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def plot(out: Path) -> None:
    """`curves.png`: the loss per step and, when evaluated, zero-shot top-1 and retrieval R@1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, evals = _read(out / "metrics.csv"), _read(out / "eval.csv")
    if not steps:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([int(r["step"]) for r in steps], [float(r["loss"]) for r in steps], label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    metrics = [m for m in ("zeroshot_top1", "image_to_text_R@1") if evals and m in evals[0]]
    if metrics:
        twin = ax.twinx()
        for metric, color in zip(metrics, ("tab:orange", "tab:green"), strict=False):
            points = [(int(r["step"]), float(r[metric])) for r in evals if r.get(metric)]
            twin.plot(*zip(*points, strict=True), "o-", color=color, label=metric)
        twin.set_ylabel("accuracy / recall")
        twin.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)
