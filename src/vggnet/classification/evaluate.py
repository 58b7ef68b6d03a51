"""Testing (§3.2 of the paper) and the evaluation experiments of §4.1-4.4.

Dense evaluation: rescale the image so its smallest side is Q, apply the net
fully convolutionally to the whole uncropped image (`VGG.dense`: FC1 becomes a
7x7 conv, FC2/FC3 1x1 convs), average the class-score map spatially, take the
softmax, and average it with the softmax of the horizontally flipped image.
Multi-crop evaluation: a 5x5 regular grid of crop_size crops and their flips
(50 per scale), softmax averaged. Multi-scale: posteriors averaged over several
Q. "both" averages the dense and the multi-crop posteriors (Table 5); several
nets are fused by averaging their posteriors (§4.4, Table 7), each net fed the
preprocessing it was trained with.

Under torch.distributed (`torchrun ... -m vggnet.cli eval`) each process
evaluates the images rank, rank+W, ... and the posteriors are gathered, so the
numbers equal the single-process ones.

Batching: in dense evaluation images of different sizes cannot share a tensor
and must not be resized to a common size (that would change the method), so
decoded images are held in buckets keyed by their rescaled size and a bucket
runs when it is full (or when too many images are pending).

The metrics (top-k error, per-class accuracy) and the results (`EvalResult`:
multi-scale, "both" and fusion combined from the posteriors, the tables,
saved posteriors and `load_posteriors`) live in `vggnet.classification.results`; their names
are re-exported here, so `from vggnet.classification.evaluate import EvalResult` still works.
The `vgg eval` and `vgg predict` commands live in `vggnet.classification.cli`.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.data import Subset

from vggnet.classification.results import METHOD_LABELS
from vggnet.data.transforms import CROP_PCT, center_resize  # re-exported: their home is the data presets
from vggnet.distributed import gather_shards, rank_world
from vggnet.errors import DataError, UserError
from vggnet.inference import (Net, check_scales_fit, dense_pass_bytes, dense_posterior, identity_preprocessing,
                              inference_execution, load_nets, multi_crop_posterior, resolve_device, run_pass,
                              sample_paths, with_transform)
from vggnet.classification.results import (  # their home is vggnet.classification.results; re-exported for old imports
    POSTERIORS_FORMAT as POSTERIORS_FORMAT,
    EvalResult as EvalResult,
    compute_metrics as compute_metrics,
    load_posteriors as load_posteriors,
    markdown_table as markdown_table,
    per_class_accuracy as per_class_accuracy,
    topk_correct as topk_correct,
    topk_errors as topk_errors,
)

__all__ = [
    "METHODS",
    "dense_posterior",
    "multi_crop_posterior",
    "default_test_scales",
    "evaluate",
    "validate",
    "dense_pass_bytes",
]

# What `--method` accepts: "both" = the average of the dense and multi-crop posteriors; "center" =
# torchvision's single centre crop (an extension beyond the paper, to compare with published numbers).
from vggnet.arguments import METHODS  # noqa: E402  (defined with the flags)


# --------------------------------------------------------------------------- posteriors


# --------------------------------------------------------------------------- test scales


def default_test_scales(train_scale: int | Sequence[int] | None, crop_size: int = 224) -> list[int]:
    """The paper's test scales Q for a net trained at `train_scale` (§4.2).

    Fixed S: {S-32, S, S+32}; jittered [Smin, Smax]: {Smin, (Smin+Smax)/2, Smax}.
    Unknown S (a checkpoint that does not record it) is taken as crop_size * 8/7
    (256 for 224 crops, the common convention). Scales below crop_size, which the
    net cannot be applied to, are raised to crop_size.
    """
    from vggnet.data.transforms import parse_scale

    if train_scale is None:
        lo = hi = int(round(crop_size * 256 / 224))
    else:
        lo, hi = parse_scale(train_scale)
    qs = [lo - 32, lo, lo + 32] if lo == hi else [lo, (lo + hi) // 2, hi]
    return sorted({max(q, crop_size) for q in qs})


# --------------------------------------------------------------------------- distributed


# --------------------------------------------------------------------------- data


class CenterCropEvalPreset:
    """torchvision's single-crop evaluation input (an extension beyond the paper): resize the
    smallest side to `resize` (bilinear, antialiased), take the central `crop_size` square.

    torchvision's own transforms on the decoded Pillow image, in its order, so that the
    numbers compare with the published ones (vgg16: 71.59% / 90.38% top-1 / top-5
    accuracy at resize 256, crop 224). No JPEG draft decoding: torchvision's loader
    decodes at full size, and so must we to see the same pixels.
    """

    decode_side = None

    def __init__(self, *, resize: int, crop_size: int, preprocessing: Any) -> None:
        from torchvision.transforms import v2

        from vggnet.data.transforms import ToNormalizedTensor

        if resize < crop_size:
            raise ValueError(f"centre crop: resize {resize} is smaller than the crop {crop_size}")
        self.scale, self.crop_size, self.preprocessing = int(resize), int(crop_size), preprocessing
        self.transforms = v2.Compose([v2.Resize(self.scale, interpolation=v2.InterpolationMode.BILINEAR,
                                                antialias=True),
                                      v2.CenterCrop(self.crop_size), ToNormalizedTensor(preprocessing)])

    def __call__(self, image: Any) -> torch.Tensor:
        from vggnet.data.images import ensure_decoded

        return self.transforms(ensure_decoded(image, None)).as_subclass(torch.Tensor)


# --------------------------------------------------------------------------- evaluate / validate


def evaluate(
    checkpoints_or_models: Any,
    data: Any,
    *,
    scales: Sequence[int] | None = None,
    method: str = "dense",
    flip: bool = True,
    grid: int = 5,
    batch_size: int = 32,
    workers: int = 0,
    device: str | torch.device | None = None,
    amp: str = "off",
    channels_last: bool | str = False,
    preprocessing: Any = None,
    labels_file: str | os.PathLike | None = None,
    progress: bool = False,
    crop_pct: float = CROP_PCT,
    log: Callable[[str], None] | None = None,
) -> EvalResult:
    """Evaluate one net or fuse several (§3.2, §4.2-4.4) on a labelled image set.

    `checkpoints_or_models`: a checkpoint path or dict, a `VGG` (then give
    `preprocessing`), or a list of them (fusion). `data`: an image folder (the
    split directory or a root holding `val/`) or a `vggnet.data` dataset.
    `scales`: test scales Q for every net; default: the paper's three scales
    derived from each checkpoint's training scale. `method`: "dense",
    "multi-crop", "both", or "center" (torchvision's single centre crop, no flip:
    the smallest side resized to Q = floor(crop_size / `crop_pct`) unless `scales`
    are given). `batch_size` counts images per dense forward pass
    (doubled by flipping) and crops per multi-crop forward pass. `log`, if given,
    receives one line per pass (for logs that are not a terminal: no progress bar).

    Under torch.distributed each rank evaluates images rank, rank+W, ... and the
    posteriors are gathered: every rank returns the single-process result.

    `amp` ("off", "bf16" or "auto") and `channels_last` (a bool or "auto"):
    "auto" is `vggnet.execution.choose_execution`'s choice for the device (bf16
    and channels_last on CUDA and on CPUs with native bf16, fp32 elsewhere).
    """
    from vggnet.data.transforms import DenseEvalPreset

    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if batch_size < 1 or workers < 0 or grid < 1:
        raise ValueError(f"need batch_size >= 1, workers >= 0, grid >= 1; got {batch_size}, {workers}, {grid}")
    items = list(checkpoints_or_models) if isinstance(checkpoints_or_models, (list, tuple)) else [checkpoints_or_models]
    if not items:
        raise ValueError("evaluate: no checkpoints or models given")
    dev = resolve_device(device)
    amp, channels_last = inference_execution(amp, channels_last, dev)
    nets = load_nets(items, preprocessing=preprocessing, device=dev, channels_last=channels_last, use="evaluation")
    classes = nets[0].classes
    for net in nets[1:]:
        if net.classes != classes and net.from_checkpoint and nets[0].from_checkpoint:
            raise UserError(f"cannot fuse {nets[0].checkpoint or nets[0].name} and {net.checkpoint or net.name}: "
                            f"their class lists differ")
        if len(net.classes) != len(classes):
            raise UserError(f"cannot fuse nets with {len(classes)} and {len(net.classes)} classes")
    if method == "center":
        if len({net.crop_size for net in nets}) > 1:
            raise UserError("--method center: the nets have different crop sizes ("
                            + ", ".join(f"{n.name}: {n.crop_size}" for n in nets) + "); fuse nets of one crop size")
        flip = False  # torchvision's single crop is not averaged with its mirror image
    for net in nets:
        net.test_scales = sorted(set(scales)) if scales else default_test_scales(net.train_scale, net.crop_size)
        if method == "center" and not scales:
            net.test_scales = [center_resize(net.crop_size, crop_pct)]
        small = [q for q in net.test_scales if q < net.crop_size]
        if small:
            raise UserError(f"--test-scales: Q={small[0]} is smaller than the crop size {net.crop_size} of "
                            f"net {net.name}; every test scale must be >= crop_size")
        check_scales_fit(net.model, net.test_scales, dev, method=method, flip=flip, amp=amp,
                          where=f"net {net.name}")

    methods = ["dense", "multi-crop"] if method == "both" else [method]
    rank, world = rank_world()
    posteriors: dict[tuple[int, str, int], torch.Tensor] = {}
    labels = paths = None
    data_text = None if not isinstance(data, (str, os.PathLike)) else str(data)
    # One pass per test scale: every net that uses Q is fed from the same decoded images.
    for q in sorted({q for net in nets for q in net.test_scales}):
        transform = DenseEvalPreset(scale=q, preprocessing=identity_preprocessing())
        if method == "center":
            transform = CenterCropEvalPreset(resize=q, crop_size=nets[0].crop_size,
                                             preprocessing=identity_preprocessing())
        started = time.perf_counter()
        dataset = _dataset_for(data, transform, classes=classes if nets[0].from_checkpoint else None,
                               labels_file=labels_file)
        if len(dataset) == 0:
            raise DataError(f"{data_text or 'the dataset'}: no images to evaluate")
        _check_classes(dataset, len(classes), data_text)
        users = [k for k, net in enumerate(nets) if q in net.test_scales]
        local, local_labels = run_pass([nets[k] for k in users], dataset, range(rank, len(dataset), world),
                                        methods=methods, flip=flip, grid=grid, batch_size=batch_size,
                                        workers=workers, device=dev, amp=amp, channels_last=channels_last,
                                        progress=progress and rank == 0, desc=f"Q={q}")
        for (j, m), p in local.items():
            posteriors[(users[j], m, q)] = gather_shards(p, len(dataset))
        if log is not None and rank == 0:
            log(f"evaluated Q={q} ({', '.join(METHOD_LABELS[m] for m in methods)}): {len(dataset)} images in "
                f"{time.perf_counter() - started:.1f}s")
        if labels is None:
            labels = gather_shards(local_labels, len(dataset))
            paths = sample_paths(dataset)
    assert labels is not None and paths is not None
    return EvalResult(classes=list(classes), labels=labels, paths=paths, nets=[n.info() for n in nets],
                      methods=methods, method=method, flip=flip, posteriors=posteriors, data=data_text)


def _check_classes(dataset: Any, num_classes: int, where: str | None) -> None:
    names = getattr(dataset.dataset if isinstance(dataset, Subset) else dataset, "classes", None)
    if names is not None and len(names) > num_classes:
        raise DataError(f"{where or 'the dataset'} has {len(names)} classes but the net predicts {num_classes}; "
                        f"evaluate on data labelled with the checkpoint's classes")


def _dataset_for(data: Any, transform: Callable, *, classes: list[str] | None, labels_file: Any) -> Any:
    if isinstance(data, (str, os.PathLike)):
        from vggnet.data.datasets import build_dataset

        return build_dataset(data, transform, split="val", classes=classes, labels_file=labels_file, strict=True)
    return with_transform(data, transform)


def validate(
    model: nn.Module,
    dataset: Any,
    *,
    preprocessing: Any,
    scale: int,
    device: str | torch.device | None = None,
    batch_size: int = 32,
    workers: int = 0,
    flip: bool = False,
    amp: str = "off",
) -> dict[str, float | int | None]:
    """One-scale dense validation, as the training loop runs it every epoch.

    Returns `{"top1_error", "top5_error" (percent), "loss" (mean NLL of the
    posterior), "images", "bad_images" (files left out as unreadable)}`; with 5
    classes or fewer `top5_error` is None (n/a: every label is in the top 5). `dataset` is a `vggnet.data` dataset (its transform
    is replaced by the dense test transform at Q = `scale` in a copy). The flip
    is off by default (half the cost); `flip=True` gives the numbers of
    `vgg eval --method dense --test-scales Q`. Under torch.distributed the images
    are sharded rank::world without duplicates and the sums all-reduced, so
    every rank returns the single-process numbers. The model's train/eval mode
    is restored on return. Files a non-strict dataset cannot read are left out
    of the counts; a strict one raises `DataError` naming the file.
    """
    from vggnet.data.transforms import DenseEvalPreset, Preprocessing
    from vggnet.checkpoint import unwrap

    net_model = unwrap(model)
    if scale < net_model.crop_size:
        raise ValueError(f"validate: scale Q={scale} must be >= crop_size={net_model.crop_size}")
    pre = preprocessing if isinstance(preprocessing, Preprocessing) else Preprocessing.from_dict(preprocessing)
    dev = torch.device(device) if device is not None else next(net_model.parameters()).device
    ds = with_transform(dataset, DenseEvalPreset(scale=scale, preprocessing=identity_preprocessing()))
    rank, world = rank_world()
    net = Net(model=net_model, preprocessing=pre, classes=[], name=net_model.name)
    was_training = net_model.training
    net_model.eval()
    try:
        local, labels = run_pass([net], ds, range(rank, len(ds), world), methods=["dense"], flip=flip, grid=1,
                                  batch_size=batch_size, workers=workers, device=dev, amp=amp, channels_last=False,
                                  skip_bad=True)
    finally:
        net_model.train(was_training)
    kept = labels >= 0  # a non-strict dataset's unreadable files are not counted (but reported: bad_images)
    bad_local = float((~kept).sum())
    post, labels = local[(0, "dense")][kept], labels[kept]
    n_local = int(labels.numel())
    if n_local:
        correct = topk_correct(post, labels, (1, 5))
        # -log p(label); the floor keeps an underflowed posterior finite
        nll = -post.gather(1, labels.view(-1, 1)).double().clamp_min(torch.finfo(torch.float32).tiny).log()
        sums = [float(n_local), float(correct[1].sum()), float(correct[5].sum()), float(nll.sum()), bad_local]
    else:
        sums = [0.0, 0.0, 0.0, 0.0, bad_local]
    from vggnet.distributed import all_reduce_sum

    n, c1, c5, loss, bad = all_reduce_sum(sums)  # float64: counts stay exact
    if n == 0:
        raise DataError("validate: the validation set has no images")
    top5 = 100.0 * (n - c5) / n if net_model.num_classes > 5 else None  # n/a, as in vgg eval
    return {"top1_error": 100.0 * (n - c1) / n, "top5_error": top5, "loss": loss / n,
            "images": int(n), "bad_images": int(bad)}


# --------------------------------------------------------------------------- checks before a pass


