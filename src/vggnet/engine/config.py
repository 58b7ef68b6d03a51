"""The settings of a training run: `TrainConfig`, its validation, and its flags.

Every setting is a field of `TrainConfig`; the field names are the flags of
`vgg train` (`--micro-batch-size` = `micro_batch_size`) and the keys of a YAML
`--config-file`. `validate()` checks and normalises them all before any work,
so a bad value fails at once with the flag's name, never hours into a run.
The defaults are the paper's (§3.1).
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from vggnet.arguments import default_workers
from vggnet.errors import UserError

__all__ = ["TrainConfig", "NET_DEFAULTS", "RESUME_MUST_MATCH", "parse_init", "add_train_arguments", "show_setting",
           "default_scale", "default_workers"]


# The net a run builds when neither its settings nor an `--init from:CKPT` checkpoint say otherwise:
# the paper's configuration D (§3.1).
NET_DEFAULTS = {"model": "D", "width": 1.0, "fc_width": 4096, "crop_size": 224, "dropout": 0.5, "batch_norm": False}


@dataclass
class TrainConfig:
    """Every setting of a training run; the field names are the `vgg train` flags
    and the YAML keys (`--micro-batch-size` = `micro_batch_size`)."""

    # -- model (the build arguments of vggnet.vgg). None: not given, so `--init from:CKPT`'s net gives
    # it (the engine reads the checkpoint), else `NET_DEFAULTS`, the paper's D; `validate()` resolves it.
    model: str | None = None             # D
    width: float | None = None           # conv channel multiplier (1 = the paper)
    fc_width: int | None = None          # 4096
    crop_size: int | None = None         # the training crop (§3.1: 224)
    dropout: float | None = None         # on FC1 and FC2 (0.5)
    batch_norm: bool | None = None       # an extension beyond the paper (off)
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
    scale: Any = None                    # S, or [Smin, Smax] / "Smin:Smax" for scale jittering;
                                         # None: round(crop x 256/224), as the paper's S=256 is to its 224 crops
    val_scale: int | None = None         # Q of the per-epoch validation; default S (or the middle of [Smin, Smax])
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
    init_rest: str = "gaussian"          # with --init from:CKPT: the layers the checkpoint does not provide
    freeze: str = "none"                 # none | features: the conv layers keep their weights, only the FC layers train
    seed: int = 0
    # -- extensions beyond the paper (torchvision's references, timm); all off by default
    lr_scheduler: str = "plateau"        # plateau (§3.1) | step (x lr_factor every lr_step_size epochs) | cosine
    lr_step_size: int = 30               # with --lr-scheduler step: epochs between reductions
    warmup_epochs: int = 0               # linear warm-up of the lr from 1% over this many epochs
    optimizer: str = "sgd"               # sgd (§3.1) | adamw (momentum is unused)
    decay_norm_bias: bool = True         # False (--no-decay-norm-bias): no weight decay on biases and BN weights
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0             # > 0: mixup of the batch, Beta(alpha, alpha)
    cutmix_alpha: float = 0.0            # > 0: cutmix of the batch (with mixup: one of the two per batch)
    auto_augment: str = "none"           # none | randaugment | trivialaugment, after the crop
    hflip: bool = True                   # False (--no-hflip): no random mirror (digits, text)
    ema_decay: float = 0.0               # > 0: an exponential moving average of the weights, validated and saved
    sync_bn: bool = False                # under DDP with --batch-norm: SyncBatchNorm (batch statistics over ranks)
    # -- execution
    device: str = "auto"                 # auto | cpu | cuda | cuda:N
    amp: str = "auto"                    # auto (bf16 on CUDA and native-bf16 CPUs, else off) | bf16 | fp16 | off
    channels_last: str = "auto"          # auto (on CUDA, and with bf16 on a CPU) | on | off
    compile: bool = False                # torch.compile the model
    deterministic: bool = False          # deterministic CUDA kernels (slower); the CPU is deterministic anyway
    workers: int | None = None           # data-loading processes per training process; None: min(4, cores - 1)
    decode_device: str = "cpu"           # cpu (the workers decode) | cuda (JPEGs in batches on the GPU) | auto
    threads: int | None = None           # torch.set_num_threads; None: PyTorch's default
    val_batch_size: int = 32
    # -- output
    output_dir: str = "runs/train"
    resume: str | None = None            # PATH to a checkpoint, or auto: the newest in output_dir
    checkpoint_every: int = 0            # also checkpoint every N optimizer steps (0: only every epoch)
    checkpoint_minutes: float = 0.0      # also checkpoint every M minutes (0: off)
    keep: int = 1                        # resumable checkpoints kept (last.pt links the newest; best.pt is
                                         # weights and settings only): a run holds two model-sized files
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

    def _check_types(self) -> None:
        for f in fields(self):
            setattr(self, f.name, _check_setting_type(f.name, str(f.type), getattr(self, f.name)))

    def validate(self) -> TrainConfig:
        """Check and normalise every setting; a `UserError` naming the flag. Runs before any work."""
        from vggnet.data.transforms import parse_scale
        from vggnet.models import resolve_name

        self._check_types()
        for key, value in NET_DEFAULTS.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
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
        if self.scale is None:
            # the paper trains 224 crops at S=256: keep that ratio for other crops, so that
            # --crop-size 32 on small images does not upscale them to 256 first
            self.scale = default_scale(self.crop_size)
        try:
            lo, hi = parse_scale(self.scale)
        except ValueError as exc:
            raise UserError(f"--scale {show_setting(self.scale)}: expected S or Smin:Smax with 1 <= Smin <= Smax "
                            f"({str(exc).split(': ', 1)[-1]})") from None
        if lo < self.crop_size:
            raise UserError(f"--scale {show_setting(self.scale)}: Smin={lo} is smaller than --crop-size "
                            f"{self.crop_size}; the image rescaled to S must contain the crop "
                            f"(the paper: S >= 224 for 224 crops)")
        self.scale = lo if lo == hi else [lo, hi]
        if self.val_scale is None:
            self.val_scale = lo if lo == hi else (lo + hi) // 2
        _positive("--val-scale", self.val_scale, int)
        if self.val_scale < self.crop_size:
            raise UserError(f"--val-scale {self.val_scale} is smaller than --crop-size {self.crop_size}")
        try:
            slo, shi = parse_scale(self.synthetic_image_size)
        except ValueError:
            raise UserError(f"--synthetic-image-size: expected MIN:MAX pixels, got "
                            f"{show_setting(self.synthetic_image_size)}") from None
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
        from vggnet.init import SCHEMES

        if self.init_rest not in SCHEMES:
            raise UserError(f"--init-rest must be one of {', '.join(SCHEMES)}, got {self.init_rest!r}")
        self.freeze = _choice("--freeze", self.freeze, ("none", "features"))
        self._validate_extensions()
        self.amp = _choice("--amp", self.amp, ("auto", "bf16", "fp16", "off"))
        self.channels_last = _choice("--channels-last", self.channels_last, ("auto", "on", "off"))
        self.decode_device = _choice("--decode-device", self.decode_device, ("cpu", "cuda", "auto"))
        if self.workers is None:
            self.workers = default_workers()
        _non_negative("--workers", self.workers)
        if self.threads is not None:
            _positive("--threads", self.threads, int)
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
        self._check_split_folders()
        for flag, value in (("--stats", self.stats), ("--val-labels", self.val_labels)):
            if value is not None and not Path(value).is_file():
                raise UserError(f"{flag} {value}: no such file")
        if self.resume is not None and self.resume != "auto" and not Path(self.resume).exists():
            raise UserError(f"--resume {self.resume}: no such file (or pass --resume auto to continue the newest "
                            f"checkpoint in --output-dir)")
        if self.batch_norm is not True and self.batch_norm is not False:
            self.batch_norm = bool(self.batch_norm)
        # the build arguments, all at once (catches what the checks above do not)
        import torch

        from vggnet.models import vgg

        try:
            with torch.device("meta"):
                vgg(self.model, 2, crop_size=self.crop_size, width=float(self.width), fc_width=self.fc_width,
                    dropout=float(self.dropout), batch_norm=self.batch_norm)
        except ValueError as exc:
            raise UserError(f"model settings: {exc}") from None
        return self

    def _validate_extensions(self) -> None:
        """The settings beyond the paper (all off by default)."""
        self.lr_scheduler = _choice("--lr-scheduler", self.lr_scheduler, ("plateau", "step", "cosine"))
        _positive("--lr-step-size", self.lr_step_size, int)
        _non_negative("--warmup-epochs", self.warmup_epochs)
        if self.warmup_epochs and self.warmup_epochs >= self.epochs:
            raise UserError(f"--warmup-epochs {self.warmup_epochs} must be smaller than --epochs {self.epochs}")
        self.optimizer = _choice("--optimizer", self.optimizer, ("sgd", "adamw"))
        if not 0.0 <= float(self.label_smoothing) < 1.0:
            raise UserError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        for flag, value in (("--mixup-alpha", self.mixup_alpha), ("--cutmix-alpha", self.cutmix_alpha)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise UserError(f"{flag} must be >= 0 (0: off), got {value!r}")
        self.auto_augment = _choice("--auto-augment", "none" if self.auto_augment is None else self.auto_augment,
                                    ("none", "randaugment", "trivialaugment"))
        if not 0.0 <= float(self.ema_decay) < 1.0:
            raise UserError(f"--ema-decay must be in [0, 1) (0: off; 0.999 is typical), got {self.ema_decay}")
        for name in ("decay_norm_bias", "hflip", "sync_bn"):
            setattr(self, name, bool(getattr(self, name)))
        if self.sync_bn and not self.batch_norm:
            raise UserError("--sync-bn needs --batch-norm (the paper's nets have no BatchNorm layers to synchronise)")

    def _check_split_folders(self) -> None:
        """Refuse to validate on the training images: --data pointing at one split, or train == val."""
        if self.data is not None and self.train_dir is None and self.val_dir is None:
            root = Path(self.data)
            if not (root / "train").is_dir() and not (root / "val").is_dir():
                raise UserError(
                    f"--data {self.data}: no train/ and val/ folders in it, so its images would be both the training "
                    f"and the validation set. --data takes the folder above the splits (DIR with DIR/train and "
                    f"DIR/val{f'; here: --data {root.resolve().parent}' if root.name in ('train', 'val') else ''}); "
                    f"or name them: --train-dir {self.data} --val-dir HELD_OUT_FOLDER")
        if self.data is None and self.train_dir is None:
            return
        train = Path(self.train_dir or self.data)
        val = Path(self.val_dir or self.data)
        train = train / "train" if self.train_dir is None and (train / "train").is_dir() else train
        val = val / "val" if self.val_dir is None and (val / "val").is_dir() else val
        if train.resolve() == val.resolve():
            raise UserError(f"the training and validation images are the same folder ({train}): validation would "
                            f"measure the training images. Give a held-out folder with --val-dir")


def default_scale(crop_size: int) -> int:
    """S when --scale is not given: round(crop x 256/224), the paper's S=256 for its 224 crops."""
    return int(round(crop_size * 256 / 224))


# The type every annotated setting must have (from Python, a YAML file or the command line alike).
_KINDS = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def _kind_name(kind: str) -> str:
    return {"int": "an integer", "float": "a number", "bool": "true or false", "str": "text"}[kind]


def _check_setting_type(name: str, annotation: str, value: Any) -> Any:
    """`value` of setting `name` if it has the annotated type (an integral float for an int becomes
    the int); else a `UserError` naming the flag."""
    optional = annotation.endswith(" | None")
    kind = annotation.removesuffix(" | None")
    if kind not in _KINDS or (optional and value is None):
        return value
    if kind == "int" and isinstance(value, float) and value.is_integer():
        value = int(value)  # `val_scale: 40.0`: the number the user meant
    if kind == "str" and isinstance(value, os.PathLike):
        value = os.fspath(value)  # a pathlib.Path from Python for --data, --output-dir, ...
    ok = isinstance(value, _KINDS[kind]) and (kind == "bool" or not isinstance(value, bool))
    if kind == "float" and ok and not math.isfinite(value):
        ok = False
    if not ok:
        raise UserError(f"--{name.replace('_', '-')} must be {_kind_name(kind)}"
                        f"{' (or unset)' if optional else ''}, got {value!r}")
    return value


def show_setting(value: Any) -> str:
    """A setting as the user would write it: S, or Smin:Smax."""
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


def parse_init(init: str) -> tuple[str, str | None]:
    """`--init` -> (scheme, checkpoint): ("glorot", None) or ("from", "path/to/ckpt.pt")."""
    from vggnet.init import SCHEMES

    if isinstance(init, str) and init.startswith("from:"):
        path = init[len("from:"):]
        if not path:
            raise UserError("--init from:CKPT needs a checkpoint path after 'from:'")
        if Path(path).is_dir():
            raise UserError(f"--init {init}: {path} is a folder; give the checkpoint file in it (e.g. "
                            f"{Path(path) / 'best.pt'})")
        if not Path(path).is_file():
            raise UserError(f"--init {init}: " + (f"no such file {path}" if not Path(path).exists()
                                                  else f"{path} is not a regular file"))
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
                     "clip_grad", "lr_scheduler", "lr_step_size", "warmup_epochs", "optimizer", "decay_norm_bias",
                     "label_smoothing", "mixup_alpha", "cutmix_alpha", "auto_augment", "hflip", "ema_decay", "sync_bn")



def add_train_arguments(parser: argparse.ArgumentParser, **defaults: Any) -> None:
    """The engine's flags (`vgg train`, `vgg localize train`): every `TrainConfig` field.

    Defaults come from `TrainConfig`, except those given here by field name
    (`lr=1e-3` for a fine-tuning command); a YAML `--config-file` and the command
    line still win over them."""
    from vggnet.arguments import (add_batch_size_argument, add_data_argument, add_execution_arguments,
                                  add_model_arguments, add_output_dir_argument, add_progress_argument,
                                  add_seed_argument, add_workers_argument, positive_int)

    unknown = sorted(set(defaults) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise TypeError(f"add_train_arguments: unknown setting(s) {', '.join(unknown)}")
    d = TrainConfig(**defaults)
    parser.add_argument("--config-file", metavar="YAML", help="settings from a YAML file (flags given here win); "
                                                             "presets in configs/")
    add_model_arguments(parser, model_default=d.model)
    g = parser.add_argument_group("data (§3.1)")
    add_data_argument(g, help="dataset with DIR/train and DIR/val (ImageNet layout); "
                              "default: the synthetic shapes dataset in memory")
    g.add_argument("--train-dir", metavar="DIR", help="training images (overrides DIR/train)")
    g.add_argument("--val-dir", metavar="DIR", help="validation images (overrides DIR/val)")
    g.add_argument("--val-labels", metavar="FILE", help="labels file of a flat validation folder "
                                                       "(default: found automatically)")
    g.add_argument("--scale", default=d.scale, metavar="S|Smin:Smax",
                   help="training scale S, or Smin:Smax for scale jittering (default: round(crop x 256/224), "
                        "256 for 224 crops as in the paper)")
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
    g.add_argument("--epochs", type=positive_int, default=d.epochs, help="at most this many epochs (default: %(default)s)")
    add_batch_size_argument(g, default=d.batch_size, help="global batch over all processes, the paper's 256; "
                                                           "reduced to the training set when that is smaller")
    g.add_argument("--micro-batch-size", type=positive_int, default=None,
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
    g.add_argument("--clip-grad", type=float, default=None, metavar="NORM",
                   help="clip the gradient norm (default: off)")
    g.add_argument("--init", default=d.init, metavar="SCHEME",
                   help="gaussian | glorot | kaiming | from:CKPT (a net A, or the same net to fine-tune) "
                        "(default: %(default)s)")
    g.add_argument("--init-rest", default=d.init_rest, metavar="SCHEME",
                   help="with --init from:CKPT, the layers the checkpoint does not provide (default: %(default)s, "
                        "the paper)")
    g.add_argument("--freeze", default=d.freeze, metavar="{none,features}",
                   help="features: keep the conv layers as initialised and train the FC layers only "
                        "(default: %(default)s)")
    add_seed_argument(g, default=d.seed)
    g = parser.add_argument_group("extensions beyond the paper (torchvision's references, timm; all off by default)")
    g.add_argument("--lr-scheduler", default=d.lr_scheduler, metavar="{plateau,step,cosine}",
                   help="plateau: §3.1 (--lr-factor/--lr-patience/--lr-drops); step: x --lr-factor every "
                        "--lr-step-size epochs; cosine: to 0 at --epochs (default: %(default)s)")
    g.add_argument("--lr-step-size", type=int, default=d.lr_step_size, metavar="EPOCHS",
                   help="with --lr-scheduler step: epochs between reductions (default: %(default)s)")
    g.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs, metavar="N",
                   help="linear lr warm-up from 1%% over N epochs (default: %(default)s)")
    g.add_argument("--optimizer", default=d.optimizer, metavar="{sgd,adamw}",
                   help="sgd: §3.1 with --momentum; adamw: torch.optim.AdamW (default: %(default)s)")
    g.add_argument("--no-decay-norm-bias", dest="decay_norm_bias", action="store_false",
                   help="no weight decay on biases and BatchNorm weights")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing, metavar="EPS",
                   help="cross-entropy label smoothing (default: %(default)s)")
    g.add_argument("--mixup-alpha", type=float, default=d.mixup_alpha, metavar="ALPHA",
                   help="mixup of each batch, Beta(alpha, alpha) (default: %(default)s, off)")
    g.add_argument("--cutmix-alpha", type=float, default=d.cutmix_alpha, metavar="ALPHA",
                   help="cutmix of each batch; with --mixup-alpha one of the two per batch (default: %(default)s, "
                        "off)")
    g.add_argument("--auto-augment", default=d.auto_augment, metavar="{none,randaugment,trivialaugment}",
                   help="torchvision's RandAugment or TrivialAugmentWide after the crop (default: %(default)s)")
    g.add_argument("--no-hflip", dest="hflip", action="store_false",
                   help="no random horizontal flip (data where a mirror image is another class: digits, text)")
    g.add_argument("--ema-decay", type=float, default=d.ema_decay, metavar="DECAY",
                   help="keep an exponential moving average of the weights (e.g. 0.999), validated each epoch "
                        "and saved as ema.pt (default: %(default)s, off)")
    g.add_argument("--sync-bn", action="store_true",
                   help="with --batch-norm under torchrun: SyncBatchNorm, batch statistics over all processes")
    add_execution_arguments(parser)
    g = parser.add_argument_group("execution (training)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--deterministic", action="store_true", help="deterministic CUDA kernels (slower)")
    add_workers_argument(g, help="data-loading processes per training process")
    g.add_argument("--decode-device", default=d.decode_device, metavar="{cpu,cuda,auto}",
                   help="where training JPEGs are decoded: cpu (the loader workers), cuda (in batches on the "
                        "training GPU with TorchCodec's nvJPEG, then rescaled and cropped there), auto = cuda when "
                        "the device is a GPU and TorchCodec has CUDA (default: %(default)s)")
    g.add_argument("--val-batch-size", type=int, default=d.val_batch_size,
                   help="images per validation forward pass (default: %(default)s)")
    g = parser.add_argument_group("output and checkpoints")
    add_output_dir_argument(g, "train", default=d.output_dir,
                            help="run directory: checkpoints, metrics.csv, config.yaml, curves.png")
    g.add_argument("--resume", metavar="PATH|auto", help="continue a run from a checkpoint, or auto: the newest in "
                                                         "--output-dir (starts fresh if there is none)")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, metavar="STEPS",
                   help="also checkpoint every N optimizer steps (default: every epoch only)")
    g.add_argument("--checkpoint-minutes", type=float, default=d.checkpoint_minutes, metavar="MIN",
                   help="also checkpoint every M minutes (default: off)")
    g.add_argument("--keep", type=positive_int, default=d.keep, metavar="N",
                   help="resumable checkpoints kept, newest first (checkpoint_*.pt; last.pt links the newest); best.pt "
                        "holds weights and settings without the optimizer state (default: %(default)s)")
    g.add_argument("--max-steps", type=int, default=None, help="stop with a checkpoint after N optimizer steps")
    g.add_argument("--log-every", type=int, default=d.log_every, help="steps between TensorBoard points "
                                                                      "(default: %(default)s)")
    add_progress_argument(g)
