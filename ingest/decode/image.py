"""Images → uint8 [H,W,3] RGB with PIL, ready for the reference's resize and crop.

* EXIF orientation is applied (``ImageOps.exif_transpose``): phones store
  portraits sideways.
* Modes: CMYK and palette go through PIL's ``convert``; 16-bit greyscale
  (``I;16``/``I``) is scaled to 8 bits by value/257 (PIL's own ``convert`` would
  clip everything above 255 to white); float (``F``) images are min-max
  stretched, since their range is not defined.
* Alpha is composited on white (what a viewer shows). The reference's
  ``convert("RGB")`` drops alpha instead, which reveals whatever colour is
  stored under transparent pixels (often black); only images with transparency
  differ from the reference.
* Animated GIF/WebP/APNG: the first frame only, as one vision image
  (``extra["frames"]`` says how many there were).
* Size: images above ``settings.max_image_pixels`` are downscaled on decode
  (JPEG ``draft`` then ``thumbnail``), keeping the aspect; the model only needs
  224 pixels on the short side. PIL's decompression-bomb guard
  (``Image.MAX_IMAGE_PIXELS``, error beyond twice its value) is left on, and we
  also refuse anything above ``BOMB_FACTOR × max_image_pixels``: both become a
  Rejected. Truncated files are Rejected too (``LOAD_TRUNCATED_IMAGES`` stays off).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ingest.decode.base import DecodeError, DecodeJob, unit_stretch
from schemas import Modality, Segment

BOMB_FACTOR = 4  # refuse images with more than this many times max_image_pixels
EXIF_ORIENTATION = 0x0112
SIDEWAYS = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def decode_image(job: DecodeJob) -> Iterator[Segment]:
    pixels, extra = load_rgb(job)
    h, w = pixels.shape[:2]
    yield job.segment(Modality.VISION, 0, None, None, pixels, width=extra.pop("width", w),
                      height=extra.pop("height", h), **extra)


def load_rgb(job: DecodeJob) -> tuple[np.ndarray, dict]:
    """The image as uint8 [H,W,3] RGB plus extra facts (source size, frames)."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise DecodeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on; refusing to guess pixels")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we downscale
            with Image.open(job.path) as im:
                return _to_rgb(im, job.settings.max_image_pixels)
    except Image.DecompressionBombError as e:
        raise DecodeError(f"decompression bomb refused: {e}") from None
    except UnidentifiedImageError as e:
        raise DecodeError(f"not an image PIL can read: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated/corrupt data
        raise DecodeError(f"image decode failed: {type(e).__name__}: {e}") from None


def _to_rgb(im: Image.Image, max_pixels: int) -> tuple[np.ndarray, dict]:
    width, height = im.size
    if width * height > BOMB_FACTOR * max_pixels:
        raise DecodeError(f"image of {width}x{height} pixels exceeds "
                          f"{BOMB_FACTOR} x max_image_pixels ({max_pixels}); decompression bomb?")
    if im.getexif().get(EXIF_ORIENTATION) in SIDEWAYS:
        width, height = height, width
    frames = getattr(im, "n_frames", 1)
    im.seek(0)
    _draft_if_huge(im, max_pixels)
    im = ImageOps.exif_transpose(im)
    rgb = MODE_TO_RGB.get(im.mode, _generic_to_rgb)(im)
    if rgb.width * rgb.height > max_pixels:
        rgb.thumbnail(_fit(rgb.size, max_pixels), Image.Resampling.LANCZOS)
    extra = {"width": width, "height": height}
    if frames > 1:
        extra["frames"] = frames
    return np.asarray(rgb, dtype=np.uint8).copy(), extra


def _draft_if_huge(im: Image.Image, max_pixels: int) -> None:
    """JPEG can decode at 1/2, 1/4, 1/8 scale directly: far less memory and time."""
    if im.width * im.height > max_pixels and im.format == "JPEG":
        im.draft("RGB", _fit(im.size, max_pixels))


def _fit(size: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    scale = math.sqrt(max_pixels / (size[0] * size[1]))
    return max(1, int(size[0] * scale)), max(1, int(size[1] * scale))


def _on_white(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _sixteen_bit(im: Image.Image) -> Image.Image:
    values = np.asarray(im, dtype=np.float64)
    grey = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")


def _float(im: Image.Image) -> Image.Image:
    grey = unit_stretch(np.asarray(im, dtype=np.float64)) * 255
    return Image.fromarray(np.rint(grey).astype(np.uint8), "L").convert("RGB")


def _palette(im: Image.Image) -> Image.Image:
    return _on_white(im) if "transparency" in im.info else im.convert("RGB")


def _generic_to_rgb(im: Image.Image) -> Image.Image:
    return im.convert("RGB")


MODE_TO_RGB: dict[str, Callable[[Image.Image], Image.Image]] = {
    "RGBA": _on_white,
    "LA": _on_white,
    "La": _on_white,
    "RGBa": _on_white,
    "PA": _on_white,
    "P": _palette,
    "I;16": _sixteen_bit,
    "I;16B": _sixteen_bit,
    "I;16L": _sixteen_bit,
    "I": _sixteen_bit,
    "F": _float,
}
