"""Weights in and out of other frameworks (`vgg import`, `vgg export`), one module per format.

Import: torchvision `.pth` state dicts, timm's VGG state dicts (FC1/FC2 stored as
convolutions), Keras VGG16/VGG19 `.h5` weights (Keras 2's h5 and Keras 3's `.weights.h5`) and the
original Caffe release of the paper's nets D and E (`.caffemodel`) become
checkpoints (`vggnet.checkpoint`). The net's configuration, width, crop and
class count are read off the shapes, every tensor is checked against
`vgg(**build)`, and BGR inputs (Keras, Caffe) are turned into RGB by flipping
the first conv's input channels, so every checkpoint takes RGB.

Export: safetensors with build arguments, preprocessing and class names in its
header metadata (the released-weights form; a JSON sidecar too), a torchvision
state dict, and ONNX. `detect_format` tells the import formats apart by content.
See docs/interop.md.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from vggnet.errors import CheckpointError, UserError
from vggnet.lazy import lazy_attributes

if TYPE_CHECKING:
    from vggnet.interop.caffe import import_caffe
    from vggnet.interop.common import read_classes
    from vggnet.interop.keras import import_keras
    from vggnet.interop.onnx import check_onnx, export_onnx
    from vggnet.interop.safetensors import export_safetensors, import_safetensors, sidecar_path
    from vggnet.interop.timm import import_timm
    from vggnet.interop.torchvision import export_torchvision, import_torchvision, torchvision_name

# The format modules (and torch) load on first use (PEP 562), so that `vgg import --help` and a
# wrong flag are answered without importing torch.
_LAZY = {
    "read_classes": "vggnet.interop.common", "import_caffe": "vggnet.interop.caffe",
    "import_keras": "vggnet.interop.keras", "check_onnx": "vggnet.interop.onnx", "export_onnx": "vggnet.interop.onnx",
    "export_safetensors": "vggnet.interop.safetensors", "import_safetensors": "vggnet.interop.safetensors",
    "sidecar_path": "vggnet.interop.safetensors", "import_timm": "vggnet.interop.timm",
    "export_torchvision": "vggnet.interop.torchvision", "import_torchvision": "vggnet.interop.torchvision",
    "torchvision_name": "vggnet.interop.torchvision",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)


__all__ = [
    "IMPORT_FORMATS", "EXPORT_FORMATS", "import_weights", "load_weights", "read_classes", "detect_format",
    "import_torchvision", "import_timm", "import_keras", "import_caffe", "import_safetensors", "sidecar_path",
    "export_safetensors", "export_torchvision", "torchvision_name", "export_onnx", "check_onnx",
]

from vggnet.arguments import EXPORT_FORMATS, IMPORT_FORMATS  # noqa: E402  (defined with the flags)
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def detect_format(path: str | os.PathLike) -> str:
    """Which of `IMPORT_FORMATS` a weights file is in, from its content (its suffix only for Caffe).

    HDF5 or a Keras 3 `.keras` zip -> keras; a safetensors header -> safetensors (a vggnet export), or timm /
    torchvision for a foreign state dict stored as safetensors; a torch file -> timm
    when its keys are timm's VGG head (`pre_logits.fc1`, `head.fc`), else torchvision;
    `.caffemodel` (a protobuf has no signature) -> caffe. A vggnet checkpoint is
    refused: it needs no import.
    """
    from vggnet.checkpoint import is_checkpoint, torch_load
    from vggnet.interop.timm import is_timm_state
    from vggnet.interop.torchvision import state_dict_of
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} " + ("is a directory" if path.is_dir() else "does not exist"))
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:8] == _HDF5_MAGIC:
        return "keras"
    if _is_safetensors(path):
        # an 8-byte little-endian header length, then the JSON header: ours (header metadata or
        # a sidecar), or a foreign state dict saved as safetensors (timm's released files are)
        return _safetensors_kind(path)
    if head[:4] == b"PK\x03\x04" and _is_keras_archive(path):
        return "keras"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch.save's zip, or the legacy pickle
        obj = torch_load(path, what="weights file")
        if is_checkpoint(obj):
            raise UserError(f"{path} is already a vggnet checkpoint: use it as it is (vgg eval --checkpoint "
                            f"{path}); nothing to import")
        return "timm" if is_timm_state(state_dict_of(obj, f"weights file {path}")) else "torchvision"
    if path.suffix.lower() == ".caffemodel":
        return "caffe"
    raise CheckpointError(f"cannot tell the format of {path}: not HDF5 (Keras), safetensors or a PyTorch file, "
                          f"and not named .caffemodel; name the format: vgg import "
                          f"{{{','.join(IMPORT_FORMATS)}}} {path}")


def _is_keras_archive(path: Path) -> bool:
    """A Keras 3 `.keras` file: a zip holding `model.weights.h5` (torch.save's zips hold `*/data.pkl`)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return "model.weights.h5" in archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 8 + struct.unpack("<Q", head[:8])[0] <= path.stat().st_size


def _safetensors_kind(path: Path) -> str:
    from vggnet.interop.timm import is_timm_state
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata, keys = f.metadata() or {}, list(f.keys())
    except (SafetensorError, OSError, ValueError):
        return "safetensors"  # import_safetensors names what is wrong with it
    if "vggnet.format" in metadata or "vggnet" in metadata or sidecar_path(path).is_file():
        return "safetensors"
    if is_timm_state(dict.fromkeys(keys)):
        return "timm"
    return "torchvision" if any(k.startswith("features.") for k in keys) else "safetensors"


def _foreign_safetensors(format: str, path: Path, *, name: str | None, classes: Any,
                         build: dict[str, Any]) -> dict[str, Any]:
    """A torchvision or timm state dict stored as safetensors (no vggnet metadata)."""
    from vggnet.interop.timm import timm_checkpoint
    from vggnet.interop.torchvision import torchvision_checkpoint
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} cannot be read (truncated or not safetensors): {exc}") from None
    if format == "timm":
        return timm_checkpoint(state, path, name=name, classes=classes, build=build)
    return torchvision_checkpoint(state, f"torchvision state dict {path}", path, name=name, classes=classes,
                                  build=build)


def import_weights(
    format: str | None,
    path: str | os.PathLike,
    *,
    name: str | None = None,
    classes: Sequence[str] | str | os.PathLike | None = None,
    **build: Any,
) -> dict[str, Any]:
    """A checkpoint from a file in one of `IMPORT_FORMATS` ('torchvision', 'timm', 'keras', 'caffe',
    'safetensors'); `format=None` detects it (`detect_format`).

    `classes` may be a file of class names, one per line, or an ILSVRC synset file
    (`n01440764 tench, Tinca tinca`): then the classes are the WordNet ids (the
    names of ImageNet's class folders) and `meta["class_descriptions"]` holds the
    words, which `vgg predict` shows.
    """
    from vggnet.interop.common import read_class_file
    if format is None:
        format = detect_format(path)
    descriptions = read_class_file(classes)[1] if isinstance(classes, (str, os.PathLike)) else None
    ckpt = _import(format, path, name=name, classes=classes, **build)
    if descriptions is not None:
        ckpt["meta"]["class_descriptions"] = descriptions
    return ckpt


def _import(format: str, path: str | os.PathLike, *, name: str | None, classes: Any, **build: Any) -> dict[str, Any]:
    from vggnet.interop.caffe import import_caffe
    from vggnet.interop.keras import import_keras
    from vggnet.interop.safetensors import import_safetensors
    from vggnet.interop.timm import import_timm
    from vggnet.interop.torchvision import import_torchvision
    if format in ("torchvision", "timm") and Path(path).is_file() and _is_safetensors(Path(path)):
        return _foreign_safetensors(format, Path(path), name=name, classes=classes, build=build)
    if format == "torchvision":
        return import_torchvision(path, name=name, classes=classes, **build)
    if format == "timm":
        return import_timm(path, name=name, classes=classes, **build)
    if format == "keras":
        return import_keras(path, name=name, classes=classes, **build)
    if format == "caffe":
        return import_caffe(path, name=name, classes=classes, **build)
    if format == "safetensors":
        return import_safetensors(path, classes=classes)
    raise UserError(f"unknown import format {format!r}; expected one of {', '.join(IMPORT_FORMATS)}")


def load_weights(path: str | os.PathLike, *, name: str | None = None, **build: Any) -> dict[str, Any]:
    """A checkpoint from any weights file vggnet reads, told apart by suffix and content.

    `.safetensors`, Keras `.h5`/`.hdf5`, Caffe `.caffemodel`, else a torch file: a
    vggnet checkpoint, or a torchvision or timm state dict.
    `name` and `build` guide the detection of foreign formats only.
    """
    from vggnet.checkpoint import check_checkpoint, is_checkpoint, torch_load
    from vggnet.interop.caffe import import_caffe
    from vggnet.interop.keras import import_keras
    from vggnet.interop.safetensors import import_safetensors
    from vggnet.interop.timm import is_timm_state, timm_checkpoint
    from vggnet.interop.torchvision import state_dict_of, torchvision_checkpoint
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        kind = _safetensors_kind(path) if path.is_file() else "safetensors"
        if kind != "safetensors":
            return _foreign_safetensors(kind, path, name=name, classes=None, build=build)
        return import_safetensors(path)
    if suffix in (".h5", ".hdf5", ".keras"):
        return import_keras(path, name=name, **build)
    if suffix == ".caffemodel":
        return import_caffe(path, name=name, **build)
    obj = torch_load(path, what="weights file")
    if is_checkpoint(obj):
        return check_checkpoint(obj, path)
    if isinstance(obj, dict) and is_timm_state(state_dict_of(obj, f"weights file {path}")):
        return timm_checkpoint(obj, path, name=name, classes=None, build=build)
    return torchvision_checkpoint(obj, f"weights file {path}", path, name=name, classes=None, build=build)

