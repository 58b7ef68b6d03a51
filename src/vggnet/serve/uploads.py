"""Reading what a client uploads, within bounds: the body's size while it streams, the pixel count from the
image header before any pixel is decoded, and only the formats we read.

Every refusal is an `UploadError` carrying its HTTP status and a sentence naming what was wrong; nothing here
touches the filesystem (an upload is bytes in memory; a file name a client sends is never opened).
"""

from __future__ import annotations

import io
import warnings
from typing import AsyncIterator

from PIL import Image

from vggnet.data.images import BadImageError, decode_image

__all__ = ["UploadError", "FORMATS", "read_body", "image_from_body", "decode_upload"]

# Pillow's names of the formats `vgg predict` reads (torchvision's IMG_EXTENSIONS and GIF). Pillow is asked to
# try these plugins only, so that an upload can never reach one that shells out (EPS runs Ghostscript).
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM")  # (an MPO opens through JPEG)


class UploadError(Exception):
    """A refused upload: `status` (400, 413, 415) and `kind` (a short label for metrics) with the reason."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


async def read_body(chunks: AsyncIterator[bytes], content_length: str | None, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `max_bytes`: from Content-Length
    before reading anything, else while it streams (a chunked upload is counted, never buffered past the limit)."""
    limit_mb = max_bytes / 2 ** 20
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise UploadError(400, "bad_request", f"Content-Length is not a number: {content_length!r}") from None
        if declared > max_bytes:
            raise UploadError(413, "too_large", f"upload of {declared} bytes is over --max-upload-mb "
                                                f"{limit_mb:g} ({max_bytes} bytes)")
    buf = bytearray()
    async for chunk in chunks:
        buf += chunk
        if len(buf) > max_bytes:
            raise UploadError(413, "too_large", f"upload is over --max-upload-mb {limit_mb:g} ({max_bytes} bytes)")
    return bytes(buf)


async def image_from_body(body: bytes, content_type: str, max_bytes: int) -> bytes:
    """The image's bytes: the body itself, or the first file part of a multipart/form-data body."""
    if not content_type.startswith("multipart/form-data"):
        return body
    from starlette.datastructures import Headers, UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream() -> AsyncIterator[bytes]:
        yield body

    parser = MultiPartParser(Headers({"content-type": content_type}), stream(), max_files=1, max_fields=10,
                             max_part_size=max_bytes)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise UploadError(400, "bad_request", f"multipart body: {exc.message}") from None
    try:
        for _, value in form.multi_items():
            if isinstance(value, UploadFile):
                return await value.read()  # the bytes; value.filename is only a label and is never opened
    finally:
        await form.close()
    raise UploadError(400, "bad_request", "multipart body has no file part (send the image as a file field)")


def decode_upload(data: bytes, *, max_pixels: int, min_side: int | None) -> Image.Image:
    """An RGB Pillow image from uploaded bytes: 400 for an empty, truncated or corrupt file, 415 for anything
    that is not one of `FORMATS`, 413 for more than `max_pixels` pixels (read from the header, before decoding).
    `min_side` allows JPEG draft decoding as `vgg predict` does for the same method."""
    if not data:
        raise UploadError(400, "empty", "empty upload (0 bytes): send the image file's bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.UnidentifiedImageError:
        raise UploadError(415, "unsupported", f"not an image in a format we read ({', '.join(FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UploadError(413, "too_many_pixels", f"image refused as a decompression bomb (over --max-pixels "
                                                  f"{max_pixels}): {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a header Pillow cannot parse is the client's file, not our bug
        raise UploadError(400, "bad_image", f"cannot read the image header: {type(exc).__name__}: {exc}") from None
    if img.width * img.height > max_pixels:
        img.close()
        raise UploadError(413, "too_many_pixels", f"image of {img.width}x{img.height} = {img.width * img.height} "
                                                  f"pixels is over --max-pixels {max_pixels}")
    try:
        return decode_image(img, min_side=min_side)
    except BadImageError as exc:
        raise UploadError(400, "bad_image", exc.reason) from None
    except Exception as exc:  # noqa: BLE001 - whatever a hostile file makes a decoder raise is a 400, not a crash
        raise UploadError(400, "bad_image", f"cannot decode: {type(exc).__name__}: {exc}") from None
