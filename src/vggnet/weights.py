"""Checkpoints: one safe file format, written atomically.

A checkpoint is a `torch.save` of plain containers only (tensors, numbers,
strings, lists, dicts), so `torch.load(weights_only=True)` reads it and loading
a file never runs code from it. It carries everything needed to use the weights
correctly: the model's build arguments, the preprocessing it was trained with,
the class names and, for training checkpoints, the complete training state.
See docs/architecture.md for the layout.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from vggnet.errors import CheckpointError
from vggnet.models import VGG, vgg

__all__ = [
    "FORMAT",
    "VERSION",
    "CAFFE_PREPROCESSING",
    "TORCHVISION_PREPROCESSING",
    "make_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "model_from_checkpoint",
    "atomic_write",
]

FORMAT = "vggnet.checkpoint"
VERSION = 1

# The paper's preprocessing: 0-255 pixels minus the training set's mean RGB
# (here ImageNet's, as in the released Caffe models; training replaces it with
# the statistics of its own training set).
CAFFE_PREPROCESSING = {"pixel_scale": 255.0, "mean": [123.68, 116.779, 103.939], "std": [1.0, 1.0, 1.0]}
# torchvision's weights expect 0-1 pixels normalised by ImageNet mean and std.
TORCHVISION_PREPROCESSING = {"pixel_scale": 1.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def make_checkpoint(
    model: VGG,
    *,
    preprocessing: Mapping[str, Any],
    classes: list[str] | None = None,
    meta: Mapping[str, Any] | None = None,
    train: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A checkpoint dict for `model` (weights moved to CPU; DDP/compile wrappers unwrapped)."""
    model = unwrap(model)
    if classes is None:
        classes = [str(i) for i in range(model.num_classes)]
    if len(classes) != model.num_classes:
        raise ValueError(f"{len(classes)} class names for a model with {model.num_classes} outputs")
    ckpt: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "build": dict(model.build_args),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "preprocessing": {"pixel_scale": float(preprocessing["pixel_scale"]),
                          "mean": [float(v) for v in preprocessing["mean"]],
                          "std": [float(v) for v in preprocessing["std"]]},
        "classes": [str(c) for c in classes],
        "meta": dict(meta or {}),
    }
    if train is not None:
        ckpt["train"] = dict(train)
    return ckpt


def unwrap(model: torch.nn.Module) -> VGG:
    """The VGG inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model  # type: ignore[return-value]


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call `write(file_object)` on a temporary file beside `path`, fsync it, then rename over `path`.

    A crash at any moment leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        try:  # make the rename itself durable
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_checkpoint(path: str | os.PathLike, ckpt: Mapping[str, Any]) -> Path:
    """Write `ckpt` to `path` atomically (temporary file, fsync, rename)."""
    return atomic_write(path, lambda f: torch.save(dict(ckpt), f))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a vggnet checkpoint safely; a `CheckpointError` naming the file if it is not one."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; give the .pt file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): it was not written completely")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be read (truncated, corrupt, or not a vggnet/PyTorch file): {first}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        hint = ""
        if isinstance(ckpt, dict) and any(k.startswith("features.") for k in ckpt):
            hint = "; it looks like a bare state dict: convert it with `vgg import torchvision FILE --out CKPT`"
        raise CheckpointError(f"{path} is not a vggnet checkpoint (no format={FORMAT!r} entry){hint}")
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {ckpt['version']}; this vggnet reads "
                              f"up to {VERSION}: upgrade vggnet")
    for key in ("build", "state_dict", "preprocessing", "classes"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {path} has no {key!r} entry")
    return ckpt


def model_from_checkpoint(
    ckpt: Mapping[str, Any] | str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[VGG, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its weights (strict)."""
    source = "checkpoint"
    if not isinstance(ckpt, Mapping):
        source = str(ckpt)
        ckpt = load_checkpoint(ckpt, map_location=map_location)
    try:
        model = vgg(**ckpt["build"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source} has invalid build arguments {ckpt['build']}: {exc}") from None
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{source} does not match the model it describes "
                              f"({ckpt['build']}): {str(exc).splitlines()[0]} ...") from None
    return model, dict(ckpt)
