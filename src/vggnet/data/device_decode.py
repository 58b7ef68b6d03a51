"""Training with JPEGs decoded on the GPU in batches (`vgg train --decode-device cuda`).

With one GPU fed by a few CPU cores, decoding is what a data-loader worker
spends most of its time on (docs/benchmarks.md, "Data pipeline"). Here the
work is split where it is cheapest:

- in the loader workers, each JPEG that TorchCodec decodes to Pillow's pixels
  (`vggnet.data.decode.use_torchcodec`: baseline or progressive RGB/grey, no EXIF
  rotation, complete) is only opened (its header: size, mode, EXIF) and read as
  bytes, and its augmentation is drawn there (`TrainPreset.draw`: S, crop,
  flip, colour shift), under the same per-image seed as always;
- in the main process, a micro-batch's JPEGs are decoded in one batched call on
  the device (`torchcodec.decoders.decode_jpeg(..., device="cuda")`, nvJPEG),
  and rescaled, cropped, flipped and normalised there (`TrainPreset.apply`).

Every other file (PNG, CMYK, EXIF-rotated, truncated, not a file at all)
goes through the CPU preset in the worker as before, with the same named
errors; a corrupt JPEG that the device decoder refuses is decoded by Pillow
in the main process, which names it (`BadImageError`) or recovers it.
On the CPU the two halves give bitwise the tensors of the usual path
(tests/test_decode.py holds them to that); on a GPU only the resize kernel
differs (float instead of the CPU's uint8 fast path).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch
from PIL import Image

from vggnet.data.datasets import Batch
from vggnet.data.images import BadImageError, exif_orientation, pending_orientation, load_image
from vggnet.data.transforms import TrainPreset, uint8_chw

__all__ = ["EncodedJPEG", "DeferredDecode", "DeferredImages", "collate_deferred", "finish_batch"]

class EncodedJPEG(NamedTuple):
    """A training image left encoded for the device: the file's bytes and its drawn augmentation."""

    path: str
    data: torch.Tensor  # uint8, the whole file
    params: dict[str, Any]


class DeferredDecode:
    """A dataset transform around a `TrainPreset`: JPEGs the device may decode come out as `EncodedJPEG`,
    everything else as the preset's tensor (decoded and transformed here, on the CPU)."""

    def __init__(self, preset: TrainPreset) -> None:
        if not isinstance(preset, TrainPreset) or not preset.plain:
            raise ValueError("DeferredDecode: needs a TrainPreset without auto_augment")
        self.preset = preset
        self.decode_side = preset.decode_side  # the dataset hands over lazily opened images

    def __call__(self, image: Any, boxes: Any = None) -> Any:
        if boxes is None and isinstance(image, Image.Image) and pending_orientation(image) and image.format == "JPEG":
            from vggnet.data.decode import torchcodec_bytes

            data = torchcodec_bytes(image, exif_orientation(image))
            if data is not None:
                width, height = image.size
                image.close()
                return EncodedJPEG(str(image.filename), data, self.preset.draw(height, width))
        return self.preset(image) if boxes is None else self.preset(image, boxes)

    def __repr__(self) -> str:
        return f"DeferredDecode({self.preset!r})"


class DeferredImages(NamedTuple):
    """The images of a collated micro-batch: those transformed in the workers, and the JPEGs still encoded,
    each with its position in the batch."""

    ready: torch.Tensor  # (n_ready, 3, crop, crop) float32
    ready_at: list[int]
    encoded: list[EncodedJPEG]
    encoded_at: list[int]


def collate_deferred(items: Sequence[Any]) -> Batch:
    """`collate_skip_bad` for items whose image may be an `EncodedJPEG`: `Batch((DeferredImages, labels))`
    with `.skipped` counting the bad files (an empty `Batch` when every item was bad)."""
    good = [b for b in items if b is not None]
    skipped = len(items) - len(good)
    if not good:
        return Batch((), skipped)
    ready_at = [i for i, b in enumerate(good) if not isinstance(b[0], EncodedJPEG)]
    encoded_at = [i for i, b in enumerate(good) if isinstance(b[0], EncodedJPEG)]
    ready = (torch.stack([torch.as_tensor(good[i][0]).as_subclass(torch.Tensor) for i in ready_at]) if ready_at
             else torch.empty(0))
    labels = torch.tensor([int(b[1]) for b in good], dtype=torch.long)
    return Batch((DeferredImages(ready, ready_at, [good[i][0] for i in encoded_at], encoded_at), labels), skipped)


def finish_batch(batch: Batch, preset: TrainPreset, device: torch.device | str) -> tuple[Batch, list[str]]:
    """Decode a collated micro-batch's JPEGs on `device` in one batched call and transform them there:
    (`Batch((images on device, labels))`, messages naming the files that could not be read, which are
    dropped and counted in `.skipped`). A batch without `DeferredImages` is returned as it is."""
    if len(batch) == 0 or not isinstance(batch[0], DeferredImages):
        return batch, []
    device = torch.device(device)
    images, labels = batch[0], batch[1]
    n = len(images.ready_at) + len(images.encoded_at)
    out: list[torch.Tensor | None] = [None] * n
    ready = images.ready.to(device, non_blocking=True)
    for k, i in enumerate(images.ready_at):
        out[i] = ready[k]
    pixels = _decode_on(device, [e.data for e in images.encoded])
    messages = []
    for k, (i, enc) in enumerate(zip(images.encoded_at, images.encoded)):
        x = pixels[k]
        if x is None:  # the device decoder refused the file: Pillow decodes it here, or names what is wrong
            try:
                x = uint8_chw(load_image(enc.path)).to(device)
            except BadImageError as exc:
                messages.append(f"skipping bad image {exc}")
                continue
        out[i] = preset.apply(x, enc.params)
    keep = [i for i in range(n) if out[i] is not None]
    skipped = batch.skipped + (n - len(keep))
    if not keep:
        return Batch((), skipped), messages
    return Batch((torch.stack([out[i] for i in keep]), labels[keep].to(device, non_blocking=True)),
                 skipped), messages


def _decode_on(device: torch.device, data: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """(3, H, W) uint8 RGB pixels on `device` of each encoded JPEG; None for one the decoder refuses."""
    if not data:
        return []
    from torchcodec.decoders import decode_jpeg

    try:
        return list(decode_jpeg(data, mode="RGB", device=str(device)))
    except Exception:  # one bad file fails the batched call: decode one by one to find it
        out: list[torch.Tensor | None] = []
        for d in data:
            try:
                out.append(decode_jpeg(d, mode="RGB", device=str(device)))
            except Exception:
                out.append(None)
        return out
