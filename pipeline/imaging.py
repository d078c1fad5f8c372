"""Decode, verify, orient, convert and resize one image; encode it as the shard's JPEG.

Resize modes follow img2dataset's meaning so users can switch without surprises:
`no` keeps the size, `keep_ratio` makes the shorter side `image_size`, `center_crop` does that
then crops the centre square, `border` makes the longer side `image_size` and pads to a square.
JPEGs are decoded in draft mode (DCT scaling) when shrinking: several times cheaper, and the
result is still at least the requested size, so the final resample keeps its quality.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

RESIZE_MODES = ("no", "keep_ratio", "center_crop", "border")


class ImageError(Exception):
    """An image that cannot be used; `kind` becomes the row's `error:<kind>` status."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ImageConfig:
    image_size: int = 256
    resize_mode: str = "center_crop"
    quality: int = 95
    max_pixels: int = 100_000_000

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize mode {self.resize_mode!r} is not one of {RESIZE_MODES}")


@dataclass(frozen=True)
class ProcessedImage:
    jpeg: bytes
    width: int
    height: int
    original_width: int
    original_height: int
    sha256: str


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Open (not yet decode) an image, refusing non-images and decompression bombs up front."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("decompression_bomb", str(exc)) from None
    except Exception as exc:  # Pillow raises many types for a non-image body
        raise ImageError("not_image", f"not a decodable image: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError("decompression_bomb", f"{width}x{height} is over {max_pixels} pixels")
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparency composited onto white (a plain convert turns logos black)."""
    if image.mode == "RGB":
        return image
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """The size as displayed: EXIF orientations 5-8 swap width and height."""
    width, height = image.size
    orientation = image.getexif().get(0x0112, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def resize(image: Image.Image, size: int, mode: str) -> Image.Image:
    """Resize an RGB image by `mode` (see the module docstring).

    Shrinking uses bicubic with `reducing_gap=2` (a cheap integer reduction first), as Pillow's
    own `thumbnail` does: about 3x cheaper than Lanczos at no visible cost. `center_crop`
    resamples only the centre square (the `box`), not pixels it would then throw away.
    """
    width, height = image.size
    if mode == "no":
        return image
    if mode == "center_crop":
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        return image.resize(
            (size, size),
            Image.Resampling.BICUBIC,
            box=(left, top, left + side, top + side),
            reducing_gap=2.0 if side > size else None,
        )
    scale = size / (max(width, height) if mode == "border" else min(width, height))
    new = (max(1, round(width * scale)), max(1, round(height * scale)))
    if new != image.size:
        image = image.resize(new, Image.Resampling.BICUBIC, reducing_gap=2.0 if scale < 1 else None)
    if mode == "border":
        canvas = Image.new("RGB", (size, size), (0, 0, 0))
        canvas.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
        image = canvas
    return image


def process_image(data: bytes, config: ImageConfig) -> ProcessedImage:
    """Decode `data`, orient, convert to RGB, resize and encode JPEG; ImageError if unusable."""
    return finish_image(open_image(data, config.max_pixels), config)


def finish_image(image: Image.Image, config: ImageConfig) -> ProcessedImage:
    """Decode an opened image and make the shard's JPEG (see `process_image`)."""
    original_width, original_height = oriented_size(image)
    try:
        if config.resize_mode != "no" and image.format == "JPEG":
            image.draft("RGB", (config.image_size, config.image_size))
        image.load()
        image = ImageOps.exif_transpose(image)
        image = resize(to_rgb(image), config.image_size, config.resize_mode)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=config.quality)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError("decode", f"cannot decode image: {exc}") from None
    jpeg = out.getvalue()
    return ProcessedImage(
        jpeg=jpeg,
        width=image.width,
        height=image.height,
        original_width=original_width,
        original_height=original_height,
        sha256=hashlib.sha256(jpeg).hexdigest(),
    )
