"""Training with the paper's protocol (§3.1), data-parallel under torchrun (§3.3).

The defaults are the paper's: multinomial logistic regression (cross-entropy),
mini-batch SGD with batch 256, momentum 0.9, weight decay 5e-4, dropout 0.5 on
FC1/FC2; learning rate 1e-2, divided by 10 when the validation top-1 error stops
improving, three times, and then training stops (or at `--epochs`, 74). The
training input is a random `crop_size` crop of the image rescaled to S (fixed, or
sampled per image from [Smin, Smax]: scale jittering), flipped at random, with
AlexNet's PCA colour shift, minus the training set's mean RGB. Validation after
every epoch is dense (the net applied to the whole image at one scale Q, §3.2).

One process:

    vgg train                                   # synthetic shapes, configuration D
    vgg train --config-file configs/quickstart.yaml
    vgg train --data /data/imagenet --scale 256:512 --init from:runs/s384/best.pt

Several processes (see `vggnet.distributed` for multi-node):

    torchrun --standalone --nproc-per-node=8 -m vggnet.cli train --config-file configs/s256.yaml

Initialisation (`--init`): `glorot` is the default, because plain N(0, 0.01^2)
(`gaussian`, the paper's original) stalls nets deeper than A when they are
trained from scratch; the paper itself notes that Glorot initialisation removes
the need for its pre-training chain. `from:CKPT` starts from a trained net: a
checkpoint of the same configuration gives all its weights (the paper's S=384
from S=256, and multi-scale from S=384); a net A gives its first four conv layers
and its three FC layers to a deeper net, the rest initialised by `--init-rest`
(gaussian, as in the paper).

Checkpoints hold everything needed to continue exactly (model, optimizer,
scheduler, scaler, epoch, step in the epoch, sampler position, every RNG state,
the resolved config, classes and preprocessing) as plain containers, written
atomically; `--resume auto` continues the newest one. SIGTERM/SIGINT finish the
current step, write a checkpoint and exit.

Reproducibility: the data order comes from (seed, epoch) alone and each image's
augmentation from (seed, epoch, image index) alone, whatever the number of
loader workers or processes; dropout draws from the process's RNG, which is
checkpointed. So with `--workers 0` on a CPU two runs with the same seed give
bitwise identical weights, and so does a run interrupted and resumed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Sampler

from vggnet import distributed
from vggnet.errors import CheckpointError, DataError, UserError

__all__ = ["TrainConfig", "TrainingError", "train", "add_train_arguments", "run_train",
           "parse_init", "find_checkpoints", "make_optimizer", "resolve_execution"]


class TrainingError(UserError):
    """Training cannot go on (a non-finite loss, too many bad images); the message says where it stopped."""


# --------------------------------------------------------------------------- settings


@dataclass
class TrainConfig:
    """Every setting of a training run; the field names are the `vgg train` flags
    and the YAML keys (`--micro-batch-size` = `micro_batch_size`)."""

    # -- model (the build arguments of vggnet.vgg)
    model: str = "D"
    width: float = 1.0                   # conv channel multiplier (1 = the paper)
    fc_width: int = 4096
    crop_size: int = 224                 # the training crop (§3.1: 224)
    dropout: float = 0.5                 # on FC1 and FC2
    batch_norm: bool = False             # an extension beyond the paper
    # -- data
    data: str | None = None              # DIR with DIR/train and DIR/val; None: synthetic shapes in memory
    train_dir: str | None = None
    val_dir: str | None = None
    val_labels: str | None = None        # labels file of a flat validation folder (found automatically if omitted)
    synthetic_classes: int = 10
    synthetic_train: int = 2000
    synthetic_val: int = 500
    synthetic_image_size: Any = (160, 400)   # smallest and largest side of the synthetic images
    stats: str | None = None             # `vgg stats` JSON: mean RGB and PCA; None: computed at start
    stats_sample: int = 1000             # images sampled to compute the statistics
    pca_std: float = 0.1                 # AlexNet's colour shift; 0 turns it off
    scale: Any = 256                     # S, or [Smin, Smax] / "Smin:Smax" for scale jittering
    val_scale: int | None = None         # Q of the per-epoch dense validation; default S (or the middle of [Smin, Smax])
    max_bad_fraction: float = 0.01       # stop when more of an epoch's images than this cannot be decoded
    # -- optimisation (§3.1)
    epochs: int = 74
    batch_size: int = 256                # the global batch, over all processes and accumulation steps
    micro_batch_size: int | None = None  # images per process per forward pass; default batch / processes
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_factor: float = 0.1               # multiply the lr by this when validation top-1 stops improving
    lr_patience: int = 2                 # epochs without improvement before that
    lr_drops: int = 3                    # after this many reductions, the next plateau ends training
    clip_grad: float | None = None       # max global gradient norm; None: no clipping (the paper)
    init: str = "glorot"                 # gaussian | glorot | kaiming | from:CKPT
    init_rest: str = "gaussian"          # with --init from:NET_A: the layers A does not provide
    seed: int = 0
    # -- execution
    device: str = "auto"                 # auto | cpu | cuda | cuda:N
    amp: str = "auto"                    # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | off
    channels_last: str = "auto"          # auto (on CUDA) | on | off
    compile: bool = False                # torch.compile the model
    deterministic: bool = False          # deterministic CUDA kernels (slower); the CPU is deterministic anyway
    workers: int = 4                     # data-loading processes per training process
    val_batch_size: int = 32
    # -- output
    output_dir: str = "runs/train"
    resume: str | None = None            # PATH to a checkpoint, or auto: the newest in output_dir
    checkpoint_every: int = 0            # also checkpoint every N optimizer steps (0: only every epoch)
    checkpoint_minutes: float = 0.0      # also checkpoint every M minutes (0: off)
    keep: int = 3                        # numbered checkpoints kept (last.pt and best.pt are kept too)
    max_steps: int | None = None         # stop (with a checkpoint) after this many optimizer steps in total
    log_every: int = 10                  # steps between TensorBoard points
    progress: bool = True                # tqdm progress bar on rank 0

    # ----------------------------------------------------------------- construction

    @classmethod
    def from_args(cls, args: argparse.Namespace | Mapping[str, Any]) -> TrainConfig:
        values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise UserError(f"unknown training setting(s) {', '.join(unknown)}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists, not tuples): YAML- and checkpoint-safe."""
        out = asdict(self)
        for k, v in out.items():
            if isinstance(v, tuple):
                out[k] = list(v)
        return out

    # ----------------------------------------------------------------- validation

    def validate(self) -> TrainConfig:
        """Check and normalise every setting; a `UserError` naming the flag. Runs before any work."""
        from vggnet.data.transforms import parse_scale
        from vggnet.models import resolve_name

        try:
            self.model = resolve_name(self.model)
        except ValueError as exc:
            raise UserError(f"--model: {exc}") from None
        _positive("--width", self.width, float)
        _positive("--fc-width", self.fc_width, int)
        _positive("--crop-size", self.crop_size, int)
        if self.crop_size % 32 or self.crop_size < 32:
            raise UserError(f"--crop-size must be a positive multiple of 32 (the net downsamples by 32), "
                            f"got {self.crop_size}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise UserError(f"--dropout must be a probability in [0, 1), got {self.dropout}")
        try:
            lo, hi = parse_scale(self.scale)
        except ValueError as exc:
            raise UserError(f"--scale {_show(self.scale)}: expected S or Smin:Smax with 1 <= Smin <= Smax "
                            f"({str(exc).split(': ', 1)[-1]})") from None
        if lo < self.crop_size:
            raise UserError(f"--scale {_show(self.scale)}: Smin={lo} is smaller than --crop-size {self.crop_size}; "
                            f"the image rescaled to S must contain the crop (the paper: S >= 224 for 224 crops)")
        self.scale = lo if lo == hi else [lo, hi]
        if self.val_scale is None:
            self.val_scale = lo if lo == hi else (lo + hi) // 2
        _positive("--val-scale", self.val_scale, int)
        if self.val_scale < self.crop_size:
            raise UserError(f"--val-scale {self.val_scale} is smaller than --crop-size {self.crop_size}")
        try:
            slo, shi = parse_scale(self.synthetic_image_size)
        except ValueError:
            raise UserError(f"--synthetic-image-size: expected MIN:MAX pixels, got {_show(self.synthetic_image_size)}") \
                from None
        if not 32 <= slo <= shi <= 512:
            raise UserError(f"--synthetic-image-size: expected 32 <= MIN <= MAX <= 512, got {slo}:{shi}")
        self.synthetic_image_size = [slo, shi]
        _positive("--epochs", self.epochs, int)
        _positive("--batch-size", self.batch_size, int)
        if self.micro_batch_size is not None:
            _positive("--micro-batch-size", self.micro_batch_size, int)
            if self.micro_batch_size > self.batch_size:
                raise UserError(f"--micro-batch-size {self.micro_batch_size} is larger than --batch-size "
                                f"{self.batch_size} (the global batch)")
        _positive("--lr", self.lr, float)
        if not 0.0 <= self.momentum < 1.0:
            raise UserError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise UserError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not 0.0 < self.lr_factor < 1.0:
            raise UserError(f"--lr-factor must be in (0, 1), got {self.lr_factor}")
        _non_negative("--lr-patience", self.lr_patience)
        _non_negative("--lr-drops", self.lr_drops)
        if self.clip_grad is not None:
            _positive("--clip-grad", self.clip_grad, float)
        self.init = self.init.strip() if isinstance(self.init, str) else self.init
        parse_init(self.init)
        if self.init_rest not in ("gaussian", "glorot", "kaiming"):
            raise UserError(f"--init-rest must be gaussian, glorot or kaiming, got {self.init_rest!r}")
        self.amp = _choice("--amp", self.amp, ("auto", "bf16", "fp16", "off"))
        self.channels_last = _choice("--channels-last", self.channels_last, ("auto", "on", "off"))
        _non_negative("--workers", self.workers)
        _positive("--val-batch-size", self.val_batch_size, int)
        _positive("--stats-sample", self.stats_sample, int)
        if self.pca_std < 0:
            raise UserError(f"--pca-std must be >= 0, got {self.pca_std}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise UserError(f"--max-bad-fraction must be in [0, 1], got {self.max_bad_fraction}")
        if self.synthetic_classes < 2:
            raise UserError(f"--synthetic-classes must be >= 2, got {self.synthetic_classes}")
        _positive("--synthetic-train", self.synthetic_train, int)
        _positive("--synthetic-val", self.synthetic_val, int)
        _non_negative("--checkpoint-every", self.checkpoint_every)
        if self.checkpoint_minutes < 0:
            raise UserError(f"--checkpoint-minutes must be >= 0, got {self.checkpoint_minutes}")
        _positive("--keep", self.keep, int)
        if self.max_steps is not None:
            _positive("--max-steps", self.max_steps, int)
        _positive("--log-every", self.log_every, int)
        for flag, value in (("--data", self.data), ("--train-dir", self.train_dir), ("--val-dir", self.val_dir)):
            if value is not None and not Path(value).is_dir():
                raise UserError(f"{flag} {value}: no such directory")
        if self.data is None and (self.train_dir is None) != (self.val_dir is None):
            raise UserError("--train-dir and --val-dir go together (or give --data DIR with DIR/train and DIR/val)")
        for flag, value in (("--stats", self.stats), ("--val-labels", self.val_labels)):
            if value is not None and not Path(value).is_file():
                raise UserError(f"{flag} {value}: no such file")
        if self.resume is not None and self.resume != "auto" and not Path(self.resume).exists():
            raise UserError(f"--resume {self.resume}: no such file (or pass --resume auto to continue the newest "
                            f"checkpoint in --output-dir)")
        if self.batch_norm is not True and self.batch_norm is not False:
            self.batch_norm = bool(self.batch_norm)
        # the build arguments, all at once (catches what the checks above do not)
        from vggnet.models import vgg

        try:
            with torch.device("meta"):
                vgg(self.model, 2, crop_size=self.crop_size, width=float(self.width), fc_width=self.fc_width,
                    dropout=float(self.dropout), batch_norm=self.batch_norm)
        except ValueError as exc:
            raise UserError(f"model settings: {exc}") from None
        return self


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ":".join(str(v) for v in value)
    return str(value)


def _positive(flag: str, value: Any, kind: type) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok:
        raise UserError(f"{flag} must be a positive {'integer' if kind is int else 'number'}, got {value!r}")


def _non_negative(flag: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"{flag} must be an integer >= 0, got {value!r}")


def _choice(flag: str, value: Any, choices: tuple[str, ...]) -> str:
    # YAML 1.1 reads a bare `off`/`on` as a boolean: take it as the word the user wrote.
    if value is False:
        value = "off"
    elif value is True:
        value = "on" if "on" in choices else "auto"
    if value not in choices:
        raise UserError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def resolve_execution(amp: str, channels_last: str, device: torch.device) -> tuple[str, bool]:
    """`--amp` and `--channels-last` (auto, or a choice) -> (bf16 | fp16 | off, channels_last) on `device`.

    auto: bf16 autocast (fp16 with a gradient scaler where bf16 is missing) and
    channels_last on CUDA, where they select cuDNN's tensor-core NHWC kernels;
    fp32 and NCHW on CPUs, where bf16 is emulated without AVX512-BF16/AMX and
    oneDNN's NHWC path was 0.91-1.12x NCHW for full-width D, within the noise of
    our measurements (narrow nets gain more: `vgg demo` sets it; see
    benchmarks/channels_last.py and docs/benchmarks.md, "Training step"). An explicit fp16 runs
    anywhere (CPU autocast and GradScaler support it): slow on most CPUs, but the
    same code path as on a GPU, scaler state in the checkpoints included.
    """
    if amp == "auto":
        amp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if device.type == "cuda" else "off"
    cl = (device.type == "cuda") if channels_last == "auto" else channels_last == "on"
    return amp, cl


def make_optimizer(model: nn.Module, cfg: TrainConfig, grad_scaler: bool = False) -> torch.optim.SGD:
    """SGD with momentum and weight decay (§3.1), as `torch.optim.SGD` defines them.

    The fused implementation (weight decay, momentum and update in one pass over
    each tensor) where this torch and device have it: the same update as the
    default implementation up to rounding, and about 3x faster on a CPU, where
    the optimizer step over VGG's 100M+ FC weights is a real part of a step
    (docs/benchmarks.md, "Training step").

    Not with a gradient scaler (`--amp fp16`, `grad_scaler=True`): the scaler
    then hands overflow steps to the fused kernel instead of skipping them, and
    fused SGD allocates its momentum buffers uninitialised on the first step
    and leaves them so when that step overflows (as fp16 runs do at the start,
    while the scale settles), so the next step adds 0.9 x garbage to every
    weight. The default implementation is never called on a skipped step.
    """
    kwargs = dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if grad_scaler:
        return torch.optim.SGD(model.parameters(), **kwargs)
    try:
        return torch.optim.SGD(model.parameters(), fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # an older torch, or a device without the fused kernel
        return torch.optim.SGD(model.parameters(), **kwargs)


def parse_init(init: str) -> tuple[str, str | None]:
    """`--init` -> (scheme, checkpoint): ("glorot", None) or ("from", "path/to/ckpt.pt")."""
    from vggnet.init import SCHEMES

    if isinstance(init, str) and init.startswith("from:"):
        path = init[len("from:"):]
        if not path:
            raise UserError("--init from:CKPT needs a checkpoint path after 'from:'")
        if not Path(path).is_file():
            raise UserError(f"--init {init}: no such file {path}")
        return "from", path
    if init not in SCHEMES:
        raise UserError(f"--init must be one of {', '.join(SCHEMES)} or from:CKPT (a trained net A, or a net of "
                        f"the same configuration to fine-tune), got {init!r}")
    return init, None


# Settings that define a run: a checkpoint written under other values cannot be
# continued exactly, so resuming it is refused (start a new run from its weights
# with --init from:CKPT instead). The others (epochs, workers, device, amp,
# output, logging, micro-batch) may change between the parts of a run.
RESUME_MUST_MATCH = ("model", "width", "fc_width", "crop_size", "dropout", "batch_norm", "scale", "batch_size",
                     "lr", "momentum", "weight_decay", "lr_factor", "lr_patience", "lr_drops", "seed", "pca_std",
                     "clip_grad")


# --------------------------------------------------------------------------- data


class _SeededAugmentation(Dataset):
    """Items `(index, epoch)` -> `dataset[index]` with the augmentation drawn from
    (seed, epoch, index): the same crop, flip, scale and colour shift for an image
    in an epoch whatever the worker, process count or resume point."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, epoch = key
        item_seed = int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1, np.uint64)[0])
        # fork_rng: the process's own RNG (dropout, in the main process) is left as it was.
        # Only the CPU generator is seeded (the transforms draw from it): torch.manual_seed
        # would also reseed the CUDA generators, which fork_rng(devices=[]) does not restore
        # (with --workers 0 it would reset the GPU dropout stream at every image), and costs
        # a stack capture per call while CUDA is not initialised.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(item_seed)
            return self.dataset[index]


class _EpochTagged(Sampler):
    """Yields `(index, epoch)` from a `ResumableDistributedSampler`, for `_SeededAugmentation`."""

    def __init__(self, sampler: distributed.ResumableDistributedSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.sampler.epoch
        return ((i, epoch) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def _worker_init(_: int) -> None:
    # The main process turns SIGINT/SIGTERM into "finish the step, checkpoint, stop"
    # and needs its loader workers alive for the rest of the step (Ctrl-C and
    # SLURM signal every process). The training loop shuts its workers down itself
    # (`del` of the iterator in a `finally`), and they exit by themselves if the
    # main process dies.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _build_datasets(cfg: TrainConfig) -> tuple[Any, Any, str]:
    """(train, val, description); datasets without transforms (set later)."""
    if cfg.data is None and cfg.train_dir is None:
        from vggnet.data.synthetic import SyntheticShapes

        size = tuple(cfg.synthetic_image_size)
        train = SyntheticShapes(cfg.synthetic_train, classes=cfg.synthetic_classes, split="train", seed=cfg.seed,
                                image_size=size)
        val = SyntheticShapes(cfg.synthetic_val, classes=cfg.synthetic_classes, split="val", seed=cfg.seed,
                              image_size=size)
        return train, val, f"synthetic shapes in memory ({cfg.synthetic_classes} classes, images {size[0]}-{size[1]} px)"
    from vggnet.data.datasets import build_dataset

    train_dir = cfg.train_dir or cfg.data
    val_dir = cfg.val_dir or cfg.data
    train = build_dataset(train_dir, None, split="train", strict=False)
    # Per-epoch validation skips (and counts out) an unreadable file rather than ending a
    # long run over it; `vgg eval` is strict.
    val = build_dataset(val_dir, None, split="val", classes=train.classes, labels_file=cfg.val_labels, strict=False)
    return train, val, f"{train.root} and {val.root}"


# --------------------------------------------------------------------------- RNG and checkpoints


def _capture_rng() -> dict[str, Any]:
    """Every RNG state as plain containers (torch.load(weights_only=True) reads them)."""
    version, state, gauss = random.getstate()
    np_state = np.random.get_state()
    out: dict[str, Any] = {
        "python": [int(version), [int(v) for v in state], gauss],
        "numpy": {"name": str(np_state[0]), "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return out


def _restore_rng(state: Mapping[str, Any]) -> None:
    version, values, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in values), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]),
                         float(n["cached_gaussian"])))
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        cuda = list(state["cuda"])
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            torch.cuda.set_rng_state(cuda[0])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def find_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Training checkpoints of a run directory, newest first: checkpoint_*.pt by step, then last.pt.

    last.pt is a link to the newest numbered checkpoint, made just after it is
    written; a run killed between the two has a numbered checkpoint newer than
    last.pt, so the numbered ones come first.
    """
    out = Path(output_dir)
    found = sorted(out.glob("checkpoint_*.pt"), key=lambda p: p.name, reverse=True)
    last = out / "last.pt"
    return found + ([last] if last.is_file() else [])


def _link_or_copy(src: Path, dst: Path) -> None:
    """Make `dst` the same file as `src`, atomically: a hard link (no extra space), or a copy."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        os.link(src, tmp)
    except OSError:
        import shutil

        from vggnet.checkpoint import atomic_write

        with open(src, "rb") as f:
            atomic_write(dst, lambda out: shutil.copyfileobj(f, out))
        return
    os.replace(tmp, dst)


def _plain(value: Any) -> Any:
    """Config values as YAML/checkpoint-safe plain containers."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------- the trainer


class _StopRequest:
    """SIGTERM/SIGINT -> finish the step, checkpoint, exit. A second signal stops at once."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.signal: int | None = None
        self._log = log
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # second signal: give up on the clean stop
            self.uninstall()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        self.signal = signum
        self._log(f"received {signal.Signals(signum).name}: finishing the current step and writing a checkpoint "
                  f"(send it again to stop at once)")

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals can only be handled in the main thread (e.g. not under some test runners)
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class _Trainer:
    def __init__(self, cfg: TrainConfig, info: distributed.DistInfo) -> None:
        self.cfg = cfg
        self.info = info
        self.device = info.device
        self.out = Path(cfg.output_dir)
        self.tb = None
        self.bar = None
        self.history: list[dict[str, Any]] = []
        self.epoch = 0               # the epoch in progress (0-based)
        self.step_in_epoch = 0       # optimizer steps done in it
        self.global_step = 0
        self.lr_reductions = 0
        self.best_top1: float | None = None
        self.best_epoch: int | None = None
        self.last_checkpoint: Path | None = None
        self.stopped: str | None = None
        self.last_save_time = time.monotonic()
        self.finished_before = False
        self.signal: int | None = None
        self._reset_epoch_totals()

    def _reset_epoch_totals(self) -> None:
        # running sums of the epoch in progress; checkpointed, so a resumed epoch reports the same numbers
        self.totals = {"loss_sum": 0.0, "steps": 0, "seen": 0, "bad": 0, "seconds": 0.0}

    # ----------------------------------------------------------------- output

    def log(self, message: str) -> None:
        if not self.info.is_main:
            return
        if self.bar is not None:
            self.bar.write(message, file=sys.stdout)
        else:
            print(message, flush=True)
        try:
            with open(self.out / "train.log", "a", encoding="utf-8") as f:
                f.write(message + "\n")
        except OSError:
            pass

    # ----------------------------------------------------------------- set-up

    def resolve_execution(self) -> None:
        cfg, dev = self.cfg, self.device
        world = self.info.world_size
        self.micro = cfg.micro_batch_size or max(1, cfg.batch_size // world)
        self.accum = distributed.accumulation_steps(cfg.batch_size, self.micro, world)  # exact, or a UserError
        self.amp, self.channels_last = resolve_execution(cfg.amp, cfg.channels_last, dev)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.amp)
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = not cfg.deterministic
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)

    def locate_resume(self) -> dict[str, Any] | None:
        """The checkpoint to continue (loaded), or None for a fresh run; errors name the file."""
        from vggnet.checkpoint import load_checkpoint

        cfg = self.cfg
        if cfg.resume is None:
            existing = find_checkpoints(self.out)
            if existing:
                raise UserError(f"--output-dir {self.out} already holds checkpoints of a run ({existing[0].name}); "
                                f"pass --resume auto to continue it, or choose another --output-dir")
            return None
        if cfg.resume == "auto" or Path(cfg.resume).is_dir():
            folder = self.out if cfg.resume == "auto" else Path(cfg.resume)
            candidates = find_checkpoints(folder)
            if not candidates:
                self.log(f"--resume auto: no checkpoint in {folder}; starting a new run")
                return None
            errors = []
            for path in candidates:
                try:
                    ckpt = load_checkpoint(path)
                    self._check_training_checkpoint(ckpt, path)
                except CheckpointError as exc:
                    errors.append(str(exc))
                    self.log(f"warning: --resume auto: skipping {exc}; trying the previous checkpoint")
                    continue
                self.resume_path = path
                return ckpt
            raise CheckpointError(f"--resume auto: none of the {len(candidates)} checkpoints in {folder} can be "
                                  f"used:\n  " + "\n  ".join(errors))
        path = Path(cfg.resume)
        try:
            ckpt = load_checkpoint(path)
            self._check_training_checkpoint(ckpt, path)
        except CheckpointError as exc:
            others = [p.name for p in find_checkpoints(path.parent) if p.resolve() != path.resolve()]
            hint = (f"; the other checkpoints in {path.parent} are kept: {', '.join(others[:5])} "
                    f"(--resume auto tries them newest first)") if others else ""
            raise CheckpointError(f"--resume: {exc}{hint}") from None
        self.resume_path = path
        return ckpt

    def agree_on_resume(self) -> dict[str, Any] | None:
        """`locate_resume` decided once, on rank 0, and the same checkpoint loaded on every rank.

        Each rank looking in its own --output-dir would let the ranks of a multi-node
        run disagree (a node with its own disk finds no checkpoint and starts over)
        and an error raised on rank 0 alone would leave the others waiting forever.
        """
        from vggnet.checkpoint import load_checkpoint

        if not distributed.is_distributed():
            return self.locate_resume()
        chosen, error, ckpt = None, None, None
        if self.info.is_main:
            try:
                ckpt = self.locate_resume()
                chosen = None if ckpt is None else str(self.resume_path)
            except UserError as exc:
                error = (isinstance(exc, CheckpointError), str(exc))
        chosen, error = distributed.broadcast_object((chosen, error))
        if error is not None:
            raise (CheckpointError if error[0] else UserError)(error[1] if self.info.is_main else
                                                              f"(from rank 0) {error[1]}")
        problem = None
        if chosen is not None and not self.info.is_main:
            try:
                ckpt = load_checkpoint(chosen)
                self.resume_path = Path(chosen)
            except CheckpointError as exc:
                problem = f"rank {self.info.rank}: {exc}"
        problems = [p for p in distributed.all_gather_object(problem) if p]
        if problems:
            raise CheckpointError(
                f"rank 0 resumes from {chosen}, but not every process can read it; a multi-node run needs its "
                f"--output-dir on a filesystem that every node shares:\n  " + "\n  ".join(problems))
        return ckpt

    def _check_training_checkpoint(self, ckpt: Mapping[str, Any], path: Path) -> None:
        train = ckpt.get("train")
        if not isinstance(train, Mapping) or "optimizer" not in train:
            raise CheckpointError(f"{path} holds weights only, no training state; to start a new run from these "
                                  f"weights use --init from:{path}")
        saved = train.get("config", {})
        mismatched = []
        for key in RESUME_MUST_MATCH:
            mine, theirs = _plain(getattr(self.cfg, key)), _plain(saved.get(key))
            if key == "model" and isinstance(theirs, str):
                from vggnet.models import resolve_name

                theirs = resolve_name(theirs)
            if mine != theirs and not (isinstance(mine, (int, float)) and isinstance(theirs, (int, float))
                                       and float(mine) == float(theirs)):
                mismatched.append(f"--{key.replace('_', '-')} {_show(theirs)} in the checkpoint, "
                                  f"{_show(mine)} now")
        if mismatched:
            raise CheckpointError(f"{path} was written by a run with other settings ({'; '.join(mismatched)}); "
                                  f"resume it with its own settings (its config.yaml), or start a new run from "
                                  f"its weights with --init from:{path} and a new --output-dir")

    def build_data(self, resume: Mapping[str, Any] | None, init_ckpt: Mapping[str, Any] | None) -> None:
        from vggnet.data.transforms import Preprocessing, TrainPreset

        cfg = self.cfg
        train, val, self.data_text = _build_datasets(cfg)
        if len(train) < cfg.batch_size:
            raise UserError(f"--batch-size {cfg.batch_size} is larger than the training set ({len(train)} images); "
                            f"an epoch must hold at least one global batch")
        self.classes = list(train.classes)
        if resume is not None and list(resume["classes"]) != self.classes:
            raise CheckpointError(f"{self.resume_path} was trained on {len(resume['classes'])} classes "
                                  f"({', '.join(resume['classes'][:4])}, ...) but the training set has "
                                  f"{len(self.classes)} ({', '.join(self.classes[:4])}, ...)")
        # statistics: the run's own (resume), a `vgg stats` file, the initial net's, or computed now
        stats = None
        source = ""
        if resume is not None:
            stats, source = resume["train"].get("stats"), f"the checkpoint {self.resume_path}"
        elif cfg.stats is not None:
            from vggnet.data.stats import load_stats

            stats, source = load_stats(cfg.stats), cfg.stats
        elif init_ckpt is not None and isinstance(init_ckpt.get("meta", {}).get("stats"), Mapping) \
                and list(init_ckpt.get("classes", [])) == self.classes:
            stats, source = init_ckpt["meta"]["stats"], f"the initial net {parse_init(cfg.init)[1]}"
        if stats is None:
            from vggnet.data.stats import compute_stats

            n = min(cfg.stats_sample, len(train))
            if self.info.is_main:
                self.log(f"computing the training set's mean RGB and PCA on {n} images (pass --stats FILE from "
                         f"`vgg stats` to skip this)")
                stats = compute_stats(train, sample=n, seed=cfg.seed, workers=min(cfg.workers, 4))
            stats = distributed.broadcast_object(stats)
            source = f"{n} training images"
        self.stats = {"mean": [float(v) for v in stats["mean"]], "eigval": [float(v) for v in stats["eigval"]],
                      "eigvec": [[float(v) for v in row] for row in stats["eigvec"]]}
        self.stats_source = source
        if resume is not None:
            self.preprocessing = Preprocessing.from_dict(resume["preprocessing"])
        else:
            self.preprocessing = Preprocessing.caffe(mean=self.stats["mean"])
        train.transform = TrainPreset(crop_size=cfg.crop_size, scale=cfg.scale, preprocessing=self.preprocessing,
                                      pca=self.stats if cfg.pca_std > 0 else None, pca_std=cfg.pca_std)
        self.train_set, self.val_set = train, val
        self.sampler = distributed.ResumableDistributedSampler(
            train, global_batch=cfg.batch_size, num_replicas=self.info.world_size, rank=self.info.rank,
            seed=cfg.seed)
        self.steps_per_epoch = self.sampler.steps_per_epoch
        from vggnet.data.datasets import collate_skip_bad

        # Not data.make_loader: that keeps workers alive across epochs (persistent), and
        # training needs workers that are shut down by the loop itself (see _worker_init)
        # and a generator of its own: a loader without one draws its base seed from the
        # global torch RNG at every iter(), which would shift the dropout stream between a
        # straight and a resumed run.
        self.loader = torch.utils.data.DataLoader(
            _SeededAugmentation(train, cfg.seed), batch_size=self.micro, sampler=_EpochTagged(self.sampler),
            num_workers=cfg.workers, collate_fn=collate_skip_bad, pin_memory=self.device.type == "cuda",
            worker_init_fn=_worker_init, generator=torch.Generator().manual_seed(cfg.seed),
            prefetch_factor=4 if cfg.workers > 0 else None)

    def build_model(self, init_ckpt: Mapping[str, Any] | None) -> None:
        from vggnet.init import init_from_a, init_weights
        from vggnet.models import count_parameters, vgg

        cfg = self.cfg
        # the same seed on every rank: identical initial weights (DDP also broadcasts rank 0's)
        _seed_everything(cfg.seed)
        model = vgg(cfg.model, len(self.classes), crop_size=cfg.crop_size, width=float(cfg.width),
                    fc_width=cfg.fc_width, dropout=float(cfg.dropout), batch_norm=cfg.batch_norm)
        scheme, path = parse_init(cfg.init)
        if init_ckpt is None:
            init_weights(model, scheme)
            self.init_text = scheme
        else:
            self.init_text = self._init_from(model, init_ckpt, path)
        self.n_params = count_parameters(model)
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model  # the bare VGG (checkpoints, validation)
        self.net = distributed.wrap_ddp(model, self.info)  # what the training step runs
        if cfg.compile:
            self.net = torch.compile(self.net)
        self.optimizer = make_optimizer(model, cfg, grad_scaler=self.amp == "fp16")
        # "decreased by a factor of 10 when the validation set accuracy stopped improving" (§3.1)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode="min", factor=cfg.lr_factor,
                                                                    patience=cfg.lr_patience)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        # each rank its own dropout stream from here on (rank 0's is the single-process one)
        _seed_everything(cfg.seed + 1_000_003 * self.info.rank)

    def _init_from(self, model: nn.Module, ckpt: Mapping[str, Any], path: str) -> str:
        from vggnet.init import init_from_a, init_weights

        build = dict(ckpt["build"])
        mine = dict(model.build_args)
        same = {k: v for k, v in build.items() if k != "dropout"} == {k: v for k, v in mine.items() if k != "dropout"}
        if same:
            # the same net: fine-tuning (S=384 from S=256, multi-scale from S=384)
            try:
                model.load_state_dict(ckpt["state_dict"], strict=True)
            except RuntimeError as exc:
                raise CheckpointError(f"--init from:{path}: its weights do not fit: {str(exc).splitlines()[0]}") \
                    from None
            return f"all weights of {path}"
        if build.get("name") != "A":
            raise UserError(f"--init from:{path}: the checkpoint is configuration {build.get('name')} "
                            f"({_describe_build(build)}) and the model is {_describe_build(mine)}; from:CKPT takes "
                            f"either a net of the same configuration (all weights) or a net A (§3.1's pre-initialisation)")
        init_weights(model, self.cfg.init_rest)
        try:
            copied = init_from_a(model, ckpt["state_dict"], source_name=path)
        except ValueError as exc:
            raise UserError(f"--init from:{path}: {exc}") from None
        return f"net A's first 4 conv and 3 FC layers from {path} ({len(copied)} tensors), the rest {self.cfg.init_rest}"

    def restore(self, ckpt: Mapping[str, Any]) -> None:
        """Continue exactly where `ckpt` stopped."""
        train = ckpt["train"]
        try:
            self.model.load_state_dict(ckpt["state_dict"], strict=True)
            self.optimizer.load_state_dict(train["optimizer"])
            self.scheduler.load_state_dict(train["scheduler"])
            if train.get("scaler"):
                self.scaler.load_state_dict(train["scaler"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{self.resume_path}: cannot restore the training state: "
                                  f"{str(exc).splitlines()[0]}") from None
        self.epoch = int(train["epoch"])
        self.step_in_epoch = int(train["step_in_epoch"])
        self.global_step = int(train["global_step"])
        self.lr_reductions = int(train.get("lr_reductions", 0))
        self.best_top1 = train.get("best_top1_error")
        self.best_epoch = train.get("best_epoch")
        self.history = [dict(h) for h in train.get("history", [])]
        self.sampler.set_epoch(self.epoch)
        self.sampler.set_position(self.step_in_epoch * self.cfg.batch_size)
        rng = list(train["rng"])
        if len(rng) != self.info.world_size:
            self.log(f"note: the checkpoint was written by {len(rng)} process(es), this run has "
                     f"{self.info.world_size}: data order and augmentation continue exactly, dropout does not")
        _restore_rng(rng[self.info.rank] if self.info.rank < len(rng) else rng[0])
        if int(train.get("steps_per_epoch", self.steps_per_epoch)) != self.steps_per_epoch:
            raise CheckpointError(f"{self.resume_path}: its epochs had {train['steps_per_epoch']} steps, this "
                                  f"training set gives {self.steps_per_epoch}: the training set or --batch-size "
                                  f"changed, so the run cannot continue exactly")
        self.totals = {k: type(v)(train.get("epoch_totals", {}).get(k, v)) for k, v in self.totals.items()}
        self.last_checkpoint = self.resume_path
        self.finished_before = bool(train.get("finished"))
        self.stopped = train.get("stopped")

    def _remedy(self) -> str:
        tips = ["a lower --lr", "--clip-grad 10"]
        if self.amp != "off":
            tips.append("--amp off")
        if self.cfg.init == "gaussian":
            tips.append("--init glorot")
        return f"Try {', '.join(tips[:-1])} or {tips[-1]}."

    # ----------------------------------------------------------------- checkpoints

    def save(self, *, best: bool = False, finished: bool = False) -> Path | None:
        """Write a checkpoint of the state after the last step (collective: every rank calls it)."""
        from vggnet.checkpoint import make_checkpoint, save_checkpoint

        # A finite loss does not guarantee finite weights after the step (a huge
        # gradient times the lr): never write such a checkpoint over good ones. The
        # weights are the same on every rank, so every rank stops here together.
        bad = [name for name, t in self.model.state_dict().items()
               if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:
            raise TrainingError(
                f"the weights became non-finite ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}) at step "
                f"{self.global_step} (epoch {self.epoch + 1}) with lr {self.optimizer.param_groups[0]['lr']:g}; "
                f"not saved. Last good checkpoint: {self.last_checkpoint or 'none written yet'}. {self._remedy()}")
        rng = distributed.all_gather_object(_capture_rng())
        if not self.info.is_main:
            return None
        cfg = self.cfg
        lo_hi = cfg.scale
        train_state = {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "global_step": self.global_step,
            # the sampler's own position is only set when an epoch starts: record where this epoch stands now
            "sampler": {**self.sampler.state_dict(), "epoch": self.epoch,
                        "position": self.step_in_epoch * cfg.batch_size},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": _plain(self.scheduler.state_dict()),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "rng": rng,
            "world_size": self.info.world_size,
            "config": _plain(cfg.to_dict()),
            "stats": self.stats,
            "history": self.history,
            "lr_reductions": self.lr_reductions,
            "best_top1_error": self.best_top1,
            "best_epoch": self.best_epoch,
            "epoch_totals": dict(self.totals),
            "finished": finished,
            "stopped": self.stopped,
        }
        last = self.history[-1] if self.history else {}
        meta = {"scale": lo_hi, "val_scale": cfg.val_scale, "source": "vgg train", "epoch": self.epoch,
                "global_step": self.global_step, "init": cfg.init, "stats": self.stats,
                "val_top1_error": last.get("val_top1_error"), "val_top5_error": last.get("val_top5_error")}
        ckpt = make_checkpoint(self.model, preprocessing=self.preprocessing.to_dict(), classes=self.classes,
                               meta=meta, train=train_state)
        path = self.out / f"checkpoint_{self.global_step:08d}.pt"
        save_checkpoint(path, ckpt)
        _link_or_copy(path, self.out / "last.pt")
        if best:
            _link_or_copy(path, self.out / "best.pt")
        self.last_checkpoint = path
        self.last_save_time = time.monotonic()
        numbered = sorted(self.out.glob("checkpoint_*.pt"), key=lambda p: p.name, reverse=True)
        for old in numbered[cfg.keep:]:
            old.unlink(missing_ok=True)
        return path

    # ----------------------------------------------------------------- the loop

    def train_epoch(self, stop: _StopRequest) -> bool:
        """Run the remaining steps of the current epoch; True if training must stop now."""
        cfg, dev = self.cfg, self.device
        self.sampler.set_epoch(self.epoch)
        self.sampler.set_position(self.step_in_epoch * cfg.batch_size)
        self.net.train()
        cl = torch.channels_last if self.channels_last else torch.contiguous_format
        ddp = self.info.distributed
        start_step = self.step_in_epoch
        if start_step == 0:
            self._reset_epoch_totals()
        totals = self.totals
        t0 = time.perf_counter() - totals["seconds"]
        if self.info.is_main and cfg.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=self.steps_per_epoch, initial=start_step, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                            unit="step", dynamic_ncols=True, file=sys.stderr, leave=False,
                            mininterval=0.5 if sys.stderr.isatty() else 30.0)
        batches = iter(self.loader)
        try:
            for step in range(start_step, self.steps_per_epoch):
                step_loss = torch.zeros((), dtype=torch.float64, device=dev)
                for k in range(self.accum):
                    batch = next(batches)
                    weight = 1.0
                    if batch is None:  # every image of this micro-batch was a bad file
                        x = torch.zeros(1, 3, cfg.crop_size, cfg.crop_size)
                        y = torch.zeros(1, dtype=torch.long)
                        weight, skipped = 0.0, self.micro
                    else:
                        x, y = batch[0], batch[1]
                        skipped = getattr(batch, "skipped", 0)
                    totals["bad"] += skipped
                    totals["seen"] += (int(y.numel()) if weight else 0) + skipped
                    x = x.to(dev, non_blocking=True).contiguous(memory_format=cl)
                    y = y.to(dev, non_blocking=True)
                    # DDP all-reduces gradients only on the last micro-batch of the step
                    sync = k == self.accum - 1
                    with (self.net.no_sync() if ddp and not sync else contextlib.nullcontext()):
                        with torch.autocast(dev.type, dtype=self.amp_dtype or torch.float32,
                                            enabled=self.amp_dtype is not None):
                            logits = self.net(x)
                        # sum over the micro-batch / images per process per step = this process's
                        # mean; DDP then averages the processes: the mean over the global batch
                        loss = F.cross_entropy(logits.float(), y, reduction="sum") * (weight / (self.micro * self.accum))
                        self.scaler.scale(loss).backward()
                    step_loss += loss.detach().double()
                # One all-reduce per step carries the loss and the stop/checkpoint
                # requests, so that every rank takes the same decision at the same step.
                minutes_due = (cfg.checkpoint_minutes > 0
                               and time.monotonic() - self.last_save_time >= 60 * cfg.checkpoint_minutes)
                loss_sum, stop_flag, save_flag = distributed.all_reduce_sum(
                    [float(step_loss), float(stop.signal is not None), float(minutes_due)])
                loss_value = loss_sum / self.info.world_size
                lr = self.optimizer.param_groups[0]["lr"]
                if not math.isfinite(loss_value):
                    where = self.last_checkpoint or "none written yet"
                    raise TrainingError(
                        f"the loss became {loss_value} at step {self.global_step + 1} (epoch {self.epoch + 1}, "
                        f"step {step + 1}/{self.steps_per_epoch} of the epoch) with lr {lr:g}; training stopped on "
                        f"every process and no checkpoint was written for this step. Last good checkpoint: {where}. "
                        f"{self._remedy()}")
                if cfg.clip_grad is not None:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.global_step += 1
                self.step_in_epoch = step + 1
                totals["loss_sum"] += loss_value
                totals["steps"] += 1
                totals["seconds"] = elapsed = time.perf_counter() - t0
                ips = totals["steps"] * cfg.batch_size / max(elapsed, 1e-9)
                if self.bar is not None:
                    self.bar.set_postfix_str(f"loss {totals['loss_sum'] / totals['steps']:.4f} lr {lr:.2g} "
                                             f"{ips:.1f} img/s", refresh=False)
                    self.bar.update(1)
                if self.tb is not None and self.global_step % cfg.log_every == 0:
                    self.tb.add_scalar("train/loss", loss_value, self.global_step)
                    self.tb.add_scalar("train/lr", lr, self.global_step)
                    self.tb.add_scalar("train/images_per_s", ips, self.global_step)
                max_reached = cfg.max_steps is not None and self.global_step >= cfg.max_steps
                every_due = cfg.checkpoint_every > 0 and self.global_step % cfg.checkpoint_every == 0
                if stop_flag or max_reached:
                    self.stopped = "signal" if stop_flag else "max_steps"
                    self.save()
                    return True
                if save_flag or every_due:
                    self.save()
        finally:
            del batches  # shuts the loader workers down now, also when an exception passes
            if self.bar is not None:
                self.bar.close()
                self.bar = None
        return False

    def end_epoch(self, stop: _StopRequest) -> bool:
        """Validate, adjust the learning rate, log, checkpoint; True if training ends here."""
        from vggnet.data.datasets import check_bad_fraction
        from vggnet.evaluate import validate

        cfg = self.cfg
        t = self.totals
        loss_total, done, elapsed = t["loss_sum"], t["steps"], t["seconds"]
        seen, bad = (int(v) for v in distributed.all_reduce_sum([t["seen"], t["bad"]]))
        check_bad_fraction(bad, seen, cfg.max_bad_fraction, where=f"epoch {self.epoch + 1} of the training set")
        t0 = time.perf_counter()
        # fork_rng: validation's data loader must not move the training RNG streams
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                metrics = validate(self.model, self.val_set, preprocessing=self.preprocessing, scale=cfg.val_scale,
                                   device=self.device, batch_size=cfg.val_batch_size, workers=cfg.workers,
                                   amp="bf16" if self.amp == "bf16" else "off")
        except (RuntimeError, KeyboardInterrupt):
            if stop.signal is None:
                raise
            # a signal to every process (Ctrl-C, SLURM) also reached validation's loader
            # workers: keep the trained epoch; the resumed run validates it
            self.stopped = "signal"
            self.save()
            return True
        val_time = time.perf_counter() - t0
        lr = self.optimizer.param_groups[0]["lr"]
        row = {
            "epoch": self.epoch + 1,
            "global_step": self.global_step,
            "lr": lr,
            "train_loss": loss_total / done if done else float("nan"),
            "val_loss": float(metrics["loss"]),
            "val_top1_error": float(metrics["top1_error"]),
            "val_top5_error": float(metrics["top5_error"]),
            "train_images_per_s": done * cfg.batch_size / elapsed if elapsed > 0 else float("nan"),
            "epoch_time_s": elapsed + val_time,
            "bad_images": bad,
        }
        self.history.append(row)
        improved = self.best_top1 is None or row["val_top1_error"] < self.best_top1
        if improved:
            self.best_top1, self.best_epoch = row["val_top1_error"], self.epoch + 1
        # §3.1: divide the lr by 10 when validation accuracy stops improving
        self.scheduler.step(row["val_top1_error"])
        new_lr = self.optimizer.param_groups[0]["lr"]
        finished = False
        note = ""
        if new_lr < lr:
            self.lr_reductions += 1
            if self.lr_reductions > cfg.lr_drops:
                # a plateau after the last allowed reduction: training is over (keep the old lr)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                self.lr_reductions -= 1
                finished, self.stopped = True, "plateau"
                note = f"  (plateau after {cfg.lr_drops} lr reductions: done)"
            else:
                note = f"  (lr -> {new_lr:g})"
        self.epoch += 1
        self.step_in_epoch = 0
        self._reset_epoch_totals()
        if self.epoch >= cfg.epochs:
            finished, self.stopped = True, self.stopped or "epochs"
        self.log(f"epoch {row['epoch']:>3}/{cfg.epochs}  train loss {row['train_loss']:.4f}  val loss "
                 f"{row['val_loss']:.4f}  top-1 err {row['val_top1_error']:5.2f}%  top-5 err "
                 f"{row['val_top5_error']:5.2f}%  lr {lr:.3g}  {row['train_images_per_s']:.1f} img/s  "
                 f"{_duration(row['epoch_time_s'])}{'  *best*' if improved else ''}{note}")
        if self.tb is not None:
            # at the global step, as train/*: one x-axis, so that purge_step on a resume covers these too
            for key in ("train_loss", "val_loss", "val_top1_error", "val_top5_error", "lr"):
                self.tb.add_scalar(f"epoch/{key}", row[key], row["global_step"])
            self.tb.flush()
        self.save(best=improved, finished=finished)
        if self.info.is_main:
            self.write_metrics()
        return finished

    def write_metrics(self) -> None:
        """metrics.csv from the history (rewritten whole: after a resume it matches the checkpoint)."""
        from vggnet.checkpoint import atomic_write

        if not self.history:
            return
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(self.history[0]))
        writer.writeheader()
        for row in self.history:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        atomic_write(self.out / "metrics.csv", lambda f: f.write(buf.getvalue().encode()))

    def write_config(self) -> None:
        import yaml

        from vggnet.checkpoint import atomic_write

        head = (f"# vgg train: the resolved settings of this run (vgg train --config-file {self.out}/config.yaml).\n"
                f"# processes: {self.info.world_size}, device: {self.device}, micro-batch: {self.micro}, "
                f"accumulation steps: {self.accum}, amp: {self.amp}, channels_last: {self.channels_last}\n")
        text = head + yaml.safe_dump(_plain(self.cfg.to_dict()), sort_keys=False)
        atomic_write(self.out / "config.yaml", lambda f: f.write(text.encode()))

    # ----------------------------------------------------------------- run

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.resolve_execution()
        self.resume_path: Path | None = None
        resume = self.agree_on_resume()
        init_ckpt = None
        scheme, init_path = parse_init(cfg.init)
        if resume is None and init_path is not None:
            from vggnet.checkpoint import load_checkpoint

            try:
                init_ckpt = load_checkpoint(init_path)
            except CheckpointError as exc:
                raise CheckpointError(f"--init from:{init_path}: {exc}") from None
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            # a run killed while saving leaves its temporary file (a GB for VGG-16): remove them
            for stale in self.out.glob(".*.pt.*.tmp"):
                self.log(f"removing {stale.name}, the partial file of a checkpoint interrupted while being written")
                stale.unlink(missing_ok=True)
        distributed.barrier()
        self.build_data(resume, init_ckpt)
        self.build_model(init_ckpt)
        if resume is not None:
            self.restore(resume)
        if self.info.is_main:
            self.write_config()
            try:
                from torch.utils.tensorboard import SummaryWriter

                # hide what a previous run logged after the checkpoint resumed: steps > global_step
                self.tb = SummaryWriter(str(self.out / "tensorboard"),
                                        purge_step=self.global_step + 1 if self.global_step else None)
            except ImportError:  # TensorBoard is optional: metrics.csv and curves.png are always written
                self.tb = None
        self.print_header(resume)
        if self.finished_before and (self.stopped == "plateau" or self.epoch >= cfg.epochs):
            self.log(f"the run in {self.out} is already finished ({self.stopped}, {self.epoch} epochs); "
                     f"nothing to do (raise --epochs to train on)")
            return self.result()
        stop = _StopRequest(self.log)
        stop.install()
        self.stopped = None
        try:
            while True:
                if self.train_epoch(stop):
                    break
                if self.end_epoch(stop):
                    break
                if distributed.all_reduce_sum([float(stop.signal is not None)])[0]:
                    self.stopped = "signal"  # arrived during validation: the epoch checkpoint is written
                    break
        finally:
            stop.uninstall()
            if self.tb is not None:
                self.tb.close()
        if self.info.is_main:
            self.write_metrics()
            if self.history:
                plot_curves(self.history, self.out / "curves.png")
        if self.stopped == "signal":
            name = signal.Signals(stop.signal).name if stop.signal else "a signal"
            self.log(f"stopped by {name} at epoch {self.epoch + 1}, step {self.step_in_epoch}/{self.steps_per_epoch} "
                     f"(global step {self.global_step}); checkpoint {self.last_checkpoint}\n"
                     f"resume with:  vgg train --config-file {self.out / 'config.yaml'} --resume auto"
                     f"{'   (with the same torchrun command)' if self.info.distributed else ''}")
        elif self.stopped == "max_steps":
            self.log(f"stopped after --max-steps {cfg.max_steps}; checkpoint {self.last_checkpoint} "
                     f"(continue with --resume auto)")
        else:
            self.log(f"done ({'validation plateau after ' + str(cfg.lr_drops) + ' lr reductions' if self.stopped == 'plateau' else str(self.epoch) + ' epochs'}): "
                     f"best top-1 error {self.best_top1:.2f}% at epoch {self.best_epoch}; {self.out / 'best.pt'}")
        self.signal = stop.signal
        return self.result()

    def print_header(self, resume: Mapping[str, Any] | None) -> None:
        cfg = self.cfg
        w = self.info.world_size
        s = cfg.scale if isinstance(cfg.scale, int) else f"[{cfg.scale[0]}, {cfg.scale[1]}] (jittered per image)"
        self.log(f"vgg train: {cfg.model} (width {cfg.width:g}, fc {cfg.fc_width}, {self.n_params:,} parameters, "
                 f"{len(self.classes)} classes), init {self.init_text}")
        self.log(f"data: {self.data_text}: {len(self.train_set)} training / {len(self.val_set)} validation images; "
                 f"S={s}, crop {cfg.crop_size}, validation dense at Q={cfg.val_scale}; mean RGB "
                 f"{', '.join(f'{v:.1f}' for v in self.stats['mean'])} from {self.stats_source}")
        self.log(f"batch {cfg.batch_size} = {w} process{'es' if w > 1 else ''} x {self.micro} images x {self.accum} "
                 f"accumulation step{'s' if self.accum > 1 else ''}; {self.steps_per_epoch} steps per epoch; "
                 f"SGD lr {cfg.lr:g} momentum {cfg.momentum:g} weight decay {cfg.weight_decay:g}")
        self.log(f"device {self.device}{' (' + self.info.backend + ')' if self.info.backend else ''}, amp {self.amp}, "
                 f"channels_last {'on' if self.channels_last else 'off'}, compile {'on' if cfg.compile else 'off'}, "
                 f"workers {cfg.workers}; output {self.out}")
        if resume is not None:
            self.log(f"resuming {self.resume_path}: epoch {self.epoch + 1}, step {self.step_in_epoch}/"
                     f"{self.steps_per_epoch} (global step {self.global_step})")

    def result(self) -> dict[str, Any]:
        return {
            "output_dir": str(self.out),
            "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "best": str(self.out / "best.pt") if (self.out / "best.pt").exists() else None,
            "epochs": self.epoch,
            "global_step": self.global_step,
            "best_top1_error": self.best_top1,
            "best_epoch": self.best_epoch,
            "history": list(self.history),
            "stopped": self.stopped,
            "classes": list(self.classes),
            "preprocessing": self.preprocessing.to_dict(),
        }


def _describe_build(build: Mapping[str, Any]) -> str:
    return (f"{build.get('name')} width {build.get('width')} fc {build.get('fc_width')} crop {build.get('crop_size')} "
            f"classes {build.get('num_classes')}")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def plot_curves(history: list[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """curves.png: loss, top-1/top-5 validation error and lr per epoch (matplotlib, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from vggnet.checkpoint import atomic_write

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_err, ax_lr = fig.subplots(1, 3)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation (dense)")
    ax_loss.set(title="loss", xlabel="epoch")
    ax_loss.legend()
    ax_err.plot(epochs, [h["val_top1_error"] for h in history], "o-", label="top-1")
    ax_err.plot(epochs, [h["val_top5_error"] for h in history], "s-", label="top-5")
    ax_err.set(title="validation error (%)", xlabel="epoch")
    ax_err.legend()
    ax_lr.plot(epochs, [h["lr"] for h in history], "o-")
    ax_lr.set(title="learning rate", xlabel="epoch", yscale="log")
    for ax in (ax_loss, ax_err, ax_lr):
        ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


# --------------------------------------------------------------------------- entry points


def train(config: TrainConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Train with the settings of `config` (a `TrainConfig` or a mapping of its fields).

    Returns the final state: `output_dir`, `checkpoint` (the last one written),
    `best`, `epochs`, `global_step`, `best_top1_error`, `best_epoch`, `history`
    (one dict per epoch, as in metrics.csv), `stopped` ("epochs", "plateau",
    "max_steps" or "signal"), `classes`, `preprocessing`. Settings are checked
    before any work. Under torchrun it joins (and finally leaves) the process group.
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    cfg = dataclasses.replace(cfg).validate()  # a copy: the caller's config is not normalised in place
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    info = distributed.setup(cfg.device)
    try:
        trainer = _Trainer(cfg, info)
        out = trainer.run()
        out["signal"] = getattr(trainer, "signal", None)
        distributed.barrier()
        return out
    finally:
        if owns_group:
            distributed.cleanup()


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The `vgg train` flags: every `TrainConfig` field, defaults from it."""
    from vggnet.cli import add_model_arguments

    d = TrainConfig()
    parser.add_argument("--config-file", metavar="YAML", help="settings from a YAML file (flags given here win); "
                                                             "presets in configs/")
    add_model_arguments(parser, model_default=d.model)
    g = parser.add_argument_group("data (§3.1)")
    g.add_argument("--data", metavar="DIR", help="dataset with DIR/train and DIR/val (ImageNet layout); "
                                                 "default: the synthetic shapes dataset in memory")
    g.add_argument("--train-dir", metavar="DIR", help="training images (overrides DIR/train)")
    g.add_argument("--val-dir", metavar="DIR", help="validation images (overrides DIR/val)")
    g.add_argument("--val-labels", metavar="FILE", help="labels file of a flat validation folder "
                                                       "(default: found automatically)")
    g.add_argument("--scale", default=d.scale, metavar="S|Smin:Smax",
                   help="training scale S, or Smin:Smax for scale jittering (default: %(default)s)")
    g.add_argument("--val-scale", type=int, default=None, metavar="Q",
                   help="scale of the per-epoch dense validation (default: S, or (Smin+Smax)/2)")
    g.add_argument("--stats", metavar="JSON", help="mean RGB and PCA from `vgg stats` (default: computed at start)")
    g.add_argument("--stats-sample", type=int, default=d.stats_sample,
                   help="images sampled when computing statistics (default: %(default)s)")
    g.add_argument("--pca-std", type=float, default=d.pca_std,
                   help="std of AlexNet's PCA colour shift, 0 = off (default: %(default)s)")
    g.add_argument("--max-bad-fraction", type=float, default=d.max_bad_fraction,
                   help="stop if more of an epoch's images than this cannot be decoded (default: %(default)s)")
    g.add_argument("--synthetic-classes", type=int, default=d.synthetic_classes,
                   help="without --data: shape classes (default: %(default)s)")
    g.add_argument("--synthetic-train", type=int, default=d.synthetic_train,
                   help="without --data: training images (default: %(default)s)")
    g.add_argument("--synthetic-val", type=int, default=d.synthetic_val,
                   help="without --data: validation images (default: %(default)s)")
    g.add_argument("--synthetic-image-size", default="160:400", metavar="MIN:MAX",
                   help="without --data: image side range in pixels (default: %(default)s)")
    g = parser.add_argument_group("optimisation (§3.1)")
    g.add_argument("--epochs", type=int, default=d.epochs, help="at most this many epochs (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="global batch over all processes (default: %(default)s, the paper's)")
    g.add_argument("--micro-batch-size", type=int, default=None,
                   help="images per process per forward pass; gradients are accumulated over "
                        "batch / (micro x processes) passes (default: batch / processes)")
    g.add_argument("--lr", type=float, default=d.lr, help="initial learning rate (default: %(default)s)")
    g.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum (default: %(default)s)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="L2 penalty (default: %(default)s)")
    g.add_argument("--lr-factor", type=float, default=d.lr_factor,
                   help="lr multiplier when validation top-1 stops improving (default: %(default)s)")
    g.add_argument("--lr-patience", type=int, default=d.lr_patience,
                   help="epochs without improvement before reducing the lr (default: %(default)s)")
    g.add_argument("--lr-drops", type=int, default=d.lr_drops,
                   help="lr reductions; the next plateau ends training (default: %(default)s)")
    g.add_argument("--clip-grad", type=float, default=None, metavar="NORM", help="clip the gradient norm (default: off)")
    g.add_argument("--init", default=d.init, metavar="SCHEME",
                   help="gaussian | glorot | kaiming | from:CKPT (a net A, or the same net to fine-tune) "
                        "(default: %(default)s)")
    g.add_argument("--init-rest", default=d.init_rest, metavar="SCHEME",
                   help="with --init from:NET_A, the layers A does not provide (default: %(default)s, the paper)")
    g.add_argument("--seed", type=int, default=d.seed, help="seed of every random choice (default: %(default)s)")
    g = parser.add_argument_group("execution")
    g.add_argument("--device", default=d.device, help="auto | cpu | cuda | cuda:N (default: %(default)s)")
    g.add_argument("--amp", default=d.amp, metavar="{auto,bf16,fp16,off}",
                   help="mixed precision; auto = bf16 on CUDA, off on CPU (default: %(default)s)")
    g.add_argument("--channels-last", default=d.channels_last, metavar="{auto,on,off}",
                   help="NHWC memory layout; auto = on for CUDA (default: %(default)s)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--deterministic", action="store_true", help="deterministic CUDA kernels (slower)")
    g.add_argument("--workers", type=int, default=d.workers,
                   help="data-loading processes per training process (default: %(default)s)")
    g.add_argument("--val-batch-size", type=int, default=d.val_batch_size,
                   help="images per validation forward pass (default: %(default)s)")
    g = parser.add_argument_group("output and checkpoints")
    g.add_argument("--output-dir", default=d.output_dir, metavar="DIR",
                   help="run directory: checkpoints, metrics.csv, config.yaml, curves.png (default: %(default)s)")
    g.add_argument("--resume", metavar="PATH|auto", help="continue a run from a checkpoint, or auto: the newest in "
                                                         "--output-dir (starts fresh if there is none)")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, metavar="STEPS",
                   help="also checkpoint every N optimizer steps (default: every epoch only)")
    g.add_argument("--checkpoint-minutes", type=float, default=d.checkpoint_minutes, metavar="MIN",
                   help="also checkpoint every M minutes (default: off)")
    g.add_argument("--keep", type=int, default=d.keep, help="numbered checkpoints kept (default: %(default)s)")
    g.add_argument("--max-steps", type=int, default=None, help="stop with a checkpoint after N optimizer steps")
    g.add_argument("--log-every", type=int, default=d.log_every, help="steps between TensorBoard points "
                                                                      "(default: %(default)s)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run_train(args: argparse.Namespace) -> int:
    result = train(TrainConfig.from_args(args))
    if result.get("signal"):
        return 128 + int(result["signal"])  # the shell's convention for "stopped by a signal"
    return 0
