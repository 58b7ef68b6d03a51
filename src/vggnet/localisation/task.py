"""Localisation (Appendix A of the paper): box-regression nets and protocol 1.

A localisation net is a classification net whose last FC layer predicts a box
instead of class scores: (centre x, centre y, width, height). Single-class
regression (SCR) predicts one box for all classes (4 outputs); per-class
regression (PCR) predicts one box per class (4 x classes outputs, laid out as
class 0's four numbers, then class 1's, ...). It is trained with a Euclidean
loss, initialised from the classification net (`--init from:CKPT`, the new
last layer at random), lr 1e-3, by the same engine as classification: this
module defines the `LocalisationTask` it is given.

Box coordinates are those of the window the net sees: in units of the crop side,
relative to the crop's top-left corner, so (0.5, 0.5, 1, 1) is the whole crop. A
net applied densely (`VGG.dense`, stride 32, window = crop) then predicts, at
each position, a box in its own window, which a translation by the window's
offset and a rescale map back to the original image (`full_protocol.py`).

Decisions the paper leaves open (docs/localisation.md gives the measurements):

- boxes travel with the image through the training transform (torchvision
  transforms v2, `tv_tensors.BoundingBoxes`): rescale, crop, flip;
- `box_mode="whole"` (default): a box cut by the crop is kept whole (its
  coordinates may leave [0, 1]), so the dense form can predict the full object
  from a window that sees part of it; `"clip"` regresses the visible part;
- `target="overlap"` (default): of several boxes, the target is the one with the
  largest area inside the crop; `"largest"` takes the largest box that the crop
  touches. (All boxes of an image count as boxes of its label: ImageNet's
  localisation annotations are of the image's class);
- a crop that contains none of the object is masked out of the loss and counted
  ("empty crops" in the epoch's log line: percent of the training crops since the
  previous validation);
- annotation boxes partly outside the image are clipped to it; boxes with zero
  area (after clipping) are skipped with a `BoxWarning` naming the file; an
  image left with no box trains as an empty crop; a validation image without
  any box is a `DataError`.

Protocol 1 (the paper's Table 8): the central crop of the image rescaled to Q
(= the training S by default), the box predicted for the ground-truth class;
correct when its IoU with a ground-truth box is >= 0.5.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torchvision import tv_tensors
from torchvision.ops import box_convert, box_iou
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from vggnet.engine.task import Task, checkpoint_task
from vggnet.errors import CheckpointError, DataError, UserError

__all__ = [
    "HEADS", "BOX_MODES", "TARGETS", "IOU_THRESHOLD", "TASK_NAME", "BoxWarning",
    "boxes_to_params", "params_to_boxes", "select_target", "localisation_targets", "class_params",
    "euclidean_loss", "sanitize_boxes", "LocalisationTrainTransform", "CentralCropPreset",
    "LocalisationTask", "Localiser", "load_localiser", "load_classifier_checkpoint", "make_localisation_checkpoint",
    "central_pass", "protocol1", "mean_box", "mean_box_error", "count_images_without_boxes",
]

from vggnet.arguments import BOX_MODES, HEADS, TARGETS  # noqa: E402  (defined with the flags)
IOU_THRESHOLD = 0.5          # the ILSVRC criterion: a box is correct at IoU >= 0.5
TASK_NAME = "localisation"   # `meta["task"]` of a localisation checkpoint


class BoxWarning(UserWarning):
    """An annotation box was skipped (zero area, or entirely outside the image); the message names the file."""


# --------------------------------------------------------------------------- box parametrisation


def boxes_to_params(boxes: torch.Tensor, crop_size: int) -> torch.Tensor:
    """XYXY boxes in the crop's pixels `(..., 4)` -> (cx, cy, w, h) in units of the crop side."""
    return box_convert(boxes.float(), "xyxy", "cxcywh") / float(crop_size)


def params_to_boxes(params: torch.Tensor, crop_size: int) -> torch.Tensor:
    """(cx, cy, w, h) in units of the crop side `(..., 4)` -> XYXY boxes in the crop's pixels.

    A negative predicted width or height gives an empty box (x1 = x0), which
    overlaps nothing, rather than an inverted one that torchvision's IoU would
    count with a negative area."""
    cx, cy, w, h = (params.float() * float(crop_size)).unbind(-1)
    w, h = w.clamp_min(0), h.clamp_min(0)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def _area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2] - boxes[..., 0]).clamp_min(0) * (boxes[..., 3] - boxes[..., 1]).clamp_min(0)


def select_target(boxes: torch.Tensor, crop_size: int, target: str = "overlap") -> int:
    """Index of the target box among `boxes` (XYXY, crop pixels, not clipped), or -1
    when the crop contains none of any box (zero area inside the crop)."""
    if boxes.numel() == 0:
        return -1
    inside = _area(boxes.clamp(0, crop_size))
    touching = inside > 0
    if not bool(touching.any()):
        return -1
    if target == "overlap":
        return int(inside.argmax())
    if target == "largest":
        return int(torch.where(touching, _area(boxes), torch.full_like(inside, -1.0)).argmax())
    raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")


def localisation_targets(boxes: Sequence[torch.Tensor], crop_size: int, *, box_mode: str = "whole",
                         target: str = "overlap") -> tuple[torch.Tensor, torch.Tensor]:
    """Box parameters `(N, 4)` and a validity mask `(N,)` for the crops of a batch.

    `boxes[i]` holds crop i's boxes (XYXY crop pixels, whole). With `box_mode="clip"`
    the target is the part inside the crop. A crop without any of the object gets
    zeros and `valid = False` (it is masked out of the loss)."""
    if box_mode not in BOX_MODES:
        raise ValueError(f"box_mode must be one of {', '.join(BOX_MODES)}, got {box_mode!r}")
    params = torch.zeros(len(boxes), 4)
    valid = torch.zeros(len(boxes), dtype=torch.bool)
    for i, b in enumerate(boxes):
        b = torch.as_tensor(b).as_subclass(torch.Tensor).float().reshape(-1, 4)
        k = select_target(b, crop_size, target)
        if k < 0:
            continue
        box = b[k].clamp(0, crop_size) if box_mode == "clip" else b[k]
        params[i] = boxes_to_params(box, crop_size)
        valid[i] = True
    return params, valid


def class_params(output: torch.Tensor, labels: torch.Tensor, head: str) -> torch.Tensor:
    """The four box parameters for class `labels[i]` of each row of the net's output:
    `(N, 4)` for SCR, `(N, 4 * classes)` for PCR -> `(N, 4)`."""
    if head == "scr":
        return output
    per_class = output.view(output.shape[0], -1, 4)                       # (N, classes, 4)
    return per_class.gather(1, labels.view(-1, 1, 1).expand(-1, 1, 4)).squeeze(1)


def euclidean_loss(output: torch.Tensor, labels: torch.Tensor, params: torch.Tensor, valid: torch.Tensor,
                   head: str) -> torch.Tensor:
    """Caffe's Euclidean loss, 1/2 ||prediction - target||^2, SUMMED over the valid crops.

    For PCR only the ground-truth class's four outputs enter (the others get no
    gradient)."""
    pred = class_params(output.float(), labels, head)
    per_image = 0.5 * (pred - params.to(pred.dtype)).pow(2).sum(dim=1)
    return (per_image * valid.to(pred.dtype)).sum()


# --------------------------------------------------------------------------- transforms


def _where(image: Any) -> str:
    name = getattr(image, "filename", None)
    return str(name) if name else "an image"


def sanitize_boxes(boxes: tv_tensors.BoundingBoxes, where: str = "an image") -> tv_tensors.BoundingBoxes:
    """Annotation boxes made safe for transforming: clipped to the image, zero-area
    ones skipped (a `BoxWarning` names the file), and their clamping turned off,
    so that a crop that cuts a box keeps it whole (clipping is a target choice)."""
    boxes = TF.convert_bounding_box_format(boxes, new_format="XYXY") if boxes.format.name != "XYXY" else boxes
    h, w = boxes.canvas_size
    data = boxes.as_subclass(torch.Tensor).float().reshape(-1, 4)
    clipped = torch.stack([data[:, 0].clamp(0, w), data[:, 1].clamp(0, h),
                           data[:, 2].clamp(0, w), data[:, 3].clamp(0, h)], dim=1)
    keep = _area(clipped) > 0
    if not bool(keep.all()):
        bad = data[~keep].tolist()
        warnings.warn(f"{where}: skipping {len(bad)} box(es) with zero area inside the {w}x{h} image: "
                      f"{', '.join(str([round(v, 1) for v in b]) for b in bad[:3])}", BoxWarning, stacklevel=2)
    return tv_tensors.BoundingBoxes(clipped[keep], format="XYXY", canvas_size=(h, w), clamping_mode=None)


class LocalisationTrainTransform:
    """The classification training transform (`TrainPreset`: rescale to S, random crop,
    flip, colour shift) applied to an image and its boxes; boxes come out whole,
    in crop pixels (canvas crop x crop)."""

    def __init__(self, preset: Callable[..., Any]) -> None:
        self.preset = preset
        # ImageDataset hands our presets lazily opened images (JPEG draft decoding)
        self.decode_side = getattr(preset, "decode_side", None)

    def __call__(self, image: Any, boxes: tv_tensors.BoundingBoxes | None = None) -> Any:
        if boxes is None:
            raise DataError(f"{_where(image)}: a localisation run needs boxes, and this dataset has none "
                            f"(build it with boxes=True)")
        return self.preset(image, sanitize_boxes(boxes, _where(image)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.preset!r})"


def _preset_base():
    from vggnet.data.transforms import Preset

    return Preset


class CentralCropPreset(_preset_base()):
    """Protocol 1 input: rescale the smallest side to Q, take the central crop_size
    crop, normalise. Boxes go through the same rescale and crop and stay whole."""

    def __init__(self, *, scale: int, crop_size: int, preprocessing: Any) -> None:
        from vggnet.data.transforms import RescaleSmallestSide, ToNormalizedTensor

        if scale < crop_size:
            raise ValueError(f"scale: Q={scale} must be >= crop_size={crop_size} for the central crop")
        self.scale, self.crop_size, self.preprocessing = int(scale), int(crop_size), preprocessing
        self.decode_side = self.scale
        self.transforms = v2.Compose([RescaleSmallestSide(self.scale), v2.CenterCrop(self.crop_size),
                                      ToNormalizedTensor(preprocessing)])

    def __call__(self, image: Any, boxes: tv_tensors.BoundingBoxes | None = None) -> Any:
        if boxes is None:
            raise DataError(f"{_where(image)}: protocol 1 needs ground-truth boxes, and this dataset has none")
        return super().__call__(image, sanitize_boxes(boxes, _where(image)))


# --------------------------------------------------------------------------- the task


class LocalisationTask(Task):
    """Appendix A: box regression (SCR or PCR) with a Euclidean loss; protocol-1
    localisation error drives the plateau schedule and best.pt."""

    name = TASK_NAME
    monitor = "localisation_error"
    monitor_label = "localisation error"
    lower_is_better = True
    metrics = ("localisation_error",)
    units = {"localisation_error": "%"}
    needs_boxes = True

    def __init__(self, head: str = "pcr", *, box_mode: str = "whole", target: str = "overlap") -> None:
        if head not in HEADS:
            raise UserError(f"--head: expected one of {', '.join(HEADS)}, got {head!r}")
        if box_mode not in BOX_MODES:
            raise UserError(f"--box-mode: expected one of {', '.join(BOX_MODES)}, got {box_mode!r}")
        if target not in TARGETS:
            raise UserError(f"--target-box: expected one of {', '.join(TARGETS)}, got {target!r}")
        self.head, self.box_mode, self.target = head, box_mode, target
        self._crops = 0      # training crops seen since the last validation (this process)
        self._empty = 0      # of which contained none of the object

    def output_size(self, num_classes: int) -> int:
        return 4 if self.head == "scr" else 4 * int(num_classes)

    def train_transform(self, **kwargs: Any) -> Callable[..., Any]:
        return LocalisationTrainTransform(super().train_transform(**kwargs))

    def collate(self, items: Sequence[Any]) -> Any:
        from vggnet.data.datasets import Batch, collate_skip_bad

        batch = collate_skip_bad(items)
        if not batch:
            return batch
        if len(batch) < 3:
            raise DataError("a localisation batch has no boxes: the datasets must be built with boxes=True")
        images, labels, boxes = batch
        crop = int(images.shape[-1])
        params, valid = localisation_targets(boxes, crop, box_mode=self.box_mode, target=self.target)
        return Batch((images, labels, params, valid), batch.skipped)

    def inputs_targets(self, batch: Any, device: torch.device) -> tuple[torch.Tensor, Any]:
        images, labels, params, valid = batch[:4]
        self._crops += int(valid.numel())
        self._empty += int((~valid).sum())
        return (images.to(device, non_blocking=True),
                (labels.to(device, non_blocking=True), params.to(device, non_blocking=True),
                 valid.to(device, non_blocking=True)))

    def empty_targets(self, n: int, device: torch.device) -> Any:
        return (torch.zeros(n, dtype=torch.long, device=device), torch.zeros(n, 4, device=device),
                torch.zeros(n, dtype=torch.bool, device=device))

    def loss(self, output: torch.Tensor, targets: Any) -> torch.Tensor:
        labels, params, valid = targets
        return euclidean_loss(output, labels, params, valid, self.head)

    def validate(self, model: nn.Module, dataset: Any, *, preprocessing: Any, scale: int, device: torch.device,
                 batch_size: int, workers: int, amp: str) -> dict[str, float]:
        from vggnet.distributed import all_reduce_sum

        result = protocol1(model, dataset, head=self.head, preprocessing=preprocessing, scale=scale,
                           device=device, batch_size=batch_size, workers=workers, amp=amp,
                           box_mode=self.box_mode, target=self.target)
        crops, empty = all_reduce_sum([self._crops, self._empty])
        self._crops = self._empty = 0
        if crops and empty == crops:  # every box outside its crop: a loss of 0 that trains nothing
            raise DataError(f"every one of the {int(crops)} training crops since the last validation held no part "
                            f"of its box (loss 0, nothing learnt): are the training boxes inside their images "
                            f"(VOC XML pixels, 1-based, of the displayed image)?")
        result["empty_crops"] = 100.0 * empty / crops if crops else 0.0
        return result

    def summary(self, metrics: Mapping[str, float]) -> str:
        # the empty-crop count is a log line only (not a metrics.csv column): it covers the crops since the
        # last validation or resume, so a resumed run's history stays identical to a straight run's
        return (f"loc err {metrics['localisation_error']:5.2f}%  empty crops {metrics.get('empty_crops', 0.0):.1f}% "
                f"(masked)")

    def settings(self) -> dict[str, Any]:
        return {"head": self.head, "box_mode": self.box_mode, "target": self.target}

    def command(self) -> str:
        return (f"vgg localize train --head {self.head} --box-mode {self.box_mode} "
                f"--target-box {self.target}")

    def check_checkpoint(self, ckpt: Mapping[str, Any], path: str, *, purpose: str) -> None:
        theirs = checkpoint_task(ckpt)
        if purpose == "resume":
            if theirs != self.name:
                raise CheckpointError(f"{path} is a {theirs} checkpoint and cannot resume a localisation run; "
                                      f"start from it with --init from:{path}")
            head = (((ckpt.get("meta") or {}).get("task_settings")) or {}).get("head")
            if head is not None and head != self.head:
                raise CheckpointError(f"{path} is a {head.upper()} localisation checkpoint and this run trains "
                                      f"{self.head.upper()}; resume with --head {head}")
        elif theirs not in ("classification", self.name):
            raise CheckpointError(f"{path} is a {theirs} checkpoint; a localisation net starts from a "
                                  f"classification or localisation checkpoint")

    def describe(self) -> str:
        return f"localisation ({self.head.upper()}, {self.box_mode} boxes, target: {self.target})"


# --------------------------------------------------------------------------- checkpoints


@dataclass
class Localiser:
    """A localisation net with what is needed to feed it and read its outputs."""

    model: nn.Module
    head: str
    classes: list[str]
    preprocessing: Any                       # vggnet.data.transforms.Preprocessing
    train_scale: tuple[int, int] | None
    name: str
    checkpoint: str | None = None
    box_mode: str = "whole"

    @property
    def crop_size(self) -> int:
        return int(self.model.crop_size)

    def default_scale(self) -> int:
        """Q of protocol 1: the training S (the middle of [Smin, Smax] for jittered S)."""
        if self.train_scale is None:
            return int(round(self.crop_size * 256 / 224))
        lo, hi = self.train_scale
        return (lo + hi) // 2


def _task_settings(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    meta = ckpt.get("meta") or {}
    return dict(meta.get("task_settings") or {})


def load_localiser(checkpoint: Any, *, flag: str = "--checkpoint") -> Localiser:
    """Load a localisation checkpoint (path or dict); a classification checkpoint is refused."""
    from vggnet.data.transforms import Preprocessing
    from vggnet.inference import train_scale
    from vggnet.checkpoint import load_checkpoint, model_from_checkpoint

    where = "checkpoint" if isinstance(checkpoint, Mapping) else str(checkpoint)
    ckpt = checkpoint if isinstance(checkpoint, Mapping) else load_checkpoint(checkpoint)
    task = checkpoint_task(ckpt)
    if task != TASK_NAME:
        raise CheckpointError(f"{flag} {where} is a {task} checkpoint, not a localisation net; "
                              f"train one with `vgg localize train --init from:{where}`"
                              + ("; give classification nets with --classifier" if task == "classification" else ""))
    from vggnet.checkpoint import checkpoint_kind

    settings = _task_settings(ckpt)
    head = settings.get("head") or checkpoint_kind(ckpt).removeprefix("localiser-")  # older files: their kind
    if head not in HEADS:
        raise CheckpointError(f"{where}: localisation checkpoint without a valid head (meta.task_settings.head = "
                              f"{head!r}; expected one of {', '.join(HEADS)})")
    model, ckpt = model_from_checkpoint(ckpt)
    classes = [str(c) for c in ckpt.get("classes", [])]
    expected = 4 if head == "scr" else 4 * len(classes)
    if model.num_classes != expected:
        raise CheckpointError(f"{where}: a {head.upper()} net for {len(classes)} classes has {expected} outputs, "
                              f"this one has {model.num_classes}")
    return Localiser(model=model.eval(), head=head, classes=classes,
                     preprocessing=Preprocessing.from_dict(ckpt["preprocessing"]), train_scale=train_scale(ckpt),
                     name=model.name, checkpoint=None if isinstance(checkpoint, Mapping) else str(checkpoint),
                     box_mode=str(settings.get("box_mode", "whole")))


def load_classifier_checkpoint(path: Any, *, flag: str = "--classifier") -> Any:
    """A classification checkpoint (path): a localisation checkpoint is refused, naming the flag."""
    from vggnet.checkpoint import load_checkpoint

    ckpt = path if isinstance(path, Mapping) else load_checkpoint(path)
    task = checkpoint_task(ckpt)
    if task != "classification":
        raise CheckpointError(f"{flag} {path if not isinstance(path, Mapping) else 'checkpoint'} is a {task} "
                              f"checkpoint, not a classification net"
                              + ("; give localisation nets with --checkpoint" if task == TASK_NAME else ""))
    return ckpt


def make_localisation_checkpoint(model: nn.Module, *, head: str, classes: Sequence[str], preprocessing: Mapping[str, Any],
                                 scale: Any = None, box_mode: str = "whole", target: str = "overlap") -> dict[str, Any]:
    """A localisation checkpoint of `model` (as the engine writes them: `meta["task"]`, `meta["task_settings"]`)."""
    from vggnet.checkpoint import make_checkpoint

    return make_checkpoint(model, preprocessing=preprocessing, classes=[str(c) for c in classes],
                           meta={"task": TASK_NAME, "task_settings": {"head": head, "box_mode": box_mode,
                                                                      "target": target},
                                 **({"scale": scale} if scale is not None else {})})


# --------------------------------------------------------------------------- protocol 1


def _unwrapped(model: nn.Module) -> nn.Module:
    from vggnet.checkpoint import unwrap

    return unwrap(model)


def gt_boxes(boxes: Any) -> torch.Tensor:
    return torch.as_tensor(boxes).as_subclass(torch.Tensor).float().reshape(-1, 4)


@torch.no_grad()
def central_pass(model: nn.Module, dataset: Any, indices: Sequence[int], *, head: str, preprocessing: Any,
                 scale: int, device: torch.device, batch_size: int, workers: int, amp: str,
                 box_mode: str = "whole", target: str = "overlap") -> dict[str, float]:
    """Protocol 1 over `dataset[indices]` (one process): sums of images, correct
    boxes, Euclidean loss and the crops it covers, and images without boxes."""
    from torch.utils.data import DataLoader, Subset

    from vggnet.data.datasets import collate_skip_bad
    from vggnet.data.transforms import Preprocessing
    from vggnet.inference import amp_context, with_transform

    net = _unwrapped(model)
    pre = preprocessing if isinstance(preprocessing, Preprocessing) else Preprocessing.from_dict(preprocessing)
    crop = int(net.crop_size)
    ds = with_transform(dataset, CentralCropPreset(scale=scale, crop_size=crop, preprocessing=pre))
    loader = DataLoader(Subset(ds, list(indices)), batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate_skip_bad)
    sums = {"images": 0.0, "correct": 0.0, "loss": 0.0, "loss_crops": 0.0, "no_boxes": 0.0, "bad_images": 0.0}
    was_training = net.training
    net.eval()
    try:
        for batch in loader:
            # a non-strict dataset's unreadable files (a training run's validation) are counted, as classification's
            sums["bad_images"] += getattr(batch, "skipped", 0)
            if not batch:
                continue
            if len(batch) < 3:
                raise DataError("protocol 1 needs a dataset with boxes (boxes=True)")
            images, labels, boxes = batch
            with amp_context(device, amp):
                out = net(images.to(device)).float().cpu()
            params, valid = localisation_targets(boxes, crop, box_mode=box_mode, target=target)
            sums["loss"] += float(euclidean_loss(out, labels, params, valid, head))
            sums["loss_crops"] += float(valid.sum())
            pred = params_to_boxes(class_params(out, labels, head), crop)          # (B, 4) crop pixels
            for i, b in enumerate(boxes):
                gt = gt_boxes(b)
                if gt.shape[0] == 0:
                    sums["no_boxes"] += 1
                    continue
                sums["images"] += 1
                sums["correct"] += float(box_iou(pred[i:i + 1], gt).max() >= IOU_THRESHOLD)
    finally:
        net.train(was_training)
    return sums


def protocol1(model: nn.Module, dataset: Any, *, head: str, preprocessing: Any, scale: int,
              device: str | torch.device | None = None, batch_size: int = 32, workers: int = 0, amp: str = "off",
              box_mode: str = "whole", target: str = "overlap") -> dict[str, float]:
    """Protocol 1 (Table 8): `{"localisation_error" (percent), "loss" (mean Euclidean loss
    of the crops that contain the object), "images"}`.

    Under torch.distributed each rank takes images rank, rank+W, ... and the sums
    are all-reduced: every rank returns the single-process numbers."""
    from vggnet.distributed import all_reduce_sum
    from vggnet.distributed import rank_world

    net = _unwrapped(model)
    if scale < net.crop_size:
        raise ValueError(f"protocol 1: Q={scale} must be >= crop_size={net.crop_size}")
    dev = torch.device(device) if device is not None else next(net.parameters()).device
    rank, world = rank_world()
    s = central_pass(model, dataset, range(rank, len(dataset), world), head=head, preprocessing=preprocessing,
                     scale=scale, device=dev, batch_size=batch_size, workers=workers, amp=amp, box_mode=box_mode,
                     target=target)
    images, correct, loss, crops, no_boxes, bad = all_reduce_sum(
        [s["images"], s["correct"], s["loss"], s["loss_crops"], s["no_boxes"], s["bad_images"]])
    if no_boxes:
        raise DataError(f"{int(no_boxes)} validation image(s) have no usable box (none annotated, or only "
                        f"zero-area ones); protocol 1 needs a ground-truth box for every image")
    if images == 0:
        raise DataError("protocol 1: the validation set has no images")
    return {"localisation_error": 100.0 * (images - correct) / images, "loss": loss / crops if crops else 0.0,
            "images": int(images), "bad_images": int(bad)}


# --------------------------------------------------------------------------- datasets and the mean box


def count_images_without_boxes(dataset: Any) -> tuple[int, list[str]]:
    """(how many, a few paths) of a `vggnet.data` dataset's images that have no box
    source (no XML file / no line in the LOC csv). Reads no file."""
    sources = getattr(dataset, "box_sources", None)
    if sources is None:
        return 0, []
    missing = [dataset.samples[i][0] for i, s in enumerate(sources) if s is None]
    return len(missing), missing[:3]


def raw_boxes(dataset: Any, index: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """((n, 4) XYXY boxes, (height, width)) of one image in its original pixels."""
    from vggnet.data.images import displayed_size, open_image

    if hasattr(dataset, "generate"):  # SyntheticShapes: render, read the box
        img, _, box = dataset.generate(index)
        return torch.tensor([box], dtype=torch.float32), (img.height, img.width)
    arr, _ = dataset.raw_boxes(index)
    with open_image(dataset.samples[index][0]) as img:
        w, h = displayed_size(img)
    return torch.as_tensor(arr, dtype=torch.float32).reshape(-1, 4), (h, w)


def mean_box(dataset: Any, *, sample: int = 1000, seed: int = 0) -> torch.Tensor:
    """The mean ground-truth box of (a sample of) a training set: (cx, cy, w, h) in
    units of the image's width and height. The fixed box a localiser must beat."""
    n = len(dataset)
    if n == 0:
        raise DataError("mean box: the training set has no images")
    g = torch.Generator().manual_seed(seed)
    picks = torch.randperm(n, generator=g)[:sample].tolist() if sample and sample < n else range(n)
    rows = []
    for i in picks:
        boxes, (h, w) = raw_boxes(dataset, i)
        if boxes.numel():
            rows.append(box_convert(boxes, "xyxy", "cxcywh") / torch.tensor([w, h, w, h], dtype=torch.float32))
    if not rows:
        raise DataError("mean box: no boxes in the training set")
    return torch.cat(rows).mean(dim=0)


def mean_box_error(box: torch.Tensor, gt_boxes: Sequence[torch.Tensor], sizes: Sequence[tuple[int, int]]) -> float:
    """Localisation error (percent) of the fixed box `box` (relative cx, cy, w, h) on
    images with ground-truth `gt_boxes[i]` (XYXY pixels) and `sizes[i]` = (h, w):
    the class is taken as right, as in protocol 1."""
    wrong = 0
    for gt, (h, w) in zip(gt_boxes, sizes):
        fixed = box_convert(box.view(1, 4) * torch.tensor([w, h, w, h], dtype=torch.float32), "cxcywh", "xyxy")
        wrong += int(gt.numel() == 0 or float(box_iou(fixed, gt).max()) < IOU_THRESHOLD)
    return 100.0 * wrong / max(1, len(sizes))


def dataset_copy(dataset: Any) -> Any:
    """A shallow copy (the caller's transform is untouched)."""
    return copy.copy(dataset)


def train_dir_of(data: str | Path) -> Path | None:
    root = Path(data)
    return root / "train" if (root / "train").is_dir() else None
