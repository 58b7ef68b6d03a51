"""Interop: foreign weights in, our weights out, with no download.

Each foreign file is written here from one of our nets in the foreign format's
own conventions — torchvision's state dict, Keras' (h, w, in, out) kernels and
channels-last flatten, Caffe's protobuf with BGR first-layer weights — and the
imported checkpoint must give the logits the source net gives on the same image
under that format's preprocessing.
"""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from vggnet.checkpoint import (
    CAFFE_PREPROCESSING,
    TORCHVISION_PREPROCESSING,
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from vggnet.cli import main
from vggnet.errors import CheckpointError, UserError
from vggnet.hub import create_model
from vggnet.interop import (
    caffe_pb,
    check_onnx,
    export_onnx,
    export_safetensors,
    export_torchvision,
    import_caffe,
    import_keras,
    import_safetensors,
    import_torchvision,
    load_weights,
    sidecar_path,
)
from vggnet.models import vgg

TINY = dict(width=1 / 16, fc_width=32, crop_size=64)  # crop 64: FC1 sees a 2x2 grid, so flatten order matters
MEAN_BGR = torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)


def rgb01(size=64, seed=1):
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def caffe_style_logits(source, image01):
    """What a Keras/Caffe net with `source`'s weights outputs: BGR 0-255 input minus the mean pixel."""
    bgr = image01.flip(1) * 255 - MEAN_BGR
    with torch.no_grad():
        return source.eval()(bgr)


def imported_logits(ckpt, image01):
    model, ckpt = model_from_checkpoint(ckpt)
    p = ckpt["preprocessing"]
    x = (image01 * p["pixel_scale"] - torch.tensor(p["mean"]).view(1, 3, 1, 1)) / torch.tensor(p["std"]).view(
        1, 3, 1, 1)
    with torch.no_grad():
        return model.eval()(x)


def weight_layers(model):
    """(stage, index in stage) names and (weight, bias) of every conv, then the three FC layers."""
    convs, stage, pos = [], 1, 0
    for m in model.features:
        if isinstance(m, torch.nn.MaxPool2d):
            stage, pos = stage + 1, 0
        elif isinstance(m, torch.nn.Conv2d):
            pos += 1
            convs.append(((stage, pos), m.weight.detach().numpy(), m.bias.detach().numpy()))
    fcs = [(m.weight.detach().numpy(), m.bias.detach().numpy()) for m in model.classifier
           if isinstance(m, torch.nn.Linear)]
    return convs, fcs


# --------------------------------------------------------------------------- writers in foreign conventions


def write_keras_h5(model, path, *, full_model=False, corrupt=None):
    """Keras `vgg16`/`vgg19` weights layout: groups per layer, `<layer>/<layer>/kernel:0`, attrs."""
    import h5py

    convs, fcs = weight_layers(model)
    grid, channels = model.crop_size // 32, convs[-1][1].shape[0]
    layers = [("input_1", [])]
    for (stage, pos), w, b in convs:
        layers.append((f"block{stage}_conv{pos}", [w.transpose(2, 3, 1, 0), b]))  # -> (h, w, in, out)
        if pos == sum(1 for (s, _), _, _ in convs if s == stage):
            layers.append((f"block{stage}_pool", []))
    layers.append(("flatten", []))
    for label, (w, b) in zip(["fc1", "fc2", "predictions"], fcs):
        kernel = w.T  # (in, out)
        if label == "fc1":  # Keras flattens the last map channels-last: rows in (h, w, c) order
            out = w.shape[0]
            kernel = w.reshape(out, channels, grid, grid).transpose(2, 3, 1, 0).reshape(-1, out)
        layers.append((label, [kernel, b]))
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if full_model else f
        root.attrs["layer_names"] = np.array([n.encode() for n, _ in layers])
        for label, arrays in layers:
            g = root.create_group(label)
            names = [f"{label}/kernel:0", f"{label}/bias:0"][: len(arrays)]
            g.attrs["weight_names"] = np.array([n.encode() for n in names], dtype="S")
            for name, array in zip(names, arrays):
                if corrupt == label and name.endswith("kernel:0"):
                    array = array[..., :-1]  # one output channel short
                g.create_dataset(name, data=np.ascontiguousarray(array, dtype=np.float32))


def write_caffemodel(model, path, *, v1=True, packed=True, corrupt=None):
    """A Caffe `.caffemodel` of `model`, whose first conv takes BGR (as the VGG release's does)."""
    schema = caffe_pb.typed if packed else caffe_pb.typed_unpacked
    net = schema.NetParameter(name="VGG_ILSVRC_tiny")
    convs, fcs = weight_layers(model)
    named = [(f"conv{s}_{p}", w, b) for (s, p), w, b in convs] + [
        (f"fc{6 + i}", w, b) for i, (w, b) in enumerate(fcs)]
    for label, w, b in named:
        if corrupt == label:
            w = w[:-1]
        fc = label.startswith("fc")
        if v1:  # the 2014 release: V1 `layers`, type enum, legacy 4-d blob shapes
            layer = net.layers.add(name=label, type=14 if fc else 4)
            shapes = [(1, 1) + w.shape if fc else w.shape, (1, 1, 1, b.shape[0])]
            for shape, array in zip(shapes, (w, b)):
                blob = layer.blobs.add(num=shape[0], channels=shape[1], height=shape[2], width=shape[3])
                blob.data.extend(array.ravel().tolist())
            net.layers.add(name=label.replace("conv", "relu").replace("fc", "relu"), type=18)  # no blobs
        else:  # the current form: `layer`, type strings, BlobShape
            layer = net.layer.add(name=label, type="InnerProduct" if fc else "Convolution")
            for array in (w, b):
                blob = layer.blobs.add()
                blob.shape.dim.extend(array.shape)
                blob.data.extend(array.ravel().tolist())
    Path(path).write_bytes(net.SerializeToString())


# --------------------------------------------------------------------------- torchvision


def test_torchvision_vgg16_round_trip_full_size(tmp_path):
    import torchvision

    tv = torchvision.models.vgg16(weights=None).eval()
    torch.save(tv.state_dict(), tmp_path / "vgg16.pth")
    ckpt = import_torchvision(tmp_path / "vgg16.pth")
    assert ckpt["build"] == {"name": "D", "num_classes": 1000, "crop_size": 224, "width": 1.0, "fc_width": 4096,
                             "dropout": 0.5, "batch_norm": False}
    assert ckpt["preprocessing"] == TORCHVISION_PREPROCESSING and ckpt["classes"][-1] == "999"
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = tv(x)
    model, _ = model_from_checkpoint(ckpt)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), expected, rtol=1e-4, atol=1e-5)
    # and back out: a plain state dict that torchvision loads with strict=True
    del model
    out = export_torchvision(ckpt, tmp_path / "back.pth")
    state = torch.load(out, weights_only=True)
    tv.load_state_dict(state, strict=True)
    assert torch.equal(state["classifier.0.weight"], ckpt["state_dict"]["classifier.0.weight"])


@pytest.mark.parametrize("name,batch_norm", [("B", True), ("A-LRN", False), ("C", False), ("B-5x5", False)])
def test_torchvision_layout_detects_configuration(tmp_path, name, batch_norm):
    source = vgg(name, num_classes=7, batch_norm=batch_norm, **TINY).eval()
    path = tmp_path / "w.pth"
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)  # DDP, references
    ckpt = import_torchvision(path)
    assert ckpt["build"] == source.build_args
    x = rgb01()
    with torch.no_grad():
        torch.testing.assert_close(model_from_checkpoint(ckpt)[0].eval()(x), source(x))


def test_torchvision_errors_name_the_file_and_layer(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 512)}, path)
    with pytest.raises(CheckpointError, match=rf"{path}.*not a VGG state dict"):
        import_torchvision(path)
    state = vgg("D", num_classes=5, **TINY).state_dict()
    state["features.10.weight"] = torch.zeros(12, 8, 3, 3)  # stage 3's first conv: 16 outputs at this width
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"resnet.pth: layer 'features.10.weight' has shape \(12, 8, 3, 3\), "
                                              r"configuration D .* expects \(16, 8, 3, 3\)"):
        import_torchvision(path, name="D")


# --------------------------------------------------------------------------- Keras


@pytest.mark.parametrize("full_model", [False, True])
def test_keras_h5_round_trip(tmp_path, full_model):
    source = vgg("D", num_classes=10, **TINY)
    write_keras_h5(source, tmp_path / "vgg16.h5", full_model=full_model)
    ckpt = import_keras(tmp_path / "vgg16.h5")
    assert ckpt["build"]["name"] == "D" and ckpt["build"]["crop_size"] == 64 and ckpt["build"]["width"] == 1 / 16
    assert ckpt["preprocessing"] == CAFFE_PREPROCESSING
    image = rgb01()
    torch.testing.assert_close(imported_logits(ckpt, image), caffe_style_logits(source, image),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("layer,got,want", [("block2_conv1", "(7, 4, 3, 3)", "(8, 4, 3, 3)"),
                                             ("block5_conv3", "(31, 32, 3, 3)", "(32, 32, 3, 3)")])
def test_keras_layer_with_wrong_shape_is_named(tmp_path, layer, got, want):
    write_keras_h5(vgg("D", num_classes=10, **TINY), tmp_path / "bad.h5", corrupt=layer)
    with pytest.raises(CheckpointError) as info:
        import_keras(tmp_path / "bad.h5")
    message = str(info.value)
    assert f"bad.h5: layer '{layer}' does not fit configuration D (width=0.0625" in message
    assert f"its weight is {got}" in message and f"expected {want}" in message


def test_keras_rejects_a_file_that_is_not_hdf5(tmp_path):
    path = tmp_path / "vgg16.h5"
    path.write_text("not hdf5 at all")
    with pytest.raises(CheckpointError, match=rf"{path} is not an HDF5 file"):
        import_keras(path)


# --------------------------------------------------------------------------- Caffe


@pytest.mark.parametrize("v1,packed", [(True, True), (False, True), (True, False)])
def test_caffemodel_round_trip(tmp_path, v1, packed):
    source = vgg("E", num_classes=10, **TINY)
    write_caffemodel(source, tmp_path / "VGG_ILSVRC_19_layers.caffemodel", v1=v1, packed=packed)
    ckpt = import_caffe(tmp_path / "VGG_ILSVRC_19_layers.caffemodel")
    assert ckpt["build"]["name"] == "E" and ckpt["build"]["fc_width"] == 32
    image = rgb01(seed=2)
    torch.testing.assert_close(imported_logits(ckpt, image), caffe_style_logits(source, image),
                               rtol=1e-4, atol=1e-6)


def test_caffemodel_errors_name_the_layer_and_the_file(tmp_path):
    source = vgg("E", num_classes=10, **TINY)
    path = tmp_path / "bad.caffemodel"
    write_caffemodel(source, path, corrupt="fc7")
    with pytest.raises(CheckpointError, match=r"bad\.caffemodel: layer 'fc7' does not fit configuration E"):
        import_caffe(path)
    write_caffemodel(source, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    with pytest.raises(CheckpointError, match=rf"{path}.*(cannot be parsed|truncated)"):
        import_caffe(path)


# --------------------------------------------------------------------------- safetensors, ONNX


def tiny_checkpoint(name="D", **kw):
    model = vgg(name, num_classes=4, **{**TINY, "crop_size": 32, **kw})
    return make_checkpoint(model, preprocessing=CAFFE_PREPROCESSING, classes=list("abcd"), meta={"scale": 256})


def test_safetensors_export_and_import_round_trip(tmp_path):
    ckpt = tiny_checkpoint()
    weights, sidecar = export_safetensors(ckpt, tmp_path / "tiny.safetensors")
    assert sidecar == sidecar_path(weights) == tmp_path / "tiny.json"
    umask = os.umask(0)
    os.umask(umask)
    assert weights.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would create it, not mkstemp's 0600
    back = import_safetensors(weights)
    assert back["build"] == ckpt["build"] and back["classes"] == list("abcd") and back["meta"]["scale"] == 256
    assert all(torch.equal(back["state_dict"][k], v) for k, v in ckpt["state_dict"].items())
    assert load_weights(weights)["preprocessing"] == CAFFE_PREPROCESSING
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match="does not match the checksum"):
        import_safetensors(weights)


@pytest.mark.parametrize("dense", [False, True])
def test_onnx_matches_pytorch_at_two_sizes(tmp_path, dense):
    import onnx

    ckpt = tiny_checkpoint()
    path = export_onnx(ckpt, tmp_path / "m.onnx", dense=dense)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["vggnet.form"] == ("dense" if dense else "crop") and '"a"' in meta["vggnet.classes"]
    sizes = [(32, 32), (72, 104)] if dense else [(32, 32)]
    report = check_onnx(path, ckpt, sizes=sizes)
    assert list(report) == sizes and max(report.values()) < 1e-4


# --------------------------------------------------------------------------- command line, create_model, hub


def test_cli_import_and_export(tmp_path, capsys):
    write_keras_h5(vgg("D", num_classes=3, **TINY), tmp_path / "k.h5")
    (tmp_path / "classes.txt").write_text("cat\ndog\nemu\n")
    ckpt_path = tmp_path / "k.pt"
    assert main(["import", "keras", str(tmp_path / "k.h5"), "--out", str(ckpt_path),
                 "--classes", str(tmp_path / "classes.txt")]) == 0
    assert load_checkpoint(ckpt_path)["classes"] == ["cat", "dog", "emu"]
    assert main(["export", "onnx", str(ckpt_path), "--out", str(tmp_path / "k.onnx"), "--dense"]) == 0
    assert "onnxruntime matches PyTorch" in capsys.readouterr().out
    assert main(["export", "safetensors", str(ckpt_path), "--out", str(tmp_path / "k.safetensors")]) == 0
    assert main(["import", "safetensors", str(tmp_path / "k.safetensors"), "--out", str(tmp_path / "k2.pt")]) == 0
    # errors: named, no traceback, exit status 2
    capsys.readouterr()
    (tmp_path / "two.txt").write_text("cat\ndog\n")
    assert main(["import", "keras", str(tmp_path / "k.h5"), "--out", str(ckpt_path),
                 "--classes", str(tmp_path / "two.txt")]) == 2
    assert "two.txt: 2 class names, but the model has 3 outputs" in capsys.readouterr().err
    assert main(["export", "torchvision", str(ckpt_path), "--out", str(tmp_path / "t.pth")]) == 2
    assert "no torchvision model has this net's weights: width=0.0625" in capsys.readouterr().err


def test_create_model_fine_tuning_path(tmp_path):
    ckpt = tiny_checkpoint(fc_width=64)
    path = save_checkpoint(tmp_path / "d.pt", ckpt)
    model = create_model("vgg16", pretrained=path, num_classes=9, freeze_features=True)
    head = model.classifier[-1]
    assert head.out_features == 9 and model.build_args["num_classes"] == 9
    assert 0.005 < head.weight.std().item() < 0.015 and not head.bias.any()
    assert torch.equal(model.classifier[0].weight, ckpt["state_dict"]["classifier.0.weight"])
    assert not any(p.requires_grad for p in model.features.parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())
    assert model.pretrained_cfg["preprocessing"] == CAFFE_PREPROCESSING and model.pretrained_cfg["classes"] is None
    same = create_model("D", pretrained=path)
    assert same.num_classes == 4 and same.pretrained_cfg["classes"] == list("abcd")
    with pytest.raises(UserError, match="holds configuration D, not E"):
        create_model("E", pretrained=path)
    with pytest.raises(UserError, match="width=0.5 contradicts"):
        create_model("D", pretrained=path, width=0.5)
    source = vgg("A", num_classes=6, **TINY)
    torch.save(source.state_dict(), tmp_path / "a.pth")  # a bare torchvision-layout state dict
    from_pth = create_model("vgg11", pretrained=tmp_path / "a.pth")
    assert from_pth.pretrained_cfg["preprocessing"] == TORCHVISION_PREPROCESSING
    assert torch.equal(from_pth.classifier[6].weight, source.classifier[6].weight)


def test_hubconf_entry_points_load_local_weights(tmp_path):
    ckpt = tiny_checkpoint("A")
    weights, _ = export_safetensors(ckpt, tmp_path / "a.safetensors")
    repo = Path(__file__).resolve().parents[1]
    model = torch.hub.load(str(repo), "vgg11", source="local", weights=str(weights), trust_repo=True)
    assert torch.equal(model.features[0].weight, ckpt["state_dict"]["features.0.weight"])
    scratch = torch.hub.load(str(repo), "vgg", "C", source="local", num_classes=5, **TINY)
    assert scratch.name == "C" and scratch.num_classes == 5
