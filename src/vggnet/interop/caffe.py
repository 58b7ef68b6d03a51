"""Caffe `.caffemodel` in: the original VGG release (`VGG_ILSVRC_16_layers`, `_19_`), read with the
minimal schema of `vggnet.interop.caffe_pb`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vggnet.checkpoint import CAFFE_PREPROCESSING, checkpoint_from_state
from vggnet.errors import CheckpointError, UserError
from vggnet.interop.common import BGR_TO_RGB, Layer, check_build_keys, class_names, fill_state, infer_builds

__all__ = ["import_caffe"]



# Layer types that hold the weights we want: V1's enum values and the new strings.
_CAFFE_CONV, _CAFFE_FC = (4, "Convolution"), (14, "InnerProduct")


def _read_caffe(path: Path) -> list[tuple[str, Any, list[np.ndarray]]]:
    """(layer name, layer type, [blob arrays]) of every layer with blobs, in the file's order."""
    from google.protobuf.message import DecodeError

    from vggnet.interop import caffe_pb

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
    `vggnet.interop.caffe_pb`. Caffe's layouts are ours (conv (out, in, h, w), FC (out, in)
    over a (c, h, w) flatten); only the first conv's input channels are flipped
    BGR -> RGB, so the model takes RGB with the paper's preprocessing (0-255
    pixels minus the ImageNet mean RGB).
    """
    path = Path(path)
    where = f"Caffe model {path}"
    check_build_keys(build)
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
            fcs.append(Layer(label, torch.from_numpy(weight.reshape(bias.size, -1)), torch.from_numpy(bias),
                              tuple(weight.shape)))
        else:
            if weight.ndim != 4:
                raise CheckpointError(f"{where}: layer {label!r} has weights of shape {weight.shape}; expected a "
                                      f"convolution (out, in, h, w)")
            convs.append(Layer(label, torch.from_numpy(weight), torch.from_numpy(bias), tuple(weight.shape)))
    chosen = infer_builds(where, [(c.label, tuple(c.weight.shape)) for c in convs],
                           [(f.label, tuple(f.weight.shape)) for f in fcs], name=name, build=build)[0]
    convs[0].weight = convs[0].weight[:, BGR_TO_RGB]
    state = fill_state(where, chosen, convs, fcs)
    return checkpoint_from_state(chosen, state, preprocessing=CAFFE_PREPROCESSING,
                                 classes=class_names(classes, chosen["num_classes"]),
                                 meta={"source": "caffe", "source_file": str(path)})

