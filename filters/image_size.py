"""Image-size filter: drop images too small to train on or too elongated to crop usefully.

Judged on the original (oriented) size from the image header, before any pixel is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NAME = "image"


@dataclass(frozen=True)
class ImageSizeConfig:
    min_image_size: int = field(default=0, metadata={"help": "shorter side, px; 0 keeps all"})
    max_aspect_ratio: float = field(
        default=0.0, metadata={"help": "longer side / shorter side; 0 keeps all"}
    )


def check_image_size(width: int, height: int, config: ImageSizeConfig) -> str | None:
    """None to keep, or the reason to drop (`too_small`, `aspect_ratio`)."""
    shorter, longer = min(width, height), max(width, height)
    if config.min_image_size and shorter < config.min_image_size:
        return "too_small"
    if config.max_aspect_ratio and longer > config.max_aspect_ratio * max(shorter, 1):
        return "aspect_ratio"
    return None
