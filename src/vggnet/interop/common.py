"""What every importer shares: build arguments read off weight shapes, and state dicts checked
layer by layer against `vgg(**build)`.

Every importer turns a file into the same two things — the build arguments of
the net it holds (inferred from the shapes, or given) and a state dict in our
(= torchvision's) layout — and names the layer that does not fit.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from vggnet.checkpoint import load_checkpoint
from vggnet.errors import CheckpointError, UserError
from vggnet.models import CONFIGS, NAMES, VGG, resolve_name, vgg

# Build arguments an importer can be told instead of inferring them.
BUILD_KEYS = ("width", "crop_size", "fc_width", "dropout", "batch_norm")
_CONV_SPEC = re.compile(r"conv(\d+)-(\d+)$")
# Stage numbers in layer names: Keras `block3_conv2`, Caffe `conv3_2`.
_STAGE_IN_NAME = re.compile(r"^(?:block(\d+)_conv\d+|conv(\d+)_\d+)$")
BGR_TO_RGB = [2, 1, 0]


@dataclass
class Layer:
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
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"--classes {path}: class names must be distinct; repeated: {', '.join(repeated[:5])}")
    return names


# A line of ILSVRC's synset file (Caffe's `synset_words.txt`): a WordNet id, then the words.
_SYNSET_LINE = re.compile(r"^(n\d{8})(?:\s+(.*))?$")


def read_class_file(path: str | os.PathLike) -> tuple[list[str], list[str] | None]:
    """Class names and, for ILSVRC synset files, their descriptions.

    Three forms: one name per line; ILSVRC's synset lines `n01440764 tench, Tinca tinca`
    (-> the WordNet ids, which name ImageNet's class folders and its devkit labels, and
    the words as descriptions); Keras' `imagenet_class_index.json`
    (`{"0": ["n01440764", "tench"], ...}`, same result).
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        import json

        try:
            index = json.loads(path.read_text(encoding="utf-8"))
            pairs = [index[str(i)] for i in range(len(index))]
            if not all(isinstance(p, list) and len(p) == 2 for p in pairs):
                raise ValueError("expected [wnid, name] pairs")
        except FileNotFoundError:
            raise UserError(f"--classes {path}: no such file") from None
        except (OSError, UnicodeDecodeError, ValueError, KeyError) as exc:
            raise UserError(f"--classes {path}: not a class index {{\"0\": [\"n01440764\", \"tench\"], ...}} "
                            f"({type(exc).__name__}: {exc})") from None
        return [str(w) for w, _ in pairs], [str(n) for _, n in pairs]
    names = read_classes(path)
    matches = [_SYNSET_LINE.match(n) for n in names]
    if all(m is not None for m in matches) and any(m.group(2) for m in matches):
        return [m.group(1) for m in matches], [(m.group(2) or "").strip() for m in matches]
    return names, None


def class_names(classes: Sequence[str] | str | os.PathLike | None, num_classes: int) -> list[str] | None:
    if classes is None:
        return None
    if isinstance(classes, (str, os.PathLike)):
        names, where = read_class_file(classes)[0], f"--classes {classes}"
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


def describe_build(build: Mapping[str, Any]) -> str:
    return (f"configuration {build['name']} (width={build['width']:g}, crop_size={build['crop_size']}, "
            f"fc_width={build['fc_width']}, num_classes={build['num_classes']}"
            + (", batch_norm=True)" if build.get("batch_norm") else ")"))


def infer_builds(
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


def meta_model(where: str, build: Mapping[str, Any]) -> VGG:
    """`vgg(**build)` on the meta device: the shapes and names, no memory, no initialisation."""
    try:
        with torch.device("meta"):
            return vgg(**build)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: cannot build {dict(build)}: {exc}") from None


def fill_state(where: str, build: Mapping[str, Any], convs: Sequence[Layer], fcs: Sequence[Layer]
                ) -> dict[str, torch.Tensor]:
    """Our state dict from the file's conv and FC layers, in order; every shape checked, the layer named."""
    model = meta_model(where, build)
    conv_keys = [f"features.{i}" for i, m in enumerate(model.features) if isinstance(m, torch.nn.Conv2d)]
    fc_keys = [f"classifier.{i}" for i, m in enumerate(model.classifier) if isinstance(m, torch.nn.Linear)]
    if len(convs) != len(conv_keys):
        raise CheckpointError(f"{where}: {len(convs)} conv layers, but {describe_build(build)} has "
                              f"{len(conv_keys)}")
    expected = model.state_dict()
    values: dict[str, torch.Tensor] = {}
    for key, layer in zip(conv_keys + fc_keys, list(convs) + list(fcs)):
        for part, tensor in (("weight", layer.weight), ("bias", layer.bias)):
            want = tuple(expected[f"{key}.{part}"].shape)
            if tuple(tensor.shape) != want:
                stored = f" (stored as {layer.stored})" if part == "weight" and layer.stored != tuple(
                    tensor.shape) else ""
                raise CheckpointError(f"{where}: layer {layer.label!r} does not fit {describe_build(build)}: "
                                      f"its {part} is {tuple(tensor.shape)}{stored}, expected {want} as "
                                      f"{key}.{part}")
            values[f"{key}.{part}"] = tensor.detach().to(torch.float32).contiguous()
    return {k: values[k] for k in expected}  # the model's key order


def check_state(where: str, build: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` checked key by key and shape by shape against `vgg(**build)`; floats as float32."""
    expected = meta_model(where, build).state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
        parts = ([f"missing {few(missing)}"] if missing else []) + (
            [f"unexpected {few(unexpected)}"] if unexpected else [])
        raise CheckpointError(f"{where} does not match {describe_build(build)}: {'; '.join(parts)}")
    out = {}
    for key, want in expected.items():
        tensor = state[key]
        if tuple(tensor.shape) != tuple(want.shape):
            raise CheckpointError(f"{where}: layer {key!r} has shape {tuple(tensor.shape)}, "
                                  f"{describe_build(build)} expects {tuple(want.shape)}")
        out[key] = tensor.detach().to(torch.float32).contiguous() if tensor.is_floating_point() else tensor
    return out


def pick_build(where: str, builds: list[dict[str, Any]], keys: set[str]) -> dict[str, Any]:
    """The first candidate whose state-dict keys are exactly `keys` (A vs A-LRN), else the first."""
    for build in builds:
        if set(meta_model(where, build).state_dict()) == keys:
            return build
    return builds[0]


def check_build_keys(build: Mapping[str, Any]) -> None:
    unknown = sorted(set(build) - set(BUILD_KEYS))
    if unknown:
        raise TypeError(f"unknown build argument(s) {', '.join(unknown)}; expected {', '.join(BUILD_KEYS)} "
                        f"(num_classes comes from the weights)")



def as_checkpoint(ckpt: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """A checkpoint dict, or the vggnet checkpoint at a path (foreign files: `vggnet.interop.load_weights`)."""
    if isinstance(ckpt, Mapping):
        return dict(ckpt)
    return load_checkpoint(ckpt)
