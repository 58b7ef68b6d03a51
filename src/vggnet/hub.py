"""`create_model`: a VGG net, optionally with pretrained weights, ready to fine-tune.

The entry point for users who bring weights — a vggnet checkpoint, a safetensors
export or a torchvision `.pth` — and a task of their own: the last FC layer is
replaced when the class count differs (the new one initialised as in the paper,
N(0, 0.01^2) weights and zero biases, §3.1), and the conv stack can be frozen to
train the classifier only (the "fine-tune only the FC layers" variant of
Appendix A). `hubconf.py` at the repository root exposes the same through
`torch.hub.load(..., source="local")`.

    >>> model = create_model("vgg16", pretrained="vgg16.pt", num_classes=20, freeze_features=True)
    >>> model.pretrained_cfg["input_size"], model.pretrained_cfg["crop_pct"]  # timm's names: [3, 224, 224], 0.875
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from vggnet.errors import UserError
from vggnet.models import VGG, resolve_name, vgg
from vggnet.checkpoint import model_from_checkpoint
from vggnet.data.transforms import deployment_config
from vggnet.interop import load_weights

__all__ = ["create_model", "replace_classifier_head", "freeze_conv_layers"]


def create_model(
    name: str,
    pretrained: str | os.PathLike | bool | None = None,
    num_classes: int | None = None,
    freeze_features: bool = False,
    **build: Any,
) -> VGG:
    """Configuration `name` of Table 1, from scratch or from the weights in `pretrained`.

    `build` holds `vgg()`'s keyword arguments (`width`, `crop_size`, `fc_width`,
    `dropout`, `batch_norm`). With `pretrained`, the architecture is the one the
    weights were trained with: a build argument that contradicts them is an error
    (except `dropout`, which has no weights), and `name` must be their
    configuration. When `num_classes` differs from the weights' class count, the
    last FC layer is replaced by a new one, N(0, 0.01^2) weights, zero biases.
    `freeze_features` stops gradients to the conv stack (BatchNorm statistics, if
    any, still update in train mode: call `model.features.eval()` to fix them).

    A pretrained model carries `model.pretrained_cfg`: timm's fields for its evaluation input
    (`input_size`, `crop_pct`, `interpolation`, `mean`, `std` on the [0, 1] scale, `num_classes`,
    `label_names`, ...), the source file, our `preprocessing` record and its class names
    (`None` for a new head).
    """
    try:
        letter = resolve_name(name)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if pretrained is True:
        # timm's and torchvision's habit: pretrained=True downloads. Nothing is downloaded here.
        raise UserError(
            f"create_model({name!r}, pretrained=True): vggnet downloads no weights; pass the path of a weights "
            f"file. Bring the published ones in once with `vgg import` (e.g. torchvision's vgg16-397923af.pth: "
            f"`vgg import torchvision vgg16-397923af.pth --output vgg16.pt`), then pretrained='vgg16.pt'; a vggnet "
            f"checkpoint, a safetensors export or a torchvision .pth is read as it is")
    if pretrained is False:
        pretrained = None
    if pretrained is not None and not isinstance(pretrained, (str, os.PathLike)):
        raise UserError(f"create_model: pretrained must be the path of a weights file (or None), got "
                        f"{type(pretrained).__name__}")
    if pretrained is None:
        try:
            model = vgg(letter, 1000 if num_classes is None else num_classes, **build)
        except (TypeError, ValueError) as exc:
            raise UserError(f"create_model({name!r}): {exc}") from None
    else:
        shape_args = {k: v for k, v in build.items() if k not in ("dropout", "batch_norm")}
        # the configuration and batch norm are read off the weights, then compared with what was asked
        ckpt = load_weights(pretrained, **shape_args)
        if {ckpt["build"]["name"], letter} == {"A", "A-LRN"}:  # the same weights: a Keras/Caffe file can be either
            ckpt = load_weights(pretrained, name=letter, **shape_args)
        have = ckpt["build"]
        if have["name"] != letter:
            raise UserError(f"pretrained={pretrained} holds configuration {have['name']}, not {letter} "
                            f"(asked for {name!r})")
        if "batch_norm" in build and bool(build["batch_norm"]) != bool(have.get("batch_norm")):
            raise UserError(f"pretrained={pretrained} holds {_variant(letter, bool(have.get('batch_norm')))} "
                            f"weights ({'with' if have.get('batch_norm') else 'without'} batch norm), not "
                            f"{_variant(letter, bool(build['batch_norm']))}: load them with "
                            f"{_variant(letter, bool(have.get('batch_norm')))}")
        for key, value in shape_args.items():
            if key not in have:
                raise UserError(f"create_model: unknown build argument {key!r}")
            if value != have[key]:
                raise UserError(f"create_model: {key}={value!r} contradicts pretrained={pretrained}, which was "
                                f"built with {key}={have[key]!r}; leave it out")
        if "dropout" in build:
            ckpt = {**ckpt, "build": {**have, "dropout": build["dropout"]}}
        model, ckpt = model_from_checkpoint(ckpt)
        classes: list[str] | None = list(ckpt["classes"])
        if num_classes is not None and num_classes != model.num_classes:
            replace_classifier_head(model, num_classes)
            classes = None
        # timm's field names (input_size, crop_pct, interpolation, mean, std, num_classes, label_names, ...)
        # for the centre-crop evaluation, beside our own preprocessing record
        model.pretrained_cfg = {**deployment_config(model.build_args, ckpt["preprocessing"], classes),
                                "file": str(pretrained), "preprocessing": dict(ckpt["preprocessing"]),
                                "classes": classes, "meta": dict(ckpt.get("meta", {}))}
    if freeze_features:
        freeze_conv_layers(model)
    return model


def _variant(letter: str, batch_norm: bool) -> str:
    """The hub entry point's name: vgg16, vgg16_bn, or the paper's letter (C_bn) where torchvision has none."""
    base = {"A": "vgg11", "B": "vgg13", "D": "vgg16", "E": "vgg19"}.get(letter, letter)
    return base + ("_bn" if batch_norm else "")


def replace_classifier_head(model: VGG, num_classes: int) -> nn.Linear:
    """Put a new last FC layer (FC-`num_classes`) on `model`, N(0, 0.01^2) weights and zero biases (§3.1)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    old = model.classifier[-1]
    head = nn.Linear(old.in_features, num_classes, device=old.weight.device, dtype=old.weight.dtype)
    nn.init.normal_(head.weight, 0.0, 0.01)
    nn.init.zeros_(head.bias)
    model.classifier[-1] = head
    model.build_args["num_classes"] = num_classes  # so that checkpoints rebuild the new net
    return head


def freeze_conv_layers(model: VGG) -> None:
    """Stop gradients to the conv stack: only the FC layers train."""
    for p in model.features.parameters():
        p.requires_grad_(False)
