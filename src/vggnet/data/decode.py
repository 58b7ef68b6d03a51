"""JPEG decoding with the ecosystem's decoder (TorchCodec) where it is faster, Pillow everywhere else.

The input pipeline of §3.1/§3.2 decodes every image once per epoch, so the
decoder sets the data loader's ceiling. Which decoder wins depends on the
image (one thread, measured in docs/benchmarks.md, "Data pipeline"):

- a JPEG near the size it will be rescaled to (ImageNet's 500x375 for S=256):
  TorchCodec's `decode_jpeg` (libjpeg-turbo straight into a uint8 tensor,
  no Pillow image, no copy out of it);
- a JPEG at least twice the largest S: Pillow's draft mode, which decodes at
  1/2, 1/4 or 1/8 size in the DCT (`vggnet.data.transforms.decode_image`);
- anything else — PNG, CMYK, EXIF-rotated, 16-bit, palette, a file without
  its end-of-image marker (truncated) — Pillow, unchanged, with its named
  errors (`BadImageError`). TorchCodec is only asked for what it decodes to the
  same pixels (tests/test_data_decode.py and tests/test_decode.py hold both to that);
  if it fails on a file, Pillow decodes it (or names what is wrong with it).

`DECODER = "pillow"` turns TorchCodec off (the benchmark compares the two).
On a GPU, `choose_decode_device` decides whether JPEGs may be decoded on the
GPU in batches (nvJPEG through TorchCodec, `vggnet.data.device_decode`).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from PIL import Image

from vggnet.errors import UserError

__all__ = ["DECODER", "torchcodec_available", "use_torchcodec", "torchcodec_bytes", "fast_jpeg",
           "choose_decode_device"]

DECODER = "auto"  # "auto": TorchCodec where it wins; "pillow": Pillow for everything

_JPEG_EOI = b"\xff\xd9"


@functools.lru_cache(maxsize=1)
def torchcodec_available() -> bool:
    try:
        from torchcodec.decoders import decode_jpeg  # noqa: F401
    except Exception:  # not installed, or its native libraries do not load on this machine
        return False
    return True


def fast_jpeg(img: Image.Image, min_side: int | None, orientation: int) -> torch.Tensor | None:
    """The (3, H, W) uint8 pixels of a lazily opened, not yet decoded JPEG (`orientation`: its EXIF
    orientation), decoded by TorchCodec; or None where Pillow must decode it (then nothing was consumed:
    `img` is still pending). Closes `img` when it returns pixels."""
    w, h = img.size
    if min_side is not None and min(w, h) >= 2 * min_side:
        return None  # Pillow's draft decode is faster here
    data = torchcodec_bytes(img, orientation)
    if data is None:
        return None
    from torchcodec.decoders import decode_jpeg

    try:
        pixels = decode_jpeg(data, mode="RGB")
    except Exception:  # whatever TorchCodec refuses, Pillow decodes or names
        return None
    if tuple(pixels.shape) != (3, h, w):
        return None
    img.close()
    return pixels


def torchcodec_bytes(img: Image.Image, orientation: int) -> torch.Tensor | None:
    """The whole file of a lazily opened image as a uint8 tensor, where TorchCodec decodes it to Pillow's
    pixels (`use_torchcodec`) and it is complete; None where Pillow must decode it (a truncated file, or
    trailing data: Pillow decides, and names the problem). Reads nothing but the file; `img` stays pending."""
    if not use_torchcodec(img, orientation):
        return None
    try:
        data = Path(img.filename).read_bytes()
    except OSError:
        return None
    if not data.rstrip(b"\x00").endswith(_JPEG_EOI):
        return None
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def use_torchcodec(img: Image.Image, orientation: int) -> bool:
    """Whether TorchCodec gives this opened file's pixels as Pillow would: a baseline or progressive
    JPEG in RGB (YCbCr) or grey, shown as stored (no EXIF rotation), read from a file."""
    return (DECODER == "auto" and img.format == "JPEG" and img.mode in ("RGB", "L") and orientation == 1
            and bool(getattr(img, "filename", None)) and torchcodec_available())


def choose_decode_device(requested: str, device: torch.device | str, *, cuda_decoder: bool | None = None) -> str:
    """`--decode-device` (cpu | cuda | auto) for training on `device` -> "cpu" or "cuda", or a `UserError`.

    cpu: the data-loader workers decode (and transform). cuda: JPEGs are decoded
    on the training GPU in batches, which needs a CUDA device and TorchCodec
    with nvJPEG. auto: cuda when both are there, else cpu. `cuda_decoder`
    overrides the check for TorchCodec's CUDA decoder (tests).
    """
    device = torch.device(device)
    if requested not in ("cpu", "cuda", "auto"):
        raise UserError(f"--decode-device must be cpu, cuda or auto, got {requested!r}")
    if requested == "cpu":
        return "cpu"
    if cuda_decoder is None:
        cuda_decoder = torchcodec_available() and torch.cuda.is_available()
    if device.type != "cuda":
        if requested == "cuda":
            raise UserError(f"--decode-device cuda decodes on the training GPU, but the device is {device}; "
                            f"use --decode-device cpu (or auto)")
        return "cpu"
    if not cuda_decoder:
        if requested == "cuda":
            raise UserError("--decode-device cuda needs TorchCodec with CUDA support (pip install torchcodec, "
                            "with the CUDA build matching torch); use --decode-device cpu")
        return "cpu"
    return "cuda"
