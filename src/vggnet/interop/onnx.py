"""ONNX out: the crop classifier, or the dense fully-convolutional net of §3.2 with dynamic height
and width; checked against PyTorch with onnxruntime.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from vggnet.checkpoint import atomic_write, model_from_checkpoint
from vggnet.data.transforms import deployment_config
from vggnet.interop.common import as_checkpoint, describe_build
from vggnet.models import VGG

__all__ = ["export_onnx", "check_onnx"]


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
    metadata_props as JSON (keys 'vggnet.preprocessing', 'vggnet.classes', 'vggnet.build'), and
    'vggnet.pretrained_cfg' spells out the centre-crop evaluation in timm's field names (input_size,
    resize, crop_pct, interpolation, antialias, mean/std on the [0, 1] scale, label_names): with it,
    Pillow and numpy reproduce `vgg predict --method center` (docs/interop.md).
    """
    import onnx

    ckpt = as_checkpoint(ckpt)
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
    proto.doc_string = (f"vggnet VGG {describe_build(ckpt['build'])}, "
                        + ("dense (fully-convolutional) class-score map" if dense else "crop classifier")
                        + "; input: RGB NCHW float32, (rgb01 - mean) / std, see vggnet.pretrained_cfg")
    cfg = deployment_config(ckpt["build"], ckpt["preprocessing"], ckpt["classes"])
    cfg["fixed_input_size"] = not dense
    for key, value in (("vggnet.form", "dense" if dense else "crop"),
                       ("vggnet.build", json.dumps(ckpt["build"])),
                       ("vggnet.preprocessing", json.dumps(ckpt["preprocessing"])),
                       ("vggnet.classes", json.dumps(ckpt["classes"])),
                       ("vggnet.pretrained_cfg", json.dumps(cfg))):
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

    ckpt = as_checkpoint(ckpt)
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

