"""Decoding, orientation, transparency and each resize mode, on images made here."""

from __future__ import annotations

import io

import pytest
from conftest import EPS, ico_around
from PIL import Image

from pipeline.imaging import ImageConfig, ImageError, process_image


def encode(image: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize(
    ("mode", "size", "expected"),
    [
        ("center_crop", (800, 400), (64, 64)),
        ("center_crop", (30, 50), (64, 64)),  # small images are upscaled, as img2dataset does
        ("keep_ratio", (800, 400), (128, 64)),
        ("keep_ratio", (300, 900), (64, 192)),
        ("border", (800, 400), (64, 64)),
        ("no", (800, 400), (800, 400)),
    ],
)
def test_resize_modes(mode, size, expected):
    out = process_image(encode(Image.new("RGB", size, (200, 30, 30))), ImageConfig(64, mode))
    image = decode(out.jpeg)
    assert image.format == "JPEG" and image.mode == "RGB"
    assert image.size == (out.width, out.height) == expected
    assert (out.original_width, out.original_height) == size


def test_border_pads_black_around_the_image():
    image = decode(
        process_image(
            encode(Image.new("RGB", (800, 400), (250, 250, 250))), ImageConfig(64, "border")
        ).jpeg
    )
    assert image.getpixel((32, 2))[0] < 30  # padding above
    assert image.getpixel((32, 32))[0] > 220  # the image itself


def test_center_crop_keeps_the_centre():
    image = Image.new("RGB", (300, 100), (0, 0, 255))
    image.paste((255, 0, 0), (100, 0, 200, 100))  # a red centre square, blue sides
    out = decode(process_image(encode(image, "PNG"), ImageConfig(32, "center_crop")).jpeg)
    red, green, blue = out.getpixel((2, 16))
    assert red > 200 and blue < 60


def test_transparency_is_composited_onto_white():
    rgba = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    out = decode(process_image(encode(rgba, "PNG"), ImageConfig(32)).jpeg)
    assert min(out.getpixel((16, 16))) > 245


def test_palette_with_transparency_onto_white():
    palette = Image.new("P", (100, 100), 0)
    palette.putpalette([0, 0, 0] * 256)
    out = decode(process_image(encode(palette, "GIF", transparency=0), ImageConfig(32)).jpeg)
    assert min(out.getpixel((16, 16))) > 245


def test_greyscale_becomes_rgb():
    out = decode(process_image(encode(Image.new("L", (90, 90), 100)), ImageConfig(32)).jpeg)
    assert out.mode == "RGB"


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (200, 100), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    out = process_image(encode(image, exif=exif), ImageConfig(50, "keep_ratio"))
    assert (out.original_width, out.original_height) == (100, 200)
    assert (out.width, out.height) == (50, 100)


def test_jpeg_draft_decoding_still_reaches_the_target_size():
    out = process_image(encode(Image.new("RGB", (4000, 3000), (9, 9, 9))), ImageConfig(256))
    assert (out.width, out.height) == (256, 256)


def test_sha256_is_of_the_stored_bytes():
    import hashlib

    out = process_image(encode(Image.new("RGB", (90, 90))), ImageConfig(32))
    assert out.sha256 == hashlib.sha256(out.jpeg).hexdigest()


def test_corrupt_jpeg_is_a_decode_error():
    data = encode(Image.effect_noise((300, 300), 50).convert("RGB"))
    with pytest.raises(ImageError) as caught:
        process_image(data[: len(data) // 2], ImageConfig(32))
    assert caught.value.kind == "decode"


def test_non_image_bytes():
    with pytest.raises(ImageError) as caught:
        process_image(b"<html>nope</html>", ImageConfig(32))
    assert caught.value.kind == "not_image"


def test_pixel_cap_refuses_before_decoding():
    data = encode(Image.new("RGB", (2000, 2000)), "PNG")
    with pytest.raises(ImageError) as caught:
        process_image(data, ImageConfig(32, max_pixels=1_000_000))
    assert caught.value.kind == "decompression_bomb"


def test_bomb_is_refused_without_allocating_its_pixels(server):
    import tracemalloc

    from demo.server import CorpusServer  # noqa: F401  (the bomb comes from the test server's images)

    bomb = server.images["bomb.png"]
    tracemalloc.start()
    try:
        with pytest.raises(ImageError) as caught:
            process_image(bomb, ImageConfig(64))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.kind == "decompression_bomb"
    assert peak < 5_000_000  # 900 Mpx would be ~900 MB decoded


def test_eps_is_never_opened():
    """Defect 6: any Pillow format was opened, EPS included (PostScript for Ghostscript)."""
    from pipeline.imaging import open_image

    with pytest.raises(ImageError) as caught:
        open_image(EPS, 100_000_000)
    assert caught.value.kind == "not_image"
    with pytest.raises(ImageError):
        open_image(encode(Image.new("RGB", (20, 20)), "PNG"), 100_000_000, ("JPEG",))
    with pytest.raises(ValueError, match="EPS"):
        ImageConfig(formats=("JPEG", "EPS"))


def test_an_ico_is_judged_by_the_frame_it_holds_before_decoding():
    """Defect 8 (ICO): a 16x16 directory entry hid a large PNG that was decoded in full."""
    from pipeline.imaging import open_image

    # the frame's pixel data is cut off: decoding it would fail, so only a check made before
    # Pillow decodes (it does so when it opens an ICO) can give decompression_bomb
    data = ico_around(encode(Image.new("RGB", (3000, 2000)), "PNG")[:200])
    with pytest.raises(ImageError) as caught:
        open_image(data, 1_000_000, ("PNG", "ICO"))
    assert caught.value.kind == "decompression_bomb"
    assert "3000x2000" in str(caught.value)
    with pytest.raises(ImageError) as caught:
        process_image(data, ImageConfig(32))  # ICO is not among the default formats
    assert caught.value.kind == "not_image"
    small = ico_around(encode(Image.new("RGB", (16, 16), (0, 0, 255)), "PNG"))
    config = ImageConfig(32, formats=("PNG", "ICO"))
    assert decode(process_image(small, config).jpeg).getpixel((16, 16))[2] > 200


def test_decode_budget_lets_no_more_pixels_in_flight_than_it_holds():
    """Defect 8 (threads): each of 32 threads could decode a 9000x9000 RGBA at once."""
    import threading

    from pipeline.imaging import PixelBudget

    budget = PixelBudget(100)
    entered = threading.Event()

    def second():
        with budget.hold(60):
            entered.set()

    with budget.hold(60):
        waiter = threading.Thread(target=second)
        waiter.start()
        assert not entered.wait(0.3)  # 120 pixels would be over the budget: it waits
    waiter.join(5)
    assert entered.is_set()
    with pytest.raises(ImageError) as caught, budget.hold(101):
        pass
    assert caught.value.kind == "too_large"


def test_an_image_over_the_whole_decode_budget_gets_a_status():
    data = encode(Image.new("RGBA", (1500, 1000)), "PNG")
    with pytest.raises(ImageError) as caught:
        process_image(data, ImageConfig(32, decode_budget=1_000_000))
    assert caught.value.kind == "too_large"
    assert "decode budget" in str(caught.value)
    assert process_image(data, ImageConfig(32, decode_budget=1_500_000)).width == 32
