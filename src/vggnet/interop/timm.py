"""timm's VGG state dicts in (`timm.models.vgg`: vgg11/13/16/19, with or without BN).

timm keeps the paper's fully-convolutional head (§3.2) in its weights: FC1 is a
conv over the last conv map (`pre_logits.fc1`, (4096, 512, 7, 7)), FC2 a 1x1 conv
(`pre_logits.fc2`, (4096, 4096, 1, 1)), FC3 a Linear (`head.fc`). The conv stack
(`features.N`) is torchvision's. We hold the same numbers in torchvision's Linear
layout and view them as kernels in `VGG.dense`, so the import is a reshape:

| timm | shape | ours (torchvision's) | shape |
|---|---|---|---|
| `features.N.*` | as is | `features.N.*` | as is |
| `pre_logits.fc1.weight` | (O, C, k, k) | `classifier.0.weight` | (O, C*k*k), the (c, h, w) flatten |
| `pre_logits.fc1.bias` | (O,) | `classifier.0.bias` | (O,) |
| `pre_logits.fc2.weight` | (O, I, 1, 1) | `classifier.3.weight` | (O, I) |
| `pre_logits.fc2.bias` | (O,) | `classifier.3.bias` | (O,) |
| `head.fc.weight` / `.bias` | (classes, I) / (classes,) | `classifier.6.weight` / `.bias` | the same |

timm's preprocessing for these weights is ImageNet's mean and std on 0-1 pixels
(torchvision's), evaluated at crop_pct 0.875 (`vgg eval --method center`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from vggnet.checkpoint import torch_load
from vggnet.errors import CheckpointError
from vggnet.interop.torchvision import state_dict_of, torchvision_checkpoint

__all__ = ["TIMM_KEYS", "is_timm_state", "timm_to_torchvision", "import_timm"]

# timm's name -> ours, for the head (the conv stack's names are the same)
TIMM_KEYS = {
    "pre_logits.fc1.weight": "classifier.0.weight", "pre_logits.fc1.bias": "classifier.0.bias",
    "pre_logits.fc2.weight": "classifier.3.weight", "pre_logits.fc2.bias": "classifier.3.bias",
    "head.fc.weight": "classifier.6.weight", "head.fc.bias": "classifier.6.bias",
}


def is_timm_state(state: Mapping[str, Any]) -> bool:
    """True for a state dict in timm's VGG layout (its head is `pre_logits` + `head.fc`)."""
    return "pre_logits.fc1.weight" in state or "head.fc.weight" in state


def timm_to_torchvision(state: Mapping[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """timm's VGG state dict in torchvision's layout: the conv-shaped FC weights flattened (a view)."""
    missing = [k for k in TIMM_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{where}: a timm VGG state dict has {', '.join(TIMM_KEYS)}; missing "
                              f"{', '.join(missing)}")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in TIMM_KEYS:
            ours = TIMM_KEYS[key]
            if key.endswith(".weight") and key.startswith("pre_logits."):
                if value.dim() != 4:
                    raise CheckpointError(f"{where}: layer {key!r} has shape {tuple(value.shape)}; timm stores it "
                                          f"as a conv kernel (out, in, k, k)")
                value = value.reshape(value.shape[0], -1)  # (O, C, k, k) -> (O, C*k*k): our (c, h, w) flatten
            out[ours] = value
        elif key.startswith("features."):
            out[key] = value
        else:
            raise CheckpointError(f"{where}: unexpected key {key!r} for timm's VGG (features.N, pre_logits.fc1/fc2, "
                                  f"head.fc)")
    return out


def import_timm(
    path: str | os.PathLike,
    *,
    name: str | None = None,
    classes: Sequence[str] | str | os.PathLike | None = None,
    **build: Any,
) -> dict[str, Any]:
    """A checkpoint from a timm VGG state dict (`.pth`/`.bin`, read with `weights_only=True`).

    The configuration, width, crop (FC1's kernel: 7 -> 224) and class count are read
    off the shapes as for torchvision's files; preprocessing is ImageNet's mean/std.
    (timm's `model.safetensors`: `vggnet.interop.import_weights("timm", path)`.)
    """
    path = Path(path)
    return timm_checkpoint(torch_load(path, what="timm state dict"), path, name=name, classes=classes,
                           build=build)


def timm_checkpoint(obj: Any, path: Path, *, name: str | None, classes: Any,
                    build: Mapping[str, Any]) -> dict[str, Any]:
    where = f"timm state dict {path}"
    state = timm_to_torchvision(state_dict_of(obj, where), where)
    ckpt = torchvision_checkpoint(state, where, path, name=name, classes=classes, build=build)
    ckpt["meta"]["source"] = "timm"
    return ckpt
