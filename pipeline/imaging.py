"""Decode, verify, orient, convert and resize one image; encode it as the shard's JPEG.

Resize modes follow img2dataset's meaning so users can switch without surprises:
`no` keeps the size, `keep_ratio` makes the shorter side `image_size`, `center_crop` does that
then crops the centre square, `border` makes the longer side `image_size` and pads to a square.
JPEGs are decoded in draft mode (DCT scaling) when shrinking: several times cheaper, and the
result is still at least the requested size, so the final resample keeps its quality.

Hostile bodies: only the allow-listed formats are ever opened (`ImageConfig.formats`; never
EPS, whose decoder hands PostScript to Ghostscript), the size a decode will really produce is
judged before it starts (an ICO by the frames it holds, not by its directory), and the pixels
decoded at once in this process share one budget, so 32 crawl threads cannot each decode a
9000x9000 image at the same time. Transparent images are resized before they are flattened
onto white, so a large RGBA never exists in three full-size copies.
"""

from __future__ import annotations

import hashlib
import io
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from PIL import Image, ImageOps

RESIZE_MODES = ("no", "keep_ratio", "center_crop", "border")
SAFE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # --image-formats' default
# What --image-formats may name: never EPS (Ghostscript), PDF, or Pillow's other exotic readers.
ALLOWED_FORMATS = (*SAFE_FORMATS, "ICO")
_ICO_MAGIC = b"\x00\x00\x01\x00"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ImageError(Exception):
    """An image that cannot be used; `kind` becomes the row's `error:<kind>` status."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ImageConfig:
    image_size: int = field(default=256, metadata={"help": "side of the stored image, px"})
    resize_mode: str = field(default="center_crop", metadata={"choices": RESIZE_MODES})
    quality: int = field(default=95, metadata={"flag": "--encode-quality", "help": "JPEG quality"})
    max_pixels: int = field(default=100_000_000, metadata={"help": "bomb guard"})
    formats: tuple[str, ...] = field(default=SAFE_FORMATS, metadata={
        "flag": "--image-formats",
        "help": f"comma-separated formats that may be opened, among {','.join(ALLOWED_FORMATS)}",
    })  # fmt: skip
    decode_budget: int | None = field(default=None, metadata={
        "help": "pixels decoded at once per process; none: --max-pixels"})  # fmt: skip

    def __post_init__(self) -> None:
        object.__setattr__(self, "formats", tuple(f.upper() for f in self.formats))
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize mode {self.resize_mode!r} is not one of {RESIZE_MODES}")
        refused = set(self.formats) - set(ALLOWED_FORMATS)
        if refused or not self.formats:
            raise ValueError(f"image formats {sorted(refused)} are not among {ALLOWED_FORMATS}")


class PixelBudget:
    """Decoded pixels in flight in one process: `hold(n)` waits until n more fit. An image over
    the whole budget is refused at once (it would wait forever)."""

    def __init__(self, pixels: int):
        self.pixels = pixels
        self._used = 0
        self._free = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        if pixels > self.pixels:
            raise ImageError(
                "too_large", f"decodes to {pixels} pixels, over the decode budget of {self.pixels}"
            )
        with self._free:
            self._free.wait_for(lambda: self._used + pixels <= self.pixels)
            self._used += pixels
        try:
            yield
        finally:
            with self._free:
                self._used -= pixels
                self._free.notify_all()


_BUDGETS: dict[int, PixelBudget] = {}
_BUDGETS_LOCK = threading.Lock()


def decode_budget(config: ImageConfig) -> PixelBudget:
    """The process-wide budget of `config` (one per size, shared by every thread)."""
    pixels = config.decode_budget or config.max_pixels
    with _BUDGETS_LOCK:
        return _BUDGETS.setdefault(pixels, PixelBudget(pixels))


@dataclass(frozen=True)
class ProcessedImage:
    jpeg: bytes
    width: int
    height: int
    original_width: int
    original_height: int
    sha256: str
    pixels: Image.Image = field(repr=False, compare=False)  # what `jpeg` encodes, for hashing


def open_image(
    data: bytes, max_pixels: int, formats: tuple[str, ...] = SAFE_FORMATS
) -> Image.Image:
    """Open (not yet decode) an image of an allowed format, refusing non-images and
    decompression bombs up front (an ICO by the frames it holds, before Pillow decodes one)."""
    if "ICO" in formats and data[:4] == _ICO_MAGIC:
        for width, height in _ico_frame_sizes(data):
            if width * height > max_pixels:
                message = f"ICO frame of {width}x{height} is over {max_pixels} pixels"
                raise ImageError("decompression_bomb", message)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(formats))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("decompression_bomb", str(exc)) from None
    except Exception as exc:  # Pillow raises many types for a non-image body
        allowed = ", ".join(formats)
        raise ImageError("not_image", f"not an image in {allowed}: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError("decompression_bomb", f"{width}x{height} is over {max_pixels} pixels")
    return image


def _ico_frame_sizes(data: bytes) -> list[tuple[int, int]]:
    """The sizes of the frames an ICO holds, read from each frame's own header: the directory's
    one-byte sizes may lie, and Pillow decodes the frame as soon as it opens the file."""
    sizes = []
    for index in range(int.from_bytes(data[4:6], "little")):
        entry = data[6 + 16 * index : 22 + 16 * index]
        offset = int.from_bytes(entry[12:16], "little")
        frame = data[offset : offset + 24]
        if frame[:8] == _PNG_MAGIC and len(frame) == 24:
            sizes.append((int.from_bytes(frame[16:20], "big"), int.from_bytes(frame[20:24], "big")))
        elif len(frame) >= 12:  # a BMP frame: its height counts the AND mask too
            width = abs(int.from_bytes(frame[4:8], "little", signed=True))
            sizes.append((width, abs(int.from_bytes(frame[8:12], "little", signed=True)) // 2))
    return sizes


def has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparency composited onto white (a plain convert turns logos black)."""
    if image.mode == "RGB":
        return image
    if not has_alpha(image):
        return image.convert("RGB")
    rgba = image if image.mode == "RGBA" else image.convert("RGBA")
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
        canvas.paste(to_rgb(image), ((size - image.width) // 2, (size - image.height) // 2))
        image = canvas
    return image


def process_image(data: bytes, config: ImageConfig) -> ProcessedImage:
    """Decode `data`, orient, convert to RGB, resize and encode JPEG; ImageError if unusable."""
    return finish_image(open_image(data, config.max_pixels, config.formats), config)


def finish_image(image: Image.Image, config: ImageConfig) -> ProcessedImage:
    """Decode an opened image and make the shard's JPEG (see `process_image`), inside this
    process's decode budget."""
    original_width, original_height = oriented_size(image)
    try:
        if config.resize_mode != "no" and image.format == "JPEG":
            image.draft("RGB", (config.image_size, config.image_size))  # what will be decoded
        width, height = image.size
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError("decode", f"cannot decode image: {exc}") from None
    with decode_budget(config).hold(width * height):
        jpeg, pixels = _decode_and_encode(image, config)
    return ProcessedImage(
        jpeg=jpeg,
        width=pixels.width,
        height=pixels.height,
        original_width=original_width,
        original_height=original_height,
        sha256=hashlib.sha256(jpeg).hexdigest(),
        pixels=pixels,
    )


def _decode_and_encode(image: Image.Image, config: ImageConfig) -> tuple[bytes, Image.Image]:
    try:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        if has_alpha(image):  # resize first: flattening a full-size RGBA copies it thrice
            image = image if image.mode == "RGBA" else image.convert("RGBA")
        else:
            image = to_rgb(image)
        image = to_rgb(resize(image, config.image_size, config.resize_mode))
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=config.quality)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError("decode", f"cannot decode image: {exc}") from None
    return out.getvalue(), image
