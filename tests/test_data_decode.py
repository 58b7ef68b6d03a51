"""Decoding real-world files: every Pillow mode to RGB, EXIF orientation, and a clear
error naming the file for truncated, empty, non-image and decompression-bomb files."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from vggnet.data.images import BadImageError, decode_image, displayed_size, load_image, open_image, to_rgb
from vggnet.errors import DataError


def _jpeg_bytes(w: int = 64, h: int = 48) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_grayscale_becomes_rgb_with_equal_channels(tmp_path):
    p = tmp_path / "grey.jpg"
    Image.new("L", (20, 10), 77).save(p)
    img = load_image(p)
    assert img.mode == "RGB" and img.size == (20, 10)
    assert np.allclose(np.asarray(img, dtype=int), 77, atol=1)


def test_cmyk_jpeg_colours(tmp_path):
    p = tmp_path / "cmyk.jpg"
    # pure cyan | pure yellow halves; Pillow writes Adobe (inverted) CMYK and must undo it on decode
    a = np.zeros((16, 32, 4), np.uint8)
    a[:, :16, 0] = 255
    a[:, 16:, 2] = 255
    Image.fromarray(a, "CMYK").save(p, quality=95)
    assert Image.open(p).mode == "CMYK"
    rgb = np.asarray(load_image(p), dtype=int)
    assert np.abs(rgb[8, 4] - [0, 255, 255]).max() <= 12  # cyan
    assert np.abs(rgb[8, 28] - [255, 255, 0]).max() <= 12  # yellow


def test_palette_with_transparency_over_white(tmp_path):
    p = tmp_path / "pal.png"
    img = Image.new("P", (4, 2), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((1, 0), 1)
    img.info["transparency"] = 0  # palette index 0 (red) is transparent
    img.save(p, transparency=0)
    rgb = np.asarray(load_image(p))
    assert rgb[0, 0].tolist() == [255, 255, 255]  # transparent red -> white background
    assert rgb[0, 1].tolist() == [0, 0, 255]  # opaque blue stays blue


def test_rgba_composited_over_white(tmp_path):
    p = tmp_path / "rgba.png"
    a = np.zeros((2, 3, 4), np.uint8)
    a[0, 0] = [10, 20, 30, 255]
    a[0, 1] = [10, 20, 30, 0]
    a[0, 2] = [0, 0, 0, 128]
    Image.fromarray(a, "RGBA").save(p)
    rgb = np.asarray(load_image(p), dtype=int)
    assert rgb[0, 0].tolist() == [10, 20, 30]
    assert rgb[0, 1].tolist() == [255, 255, 255]
    assert np.abs(rgb[0, 2] - 127).max() <= 1  # half-transparent black over white = mid grey


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    p = tmp_path / "deep.png"
    a = np.array([[0, 32896, 65535, 1000]], dtype=np.uint16)
    Image.fromarray(a).save(p)
    assert Image.open(p).mode in ("I;16", "I")
    rgb = np.asarray(load_image(p), dtype=int)
    assert rgb[0, :, 0].tolist() == [0, 128, 255, 4]
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    # Pillow's own convert would clip at 255: most of a 16-bit image would turn white
    assert to_rgb(Image.fromarray(np.full((2, 2), 1000, np.uint16))).getpixel((0, 0)) == (4, 4, 4)


def test_palette_without_transparency_and_grey_with_alpha(tmp_path):
    p = tmp_path / "pal.gif"
    img = Image.new("P", (3, 1), 0)
    img.putpalette([200, 10, 20, 5, 6, 7] + [0] * 762)
    img.putpixel((2, 0), 1)
    img.save(p)
    assert Image.open(p).mode == "P"
    assert np.asarray(load_image(p)).reshape(-1, 3).tolist() == [[200, 10, 20], [200, 10, 20], [5, 6, 7]]
    la = tmp_path / "la.png"
    Image.fromarray(np.array([[[40, 255], [40, 0]]], np.uint8), "LA").save(la)
    assert np.asarray(load_image(la)).reshape(-1, 3).tolist() == [[40, 40, 40], [255, 255, 255]]


def _png_rgb16(path, a: np.ndarray) -> None:
    """A 48-bit RGB PNG written by hand (Pillow cannot write one): (H, W, 3) uint16."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w, _ = a.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in a)  # filter type 0 per row
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16_bit_rgb_png(tmp_path):
    p = tmp_path / "deep_rgb.png"
    a = np.array([[[0, 257 * 128, 65535], [257 * 10, 257 * 20, 257 * 30]]], np.uint16)
    _png_rgb16(p, a)
    rgb = np.asarray(load_image(p))
    assert rgb.dtype == np.uint8 and rgb.tolist() == [[[0, 128, 255], [10, 20, 30]]]


# What each EXIF orientation means (EXIF 2.3, tag 0x0112), for a stored array `a`:
# the image a viewer shows. Written from the standard, not from Pillow.
_DISPLAYED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # row 0 is the left side, column 0 the top
    6: lambda a: np.rot90(a, -1),  # row 0 is the right side: rotate 90 clockwise
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],  # row 0 is the right side, column 0 the bottom
    8: lambda a: np.rot90(a, 1),  # row 0 is the left side, column 0 the bottom: 90 anticlockwise
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_exactly(tmp_path, orientation):
    # lossless PNG (eXIf chunk) with distinct pixels: the displayed array must match exactly
    a = (np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 13)
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = orientation
    p = tmp_path / f"o{orientation}.png"
    img.save(p, exif=exif)
    want = _DISPLAYED[orientation](a)
    assert displayed_size(open_image(p)) == (want.shape[1], want.shape[0])
    assert np.array_equal(np.asarray(load_image(p)), want)


def test_exif_rotation_with_jpeg_draft(tmp_path):
    # a 400x200 JPEG shown rotated (orientation 8): decoded at reduced size, then rotated
    p = tmp_path / "big_rot.jpg"
    a = np.zeros((200, 400, 3), np.uint8)
    a[:, :200] = [255, 0, 0]  # left half red -> bottom half once rotated 90 anticlockwise
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 8
    img.save(p, exif=exif, quality=95)
    out = decode_image(open_image(p), min_side=50)  # 200 >= 2 * 50: draft to 1/4
    assert out.size == (50, 100)  # (width, height) as displayed
    arr = np.asarray(out, dtype=int)
    assert np.abs(arr[90, 25] - [255, 0, 0]).max() < 40 and np.abs(arr[10, 25] - [0, 0, 0]).max() < 40


def test_exif_orientation_applied(tmp_path):
    p = tmp_path / "rot.jpg"
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = [255, 0, 0]  # left half red
    a[:, 20:] = [0, 0, 255]  # right half blue
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    img.save(p, exif=exif, quality=95)
    lazy = open_image(p)
    assert lazy.size == (40, 20) and displayed_size(lazy) == (20, 40)
    out = np.asarray(load_image(p), dtype=int)
    assert out.shape == (40, 20, 3)
    assert np.abs(out[5, 10] - [255, 0, 0]).max() < 40  # the left (red) half is now on top
    assert np.abs(out[35, 10] - [0, 0, 255]).max() < 40


def _assert_bad(path, match):
    with pytest.raises(BadImageError, match=match) as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, DataError)


def test_truncated_jpeg(tmp_path):
    p = tmp_path / "cut.jpg"
    data = _jpeg_bytes()
    p.write_bytes(data[: len(data) // 2])
    _assert_bad(p, "truncated")


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    _assert_bad(p, "empty file")


def test_text_file_with_image_extension(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not a picture\n")
    _assert_bad(p, "not an image")


def write_corrupt_png(path):
    """A PNG whose header is fine and whose compressed pixel data are garbage."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    idat = data.find(b"IDAT")
    data[idat + 8: idat + 20] = b"\x00" * 12  # garbage inside the compressed data
    path.write_bytes(bytes(data))


def test_corrupt_png_chunk(tmp_path):
    p = tmp_path / "broken.png"
    write_corrupt_png(p)
    _assert_bad(p, "cannot")


@pytest.mark.parametrize("side", [40, 100])  # 1600 px: over the limit (Pillow only warns); 10000: over twice it
def test_decompression_bomb(tmp_path, monkeypatch, side):
    p = tmp_path / "bomb.png"
    Image.new("RGB", (side, side)).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    _assert_bad(p, "decompression bomb")


def test_missing_file(tmp_path):
    _assert_bad(tmp_path / "nope.jpg", "no such file")
