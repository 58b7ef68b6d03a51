"""Decoding image files with Pillow: EXIF orientation, RGB conversion, JPEG draft downscaling, and the errors that name the file.

`load_image(path, min_side=...)` is what every reader of images uses; `BadImageError` (a `DataError`) is what it raises.
"""

from __future__ import annotations

import math
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps
from torchvision import tv_tensors

from vggnet.errors import DataError

__all__ = ["BadImageError", "open_image", "decode_image", "load_image", "to_rgb", "displayed_size", "exif_orientation",
           "pending_orientation", "ensure_decoded"]


# What Pillow raises on corrupt input: truncated data (OSError), a broken PNG chunk
# (SyntaxError), short reads (EOFError, struct.error), bad zlib streams, tiles outside
# the image (ValueError), and decompression bombs.
_DECODE_ERRORS = (OSError, SyntaxError, EOFError, ValueError, struct.error, zlib.error,
                  Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError)

# EXIF orientations 5-8 rotate by 90 degrees: the displayed image has width and height swapped.
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112


class BadImageError(DataError):
    """An image file that cannot be decoded: the message names the file and the reason."""

    def __init__(self, path: str | Path | None, reason: str | None = None) -> None:
        if reason is None:  # one message, as torch rebuilds an error raised in a loader worker
            path, reason = None, str(path)
            super().__init__(reason)
        else:
            super().__init__(f"{path or '<image>'}: {reason}")
        self.path = None if path is None else str(path)
        self.reason = reason


def exif_orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block must not cost the image: ignore the orientation
        return 1


def open_image(path: str | Path) -> Image.Image:
    """Open an image lazily (header only), refusing decompression bombs.

    Pillow only warns between MAX_IMAGE_PIXELS and twice that; we refuse anything
    over the limit, since such an image would stall a data-loader worker.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
    except FileNotFoundError:
        raise BadImageError(path, "no such file") from None
    except Image.UnidentifiedImageError:
        size = _file_size(path)
        reason = "empty file (0 bytes)" if size == 0 else "not an image Pillow can identify"
        raise BadImageError(path, reason) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImageError(path, f"refused as a decompression bomb: {exc}") from None
    except _DECODE_ERRORS as exc:
        what = "truncated file" if "truncated" in str(exc).lower() else "cannot open"
        raise BadImageError(path, f"{what}: {type(exc).__name__}: {exc}") from None
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and img.width * img.height > limit:
        img.close()
        raise BadImageError(path, f"refused as a decompression bomb: {img.width}x{img.height} pixels "
                                  f"is over PIL.Image.MAX_IMAGE_PIXELS = {limit}")
    return img


def _file_size(path: str | Path) -> int | None:
    try:
        return Path(path).stat().st_size
    except OSError:
        return None


def displayed_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) of the image once its EXIF orientation is applied; reads no pixels."""
    w, h = img.size
    return (h, w) if exif_orientation(img) in _SWAPPING_ORIENTATIONS else (w, h)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB.

    Transparent pixels are composited over white (as a browser shows them); 16- and
    32-bit integer greys are scaled to 8 bits rather than clipped (Pillow's own
    `convert` would clip I;16 at 255 and turn most of the image white); CMYK JPEGs
    are already un-inverted by Pillow's decoder and convert directly.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img).astype(np.float32)
        # I;16 is 0-65535; mode I comes from 16-bit PNG/TIFF greys in practice.
        a = np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8) if a.max(initial=0) > 255 or mode != "I" \
            else np.clip(a, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if mode == "F":
        a = np.asarray(img, dtype=np.float32)
        scale = 255.0 if a.max(initial=0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.rint(a * scale), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return img.convert("RGB")


def decode_image(img: Image.Image, *, min_side: int | None = None) -> Image.Image:
    """Decode a lazily opened image to RGB with its EXIF orientation applied.

    With `min_side`, a JPEG whose smallest side is at least twice `min_side` is
    decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling via `Image.draft`),
    never below `min_side`, so the later rescale loses nothing.
    Raises `BadImageError` (naming the file) for anything Pillow cannot decode.
    """
    path = getattr(img, "filename", None) or None
    source = img
    try:
        if min_side is not None and img.format == "JPEG" and pending_orientation(img):
            w, h = img.size
            short = min(w, h)
            if short >= 2 * min_side:
                img.draft(None, (math.ceil(w * min_side / short), math.ceil(h * min_side / short)))
        img.load()
        if exif_orientation(img) != 1:
            img = ImageOps.exif_transpose(img)
        img = to_rgb(img)
    except _DECODE_ERRORS as exc:
        if path:
            source.close()
        if isinstance(exc, OSError) and "truncated" in str(exc):
            reason = f"truncated file: {exc}"
        else:
            reason = f"cannot decode: {type(exc).__name__}: {exc}"
        raise BadImageError(path, reason) from None
    if img is not source and path:
        # Pillow keeps the file of a multi-frame image open after load(); the
        # converted copy no longer needs it, so workers do not leak descriptors.
        source.close()
    return img


def load_image(path: str | Path, *, min_side: int | None = None) -> Image.Image:
    """`decode_image(open_image(path))`: an RGB Pillow image, or `BadImageError` naming the file."""
    return decode_image(open_image(path), min_side=min_side)


def pending_orientation(img: Image.Image) -> bool:
    """True for an image opened from a file whose pixels are not decoded yet.

    A file whose header ends before the first scan (a JPEG cut or overwritten
    after its tables) opens with no tiles to decode; its file is still open, and
    it counts as pending too, so that decoding it raises the named error rather
    than handing an image without pixels to the transforms.
    """
    return isinstance(img, ImageFile.ImageFile) and (bool(img.tile) or getattr(img, "fp", None) is not None)


def ensure_decoded(image: Any, min_side: int | None) -> Any:
    if isinstance(image, Image.Image):
        if pending_orientation(image) or image.mode != "RGB":
            from vggnet.data.decode import fast_jpeg  # TorchCodec where it wins and gives Pillow's pixels

            # JPEGs only: reading a PNG's EXIF makes Pillow load (and half-decode) its pixels, which would
            # hide a corrupt file from `decode_image` below
            pixels = (fast_jpeg(image, min_side, exif_orientation(image))
                      if pending_orientation(image) and image.format == "JPEG" else None)
            if pixels is not None:
                # (3, H, W) with (H, W, 3) strides, the layout of Pillow's pixels: torch's vectorised
                # antialiased resize has its fast path for exactly this layout
                return tv_tensors.Image(pixels.permute(1, 2, 0).contiguous().permute(2, 0, 1))
            return decode_image(image, min_side=min_side)
        return image
    if isinstance(image, (str, Path)):
        return load_image(image, min_side=min_side)
    return image
