"""torchvision VGG state dicts in (`.pth`: vgg11/13/16/19, with or without BN, or any of ours) and out.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from vggnet.checkpoint import TORCHVISION_PREPROCESSING, atomic_write, checkpoint_from_state, torch_load
from vggnet.errors import CheckpointError, UserError
from vggnet.interop.common import as_checkpoint, check_build_keys, check_state, class_names, infer_builds, pick_build

__all__ = ["import_torchvision", "export_torchvision", "torchvision_name", "state_dict_of"]


def state_dict_of(obj: Any, where: str) -> dict[str, torch.Tensor]:
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
    return torchvision_checkpoint(torch_load(path, what="torchvision state dict"),
                                   f"torchvision state dict {path}", path,
                                   name=name, classes=classes, build=build)


def torchvision_checkpoint(obj: Any, where: str, path: Path, *, name: str | None, classes: Any,
                            build: Mapping[str, Any]) -> dict[str, Any]:
    check_build_keys(build)
    state = state_dict_of(obj, where)
    convs, fcs = _torchvision_shapes(state, where)
    batch_norm = any(k.endswith(".running_mean") for k in state)
    builds = infer_builds(where, convs, fcs, name=name, build=build, batch_norm=batch_norm)
    chosen = pick_build(where, builds, set(state))
    state = check_state(where, chosen, state)
    return checkpoint_from_state(chosen, state, preprocessing=TORCHVISION_PREPROCESSING,
                                 classes=class_names(classes, chosen["num_classes"]),
                                 meta={"source": "torchvision", "source_file": str(path)})



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
    ckpt = as_checkpoint(ckpt)
    torchvision_name(ckpt["build"])
    state = {k: v.contiguous() for k, v in ckpt["state_dict"].items()}
    return atomic_write(path, lambda f: torch.save(state, f))

