"""Pure image preprocessing: encoded bytes -> model input array.

Shared by the gateway and model-tools (evaluate, verify, warmup, training) so that what a model is validated with is
the code that serves it, not a copy. Two preprocessings:

- `exact`: pixel parity with keras_image_helper's `create_preprocessor('xception', target_size=...)`, which the book
  uses: decode at full size, RGB, PIL NEAREST resize, float32, then `x / 127.5 - 1`;
- `fast`: the same, except that a JPEG is decoded at the smallest of 1/1, 1/2, 1/4 and 1/8 scale that is still at
  least the target size (libjpeg-turbo scales in the DCT domain: fewer pixels to transform, convert and hold). Other
  formats cannot reduce on load and decode as in `exact`.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SCALINGS: tuple[str, ...] = ("xception", "caffe", "none")
PREPROCESSINGS: tuple[str, ...] = ("fast", "exact")
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
# Formats PIL may open for us. Anything else is refused before decoding.
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"})


class ImageError(ValueError):
    """The bytes are not a decodable image of an allowed format."""


class ImageTooLargeError(ImageError):
    """The image declares more pixels than allowed (decompression-bomb guard)."""


def load_image(data: bytes, max_pixels: int = 40_000_000, reduce_to: tuple[int, int] | None = None) -> Image.Image:
    """Decode bytes into an RGB image, honouring EXIF orientation.

    The format is sniffed from the content, never taken from headers; the pixel count is checked from the
    header before any pixel is decoded. With `reduce_to` (height, width), a JPEG decodes at the smallest DCT scale
    whose result is still at least that large in either orientation (EXIF may turn it).
    """
    # No warnings.catch_warnings() here: it swaps process-global state and is not thread-safe (the gateway decodes
    # in several threads). The explicit check below is the guard; PIL's own DecompressionBombError (above twice
    # Image.MAX_IMAGE_PIXELS, raised inside Image.open) is mapped to the same error.
    try:
        img: Image.Image = Image.open(io.BytesIO(data), formats=sorted(ALLOWED_FORMATS))
        width, height = img.size
        if width * height > max_pixels:
            raise ImageTooLargeError(f"image has {width}x{height} pixels, more than the {max_pixels} allowed")
        if reduce_to is not None:
            side = max(reduce_to)
            img.draft(None, (side, side))  # JPEG only; other formats ignore it
        img.load()
    except ImageTooLargeError:
        raise
    except Image.DecompressionBombError:  # Pillow's own limit, met before ours for huge images
        raise ImageTooLargeError(f"image has more than the {max_pixels} pixels allowed") from None
    except UnidentifiedImageError:
        raise ImageError(f"not an image in a supported format ({', '.join(sorted(ALLOWED_FORMATS))})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"not a decodable image: {exc}") from None
    ImageOps.exif_transpose(img, in_place=True)  # in place: the default returns a copy even when nothing changes
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def resize_pixels(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Resize to (height, width) with NEAREST resampling, as keras_image_helper does; returns uint8 HxWx3."""
    height, width = size
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img.resize((width, height), Image.Resampling.NEAREST), dtype=np.uint8)


def scale(pixels: np.ndarray, scaling: str = "xception") -> np.ndarray:
    """Scale uint8 pixels (..., H, W, 3) to the model's float32 input."""
    x = pixels.astype(np.float32)
    if scaling == "xception":
        x /= 127.5
        x -= 1.0
        return x
    if scaling == "caffe":
        return x[..., ::-1] - CAFFE_MEAN_BGR
    if scaling == "none":
        return x
    raise ValueError(f"unknown scaling {scaling!r}; expected one of {', '.join(SCALINGS)}")


def image_pixels(
    data: bytes, size: tuple[int, int], preprocessing: str = "exact", max_pixels: int = 40_000_000
) -> np.ndarray:
    """Encoded image bytes -> uint8 (H, W, 3) pixels at the model's input size, decoded as `preprocessing` says."""
    if preprocessing not in PREPROCESSINGS:
        raise ValueError(f"unknown preprocessing {preprocessing!r}; expected one of {', '.join(PREPROCESSINGS)}")
    image = load_image(data, max_pixels, size if preprocessing == "fast" else None)
    pixels = resize_pixels(image, size)
    image.close()
    return pixels


def preprocess(
    data: bytes,
    size: tuple[int, int],
    scaling: str = "xception",
    max_pixels: int = 40_000_000,
    preprocessing: str = "exact",
) -> np.ndarray:
    """Encoded image bytes -> float32 (H, W, 3) model input."""
    return scale(image_pixels(data, size, preprocessing, max_pixels), scaling)
