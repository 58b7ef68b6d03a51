"""Keras VGG16/VGG19 `.h5` weights in (`keras.applications` layout, TensorFlow kernel order):
Keras 2's h5 format, Keras 3's own `model.save_weights("x.weights.h5")`, and the weights in
Keras 3's `model.save("x.keras")` archive.
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

__all__ = ["import_keras"]


def _h5_names(group: Any, attr: str) -> list[str] | None:
    """A list-of-strings attribute, also when Keras split a long one into `attr0`, `attr1`, ..."""
    if attr in group.attrs:
        parts = [group.attrs[attr]]
    elif f"{attr}0" in group.attrs:
        parts, i = [], 0
        while f"{attr}{i}" in group.attrs:
            parts.append(group.attrs[f"{attr}{i}"])
            i += 1
    else:
        return None
    values = []
    for part in parts:
        # Keras writes arrays of byte strings; anything else (a number, an array of ints) is not its file
        if np.ndim(part) != 1 or not all(isinstance(v, (bytes, str)) for v in part):
            raise ValueError(f"its {attr!r} attribute is {np.asarray(part).tolist()!r}, not a list of layer names")
        values += list(part)
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


KERAS_ARCHIVE_WEIGHTS = "model.weights.h5"  # the weights inside a Keras 3 `.keras` archive (a zip)


def _h5_source(path: Path) -> Any:
    """`path`, or for a Keras 3 `.keras` archive (`model.save("x.keras")`) the weights file inside it,
    read into memory (h5py opens file-like objects)."""
    import io
    import zipfile

    if not zipfile.is_zipfile(path):
        return path
    with zipfile.ZipFile(path) as archive:
        if KERAS_ARCHIVE_WEIGHTS not in archive.namelist():
            raise CheckpointError(f"{path} is a zip archive without {KERAS_ARCHIVE_WEIGHTS}: not a Keras 3 .keras "
                                  f"file")
        return io.BytesIO(archive.read(KERAS_ARCHIVE_WEIGHTS))


def _read_keras(path: Path) -> list[tuple[str, list[np.ndarray]]]:
    """(layer name, [weight arrays in Keras order]) of every layer with weights, in the file's order."""
    try:
        import h5py
    except ImportError:
        raise UserError("importing Keras weights needs h5py: pip install 'vggnet[import]'") from None
    if not path.is_file():
        raise CheckpointError(f"Keras weights {path} " + ("is a directory" if path.is_dir() else "does not exist"))
    try:
        f = h5py.File(_h5_source(path), "r")
    except OSError as exc:
        raise CheckpointError(f"{path} is not an HDF5 file (Keras .h5 weights expected): {exc}") from None
    layers = []
    with f:
        root = f
        if "layer_names" not in f.attrs and "model_weights" in f:  # a whole model saved with model.save()
            root = f["model_weights"]
        try:
            names = _h5_names(root, "layer_names")
        except ValueError as exc:
            raise CheckpointError(f"{path} is not a Keras h5 weights file: {exc}") from None
        if names is None and isinstance(f.get("layers"), h5py.Group):
            return _read_keras3(f["layers"], path)
        if names is None:
            raise CheckpointError(f"{path} is an HDF5 file but not a Keras h5 weights file (no 'layer_names' "
                                  f"attribute); save with the Keras 2 h5 format (model.save_weights('w.h5'))")
        for layer in names:
            try:
                group = root[layer]
                weight_names = _h5_names(group, "weight_names") or []  # ValueError: not names
                arrays = [np.asarray(group[w], dtype=np.float32) for w in weight_names]
            except (KeyError, OSError, ValueError) as exc:
                raise CheckpointError(f"Keras weights {path}: layer {layer!r} cannot be read: {exc}") from None
            if arrays:
                layers.append((layer, arrays))
    return layers


def _keras3_order(key: str) -> tuple[str, int]:
    """`conv2d_10` -> ("conv2d", 10), `dense` -> ("dense", 0): Keras 3 names a model's layers in the
    store by class, numbered in the model's order; h5py lists them alphabetically (conv2d_10
    before conv2d_2), so the number restores the order."""
    stem, _, number = key.rpartition("_")
    return (stem, int(number)) if stem and number.isdigit() else (key, 0)


def _read_keras3(layers: Any, path: Path) -> list[tuple[str, list[np.ndarray]]]:
    """Keras 3's weights file: `layers/<conv2d_N>/vars/<0, 1>` (kernel, bias), the layer's own name
    (`block1_conv1`) in the `name` attribute of its `vars` group."""
    found = []
    for key in sorted(layers, key=_keras3_order):
        group = layers[key]
        vars_ = group.get("vars") if hasattr(group, "get") else None
        if vars_ is None or not len(vars_):
            continue  # input, pooling and flatten layers have no weights
        label = vars_.attrs.get("name", key)
        label = label.decode("utf-8") if isinstance(label, bytes) else str(label)
        try:
            arrays = [np.asarray(vars_[str(i)], dtype=np.float32) for i in range(len(vars_))]
        except (KeyError, OSError, ValueError) as exc:
            raise CheckpointError(f"Keras weights {path}: layer {label!r} ({key}) cannot be read: {exc}") from None
        found.append((label, arrays))
    # Keras numbers layers per class (conv2d_N, dense_N): convs come before the dense layers in a VGG
    return [item for item in found if item[1][0].ndim == 4] + [item for item in found if item[1][0].ndim != 4]


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
    check_build_keys(build)
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
            convs.append(Layer(label, weight, torch.from_numpy(bias), tuple(kernel.shape)))
        elif kernel.ndim == 2:
            fcs.append(Layer(label, torch.from_numpy(kernel).t(), torch.from_numpy(bias), tuple(kernel.shape)))
        else:
            raise CheckpointError(f"{where}: layer {label!r} has a kernel of shape {kernel.shape}; expected a "
                                  f"conv kernel (h, w, in, out) or a dense kernel (in, out)")
    chosen = infer_builds(where, [(c.label, tuple(c.weight.shape)) for c in convs],
                           [(f.label, tuple(f.weight.shape)) for f in fcs], name=name, build=build)[0]
    grid, channels = chosen["crop_size"] // 32, convs[-1].weight.shape[0]
    fc1 = fcs[0]
    if fc1.weight.shape[1] == grid * grid * channels:  # (out, h*w*c) channels-last -> (out, c*h*w)
        out = fc1.weight.shape[0]
        fc1.weight = fc1.weight.reshape(out, grid, grid, channels).permute(0, 3, 1, 2).reshape(out, -1)
    convs[0].weight = convs[0].weight[:, BGR_TO_RGB]
    state = fill_state(where, chosen, convs, fcs)
    return checkpoint_from_state(chosen, state, preprocessing=CAFFE_PREPROCESSING,
                                 classes=class_names(classes, chosen["num_classes"]),
                                 meta={"source": "keras", "source_file": str(path)})

