"""Image filter: too small, too elongated, or near-uniform images, judged after the crawl.

Sizes are the decoded, oriented original sizes the crawl recorded (the crawl's own
`--min-image-size` drops the same way earlier, before resizing, from the header alone). The
uniformity test runs on the stored thumbnail: a blank render, a spacer GIF or a flat colour
fill has a grey-level standard deviation of a few units at most (JPEG noise), while any picture
with an object in it has tens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image, ImageStat

from filters.base import register
from filters.image_size import ImageSizeConfig, check_image_size
from manifests.schema import Pair

_STAT_SIDE = 64  # the uniformity test does not need more pixels than this


@dataclass(frozen=True)
class ImageFilterConfig:
    min_side: int = field(default=64, metadata={"help": "minimum shorter side, px; 0: none"})
    max_aspect: float = field(
        default=3.0, metadata={"help": "maximum longer/shorter side ratio; 0: none"}
    )
    min_pixel_std: float = field(
        default=3.0, metadata={"help": "minimum grey-level std (0-255) of the image; 0: none"}
    )


def pixel_std(image: Image.Image) -> float:
    """Grey-level standard deviation of `image`, on a small copy (blank images score ~0)."""
    grey = image.convert("L")
    grey.thumbnail((_STAT_SIDE, _STAT_SIDE))
    return ImageStat.Stat(grey).stddev[0]


@register("image", "image", ImageFilterConfig)
def check_image(pair: Pair, image: Image.Image, config: ImageFilterConfig) -> str | None:
    """Drop images below --min-side, beyond --max-aspect, or near-uniform."""
    width = pair.original_width or image.width
    height = pair.original_height or image.height
    reason = check_image_size(width, height, ImageSizeConfig(config.min_side, config.max_aspect))
    if reason:
        return reason
    if config.min_pixel_std and pixel_std(image) < config.min_pixel_std:
        return "uniform"
    return None
