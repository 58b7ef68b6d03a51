"""Checkpoints, and weights in and out of other frameworks (`vgg import`, `vgg export`).

A checkpoint is a `torch.save` of plain containers only (tensors, numbers,
strings, lists, dicts), so `torch.load(weights_only=True)` reads it and loading
a file never runs code from it. It carries everything needed to use the weights
correctly: the model's build arguments, the preprocessing it was trained with,
the class names and, for training checkpoints, the complete training state.
See docs/architecture.md for the layout.

Import: torchvision `.pth` state dicts, Keras VGG16/VGG19 `.h5` weights and the
original Caffe release of the paper's nets D and E (`.caffemodel`, read with the
minimal schema of `vggnet.caffe_pb`) become checkpoints. The net's configuration,
width, crop and class count are read off the shapes, every tensor is checked
against `vgg(**build)`, and BGR inputs (Keras, Caffe) are turned into RGB by
flipping the first conv's input channels, so every checkpoint takes RGB.

Export: safetensors + a JSON sidecar (the released-weights form), a torchvision
state dict, and ONNX — the crop classifier, or the dense fully-convolutional net
of §3.2 with dynamic height and width. See docs/interop.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from vggnet.errors import CheckpointError, UserError
from vggnet.models import CONFIGS, NAMES, VGG, resolve_name, vgg

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
    "unwrap",
    # interop
    "IMPORT_FORMATS",
    "EXPORT_FORMATS",
    "import_torchvision",
    "import_keras",
    "import_caffe",
    "import_safetensors",
    "import_weights",
    "load_weights",
    "read_classes",
    "sidecar_path",
    "export_safetensors",
    "export_torchvision",
    "torchvision_name",
    "export_onnx",
    "check_onnx",
    "add_import_arguments",
    "run_import",
    "add_export_arguments",
    "run_export",
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
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return _checkpoint(model.build_args, state, preprocessing=preprocessing, classes=classes, meta=meta,
                       train=train)


def _checkpoint(
    build: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    *,
    preprocessing: Mapping[str, Any],
    classes: Sequence[str] | None = None,
    meta: Mapping[str, Any] | None = None,
    train: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict for a model given by its build arguments and weights (no model needed)."""
    num_classes = int(build["num_classes"])
    if classes is None:
        classes = [str(i) for i in range(num_classes)]
    if len(classes) != num_classes:
        raise ValueError(f"{len(classes)} class names for a model with {num_classes} outputs")
    ckpt: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "build": dict(build),
        "state_dict": dict(state_dict),
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
        # mkstemp makes the file private (0600); give it the mode open() would (0666 less the umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
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


def _torch_load(path: Path, map_location: str | torch.device = "cpu", what: str = "checkpoint") -> Any:
    """`torch.load(weights_only=True)` with a `CheckpointError` naming the file for anything unreadable."""
    if not path.exists():
        raise CheckpointError(f"{what} {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"{what} {path} is a directory; give the file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} {path} is empty (0 bytes): it was not written completely")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        first = lines[0] if lines else type(exc).__name__
        if first.startswith("Weights only load failed"):
            # torch's advice to retry with weights_only=False is wrong for damaged files and unsafe for others
            detail = next((lines[i + 1] for i, line in enumerate(lines[:-1]) if "WeightsUnpickler" in line), "")
            first = ("a safe (weights_only) load refuses it: it is damaged, not a PyTorch file, or pickles "
                     f"Python objects{f' ({detail})' if detail else ''}")
        raise CheckpointError(
            f"{what} {path} cannot be read (truncated, corrupt, or not a vggnet/PyTorch file): {first}") from None


def _is_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def _check_checkpoint(ckpt: Any, path: Path) -> dict[str, Any]:
    if not _is_checkpoint(ckpt):
        hint = ""
        if isinstance(ckpt, dict) and any(str(k).startswith("features.") for k in ckpt):
            hint = "; it looks like a bare state dict: convert it with `vgg import torchvision FILE --out CKPT`"
        raise CheckpointError(f"{path} is not a vggnet checkpoint (no format={FORMAT!r} entry){hint}")
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {ckpt['version']}; this vggnet reads "
                              f"up to {VERSION}: upgrade vggnet")
    for key in ("build", "state_dict", "preprocessing", "classes"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {path} has no {key!r} entry")
    return ckpt


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a vggnet checkpoint safely; a `CheckpointError` naming the file if it is not one."""
    path = Path(path)
    return _check_checkpoint(_torch_load(path, map_location), path)


def model_from_checkpoint(
    ckpt: Mapping[str, Any] | str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[VGG, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its weights (strict).

    The model is built on the meta device and takes CPU copies of the
    checkpoint's tensors (in the model's dtypes), so no time goes into an
    initialisation that would be overwritten (about 1 s for net D), and the
    model shares no memory with `ckpt`.
    """
    source = "checkpoint"
    if not isinstance(ckpt, Mapping):
        source = str(ckpt)
        ckpt = load_checkpoint(ckpt, map_location=map_location)
    try:
        with torch.device("meta"):
            model = vgg(**ckpt["build"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source} has invalid build arguments {ckpt['build']}: {exc}") from None
    expected = model.state_dict()
    state = {k: v.to(device="cpu", dtype=expected[k].dtype, copy=True) if k in expected else v
             for k, v in ckpt["state_dict"].items()}  # a CPU model, as before, whatever map_location says
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise CheckpointError(f"{source} does not match the model it describes "
                              f"({ckpt['build']}): {' '.join(lines[1:3])[:300]} ...") from None
    return model, dict(ckpt)


# =========================================================================== interop
#
# Foreign weights in (`vgg import`), our weights out (`vgg export`). Every
# importer turns a file into the same two things — the build arguments of the
# net it holds (inferred from the shapes, or given) and a state dict in our
# (= torchvision's) layout — checks every tensor against `vgg(**build)` and
# names the layer that does not fit.

IMPORT_FORMATS = ("torchvision", "keras", "caffe", "safetensors")
EXPORT_FORMATS = ("safetensors", "torchvision", "onnx")
WEIGHTS_FORMAT = "vggnet.weights"  # the JSON sidecar of a safetensors export

# Build arguments an importer can be told instead of inferring them.
_BUILD_KEYS = ("width", "crop_size", "fc_width", "dropout", "batch_norm")
_CONV_SPEC = re.compile(r"conv(\d+)-(\d+)$")
# Stage numbers in layer names: Keras `block3_conv2`, Caffe `conv3_2`.
_STAGE_IN_NAME = re.compile(r"^(?:block(\d+)_conv\d+|conv(\d+)_\d+)$")
_BGR_TO_RGB = [2, 1, 0]


@dataclass
class _Layer:
    """One weight layer read from a foreign file, already in our layout."""

    label: str               # its name in the source file, for messages
    weight: torch.Tensor     # (out, in, kh, kw) for a conv, (out, in) for an FC layer
    bias: torch.Tensor       # (out,)
    stored: tuple[int, ...]  # the weight's shape as stored in the file, for messages


def read_classes(path: str | os.PathLike) -> list[str]:
    """Class names from a text file, one per line in output order (blank lines at the end ignored)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"--classes {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--classes {path}: cannot be read as UTF-8 text: {exc}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    if not names or any(not n for n in names):
        raise UserError(f"--classes {path}: expected one non-empty class name per line")
    return names


def _class_names(classes: Sequence[str] | str | os.PathLike | None, num_classes: int) -> list[str] | None:
    if classes is None:
        return None
    if isinstance(classes, (str, os.PathLike)):
        names, where = read_classes(classes), f"--classes {classes}"
    else:
        names, where = [str(c) for c in classes], "classes"
    if len(names) != num_classes:
        raise UserError(f"{where}: {len(names)} class names, but the model has {num_classes} outputs")
    return names


def _conv_plan(letter: str) -> list[tuple[int, int, int]]:
    """(stage, kernel size, channels at width 1) of each conv of configuration `letter`, read off Table 1."""
    plan, stage = [], 1
    for spec in CONFIGS[letter]:
        if spec == "maxpool":
            stage += 1
        elif (match := _CONV_SPEC.match(spec)) is not None:
            plan.append((stage, int(match.group(1)), int(match.group(2))))
    return plan


def _stage_of(label: str) -> int | None:
    match = _STAGE_IN_NAME.match(label)
    return None if match is None else int(match.group(1) or match.group(2))


def _describe(build: Mapping[str, Any]) -> str:
    return (f"configuration {build['name']} (width={build['width']:g}, crop_size={build['crop_size']}, "
            f"fc_width={build['fc_width']}, num_classes={build['num_classes']}"
            + (", batch_norm=True)" if build.get("batch_norm") else ")"))


def _infer_builds(
    where: str,
    convs: Sequence[tuple[str, tuple[int, ...]]],
    fcs: Sequence[tuple[str, tuple[int, ...]]],
    *,
    name: str | None,
    build: Mapping[str, Any],
    batch_norm: bool = False,
) -> list[dict[str, Any]]:
    """Candidate build arguments for a net with these conv and FC weight shapes (our layout), best first.

    The configuration comes from the conv kernel sizes (and the stage numbers in
    the layer names, when every name has one), the width from the last conv's
    channels, the crop from FC1's inputs; anything in `build` (or `name`) wins.
    Nets that differ only in weightless layers (A and A-LRN) both stay candidates.
    """
    if len(fcs) != 3:
        labels = ", ".join(label for label, _ in fcs) or "none"
        raise CheckpointError(f"{where}: found {len(fcs)} fully connected layers ({labels}); a VGG net has 3 "
                              f"(FC-4096, FC-4096, FC-classes) — files without the classifier ('notop') "
                              f"cannot be imported")
    if not convs:
        raise CheckpointError(f"{where}: found no convolution layers")
    if name is not None:
        try:
            letters = [resolve_name(name)]
        except ValueError as exc:
            raise UserError(f"--model: {exc}") from None
    else:
        kernels = [shape[-1] for _, shape in convs]
        stages = [_stage_of(label) for label, _ in convs]
        known = all(s is not None for s in stages)
        letters = [letter for letter in CONFIGS
                   if [k for _, k, _ in _conv_plan(letter)] == kernels
                   and (not known or [s for s, _, _ in _conv_plan(letter)] == stages)]
        if not letters:
            raise CheckpointError(f"{where}: {len(convs)} conv layers with kernel sizes {kernels} match no "
                                  f"configuration of Table 1; pass --model NAME ({', '.join(NAMES)})")
    builds = []
    for letter in letters:
        plan = _conv_plan(letter)
        width = _infer_width([n for _, _, n in plan], [shape[0] for _, shape in convs])
        guess = {"name": letter, "num_classes": fcs[-1][1][0], "crop_size": None, "width": width,
                 "fc_width": fcs[0][1][0], "dropout": 0.5, "batch_norm": batch_norm}
        guess.update({k: v for k, v in build.items() if v is not None})
        if guess["crop_size"] is None:  # FC1 sees a (crop/32) x (crop/32) grid of the last conv's channels
            channels = _scaled(plan[-1][2], guess["width"])
            fc1_label, fc_in = fcs[0][0], fcs[0][1][1]
            grid = math.isqrt(fc_in // channels)
            if grid < 1 or grid * grid * channels != fc_in:
                raise CheckpointError(f"{where}: layer {fc1_label!r} has {fc_in} inputs, which is not a square grid "
                                      f"of the {channels} channels of the last conv layer of configuration "
                                      f"{letter} at width {guess['width']:g}; pass --crop-size")
            guess["crop_size"] = 32 * grid
        builds.append(guess)
    return builds


def _scaled(channels: int, width: float) -> int:
    """Channels of a conv layer at `width` (as `vgg()` rounds them)."""
    return max(1, int(round(channels * width)))


def _infer_width(nominal: Sequence[int], found: Sequence[int]) -> float:
    """The width under which the most conv layers have the channels found (ties: the last layer's guess).

    One damaged layer must not skew the guess: the error should then name that layer.
    """
    best, best_fit = found[-1] / nominal[-1], -1
    for n, c in reversed(list(zip(nominal, found))):
        width = c / n
        fit = sum(_scaled(m, width) == d for m, d in zip(nominal, found))
        if fit > best_fit:
            best, best_fit = width, fit
    return best


def _meta_model(where: str, build: Mapping[str, Any]) -> VGG:
    """`vgg(**build)` on the meta device: the shapes and names, no memory, no initialisation."""
    try:
        with torch.device("meta"):
            return vgg(**build)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: cannot build {dict(build)}: {exc}") from None


def _fill_state(where: str, build: Mapping[str, Any], convs: Sequence[_Layer], fcs: Sequence[_Layer]
                ) -> dict[str, torch.Tensor]:
    """Our state dict from the file's conv and FC layers, in order; every shape checked, the layer named."""
    model = _meta_model(where, build)
    conv_keys = [f"features.{i}" for i, m in enumerate(model.features) if isinstance(m, torch.nn.Conv2d)]
    fc_keys = [f"classifier.{i}" for i, m in enumerate(model.classifier) if isinstance(m, torch.nn.Linear)]
    if len(convs) != len(conv_keys):
        raise CheckpointError(f"{where}: {len(convs)} conv layers, but {_describe(build)} has {len(conv_keys)}")
    expected = model.state_dict()
    values: dict[str, torch.Tensor] = {}
    for key, layer in zip(conv_keys + fc_keys, list(convs) + list(fcs)):
        for part, tensor in (("weight", layer.weight), ("bias", layer.bias)):
            want = tuple(expected[f"{key}.{part}"].shape)
            if tuple(tensor.shape) != want:
                stored = f" (stored as {layer.stored})" if part == "weight" and layer.stored != tuple(
                    tensor.shape) else ""
                raise CheckpointError(f"{where}: layer {layer.label!r} does not fit {_describe(build)}: its {part} "
                                      f"is {tuple(tensor.shape)}{stored}, expected {want} as {key}.{part}")
            values[f"{key}.{part}"] = tensor.detach().to(torch.float32).contiguous()
    return {k: values[k] for k in expected}  # the model's key order


def _check_state(where: str, build: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` checked key by key and shape by shape against `vgg(**build)`; floats as float32."""
    expected = _meta_model(where, build).state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
        parts = ([f"missing {few(missing)}"] if missing else []) + (
            [f"unexpected {few(unexpected)}"] if unexpected else [])
        raise CheckpointError(f"{where} does not match {_describe(build)}: {'; '.join(parts)}")
    out = {}
    for key, want in expected.items():
        tensor = state[key]
        if tuple(tensor.shape) != tuple(want.shape):
            raise CheckpointError(f"{where}: layer {key!r} has shape {tuple(tensor.shape)}, "
                                  f"{_describe(build)} expects {tuple(want.shape)}")
        out[key] = tensor.detach().to(torch.float32).contiguous() if tensor.is_floating_point() else tensor
    return out


def _pick_build(where: str, builds: list[dict[str, Any]], keys: set[str]) -> dict[str, Any]:
    """The first candidate whose state-dict keys are exactly `keys` (A vs A-LRN), else the first."""
    for build in builds:
        if set(_meta_model(where, build).state_dict()) == keys:
            return build
    return builds[0]


# --------------------------------------------------------------------------- torchvision


def _state_dict_of(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """The state dict in a torch file: bare, or under 'model'/'state_dict' (torchvision's references,
    Lightning), with DDP's 'module.' and torch.compile's '_orig_mod.' prefixes removed."""
    if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if (not isinstance(obj, Mapping) or not obj
            or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())):
        raise CheckpointError(f"{where} is not a state dict (a mapping of parameter names to tensors)")
    state = {}
    for key, value in obj.items():
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        state[key] = value
    return state


def _torchvision_shapes(state: Mapping[str, torch.Tensor], where: str):
    def indexed(prefix: str, ndim: int) -> list[tuple[str, tuple[int, ...]]]:
        found = []
        for key, value in state.items():
            match = re.fullmatch(rf"{prefix}\.(\d+)\.weight", key)
            if match and value.dim() == ndim:
                found.append((int(match.group(1)), key[: -len(".weight")], tuple(value.shape)))
        return [(label, shape) for _, label, shape in sorted(found)]

    convs, fcs = indexed("features", 4), indexed("classifier", 2)
    if not convs:
        some = ", ".join(list(state)[:3])
        raise CheckpointError(f"{where} is not a VGG state dict: no 'features.N.weight' convolutions "
                              f"(its keys begin {some})")
    return convs, fcs


def import_torchvision(
    path: str | os.PathLike,
    *,
    name: str | None = None,
    classes: Sequence[str] | str | os.PathLike | None = None,
    **build: Any,
) -> dict[str, Any]:
    """A checkpoint from a torchvision VGG state dict (`.pth`, read with `weights_only=True`).

    The configuration (vgg11/13/16/19, with or without BN, or any of ours at any
    width and crop) is detected from the keys and shapes unless `name` is given.
    Preprocessing is torchvision's: 0-1 pixels normalised by ImageNet mean and std.
    """
    path = Path(path)
    return _torchvision_checkpoint(_torch_load(path, what="torchvision state dict"),
                                   f"torchvision state dict {path}", path,
                                   name=name, classes=classes, build=build)


def _torchvision_checkpoint(obj: Any, where: str, path: Path, *, name: str | None, classes: Any,
                            build: Mapping[str, Any]) -> dict[str, Any]:
    _check_build_keys(build)
    state = _state_dict_of(obj, where)
    convs, fcs = _torchvision_shapes(state, where)
    batch_norm = any(k.endswith(".running_mean") for k in state)
    builds = _infer_builds(where, convs, fcs, name=name, build=build, batch_norm=batch_norm)
    chosen = _pick_build(where, builds, set(state))
    state = _check_state(where, chosen, state)
    return _checkpoint(chosen, state, preprocessing=TORCHVISION_PREPROCESSING,
                       classes=_class_names(classes, chosen["num_classes"]),
                       meta={"source": "torchvision", "source_file": str(path)})


def _check_build_keys(build: Mapping[str, Any]) -> None:
    unknown = sorted(set(build) - set(_BUILD_KEYS))
    if unknown:
        raise TypeError(f"unknown build argument(s) {', '.join(unknown)}; expected {', '.join(_BUILD_KEYS)} "
                        f"(num_classes comes from the weights)")


# --------------------------------------------------------------------------- Keras


def _h5_names(group: Any, attr: str) -> list[str] | None:
    """A list-of-strings attribute, also when Keras split a long one into `attr0`, `attr1`, ..."""
    if attr in group.attrs:
        values = list(group.attrs[attr])
    elif f"{attr}0" in group.attrs:
        values, i = [], 0
        while f"{attr}{i}" in group.attrs:
            values += list(group.attrs[f"{attr}{i}"])
            i += 1
    else:
        return None
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _read_keras(path: Path) -> list[tuple[str, list[np.ndarray]]]:
    """(layer name, [weight arrays in Keras order]) of every layer with weights, in the file's order."""
    try:
        import h5py
    except ImportError:
        raise UserError("importing Keras weights needs h5py: pip install 'vggnet[import]'") from None
    if not path.is_file():
        raise CheckpointError(f"Keras weights {path} " + ("is a directory" if path.is_dir() else "does not exist"))
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise CheckpointError(f"{path} is not an HDF5 file (Keras .h5 weights expected): {exc}") from None
    layers = []
    with f:
        root = f
        if "layer_names" not in f.attrs and "model_weights" in f:  # a whole model saved with model.save()
            root = f["model_weights"]
        names = _h5_names(root, "layer_names")
        if names is None:
            raise CheckpointError(f"{path} is an HDF5 file but not a Keras h5 weights file (no 'layer_names' "
                                  f"attribute); save with the Keras 2 h5 format (model.save_weights('w.h5'))")
        for layer in names:
            try:
                group = root[layer]
                weight_names = _h5_names(group, "weight_names") or []
                arrays = [np.asarray(group[w], dtype=np.float32) for w in weight_names]
            except (KeyError, OSError, ValueError) as exc:
                raise CheckpointError(f"Keras weights {path}: layer {layer!r} cannot be read: {exc}") from None
            if arrays:
                layers.append((layer, arrays))
    return layers


def import_keras(
    path: str | os.PathLike,
    *,
    name: str | None = None,
    classes: Sequence[str] | str | os.PathLike | None = None,
    **build: Any,
) -> dict[str, Any]:
    """A checkpoint from Keras VGG16/VGG19 `.h5` weights (`keras.applications` layout, TF kernel order).

    Conv kernels (h, w, in, out) become (out, in, h, w); FC1's rows, which Keras
    orders as the channels-last flatten (h, w, c) of the last conv map, are
    permuted to our (c, h, w) flatten; the first conv's input channels are
    flipped BGR -> RGB, so the model takes RGB with Keras' own 'caffe'
    preprocessing (0-255 pixels minus the ImageNet mean pixel).
    """
    path = Path(path)
    where = f"Keras weights {path}"
    _check_build_keys(build)
    if build.get("batch_norm"):
        raise UserError("Keras VGG weights have no batch normalisation: drop --batch-norm")
    convs, fcs = [], []
    for label, arrays in _read_keras(path):
        if len(arrays) != 2:
            raise CheckpointError(f"{where}: layer {label!r} has {len(arrays)} weight arrays; expected a kernel and "
                                  f"a bias (conv or dense layers only, no batch normalisation)")
        kernel, bias = arrays
        if kernel.ndim == 4:
            if kernel.shape[0] != kernel.shape[1] and kernel.shape[2] == kernel.shape[3]:
                raise CheckpointError(f"{where}: layer {label!r} has a kernel of shape {kernel.shape}, in Theano "
                                      f"order (out, in, h, w); use the TensorFlow-ordered file "
                                      f"('..._tf_dim_ordering_tf_kernels.h5'), kernels (h, w, in, out)")
            weight = torch.from_numpy(kernel).permute(3, 2, 0, 1)  # (h, w, in, out) -> (out, in, h, w)
            convs.append(_Layer(label, weight, torch.from_numpy(bias), tuple(kernel.shape)))
        elif kernel.ndim == 2:
            fcs.append(_Layer(label, torch.from_numpy(kernel).t(), torch.from_numpy(bias), tuple(kernel.shape)))
        else:
            raise CheckpointError(f"{where}: layer {label!r} has a kernel of shape {kernel.shape}; expected a "
                                  f"conv kernel (h, w, in, out) or a dense kernel (in, out)")
    chosen = _infer_builds(where, [(c.label, tuple(c.weight.shape)) for c in convs],
                           [(f.label, tuple(f.weight.shape)) for f in fcs], name=name, build=build)[0]
    grid, channels = chosen["crop_size"] // 32, convs[-1].weight.shape[0]
    fc1 = fcs[0]
    if fc1.weight.shape[1] == grid * grid * channels:  # (out, h*w*c) channels-last -> (out, c*h*w)
        out = fc1.weight.shape[0]
        fc1.weight = fc1.weight.reshape(out, grid, grid, channels).permute(0, 3, 1, 2).reshape(out, -1)
    convs[0].weight = convs[0].weight[:, _BGR_TO_RGB]
    state = _fill_state(where, chosen, convs, fcs)
    return _checkpoint(chosen, state, preprocessing=CAFFE_PREPROCESSING,
                       classes=_class_names(classes, chosen["num_classes"]),
                       meta={"source": "keras", "source_file": str(path)})


# --------------------------------------------------------------------------- Caffe

# Layer types that hold the weights we want: V1's enum values and the new strings.
_CAFFE_CONV, _CAFFE_FC = (4, "Convolution"), (14, "InnerProduct")


def _read_caffe(path: Path) -> list[tuple[str, Any, list[np.ndarray]]]:
    """(layer name, layer type, [blob arrays]) of every layer with blobs, in the file's order."""
    from google.protobuf.message import DecodeError

    from vggnet import caffe_pb

    if not path.is_file():
        raise CheckpointError(f"Caffe model {path} " + ("is a directory" if path.is_dir() else "does not exist"))
    try:
        net = caffe_pb.raw.NetParameter.FromString(path.read_bytes())
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path} cannot be parsed as a Caffe NetParameter (truncated, corrupt, or not a "
                              f".caffemodel): {exc}") from None
    layers = []
    # The new `layer` field, else the deprecated V1 `layers` (the VGG release), whose
    # oldest files wrap a V0 layer holding the name and blobs.
    for layer in list(net.layer) or list(net.layers):
        label, type_, blobs = layer.name, layer.type, list(layer.blobs)
        if not blobs and isinstance(layer, caffe_pb.raw.V1LayerParameter) and layer.HasField("layer"):
            label, type_, blobs = label or layer.layer.name, layer.layer.type, list(layer.layer.blobs)
        if not blobs:
            continue
        try:
            arrays = [caffe_pb.blob_array(b) for b in blobs]
        except ValueError as exc:
            raise CheckpointError(f"Caffe model {path}: layer {label!r}: {exc} (truncated file?)") from None
        layers.append((label, type_, arrays))
    if not layers:
        raise CheckpointError(f"Caffe model {path} holds no layers with weights (a .prototxt has none; the "
                              f"weights are in the .caffemodel)")
    return layers


def import_caffe(
    path: str | os.PathLike,
    *,
    name: str | None = None,
    classes: Sequence[str] | str | os.PathLike | None = None,
    **build: Any,
) -> dict[str, Any]:
    """A checkpoint from a Caffe `.caffemodel`: the original VGG release (`VGG_ILSVRC_16_layers`, `_19_`).

    Reads both the V1 `layers` and the new `layer` form with the minimal schema of
    `vggnet.caffe_pb`. Caffe's layouts are ours (conv (out, in, h, w), FC (out, in)
    over a (c, h, w) flatten); only the first conv's input channels are flipped
    BGR -> RGB, so the model takes RGB with the paper's preprocessing (0-255
    pixels minus the ImageNet mean RGB).
    """
    path = Path(path)
    where = f"Caffe model {path}"
    _check_build_keys(build)
    if build.get("batch_norm"):
        raise UserError("the Caffe VGG models have no batch normalisation: drop --batch-norm")
    convs, fcs = [], []
    for label, type_, arrays in _read_caffe(path):
        if len(arrays) != 2:
            raise CheckpointError(f"{where}: layer {label!r} has {len(arrays)} blobs; expected weights and bias")
        weight, bias = arrays
        bias = bias.reshape(-1)
        leading_ones = next((i for i, d in enumerate(weight.shape) if d != 1), weight.ndim)
        if type_ in _CAFFE_FC or (type_ not in _CAFFE_CONV and weight.ndim - leading_ones <= 2):
            # an inner product (out, in); V1 files store it as (1, 1, out, in)
            if bias.size == 0 or weight.size % bias.size:
                raise CheckpointError(f"{where}: layer {label!r} has weights of shape {weight.shape} and "
                                      f"{bias.size} biases; expected an inner product (out, in) and out biases")
            fcs.append(_Layer(label, torch.from_numpy(weight.reshape(bias.size, -1)), torch.from_numpy(bias),
                              tuple(weight.shape)))
        else:
            if weight.ndim != 4:
                raise CheckpointError(f"{where}: layer {label!r} has weights of shape {weight.shape}; expected a "
                                      f"convolution (out, in, h, w)")
            convs.append(_Layer(label, torch.from_numpy(weight), torch.from_numpy(bias), tuple(weight.shape)))
    chosen = _infer_builds(where, [(c.label, tuple(c.weight.shape)) for c in convs],
                           [(f.label, tuple(f.weight.shape)) for f in fcs], name=name, build=build)[0]
    convs[0].weight = convs[0].weight[:, _BGR_TO_RGB]
    state = _fill_state(where, chosen, convs, fcs)
    return _checkpoint(chosen, state, preprocessing=CAFFE_PREPROCESSING,
                       classes=_class_names(classes, chosen["num_classes"]),
                       meta={"source": "caffe", "source_file": str(path)})


# --------------------------------------------------------------------------- safetensors


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar beside a safetensors file: `vgg16.safetensors` -> `vgg16.json`."""
    return Path(path).with_suffix(".json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def import_safetensors(
    path: str | os.PathLike,
    *,
    classes: Sequence[str] | str | os.PathLike | None = None,
) -> dict[str, Any]:
    """A checkpoint from a safetensors export and its JSON sidecar (`vgg export safetensors`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    where = f"safetensors weights {path}"
    sidecar = sidecar_path(path)
    if not path.is_file():
        raise CheckpointError(f"{where} " + ("is a directory" if path.is_dir() else "does not exist"))
    if not sidecar.is_file():
        raise CheckpointError(f"{where} has no JSON sidecar {sidecar} (build arguments, preprocessing, classes): "
                              f"keep the two files of `vgg export safetensors` together")
    try:
        info = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"sidecar {sidecar} is not valid JSON: {exc}") from None
    if not isinstance(info, dict) or info.get("format") != WEIGHTS_FORMAT:
        raise CheckpointError(f"{sidecar} is not a vggnet weights sidecar (no format={WEIGHTS_FORMAT!r} entry)")
    for key in ("build", "preprocessing", "classes"):
        if key not in info:
            raise CheckpointError(f"sidecar {sidecar} has no {key!r} entry")
    if info.get("sha256") and _sha256(path) != info["sha256"]:
        raise CheckpointError(f"{where} does not match the checksum in {sidecar}: the file is damaged or "
                              f"belongs to another export")
    try:
        state = load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{where} cannot be read (truncated or not safetensors): {exc}") from None
    build = info["build"]
    state = _check_state(where, build, state)
    names = _class_names(classes, int(build["num_classes"])) or info["classes"]
    return _checkpoint(build, state, preprocessing=info["preprocessing"], classes=names,
                       meta={**info.get("meta", {}), "source_file": str(path)})


def export_safetensors(ckpt: Mapping[str, Any] | str | os.PathLike, path: str | os.PathLike) -> tuple[Path, Path]:
    """Write the released-weights form: `path` (safetensors) and its JSON sidecar (build, preprocessing,
    classes, meta, sha256). Returns both paths."""
    from safetensors.torch import save

    ckpt = _as_checkpoint(ckpt)
    path = Path(path)
    if path.suffix != ".safetensors":
        raise UserError(f"--out {path}: a safetensors export needs the .safetensors suffix "
                        f"(the sidecar is written beside it as {sidecar_path(path).name})")
    state = {k: v.contiguous() for k, v in ckpt["state_dict"].items()}
    header = {"format": "pt", "vggnet": json.dumps(ckpt["build"])}
    atomic_write(path, lambda f: f.write(save(state, metadata=header)))
    info = {"format": WEIGHTS_FORMAT, "version": VERSION, "weights": path.name, "sha256": _sha256(path),
            "build": ckpt["build"], "preprocessing": ckpt["preprocessing"], "classes": ckpt["classes"],
            "meta": _jsonable(ckpt.get("meta", {}))}
    sidecar = sidecar_path(path)
    atomic_write(sidecar, lambda f: f.write((json.dumps(info, indent=1) + "\n").encode("utf-8")))
    return path, sidecar


def _jsonable(value: Any) -> Any:
    """`value` with whatever JSON cannot hold (tensors, ...) turned into strings."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


# --------------------------------------------------------------------------- any weights file


def import_weights(
    format: str,
    path: str | os.PathLike,
    *,
    name: str | None = None,
    classes: Sequence[str] | str | os.PathLike | None = None,
    **build: Any,
) -> dict[str, Any]:
    """A checkpoint from a file in one of `IMPORT_FORMATS` ('torchvision', 'keras', 'caffe', 'safetensors')."""
    if format == "torchvision":
        return import_torchvision(path, name=name, classes=classes, **build)
    if format == "keras":
        return import_keras(path, name=name, classes=classes, **build)
    if format == "caffe":
        return import_caffe(path, name=name, classes=classes, **build)
    if format == "safetensors":
        return import_safetensors(path, classes=classes)
    raise UserError(f"unknown import format {format!r}; expected one of {', '.join(IMPORT_FORMATS)}")


def load_weights(path: str | os.PathLike, *, name: str | None = None, **build: Any) -> dict[str, Any]:
    """A checkpoint from any weights file vggnet reads, told apart by suffix and content.

    `.safetensors` (with its sidecar), Keras `.h5`/`.hdf5`, Caffe `.caffemodel`,
    else a torch file: a vggnet checkpoint, or a (torchvision) state dict.
    `name` and `build` guide the detection of foreign formats only.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return import_safetensors(path)
    if suffix in (".h5", ".hdf5"):
        return import_keras(path, name=name, **build)
    if suffix == ".caffemodel":
        return import_caffe(path, name=name, **build)
    obj = _torch_load(path, what="weights file")
    if _is_checkpoint(obj):
        return _check_checkpoint(obj, path)
    return _torchvision_checkpoint(obj, f"weights file {path}", path, name=name, classes=None, build=build)


def _as_checkpoint(ckpt: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    if isinstance(ckpt, Mapping):
        return dict(ckpt)
    return load_weights(ckpt)


# --------------------------------------------------------------------------- torchvision export

# The torchvision builders that exist, by our configuration letters.
_TORCHVISION_NAMES = {"A": "vgg11", "B": "vgg13", "D": "vgg16", "E": "vgg19"}


def torchvision_name(build: Mapping[str, Any]) -> str:
    """The torchvision builder (`vgg16_bn`, ...) that takes this net's state dict; UserError if none does."""
    problems = []
    if build["name"] not in _TORCHVISION_NAMES:
        problems.append(f"configuration {build['name']} (torchvision has A, B, D, E)")
    if float(build["width"]) != 1.0:
        problems.append(f"width={build['width']:g} (torchvision: 1)")
    if int(build["fc_width"]) != 4096:
        problems.append(f"fc_width={build['fc_width']} (torchvision: 4096)")
    if int(build["crop_size"]) != 224:
        problems.append(f"crop_size={build['crop_size']} (torchvision's FC1 sees a 7x7 map: 224)")
    if problems:
        raise UserError(f"no torchvision model has this net's weights: {'; '.join(problems)}; export to "
                        f"safetensors or ONNX instead")
    return _TORCHVISION_NAMES[build["name"]] + ("_bn" if build.get("batch_norm") else "")


def export_torchvision(ckpt: Mapping[str, Any] | str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write a plain state dict that `torchvision.models.vggNN(num_classes=...)` loads with strict=True.

    The file holds no preprocessing: the model expects the checkpoint's (see
    `ckpt['preprocessing']`), which is torchvision's own only for weights that
    came from torchvision.
    """
    ckpt = _as_checkpoint(ckpt)
    torchvision_name(ckpt["build"])
    state = {k: v.contiguous() for k, v in ckpt["state_dict"].items()}
    return atomic_write(path, lambda f: torch.save(state, f))


# --------------------------------------------------------------------------- ONNX


class _Crop(torch.nn.Module):
    """The classifier on crops of crop_size: (N, 3, crop, crop) -> logits (N, classes)."""

    def __init__(self, model: VGG) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _Dense(torch.nn.Module):
    """The fully-convolutional net of §3.2: (N, 3, H, W) -> class-score map (N, classes, H', W')."""

    def __init__(self, model: VGG) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.dense(x)


def export_onnx(
    ckpt: Mapping[str, Any] | str | os.PathLike,
    path: str | os.PathLike,
    *,
    dense: bool = False,
    opset: int = 18,
    dynamo: bool = False,
) -> Path:
    """Write the net as ONNX: the crop classifier (input 'image' (N, 3, crop, crop) -> 'logits'), or with
    `dense` the fully-convolutional form (input 'image' (N, 3, H, W), H and W dynamic, >= crop_size ->
    'scores' (N, classes, H', W')).

    The exporter is the TorchScript-based one (`dynamo=False`): for this net it
    exports in well under a second, where torch 2.14's `torch.export`-based
    exporter (`dynamo=True`, also supported) spends several seconds tracing.
    Preprocessing, class names and build arguments go into the model's
    metadata_props as JSON (keys 'vggnet.preprocessing', 'vggnet.classes', 'vggnet.build').
    """
    import onnx

    ckpt = _as_checkpoint(ckpt)
    model, _ = model_from_checkpoint(ckpt)
    model.eval()
    crop = model.crop_size
    wrapper = (_Dense if dense else _Crop)(model).eval()
    output = "scores" if dense else "logits"
    example = (torch.randn(2, 3, crop, crop),)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.onnx", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            # Our own input checks are Python conditions on shapes: the tracer warns that it keeps them
            # out of the graph, which is what we want; and the legacy exporter announces its deprecation.
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            if dynamo:
                batch = torch.export.Dim("batch", min=1, max=65536)
                shapes: dict[int, Any] = {0: batch}
                if dense:
                    shapes.update({2: torch.export.Dim("height", min=crop, max=65536),
                                   3: torch.export.Dim("width", min=crop, max=65536)})
                torch.onnx.export(wrapper, example, tmp, dynamo=True, external_data=False, opset_version=opset,
                                  verbose=False, input_names=["image"], output_names=[output],
                                  dynamic_shapes={"x": shapes})
            else:
                axes = {"image": {0: "batch"}, output: {0: "batch"}}
                if dense:
                    axes = {"image": {0: "batch", 2: "height", 3: "width"},
                            output: {0: "batch", 2: "rows", 3: "columns"}}
                torch.onnx.export(wrapper, example, tmp, dynamo=False, opset_version=opset,
                                  input_names=["image"], output_names=[output], dynamic_axes=axes)
        proto = onnx.load(tmp)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    proto.doc_string = (f"vggnet VGG {_describe(ckpt['build'])}, "
                        + ("dense (fully-convolutional) class-score map" if dense else "crop classifier")
                        + "; input: RGB, (rgb01 * pixel_scale - mean) / std, see vggnet.preprocessing")
    for key, value in (("vggnet.form", "dense" if dense else "crop"),
                       ("vggnet.build", json.dumps(ckpt["build"])),
                       ("vggnet.preprocessing", json.dumps(ckpt["preprocessing"])),
                       ("vggnet.classes", json.dumps(ckpt["classes"]))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return atomic_write(path, lambda f: f.write(proto.SerializeToString()))


def check_onnx(
    path: str | os.PathLike,
    ckpt: Mapping[str, Any] | str | os.PathLike,
    *,
    sizes: Sequence[tuple[int, int]] | None = None,
    rtol: float = 1e-4,
) -> dict[tuple[int, int], float]:
    """Run an exported ONNX file with onnxruntime and compare with PyTorch on random images.

    `sizes` default to (crop, crop) and, for the dense form, a larger non-square
    size that is not a multiple of 32. Equal means |onnx - torch| <= rtol * (|torch| + max|torch|)
    elementwise. Returns the largest absolute difference per size; RuntimeError if any is too large.
    """
    import onnx
    import onnxruntime

    ckpt = _as_checkpoint(ckpt)
    model, _ = model_from_checkpoint(ckpt)
    model.eval()
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    dense = meta.get("vggnet.form") == "dense"
    crop = model.crop_size
    if sizes is None:
        sizes = [(crop, crop), (crop + 40, crop + 72)] if dense else [(crop, crop)]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    generator = torch.Generator().manual_seed(0)
    report = {}
    for h, w in sizes:
        x = torch.randn(2, 3, h, w, generator=generator)
        with torch.no_grad():
            ref = (model.dense(x) if dense else model(x)).numpy()
        got = session.run(None, {input_name: x.numpy()})[0]
        if got.shape != ref.shape:
            raise RuntimeError(f"ONNX {path} at {h}x{w}: output shape {got.shape}, PyTorch {ref.shape}")
        diff = np.abs(got - ref)
        report[(h, w)] = float(diff.max())
        if (diff > rtol * (np.abs(ref) + np.abs(ref).max())).any():
            raise RuntimeError(f"ONNX {path} at {h}x{w}: onnxruntime differs from PyTorch by up to "
                               f"{diff.max():.3g} (largest score {np.abs(ref).max():.3g}, rtol {rtol})")
    return report


# --------------------------------------------------------------------------- vgg import / vgg export


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Convert foreign VGG weights into a vggnet checkpoint. The configuration, width, crop "
                          "and class count are read off the weights' shapes; every layer is checked.")
    parser.add_argument("format", choices=IMPORT_FORMATS,
                        help="torchvision .pth state dict, Keras .h5 (VGG16/19), Caffe .caffemodel, or a "
                             "vggnet safetensors export (with its .json sidecar)")
    parser.add_argument("file", help="the weights file")
    parser.add_argument("--out", required=True, metavar="CKPT", help="checkpoint to write (.pt)")
    parser.add_argument("--classes", metavar="FILE", help="class names, one per line (default: 0 .. N-1)")
    g = parser.add_argument_group("model (default: detected from the weights)")
    g.add_argument("--model", metavar="NAME", help=f"configuration: {', '.join(NAMES)} (A-LRN has A's weights: "
                                                   f"name it to get it)")
    g.add_argument("--width", type=float, help="conv channel multiplier")
    g.add_argument("--fc-width", type=int, help="hidden FC width")
    g.add_argument("--crop-size", type=int, help="training crop, a multiple of 32")
    g.add_argument("--dropout", type=float, help="dropout after FC1 and FC2 (default: 0.5)")


def run_import(args: argparse.Namespace) -> int:
    build = {"width": args.width, "fc_width": args.fc_width, "crop_size": args.crop_size, "dropout": args.dropout}
    if args.format == "safetensors":
        given = [f"--{k.replace('_', '-')}" for k, v in build.items() if v is not None] + (
            ["--model"] if args.model else [])
        if given:
            raise UserError(f"{', '.join(given)}: a safetensors export carries its build arguments; drop them")
        ckpt = import_safetensors(args.file, classes=args.classes)
    else:
        ckpt = import_weights(args.format, args.file, name=args.model, classes=args.classes, **build)
    out = save_checkpoint(args.out, ckpt)
    b, p = ckpt["build"], ckpt["preprocessing"]
    print(f"imported {args.format} {args.file}: {_describe(b)}")
    print(f"preprocessing: pixel_scale={p['pixel_scale']:g} mean={p['mean']} std={p['std']} (RGB)")
    print(f"wrote {out}")
    return 0


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Export a checkpoint: safetensors + JSON sidecar (released weights), a torchvision "
                          "state dict, or ONNX (crop classifier, or with --dense the fully-convolutional net).")
    parser.add_argument("format", choices=EXPORT_FORMATS, help="what to write")
    parser.add_argument("checkpoint", help="a vggnet checkpoint (or any weights file `vgg import` reads)")
    parser.add_argument("--out", required=True, metavar="PATH", help="file to write")
    g = parser.add_argument_group("ONNX")
    g.add_argument("--dense", action="store_true",
                   help="export model.dense: whole images of any size >= crop_size -> class-score map")
    g.add_argument("--opset", type=int, default=18, help="ONNX opset (default: %(default)s)")
    g.add_argument("--dynamo", action="store_true", help="use the torch.export-based exporter (slower here)")
    g.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison with PyTorch")


def run_export(args: argparse.Namespace) -> int:
    ckpt = load_weights(args.checkpoint)
    if args.format != "onnx" and (args.dense or args.dynamo):
        raise UserError(f"--dense and --dynamo apply to ONNX exports only, not {args.format}")
    if args.format == "safetensors":
        weights, sidecar = export_safetensors(ckpt, args.out)
        print(f"wrote {weights} and {sidecar}")
        return 0
    if args.format == "torchvision":
        out = export_torchvision(ckpt, args.out)
        p = ckpt["preprocessing"]
        print(f"wrote {out}: loads into torchvision.models.{torchvision_name(ckpt['build'])}"
              f"(num_classes={ckpt['build']['num_classes']}); the model expects inputs "
              f"(rgb01 * {p['pixel_scale']:g} - {p['mean']}) / {p['std']}")
        return 0
    out = export_onnx(ckpt, args.out, dense=args.dense, opset=args.opset, dynamo=args.dynamo)
    print(f"wrote {out} ({'dense, dynamic height and width' if args.dense else 'crop classifier'})")
    if args.no_check:
        return 0
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("onnxruntime is not installed: not checked (pip install 'vggnet[export]')")
        return 0
    try:
        report = check_onnx(out, ckpt)
    except RuntimeError as exc:
        print(f"vgg export: check failed: {exc}", file=sys.stderr)
        return 1
    sizes = ", ".join(f"{h}x{w}: {d:.2g}" for (h, w), d in report.items())
    print(f"onnxruntime matches PyTorch (max |difference| {sizes})")
    return 0
