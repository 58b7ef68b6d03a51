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

import argparse
import contextlib
import copy
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from vggnet.errors import CheckpointError, DataError, UserError
from vggnet.execution import choose_execution
from vggnet.models import VGG
from vggnet.classification.results import _METHOD_LABEL, _distinct_names
from vggnet.classification.results import (  # their home is vggnet.classification.results; re-exported (`X as X`) for imports from here
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
METHODS = ("dense", "multi-crop", "both", "center")
CROP_PCT = 0.875  # torchvision's and timm's ImageNet evaluation: resize to 256, centre crop 224


# --------------------------------------------------------------------------- posteriors


@torch.no_grad()
def dense_posterior(model: VGG, images: torch.Tensor, *, flip: bool = True) -> torch.Tensor:
    """Class posteriors `(N, classes)` for a batch of same-size preprocessed images `(N, 3, H, W)`.

    The class-score map is averaged spatially before the softmax (the paper's
    sum-pooling); with `flip`, the image and its mirror image go through the net in
    one batch and their softmax outputs are averaged.
    """
    n = images.shape[0]
    x = torch.cat([images, images.flip(-1)]) if flip else images
    scores = model.dense(x)                      # (N or 2N, classes, h', w') class-score map
    scores = scores.float().mean(dim=(2, 3))     # (N or 2N, classes) spatial average
    post = scores.softmax(dim=1)
    if flip:
        post = (post[:n] + post[n:]) / 2
    return post


@torch.no_grad()
def multi_crop_posterior(model: VGG, crops: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
    """Softmax averaged over the crops of one image: `(K, 3, c, c)` -> `(classes,)`.

    Also takes the crops of several images at once, `(N, K, 3, c, c)` -> `(N, classes)`.
    `batch_size` bounds the crops per forward pass (default: all at once).
    """
    single = crops.dim() == 4
    if single:
        crops = crops.unsqueeze(0)
    n, k = crops.shape[:2]
    flat = crops.reshape(n * k, *crops.shape[2:])
    step = batch_size or flat.shape[0]
    post = torch.cat([model(flat[i:i + step]).float().softmax(dim=1) for i in range(0, flat.shape[0], step)])
    post = post.view(n, k, -1).mean(dim=1)     # (N, classes) averaged over the K crops
    return post[0] if single else post



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


def _parse_scales(value: str | int | Sequence[int]) -> list[int]:
    """`--test-scales 256,384,512` (or a YAML list) -> [256, 384, 512]."""
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",") if p]
    elif isinstance(value, int):
        parts = [value]
    else:
        parts = list(value)
    try:
        scales = [int(p) for p in parts]
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 256,384,512, got {value!r}")
    if not scales or min(scales) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers such as 256,384,512, got {value!r}")
    return sorted(set(scales))


def _train_scale(ckpt: Mapping[str, Any]) -> tuple[int, int] | None:
    from vggnet.data.transforms import parse_scale

    scale = (ckpt.get("meta") or {}).get("scale")
    if scale is None:
        return None
    try:
        return parse_scale(scale)
    except ValueError:
        return None


def _scale_value(scale: tuple[int, int] | None) -> int | list[int] | None:
    """S as training records it: an int for fixed S, [Smin, Smax] for jittered S."""
    if scale is None:
        return None
    lo, hi = scale
    return lo if lo == hi else [lo, hi]


# --------------------------------------------------------------------------- distributed


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _comm_device() -> torch.device:
    # NCCL moves only CUDA tensors; gloo moves CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _gather_shards(local: torch.Tensor, total: int) -> torch.Tensor:
    """Reassemble `(total, ...)` on every rank from the rows each rank computed.

    Rank r holds the rows of global indices r, r+W, r+2W, ... (no padded
    duplicates). Shards differ in length by at most one; they are padded to equal
    length only for the all_gather and the padding is dropped again.
    """
    rank, world = _rank_world()
    if world == 1:
        return local
    dev = _comm_device()
    longest = math.ceil(total / world)
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=dev)
    padded[:local.shape[0]] = local.to(dev)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    out = torch.empty((total, *local.shape[1:]), dtype=local.dtype)
    for r, part in enumerate(parts):
        out[r::world] = part[:len(range(r, total, world))].cpu()
    return out


# --------------------------------------------------------------------------- data


def _identity_preprocessing():
    # The loader yields rescaled RGB in [0, 1]; each net's own normalisation is
    # applied afterwards, so one decode serves every net of a fusion.
    from vggnet.data.transforms import Preprocessing

    return Preprocessing(pixel_scale=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _with_transform(dataset: Any, transform: Callable) -> Any:
    """A shallow copy of `dataset` whose items go through `transform` (the caller's dataset is untouched)."""
    if isinstance(dataset, Subset):
        return Subset(_with_transform(dataset.dataset, transform), dataset.indices)
    if not hasattr(dataset, "transform"):
        raise TypeError(f"expected a vggnet.data dataset with a .transform attribute, got {type(dataset).__name__}")
    out = copy.copy(dataset)
    out.transform = transform
    return out


def _sample_paths(dataset: Any) -> list[str]:
    if isinstance(dataset, Subset):
        paths = _sample_paths(dataset.dataset)
        return [paths[i] for i in dataset.indices]
    samples = getattr(dataset, "samples", None)
    if samples is None:
        return [str(i) for i in range(len(dataset))]
    return [str(s[0]) for s in samples]


class _Indexed(Dataset):
    """Items as `(index, image, label, error)`: a file that cannot be read comes back
    as its error message instead of raising inside a worker (whose traceback would
    bury the file name)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, int, str | None]:
        try:
            item = self.dataset[i]
        except DataError as exc:
            return i, None, -1, str(exc)
        if item is None:  # a non-strict dataset's bad file (it has warned, naming it)
            return i, None, -1, ""
        return i, item[0], int(item[1]), None


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
        from vggnet.data.transforms import _ensure_decoded

        return self.transforms(_ensure_decoded(image, None)).as_subclass(torch.Tensor)


def center_resize(crop_size: int, crop_pct: float = CROP_PCT) -> int:
    """The size the smallest side is resized to before the centre crop: floor(crop / crop_pct) (256 for 224)."""
    if not 0 < crop_pct <= 1:
        raise ValueError(f"--crop-pct must be in (0, 1], got {crop_pct}")
    return int(math.floor(crop_size / crop_pct + 1e-9))


@dataclass
class _Net:
    """One network of an evaluation with everything needed to feed it correctly."""

    model: VGG
    preprocessing: Any                      # vggnet.data.transforms.Preprocessing
    classes: list[str]
    name: str
    checkpoint: str | None = None
    train_scale: tuple[int, int] | None = None
    test_scales: list[int] = field(default_factory=list)
    from_checkpoint: bool = False           # classes (and their order) come from a checkpoint

    def __post_init__(self) -> None:
        self.normalize = self.preprocessing.normalize()  # v2.Normalize, the same map the presets use

    @property
    def crop_size(self) -> int:
        return self.model.crop_size

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "checkpoint": self.checkpoint,
                "train_scale": _scale_value(self.train_scale),
                "test_scales": list(self.test_scales), "crop_size": self.crop_size,
                "classes": len(self.classes)}


def _amp_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    if amp in ("bf16", "fp16"):  # fp16: what --amp auto picks on a GPU without bf16; no scaler is needed to infer
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
    if amp not in ("off", None):
        raise ValueError(f"amp must be 'bf16' or 'off', got {amp!r}")
    return contextlib.nullcontext()


def _execution(amp: str, channels_last: bool | str, device: torch.device) -> tuple[str, bool]:
    """--amp / --channels-last, "auto" included, resolved for `device` as every command resolves them."""
    if amp not in ("auto", "bf16", "fp16", "off", None):
        raise ValueError(f"amp must be 'auto', 'bf16', 'fp16' or 'off', got {amp!r}")
    chosen = choose_execution(amp or "off", channels_last, device)
    return chosen.amp, chosen.channels_last


def _run_pass(
    nets: Sequence[_Net],
    dataset: Any,
    indices: Sequence[int],
    *,
    methods: Sequence[str],
    flip: bool,
    grid: int,
    batch_size: int,
    workers: int,
    device: torch.device,
    amp: str,
    channels_last: bool,
    progress: bool = False,
    desc: str = "",
    skip_bad: bool = False,
    dense_fn: Callable[..., torch.Tensor] | None = None,
    width: Callable[[_Net], int] | None = None,
) -> tuple[dict[tuple[int, str], torch.Tensor], torch.Tensor]:
    """One pass over `dataset[indices]` (items: rescaled RGB in [0, 1]) for every net.

    Returns the local posteriors `{(net, method): (len(indices), classes)}` in the
    order of `indices`, and the labels `(len(indices),)`. With `skip_bad`, items a
    non-strict dataset could not read are left out (label -1); otherwise they are
    a `DataError`. `dense_fn(model, images, flip=...) -> (B, width(net))` replaces
    `dense_posterior` for the "dense" method (Appendix B's pooled descriptors use
    the same bucketing).
    """
    from vggnet.data.transforms import grid_crops

    dense_fn = dense_fn or dense_posterior
    width = width or (lambda net: net.model.num_classes)
    n = len(indices)
    position = {int(i): j for j, i in enumerate(indices)}
    out = {(k, m): torch.zeros(n, width(nets[k])) for k in range(len(nets)) for m in methods}
    labels = torch.full((n,), -1, dtype=torch.long)
    loader = DataLoader(Subset(_Indexed(dataset), list(indices)), batch_size=None, shuffle=False,
                        num_workers=workers, pin_memory=device.type == "cuda")
    cl = torch.channels_last if channels_last else torch.contiguous_format

    def prepare(net: _Net, x01: torch.Tensor) -> torch.Tensor:
        return net.normalize(x01)

    buckets: dict[tuple[int, int], list[tuple[int, torch.Tensor]]] = {}
    pending = 0

    def run_bucket(size: tuple[int, int]) -> None:
        nonlocal pending
        items = buckets.pop(size)
        pending -= len(items)
        rows = torch.tensor([p for p, _ in items])
        x01 = torch.stack([x for _, x in items]).to(device, non_blocking=True)  # (B, 3, H, W), one size
        for k, net in enumerate(nets):
            with _amp_context(device, amp):
                x = prepare(net, x01).contiguous(memory_format=cl)
                if "center" in methods:  # (B, 3, crop, crop) centre crops: the net as a classifier
                    out[(k, "center")][rows] = net.model(x).float().softmax(dim=1).cpu()
                    continue
                out[(k, "dense")][rows] = dense_fn(net.model, x, flip=flip).float().cpu()

    try:
        from tqdm import tqdm
        iterator: Iterable = tqdm(loader, total=n, desc=desc, disable=not progress, leave=False, file=sys.stderr)
    except ImportError:  # tqdm is a dependency, but a progress bar is not worth failing over
        iterator = loader
    with torch.inference_mode():
        for index, x01, label, error in iterator:
            if error is not None:
                if error == "" and skip_bad:
                    continue
                raise DataError(f"{error or f'image {int(index)} of the dataset could not be read'} "
                                f"(evaluation needs every image: fix or remove the file)")
            pos = position[int(index)]
            labels[pos] = label
            if "multi-crop" in methods:
                x_dev = x01.to(device, non_blocking=True)
                for k, net in enumerate(nets):
                    crops = grid_crops(prepare(net, x_dev), net.crop_size, grid)   # (grid^2, 3, c, c)
                    if flip:
                        crops = torch.cat([crops, crops.flip(-1)])                 # (2 grid^2, 3, c, c)
                    with _amp_context(device, amp):
                        out[(k, "multi-crop")][pos] = multi_crop_posterior(
                            net.model, crops.contiguous(memory_format=cl), batch_size=batch_size).cpu()
            if "dense" in methods or "center" in methods:
                size = (int(x01.shape[-2]), int(x01.shape[-1]))
                buckets.setdefault(size, []).append((pos, x01))
                pending += 1
                if len(buckets[size]) >= batch_size:
                    run_bucket(size)
                # Many distinct sizes (ImageNet) would hold many part-filled buckets:
                # bound the memory by running the fullest ones early.
                while pending > 2 * batch_size:
                    run_bucket(max(buckets, key=lambda s: len(buckets[s])))
        for size in list(buckets):
            run_bucket(size)
    return out, labels


# --------------------------------------------------------------------------- evaluate / validate


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device: expected auto, cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return dev


def _load_nets(items: Sequence[Any], *, preprocessing: Any, device: torch.device, channels_last: bool) -> list[_Net]:
    from vggnet.data.transforms import Preprocessing
    from vggnet.checkpoint import model_from_checkpoint, unwrap

    nets: list[_Net] = []
    for item in items:
        if isinstance(item, nn.Module):
            model = unwrap(item)
            if preprocessing is None:
                raise ValueError("evaluate: a bare model needs preprocessing=...; or pass a checkpoint, "
                                 "which records its own")
            pre = preprocessing if isinstance(preprocessing, Preprocessing) else Preprocessing.from_dict(preprocessing)
            nets.append(_Net(model=model, preprocessing=pre, classes=[str(i) for i in range(model.num_classes)],
                             name=model.name))
            continue
        model, ckpt = model_from_checkpoint(item)
        try:
            pre = Preprocessing.from_dict(ckpt["preprocessing"])
        except ValueError as exc:
            raise CheckpointError(f"{item if not isinstance(item, Mapping) else 'checkpoint'}: "
                                  f"bad preprocessing entry: {exc}") from None
        _check_net(model, list(ckpt["classes"]), "checkpoint" if isinstance(item, Mapping) else str(item))
        nets.append(_Net(model=model, preprocessing=pre, classes=list(ckpt["classes"]), name=model.name,
                         checkpoint=None if isinstance(item, Mapping) else str(item), train_scale=_train_scale(ckpt),
                         from_checkpoint=True))
    for net in nets:
        net.model.eval().to(device)
        if channels_last:
            net.model.to(memory_format=torch.channels_last)
    for net, name in zip(nets, _distinct_names([n.name for n in nets])):
        net.name = name
    return nets


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
    dev = _resolve_device(device)
    amp, channels_last = _execution(amp, channels_last, dev)
    nets = _load_nets(items, preprocessing=preprocessing, device=dev, channels_last=channels_last)
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
        _check_scales_fit(net.model, net.test_scales, dev, method=method, flip=flip, amp=amp,
                          where=f"net {net.name}")

    methods = ["dense", "multi-crop"] if method == "both" else [method]
    rank, world = _rank_world()
    posteriors: dict[tuple[int, str, int], torch.Tensor] = {}
    labels = paths = None
    data_text = None if not isinstance(data, (str, os.PathLike)) else str(data)
    # One pass per test scale: every net that uses Q is fed from the same decoded images.
    for q in sorted({q for net in nets for q in net.test_scales}):
        transform = DenseEvalPreset(scale=q, preprocessing=_identity_preprocessing())
        if method == "center":
            transform = CenterCropEvalPreset(resize=q, crop_size=nets[0].crop_size,
                                             preprocessing=_identity_preprocessing())
        started = time.perf_counter()
        dataset = _dataset_for(data, transform, classes=classes if nets[0].from_checkpoint else None,
                               labels_file=labels_file)
        if len(dataset) == 0:
            raise DataError(f"{data_text or 'the dataset'}: no images to evaluate")
        _check_classes(dataset, len(classes), data_text)
        users = [k for k, net in enumerate(nets) if q in net.test_scales]
        local, local_labels = _run_pass([nets[k] for k in users], dataset, range(rank, len(dataset), world),
                                        methods=methods, flip=flip, grid=grid, batch_size=batch_size,
                                        workers=workers, device=dev, amp=amp, channels_last=channels_last,
                                        progress=progress and rank == 0, desc=f"Q={q}")
        for (j, m), p in local.items():
            posteriors[(users[j], m, q)] = _gather_shards(p, len(dataset))
        if log is not None and rank == 0:
            log(f"evaluated Q={q} ({', '.join(_METHOD_LABEL[m] for m in methods)}): {len(dataset)} images in "
                f"{time.perf_counter() - started:.1f}s")
        if labels is None:
            labels = _gather_shards(local_labels, len(dataset))
            paths = _sample_paths(dataset)
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
    return _with_transform(data, transform)


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
) -> dict[str, float | int]:
    """One-scale dense validation, as the training loop runs it every epoch.

    Returns `{"top1_error", "top5_error" (percent), "loss" (mean NLL of the
    posterior), "images", "bad_images" (files left out as unreadable)}`. `dataset` is a `vggnet.data` dataset (its transform
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
    ds = _with_transform(dataset, DenseEvalPreset(scale=scale, preprocessing=_identity_preprocessing()))
    rank, world = _rank_world()
    net = _Net(model=net_model, preprocessing=pre, classes=[], name=net_model.name)
    was_training = net_model.training
    net_model.eval()
    try:
        local, labels = _run_pass([net], ds, range(rank, len(ds), world), methods=["dense"], flip=flip, grid=1,
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
    return {"top1_error": 100.0 * (n - c1) / n, "top5_error": 100.0 * (n - c5) / n, "loss": loss / n,
            "images": int(n), "bad_images": int(bad)}


# --------------------------------------------------------------------------- checks before a pass


def _check_net(model: VGG, classes: Sequence[str], where: str) -> None:
    """Refuse a net whose answers would be meaningless: non-finite weights, or fewer class names than outputs."""
    bad = [k for k, t in model.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"{where}: {len(bad)} weight tensor(s) hold NaN or infinite values "
                              f"({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); the run that wrote it had "
                              f"diverged: use an earlier checkpoint (e.g. best.pt or a numbered one)")
    if len(classes) != model.num_classes:
        raise CheckpointError(f"{where}: lists {len(classes)} class names for the net's {model.num_classes} "
                              f"outputs; a checkpoint needs one name per output (its 'classes' entry)")


def dense_pass_bytes(model: VGG, height: int, width: int, *, images: int = 2, bytes_per_value: int = 4) -> int:
    """Peak activation memory (bytes) of `model.dense` on `images` images of height x width.

    The largest input + output pair of any layer (ReLUs work in place), FC layers
    applied as convolutions included; weights and framework workspace are not
    counted, so the real peak is higher.
    """
    h, w, c, peak = int(height), int(width), 3, 0
    for m in model.features:
        if isinstance(m, nn.Conv2d):
            peak = max(peak, (c + m.out_channels) * h * w)
            c = m.out_channels
        elif isinstance(m, nn.MaxPool2d):
            peak = max(peak, c * (h * w + (h // 2) * (w // 2)))
            h, w = h // 2, w // 2
        elif isinstance(m, (nn.BatchNorm2d, nn.LocalResponseNorm)):
            peak = max(peak, 2 * c * h * w)
    h, w = max(h - model.grid + 1, 1), max(w - model.grid + 1, 1)  # FC1 as a grid x grid conv
    for m in model.classifier:
        if isinstance(m, nn.Linear):
            peak = max(peak, c * h * w + m.out_features * h * w)
            c = m.out_features
    return peak * images * bytes_per_value


def _available_bytes(device: torch.device) -> int | None:
    """Free memory of `device` (CUDA: free GPU memory; CPU: MemAvailable), None when unknown."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        if device.type == "cpu":
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
    except (OSError, RuntimeError, ValueError):
        pass
    return None


def _check_scales_fit(model: VGG, scales: Sequence[int], device: torch.device, *, method: str, flip: bool,
                      amp: str, where: str) -> None:
    """Refuse a test scale whose pass cannot fit in memory, with the estimate, before any work.

    The estimate is for the smallest image at Q (Q x Q): the rescaled image as
    8-bit RGB and as a float tensor, plus a dense pass over it (and its flip).
    """
    available = _available_bytes(device)
    if available is None:
        return
    q = max(scales)
    need = (3 + 3 * 4) * q * q
    if method in ("dense", "both") and isinstance(model, VGG):  # a foreign module: only the image is estimated
        need += dense_pass_bytes(model, q, q, images=2 if flip else 1, bytes_per_value=2 if amp == "bf16" else 4)
    if need > available:
        fits = int(q * math.sqrt(available / need))
        raise UserError(f"--test-scales: Q={q} needs at least {need / 2**30:.1f} GiB for the {method} pass of a "
                        f"{q}x{q} image{' and its flip' if flip else ''} through {where}, more than the "
                        f"{available / 2**30:.1f} GiB free on {device}; use test scales up to about {fits}")
