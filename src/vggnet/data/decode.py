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
GPU in batches (nvJPEG through TorchCodec, `decode_batch`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from vggnet.errors import UserError

__all__ = ["DECODER", "torchcodec_available", "fast_jpeg", "choose_decode_device", "decode_batch"]

DECODER = "auto"  # "auto": TorchCodec where it wins; "pillow": Pillow for everything

_JPEG_EOI = b"\xff\xd9"


@functools.lru_cache(maxsize=1)
def torchcodec_available() -> bool:
    try:
        from torchcodec.decoders import decode_jpeg  # noqa: F401
    except Exception:  # not installed, or its native libraries do not load on this machine
        return False
    return True


def fast_jpeg(img: Image.Image, min_side: int | None) -> torch.Tensor | None:
    """The (3, H, W) uint8 pixels of a lazily opened JPEG decoded by TorchCodec, or None where Pillow must
    decode it (then nothing was consumed: `img` is still pending). Closes `img` when it returns pixels."""
    from vggnet.data.transforms import _orientation, _pending

    if DECODER != "auto" or img.format != "JPEG" or img.mode not in ("RGB", "L") or not _pending(img):
        return None
    path = getattr(img, "filename", None)
    if not path:
        return None
    w, h = img.size
    if min_side is not None and min(w, h) >= 2 * min_side:
        return None  # Pillow's draft decode is faster here
    if _orientation(img) != 1 or not torchcodec_available():
        return None
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if not data.rstrip(b"\x00").endswith(_JPEG_EOI):
        return None  # truncated (or trailing data): Pillow decides, and names the problem
    from torchcodec.decoders import decode_jpeg

    try:
        pixels = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode="RGB")
    except Exception:  # whatever TorchCodec refuses, Pillow decodes or names
        return None
    if tuple(pixels.shape) != (3, h, w):
        return None
    img.close()
    return pixels


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


def decode_batch(paths: Sequence[str | Path], device: torch.device | str) -> list[torch.Tensor]:
    """Decode image files to (3, H, W) uint8 tensors on `device`: the JPEGs TorchCodec may take in one
    batched call (one nvJPEG call on CUDA), the others with Pillow (`load_image`, its named errors)."""
    from torchcodec.decoders import decode_jpeg

    from vggnet.data.transforms import _as_uint8_tensor, load_image, open_image

    device = torch.device(device)
    out: list[torch.Tensor | None] = [None] * len(paths)
    jpegs: list[int] = []
    for i, p in enumerate(paths):
        img = open_image(p)
        ok = (img.format == "JPEG" and img.mode in ("RGB", "L") and DECODER == "auto"
              and Path(p).read_bytes()[-2:] == _JPEG_EOI)
        from vggnet.data.transforms import _orientation

        if ok and _orientation(img) == 1:
            jpegs.append(i)
        img.close()
    if jpegs:
        data = [torch.frombuffer(bytearray(Path(paths[i]).read_bytes()), dtype=torch.uint8) for i in jpegs]
        try:
            decoded = decode_jpeg(data, mode="RGB", device=str(device))
        except Exception:
            decoded = [None] * len(jpegs)
        for i, x in zip(jpegs, decoded):
            out[i] = x
    for i, p in enumerate(paths):
        if out[i] is None:
            out[i] = _as_uint8_tensor(load_image(p)).to(device)
    return out  # type: ignore[return-value]
