"""Model-score filter: keep pairs whose image and caption agree under an openwit CLIP checkpoint.

The score is the cosine similarity of the two embeddings (LAION kept >= 0.28 under OpenAI's
CLIP); a first model trained on lightly filtered data scores the pool for the second one, the
data-filtering-network idea. `--min-score` drops below a fixed score; `--keep-top-fraction`
keeps the best fraction of the scored pairs, through a threshold found from an exact histogram
of scores rounded to `SCORE_RESOLUTION` (a global combine, the same on every runner).

With balancing on, `--keep-top-fraction` applies to each query's pairs (`--score-scope query`,
the default: a pair is kept when it is among the best of any of its queries), since a model
trained on the raw pool scores the concepts it rarely saw low, and one global threshold
(`--score-scope global`, DataComp's) empties the tail that balancing keeps: in the ablation's
curated pool, 42 of the 200 held-out concepts lost every pair to it, and top-1 fell from
0.170/0.230 to 0.145/0.150 (bench/curation.py --ablate, README). Pairs without queries
(balancing off, or `--keep-unmatched`) are held to the global threshold. Even per query, a
weak scorer (the tiny CLIP trained on the raw pool) cost the curated pool 6-7 points of top-5
there, by dropping the renderings it disagrees with, so the demo recipe leaves it off.

Torch and the trainer are imported only when a Scorer is built, so a pipeline without the
score filter never needs them.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from filters.base import register_batched
from manifests.schema import Pair

SCORE = "score"
SCORE_RESOLUTION = 1e-4  # scores are recorded and thresholded at this step
SCOPES = ("global", "query")


@dataclass(frozen=True)
class ScoreConfig:
    score_checkpoint: str = field(default="", metadata={"help": "openwit checkpoint to score with"})
    min_score: float | None = field(
        default=None, metadata={"help": "drop pairs whose cosine score is below this"}
    )
    keep_top_fraction: float | None = field(
        default=None,
        metadata={
            "help": "keep this fraction of the scored pairs, best first (of each "
            "query's, see --score-scope)"
        },
    )
    score_scope: str = field(
        default="query",
        metadata={"help": "--keep-top-fraction of each balancing query's pairs (query: rare "
                  "concepts keep their best) or of all scored pairs (global)",
                  "choices": SCOPES},
    )  # fmt: skip
    score_batch_size: int = field(default=64, metadata={"help": "pairs per model batch"})
    score_device: str = field(default="cpu", metadata={"help": "torch device of the model"})

    def __post_init__(self) -> None:
        if not self.score_checkpoint:
            raise ValueError("the score filter needs --score-checkpoint")
        if self.keep_top_fraction is not None and not 0 < self.keep_top_fraction <= 1:
            raise ValueError("--keep-top-fraction must be in (0, 1]")
        if self.score_scope not in SCOPES:
            raise ValueError(f"--score-scope must be one of {SCOPES}, not {self.score_scope!r}")
        if self.score_batch_size < 1:
            raise ValueError("--score-batch-size must be positive")


@register_batched(SCORE, ScoreConfig)
def score_filter(config: ScoreConfig):
    """Keep pairs whose image and caption agree under a CLIP checkpoint (cosine score)."""
    from pipeline.filtering import ScoreFilter  # Beam and torch only when the filter runs

    return ScoreFilter(config)


def quantise(score: float) -> int:
    """The histogram bin of `score`: an integer number of SCORE_RESOLUTION steps."""
    return round(score / SCORE_RESOLUTION)


def rounded(score: float) -> float:
    return quantise(score) * SCORE_RESOLUTION


def top_fraction_threshold(histogram: dict[int, int], fraction: float) -> float | None:
    """The lowest score kept when keeping the best `fraction` of the scores in `histogram`.

    Whole bins are kept, best first, while the kept count stays within ceil(fraction * n), so
    ties are never split (at least one bin is kept). None when nothing was scored.
    """
    total = sum(histogram.values())
    if not total:
        return None
    budget = math.ceil(fraction * total)
    kept, threshold = 0, None
    for bin_ in sorted(histogram, reverse=True):
        if threshold is not None and kept + histogram[bin_] > budget:
            break
        kept += histogram[bin_]
        threshold = bin_
    return threshold * SCORE_RESOLUTION


def score_reason(score: float, config: ScoreConfig, threshold: float | None) -> str | None:
    """None to keep a pair with `score`; `low_score` (--min-score) or `not_top` otherwise."""
    if config.min_score is not None and score < config.min_score:
        return "low_score"
    if threshold is not None and quantise(score) < quantise(threshold):
        return "not_top"
    return None


def pair_threshold(queries: Sequence[int] | None, per_query: dict[int, float],
                   overall: float | None) -> float | None:  # fmt: skip
    """The lowest score a pair keeps with: its most lenient query's threshold (kept when it is
    among the best of any of its queries), or the global one when it has no queries."""
    found = [per_query[q] for q in queries or () if per_query.get(q) is not None]
    return min(found) if found else overall


def histogram_quantiles(histogram: dict[int, int], points: Sequence[float]) -> list[float | None]:
    """Exact quantiles (at SCORE_RESOLUTION) of the scores in `histogram`, for stats.json."""
    total = sum(histogram.values())
    if not total:
        return [None for _ in points]
    bins = sorted(histogram)
    out, seen, index = [], 0, 0
    for point in sorted(points):
        rank = min(total - 1, int(point * total))
        while seen + histogram[bins[index]] <= rank:
            seen += histogram[bins[index]]
            index += 1
        out.append(round(bins[index] * SCORE_RESOLUTION, 6))
    return out


class Scorer:
    """An openwit checkpoint, loaded once, that scores batches of pairs."""

    def __init__(self, checkpoint: str, device: str = "cpu"):
        import torch

        from trainer.checkpoint import load_model
        from trainer.data import preprocess_eval

        self._torch = torch
        self._preprocess = preprocess_eval
        self._device = device
        self.model, self.tokenizer, model_config = load_model(checkpoint, device=device)
        self.image_size = model_config.image_size

    def score(self, pairs: Sequence[Pair]) -> list[float]:
        """Cosine similarity of each pair's image (JPEG in `pair.image`) and caption."""
        from PIL import Image

        torch = self._torch
        images = [
            self._preprocess(Image.open(io.BytesIO(p.image)).convert("RGB"), self.image_size)
            for p in pairs
        ]
        with torch.inference_mode():
            pixels = torch.stack(images).to(self._device)  # (B, 3, H, W)
            tokens = self.tokenizer([p.caption for p in pairs]).to(self._device)  # (B, T)
            image_emb = self.model.encode_image(pixels)  # (B, D), L2-normalised
            text_emb = self.model.encode_text(tokens)  # (B, D), L2-normalised
            cosine = (image_emb * text_emb).sum(dim=-1)  # (B,)
        return [float(c) for c in cosine.float().cpu()]
