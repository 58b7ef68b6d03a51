"""Weights in and out of other frameworks (`vgg import`, `vgg export`), one module per format.

Import: torchvision `.pth` state dicts, Keras VGG16/VGG19 `.h5` weights and the
original Caffe release of the paper's nets D and E (`.caffemodel`) become
checkpoints (`vggnet.checkpoint`). The net's configuration, width, crop and
class count are read off the shapes, every tensor is checked against
`vgg(**build)`, and BGR inputs (Keras, Caffe) are turned into RGB by flipping
the first conv's input channels, so every checkpoint takes RGB.

Export: safetensors + a JSON sidecar (the released-weights form), a torchvision
state dict, and ONNX. See docs/interop.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from vggnet.checkpoint import check_checkpoint, is_checkpoint, torch_load
from vggnet.errors import UserError
from vggnet.interop._common import read_classes
from vggnet.interop.caffe import import_caffe
from vggnet.interop.keras import import_keras
from vggnet.interop.onnx import check_onnx, export_onnx
from vggnet.interop.safetensors import export_safetensors, import_safetensors, sidecar_path
from vggnet.interop.torchvision import export_torchvision, import_torchvision, torchvision_checkpoint, torchvision_name

__all__ = [
    "IMPORT_FORMATS", "EXPORT_FORMATS", "import_weights", "load_weights", "read_classes",
    "import_torchvision", "import_keras", "import_caffe", "import_safetensors", "sidecar_path",
    "export_safetensors", "export_torchvision", "torchvision_name", "export_onnx", "check_onnx",
]

IMPORT_FORMATS = ("torchvision", "keras", "caffe", "safetensors")
EXPORT_FORMATS = ("safetensors", "torchvision", "onnx")


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
    obj = torch_load(path, what="weights file")
    if is_checkpoint(obj):
        return check_checkpoint(obj, path)
    return torchvision_checkpoint(obj, f"weights file {path}", path, name=name, classes=None, build=build)

