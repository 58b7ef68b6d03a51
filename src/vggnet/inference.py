"""Applying trained nets to images: what classification, localisation, transfer and serving share (§3.2).

The paper tests a net in two ways, densely over the whole rescaled image (FC
layers as convolutions, the class-score map averaged) and on a grid of crops;
every part of this package applies nets the same way, so the machinery lives
here, with these contracts:

- device and precision: `resolve_device("auto"|"cpu"|"cuda:N")`, `inference_execution(amp,
  channels_last, device)` (the "auto" rules of `vggnet.execution`), `amp_context(device, amp)`;
- nets: `load_nets(checkpoints_or_models, ...)` -> `Net`s, each with the preprocessing it was
  trained with, its classes and its training scale (`train_scale(ckpt)`); `check_net` refuses a
  checkpoint whose class list does not match its outputs;
- test scales: `parse_test_scales("256,384")`, `check_scales_fit` (a memory estimate of the
  dense pass, refused with the largest Q that fits);
- posteriors: `dense_posterior` (§3.2's dense evaluation with its flip) and `multi_crop_posterior`;
- a pass over a dataset: `run_pass(nets, dataset, indices, ...)` decodes each image once,
  buckets images of one size, and returns per-(net, method) rows in the order of `indices`;
  under torchrun each rank passes its shard and `vggnet.distributed.gather_shards`
  reassembles the rows;
- datasets: `identity_preprocessing()` (the loader yields RGB in [0, 1]; each net normalises
  afterwards), `with_transform(dataset, transform)`, `sample_paths(dataset)`.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from vggnet.arguments import parse_test_scales
from vggnet.errors import CheckpointError, DataError, UserError
from vggnet.execution import choose_execution
from vggnet.models import VGG
from vggnet.progress import progress_bar

__all__ = [
    "Net", "amp_context", "available_bytes", "check_net", "check_scales_fit", "dense_pass_bytes",
    "dense_posterior", "distinct_names", "identity_preprocessing", "inference_execution", "load_nets", "multi_crop_posterior",
    "parse_test_scales", "resolve_device", "run_pass", "sample_paths", "scale_value", "train_scale",
    "with_transform",
]


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


def train_scale(ckpt: Mapping[str, Any]) -> tuple[int, int] | None:
    from vggnet.data.transforms import parse_scale

    scale = (ckpt.get("meta") or {}).get("scale")
    if scale is None:
        return None
    try:
        return parse_scale(scale)
    except ValueError:
        return None


def scale_value(scale: tuple[int, int] | None) -> int | list[int] | None:
    """S as training records it: an int for fixed S, [Smin, Smax] for jittered S."""
    if scale is None:
        return None
    lo, hi = scale
    return lo if lo == hi else [lo, hi]


def identity_preprocessing():
    # The loader yields rescaled RGB in [0, 1]; each net's own normalisation is
    # applied afterwards, so one decode serves every net of a fusion.
    from vggnet.data.transforms import Preprocessing

    return Preprocessing(pixel_scale=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def with_transform(dataset: Any, transform: Callable) -> Any:
    """A shallow copy of `dataset` whose items go through `transform` (the caller's dataset is untouched)."""
    if isinstance(dataset, Subset):
        return Subset(with_transform(dataset.dataset, transform), dataset.indices)
    if not hasattr(dataset, "transform"):
        raise TypeError(f"expected a vggnet.data dataset with a .transform attribute, got {type(dataset).__name__}")
    out = copy.copy(dataset)
    out.transform = transform
    return out


def sample_paths(dataset: Any) -> list[str]:
    if isinstance(dataset, Subset):
        paths = sample_paths(dataset.dataset)
        return [paths[i] for i in dataset.indices]
    samples = getattr(dataset, "samples", None)
    if samples is None:
        return [str(i) for i in range(len(dataset))]
    return [str(s[0]) for s in samples]


class IndexedItems(Dataset):
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


@dataclass
class Net:
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
                "train_scale": scale_value(self.train_scale),
                "test_scales": list(self.test_scales), "crop_size": self.crop_size,
                "classes": len(self.classes)}


def amp_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    if amp in ("bf16", "fp16"):  # fp16: what --amp auto picks on a GPU without bf16; no scaler is needed to infer
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
    if amp not in ("off", None):
        raise ValueError(f"amp must be 'bf16' or 'off', got {amp!r}")
    return contextlib.nullcontext()


def inference_execution(amp: str, channels_last: bool | str, device: torch.device) -> tuple[str, bool]:
    """--amp / --channels-last, "auto" included, resolved for `device` as every command resolves them."""
    if amp not in ("auto", "bf16", "fp16", "off", None):
        raise ValueError(f"amp must be 'auto', 'bf16', 'fp16' or 'off', got {amp!r}")
    chosen = choose_execution(amp or "off", channels_last, device)
    return chosen.amp, chosen.channels_last


def run_pass(
    nets: Sequence[Net],
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
    width: Callable[[Net], int] | None = None,
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
    loader = DataLoader(Subset(IndexedItems(dataset), list(indices)), batch_size=None, shuffle=False,
                        num_workers=workers, pin_memory=device.type == "cuda")
    cl = torch.channels_last if channels_last else torch.contiguous_format

    def prepare(net: Net, x01: torch.Tensor) -> torch.Tensor:
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
            with amp_context(device, amp):
                x = prepare(net, x01).contiguous(memory_format=cl)
                if "center" in methods:  # (B, 3, crop, crop) centre crops: the net as a classifier
                    out[(k, "center")][rows] = net.model(x).float().softmax(dim=1).cpu()
                    continue
                out[(k, "dense")][rows] = dense_fn(net.model, x, flip=flip).float().cpu()

    iterator: Iterable = progress_bar(loader, total=n, desc=desc, enabled=progress)
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
                    with amp_context(device, amp):
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


def resolve_device(device: str | torch.device | None) -> torch.device:
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


def load_nets(items: Sequence[Any], *, preprocessing: Any, device: torch.device, channels_last: bool,
              kinds: Sequence[str] = ("classifier",), use: str = "this command") -> list[Net]:
    """`Net`s of checkpoints (paths or dicts) or models; a checkpoint not of `kinds` (see
    `vggnet.checkpoint.KINDS`) is refused naming what it is."""
    from vggnet.data.transforms import Preprocessing
    from vggnet.checkpoint import model_from_checkpoint, unwrap

    nets: list[Net] = []
    for item in items:
        if isinstance(item, nn.Module):
            model = unwrap(item)
            if preprocessing is None:
                raise ValueError("evaluate: a bare model needs preprocessing=...; or pass a checkpoint, "
                                 "which records its own")
            pre = preprocessing if isinstance(preprocessing, Preprocessing) else Preprocessing.from_dict(preprocessing)
            nets.append(Net(model=model, preprocessing=pre, classes=[str(i) for i in range(model.num_classes)],
                             name=model.name))
            continue
        model, ckpt = model_from_checkpoint(item, kinds=kinds, use=use)
        try:
            pre = Preprocessing.from_dict(ckpt["preprocessing"])
        except ValueError as exc:
            raise CheckpointError(f"{item if not isinstance(item, Mapping) else 'checkpoint'}: "
                                  f"bad preprocessing entry: {exc}") from None
        check_net(model, list(ckpt["classes"]), "checkpoint" if isinstance(item, Mapping) else str(item))
        nets.append(Net(model=model, preprocessing=pre, classes=list(ckpt["classes"]), name=model.name,
                         checkpoint=None if isinstance(item, Mapping) else str(item), train_scale=train_scale(ckpt),
                         from_checkpoint=True))
    for net in nets:
        net.model.eval().to(device)
        if channels_last:
            net.model.to(memory_format=torch.channels_last)
    for net, name in zip(nets, distinct_names([n.name for n in nets])):
        net.name = name
    return nets


def check_net(model: VGG, classes: Sequence[str], where: str) -> None:
    """Refuse a net whose answers would be meaningless: non-finite weights, or fewer class names than outputs."""
    from vggnet.checkpoint import check_finite

    check_finite(model.state_dict(), where, advice="the run that wrote it had diverged: use an earlier "
                                                   "checkpoint (e.g. best.pt or a numbered one)")
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


def available_bytes(device: torch.device) -> int | None:
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


def check_scales_fit(model: VGG, scales: Sequence[int], device: torch.device, *, method: str, flip: bool,
                      amp: str, where: str) -> None:
    """Refuse a test scale whose pass cannot fit in memory, with the estimate, before any work.

    The estimate is for the smallest image at Q (Q x Q): the rescaled image as
    8-bit RGB and as a float tensor, plus a dense pass over it (and its flip).
    """
    available = available_bytes(device)
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


def distinct_names(names: list[str]) -> list[str]:
    """Two nets of the same configuration (two D's) are told apart by position: D#1, D#2."""
    return [f"{n}#{k + 1}" if names.count(n) > 1 else n for k, n in enumerate(names)]
