"""Preprocessing parity with keras_image_helper (what the book's gateway uses): same float32 arrays for the same
bytes with `exact`; `fast` decoding JPEGs at a reduced DCT scale; plus the guards (format sniffing, max pixels) and
EXIF orientation."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from keras_image_helper import create_preprocessor
from PIL import Image

from model_interface.preprocessing import (
    ImageError,
    ImageTooLargeError,
    image_pixels,
    load_image,
    preprocess,
    resize_pixels,
    scale,
)
from tests.conftest import DATA, bomb_png


def _encoded(mode: str, size: tuple[int, int], fmt: str, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "P": 1}[mode]
    pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8).squeeze()
    image = Image.fromarray(pixels, mode="L" if mode == "P" else mode)
    if mode == "P":
        image = image.convert("P")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _keras(data: bytes, preprocessor: str, size: tuple[int, int]) -> np.ndarray:
    helper = create_preprocessor(preprocessor, target_size=size)
    with Image.open(io.BytesIO(data)) as image:
        return helper.convert_to_tensor(image)[0]


CASES = [
    pytest.param((DATA / "pants.jpg").read_bytes(), id="pants.jpg"),
    pytest.param((DATA / "gray.png").read_bytes(), id="gray.png"),
    pytest.param((DATA / "rgba.png").read_bytes(), id="rgba.png"),
    pytest.param(_encoded("RGB", (1200, 800), "JPEG"), id="1200x800.jpg"),
    pytest.param(_encoded("RGB", (150, 90), "PNG"), id="upscale.png"),
    pytest.param(_encoded("RGBA", (320, 240), "PNG"), id="rgba-generated.png"),
    pytest.param(_encoded("L", (333, 500), "PNG"), id="grayscale.png"),
    pytest.param(_encoded("P", (200, 200), "GIF"), id="palette.gif"),
]


@pytest.mark.parametrize("data", CASES)
def test_xception_parity_with_keras_image_helper(data: bytes) -> None:
    ours = preprocess(data, (299, 299), "xception")
    theirs = _keras(data, "xception", (299, 299))
    assert ours.dtype == theirs.dtype == np.float32
    assert ours.shape == theirs.shape == (299, 299, 3)
    np.testing.assert_array_equal(ours, theirs)


def test_caffe_parity_with_keras_image_helper() -> None:
    data = (DATA / "pants.jpg").read_bytes()
    np.testing.assert_allclose(preprocess(data, (224, 224), "caffe"), _keras(data, "resnet50", (224, 224)), atol=1e-4)


def test_uint8_pixels_scale_to_the_float_input() -> None:
    data = (DATA / "pants.jpg").read_bytes()
    pixels = resize_pixels(load_image(data), (299, 299))
    assert pixels.dtype == np.uint8
    np.testing.assert_array_equal(scale(pixels, "xception"), preprocess(data, (299, 299)))


def test_non_square_size_is_height_width() -> None:
    assert preprocess((DATA / "pants.jpg").read_bytes(), (120, 80)).shape == (120, 80, 3)


def test_exif_orientation_is_applied() -> None:
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    Image.new("RGB", (40, 20), (200, 10, 10)).save(buffer, format="JPEG", exif=exif)
    assert load_image(buffer.getvalue()).size == (20, 40)


@pytest.mark.parametrize("data", [b"", b"hello world", b"<html></html>", b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_not_an_image(data: bytes) -> None:
    with pytest.raises(ImageError) as caught:
        load_image(data)
    assert not isinstance(caught.value, ImageTooLargeError)


def test_unsupported_format_is_refused_before_decoding() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PPM")
    with pytest.raises(ImageError, match="supported format"):
        load_image(buffer.getvalue())


def test_decompression_bomb_is_refused_from_the_header() -> None:
    with pytest.raises(ImageTooLargeError, match="3000x3000"):
        load_image(bomb_png(3000), max_pixels=1_000_000)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and holds none: all a decoder reads before deciding to decode."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_a_huge_image_is_refused_with_our_limit_not_pillows() -> None:
    """900 megapixels: past Pillow's own decompression-bomb limit (2 x 89,478,485), which it checks first."""
    with pytest.raises(ImageTooLargeError) as caught:
        load_image(png_header(30_000, 30_000), max_pixels=25_000_000)
    assert "25000000 pixels allowed" in str(caught.value)
    assert "178956970" not in str(caught.value)


def test_truncated_image() -> None:
    data = (DATA / "pants.jpg").read_bytes()
    with pytest.raises(ImageError):
        load_image(data[: len(data) // 3])


def _photo(width: int, height: int, exif_orientation: int | None = None) -> bytes:
    buffer = io.BytesIO()
    exif = Image.Exif()
    if exif_orientation:
        exif[0x0112] = exif_orientation
    Image.open(DATA / "pants.jpg").convert("RGB").resize((width, height)).save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("size", "target", "decoded"),
    [
        ((1200, 800), (128, 128), (300, 200)),  # 1/4: 1/8 would be 150x100, under 128
        ((1200, 800), (299, 299), (600, 400)),  # 1/2
        ((4000, 3000), (128, 128), (500, 375)),  # 1/8, the smallest scale there is
        ((200, 150), (128, 128), (200, 150)),  # no smaller scale is still >= 128
    ],
)
def test_fast_decodes_a_jpeg_at_the_smallest_scale_still_at_least_the_target(
    size: tuple[int, int], target: tuple[int, int], decoded: tuple[int, int]
) -> None:
    assert load_image(_photo(*size), reduce_to=target).size == decoded


def test_fast_keeps_the_target_size_when_exif_turns_the_image() -> None:
    """Stored 1600x400, shown turned (400 wide, 1600 high), target 100 high x 400 wide: scaling the stored image by
    the target read unturned (1600/400, 400/100) would give 1/4 and a 100-wide picture; the shown width allows none."""
    image = load_image(_photo(1600, 400, exif_orientation=6), reduce_to=(100, 400))
    assert image.size == (400, 1600)


def test_fast_pixels_are_close_to_exact_ones() -> None:
    """Not equal (the DCT scaling averages pixels that NEAREST picks one of), but the same picture."""
    data = _photo(1200, 800)
    fast = image_pixels(data, (128, 128), "fast").astype(np.int16)
    exact = image_pixels(data, (128, 128), "exact").astype(np.int16)
    assert fast.shape == exact.shape == (128, 128, 3)
    assert not np.array_equal(fast, exact)
    assert np.mean(np.abs(fast - exact)) < 8


@pytest.mark.parametrize("name", ["gray.png", "rgba.png"])
def test_formats_that_cannot_reduce_on_load_decode_as_exact(name: str) -> None:
    data = (DATA / name).read_bytes()
    np.testing.assert_array_equal(image_pixels(data, (64, 64), "fast"), image_pixels(data, (64, 64), "exact"))


def test_exact_pixels_are_keras_image_helpers() -> None:
    data = _photo(1200, 800)
    exact = scale(image_pixels(data, (299, 299), "exact"), "xception")
    np.testing.assert_array_equal(exact, _keras(data, "xception", (299, 299)))


def test_an_unknown_preprocessing_is_refused() -> None:
    with pytest.raises(ValueError, match="fast, exact"):
        image_pixels((DATA / "pants.jpg").read_bytes(), (64, 64), "quick")
