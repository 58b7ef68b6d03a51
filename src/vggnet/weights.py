"""Deprecated: the old home of checkpoints and foreign formats, kept for one release.

Our checkpoint format is `vggnet.checkpoint`; torchvision, Keras, Caffe,
safetensors and ONNX are `vggnet.interop` (one module each). Importing this
module warns once and re-exports the old names from there.
"""

from __future__ import annotations

import warnings

from vggnet.checkpoint import (CAFFE_PREPROCESSING, FORMAT, TORCHVISION_PREPROCESSING, VERSION, atomic_write,
                               load_checkpoint, make_checkpoint, model_from_checkpoint, save_checkpoint, unwrap)
from vggnet.interop import (EXPORT_FORMATS, IMPORT_FORMATS, check_onnx, export_onnx, export_safetensors,
                            export_torchvision, import_caffe, import_keras, import_safetensors, import_torchvision,
                            import_weights, load_weights, read_classes, sidecar_path, torchvision_name)
from vggnet.interop.cli import add_export_arguments, add_import_arguments, run_export, run_import

__all__ = [
    "FORMAT", "VERSION", "CAFFE_PREPROCESSING", "TORCHVISION_PREPROCESSING", "make_checkpoint", "save_checkpoint",
    "load_checkpoint", "model_from_checkpoint", "atomic_write", "unwrap", "IMPORT_FORMATS", "EXPORT_FORMATS",
    "import_torchvision", "import_keras", "import_caffe", "import_safetensors", "import_weights", "load_weights",
    "read_classes", "sidecar_path", "export_safetensors", "export_torchvision", "torchvision_name", "export_onnx",
    "check_onnx", "add_import_arguments", "run_import", "add_export_arguments", "run_export",
]

warnings.warn("vggnet.weights is deprecated and will be removed in the next release: import checkpoints from "
              "vggnet.checkpoint and foreign formats from vggnet.interop", DeprecationWarning, stacklevel=2)
