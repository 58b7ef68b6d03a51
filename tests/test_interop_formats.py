"""Interop without ceremony: formats told apart by content, timm's layout, Keras 3's weights file,
safetensors exports that carry everything in their header, synset class files, hub variants.

As in test_interop.py, every foreign file is written here from one of our nets in the foreign
format's own layout, and the imported checkpoint must give the logits a reference computation
in that format's conventions gives on the same input.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from test_interop import TINY, caffe_style_logits, imported_logits, rgb01, weight_layers, write_caffemodel, write_keras_h5
from vggnet.checkpoint import CAFFE_PREPROCESSING, load_checkpoint, make_checkpoint, save_checkpoint
from vggnet.cli import main
from vggnet.errors import CheckpointError, UserError
from vggnet.hub import create_model
from vggnet.interop import detect_format, export_safetensors, import_safetensors, import_weights, load_weights
from vggnet.models import vgg

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- timm


def timm_state(model):
    """`model`'s weights in timm's VGG layout: FC1 a k x k conv, FC2 a 1x1 conv, FC3 `head.fc`."""
    sd = model.state_dict()
    k, c = model.crop_size // 32, model.features[-3].out_channels  # last conv before the final ReLU, pool
    out = {key: v.clone() for key, v in sd.items() if key.startswith("features.")}
    fc1, fc2 = sd["classifier.0.weight"], sd["classifier.3.weight"]
    out["pre_logits.fc1.weight"] = fc1.reshape(fc1.shape[0], c, k, k).clone()
    out["pre_logits.fc1.bias"] = sd["classifier.0.bias"].clone()
    out["pre_logits.fc2.weight"] = fc2.reshape(*fc2.shape, 1, 1).clone()
    out["pre_logits.fc2.bias"] = sd["classifier.3.bias"].clone()
    out["head.fc.weight"], out["head.fc.bias"] = sd["classifier.6.weight"].clone(), sd["classifier.6.bias"].clone()
    return out


def timm_forward(state, features, x):
    """timm's VGG forward from its own tensors: features -> fc1 conv -> fc2 conv -> global average -> head.fc."""
    with torch.no_grad():
        h = features(x)
        h = F.relu(F.conv2d(h, state["pre_logits.fc1.weight"], state["pre_logits.fc1.bias"]))
        h = F.relu(F.conv2d(h, state["pre_logits.fc2.weight"], state["pre_logits.fc2.bias"]))
        return F.linear(h.mean(dim=(2, 3)), state["head.fc.weight"], state["head.fc.bias"])


def test_timm_layout_imports_with_equal_logits(tmp_path, capsys):
    source = vgg("A", num_classes=5, width=1 / 16, fc_width=32, crop_size=224).eval()  # timm's FC1 kernel: 7
    state = timm_state(source)
    assert tuple(state["pre_logits.fc1.weight"].shape) == (32, 32, 7, 7)
    torch.save(state, tmp_path / "vgg11_timm.pth")
    assert detect_format(tmp_path / "vgg11_timm.pth") == "timm"
    assert main(["import", str(tmp_path / "vgg11_timm.pth"), "--out", str(tmp_path / "t.pt")]) == 0
    assert "detected format: timm" in capsys.readouterr().out
    ckpt = load_checkpoint(tmp_path / "t.pt")
    assert ckpt["build"]["name"] == "A" and ckpt["build"]["crop_size"] == 224 and ckpt["meta"]["source"] == "timm"
    x = torch.randn(2, 3, 224, 224)
    model, _ = __import__("vggnet.checkpoint", fromlist=["x"]).model_from_checkpoint(ckpt)
    want = timm_forward(state, source.features, x)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), want, atol=1e-5)
    # the same file through load_weights (create_model, torch.hub), as safetensors (timm's own
    # releases), and a damaged head named
    assert load_weights(tmp_path / "vgg11_timm.pth")["meta"]["source"] == "timm"
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "model.safetensors"))
    assert detect_format(tmp_path / "model.safetensors") == "timm"
    again = import_weights(None, tmp_path / "model.safetensors")
    assert all(torch.equal(again["state_dict"][k], v) for k, v in ckpt["state_dict"].items())
    assert load_weights(tmp_path / "model.safetensors")["meta"]["source"] == "timm"
    del state["pre_logits.fc2.bias"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="missing pre_logits.fc2.bias"):
        import_weights(None, tmp_path / "bad.pth")


# --------------------------------------------------------------------------- Keras 3


def write_keras3_weights(model, path):
    """`model.save_weights("x.weights.h5")` of Keras 3 (looked up in a real Keras 3.15 file): groups
    `layers/<class>_<N>/vars/<i>` numbered per class in model order, the layer's name as the `name`
    attribute of `vars`; weightless layers have empty `vars`; no `layer_names` attribute."""
    import h5py

    convs, fcs = weight_layers(model)
    grid, channels = model.crop_size // 32, convs[-1][1].shape[0]
    with h5py.File(path, "w") as f:
        layers = f.create_group("layers")
        f.create_group("vars").attrs["name"] = "vgg16"
        layers.create_group("input_layer").create_group("vars").attrs["name"] = "input_layer"
        stages = sorted({s for (s, _), _, _ in convs})
        for i, ((stage, pos), w, b) in enumerate(convs):
            v = layers.create_group("conv2d" + (f"_{i}" if i else "")).create_group("vars")
            v.attrs["name"] = f"block{stage}_conv{pos}"
            v.create_dataset("0", data=w.transpose(2, 3, 1, 0))  # (h, w, in, out)
            v.create_dataset("1", data=b)
        for i, stage in enumerate(stages):
            pool = layers.create_group("max_pooling2d" + (f"_{i}" if i else "")).create_group("vars")
            pool.attrs["name"] = f"block{stage}_pool"
        layers.create_group("flatten").create_group("vars").attrs["name"] = "flatten"
        for i, (label, (w, b)) in enumerate(zip(["fc1", "fc2", "predictions"], fcs)):
            kernel = w.T
            if label == "fc1":  # channels-last flatten, as Keras' Flatten of an NHWC map
                out = w.shape[0]
                kernel = w.reshape(out, channels, grid, grid).transpose(2, 3, 1, 0).reshape(-1, out)
            v = layers.create_group("dense" + (f"_{i}" if i else "")).create_group("vars")
            v.attrs["name"] = label
            v.create_dataset("0", data=np.ascontiguousarray(kernel))
            v.create_dataset("1", data=b)


def test_keras3_weights_file_imports_like_keras2(tmp_path):
    source = vgg("D", num_classes=4, **TINY)  # 13 convs: h5py lists conv2d_10 before conv2d_2
    path = tmp_path / "vgg16.weights.h5"
    write_keras3_weights(source, path)
    assert detect_format(path) == "keras"
    ckpt = import_weights(None, path)
    assert ckpt["build"]["name"] == "D" and ckpt["preprocessing"] == CAFFE_PREPROCESSING
    for key, value in source.state_dict().items():
        if key != "features.0.weight":  # BGR -> RGB flipped
            assert torch.equal(ckpt["state_dict"][key], value), key
    image = rgb01()
    assert torch.allclose(imported_logits(ckpt, image), caffe_style_logits(source, image), atol=1e-4)
    # Keras 3's model.save("x.keras"): a zip with config.json, metadata.json and model.weights.h5
    import zipfile

    with zipfile.ZipFile(tmp_path / "vgg16.keras", "w") as archive:
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        archive.writestr("config.json", json.dumps({"class_name": "Functional"}))
        archive.write(path, "model.weights.h5")
    assert detect_format(tmp_path / "vgg16.keras") == "keras"
    whole = import_weights(None, tmp_path / "vgg16.keras")
    assert all(torch.equal(whole["state_dict"][k], v) for k, v in ckpt["state_dict"].items())


KERAS_SCRIPT = r"""
import os, sys
os.environ["KERAS_BACKEND"] = "torch"
import numpy as np, keras
from keras import layers
inp = keras.Input((64, 64, 3))
x, widths = inp, [(1, [4]), (2, [8]), (3, [16, 16]), (4, [32, 32]), (5, [32, 32])]  # A at 1/16 width
for stage, chans in widths:
    for j, c in enumerate(chans, 1):
        x = layers.Conv2D(c, 3, padding="same", activation="relu", name=f"block{stage}_conv{j}")(x)
    x = layers.MaxPooling2D(2, name=f"block{stage}_pool")(x)
x = layers.Flatten(name="flatten")(x)
x = layers.Dense(32, activation="relu", name="fc1")(x)
x = layers.Dense(32, activation="relu", name="fc2")(x)
x = layers.Dense(3, name="predictions")(x)
model = keras.Model(inp, x)
for w in model.weights:  # O(1) activations in a narrow net
    w.assign(np.random.default_rng(len(w.path)).normal(0, 0.2, w.shape).astype("float32"))
model.save_weights(sys.argv[1])
bgr = np.load(sys.argv[2])  # (1, 64, 64, 3), BGR minus the mean pixel: Keras' "caffe" preprocessing
np.save(sys.argv[3], keras.ops.convert_to_numpy(model(bgr)))
"""


@pytest.mark.slow
def test_keras3_save_weights_of_real_keras_gives_keras_logits(tmp_path):
    """Keras 3 itself (torch backend) writes the file and computes the reference logits."""
    import importlib.util

    if importlib.util.find_spec("keras") is None:  # importing it here would pick its TensorFlow backend
        pytest.skip("keras is not installed (pip install 'vggnet[test]')")
    image = rgb01()  # (1, 3, 64, 64) RGB in [0, 1]
    bgr = (image.flip(1) * 255 - torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)).permute(0, 2, 3, 1)
    np.save(tmp_path / "in.npy", bgr.numpy())
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    done = subprocess.run([sys.executable, "-c", KERAS_SCRIPT, str(tmp_path / "a.weights.h5"), str(tmp_path / "in.npy"),
                           str(tmp_path / "out.npy")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    ckpt = import_weights(None, tmp_path / "a.weights.h5")
    assert ckpt["build"]["name"] == "A" and ckpt["build"]["crop_size"] == 64
    want = torch.from_numpy(np.load(tmp_path / "out.npy"))
    assert torch.allclose(imported_logits(ckpt, image), want, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- detection


def test_detect_format_by_content(tmp_path):
    source = vgg("D", num_classes=3, **TINY)
    torch.save(source.state_dict(), tmp_path / "tv.bin")  # no telling suffix: content decides
    write_keras_h5(source, tmp_path / "k.weights")
    write_caffemodel(source, tmp_path / "c.caffemodel")
    ckpt = make_checkpoint(source, preprocessing=CAFFE_PREPROCESSING, classes=list("abc"))
    export_safetensors(ckpt, tmp_path / "s.safetensors")
    (tmp_path / "s.safetensors").rename(tmp_path / "s.weights")
    assert [detect_format(tmp_path / n) for n in ("tv.bin", "k.weights", "c.caffemodel", "s.weights")] == [
        "torchvision", "keras", "caffe", "safetensors"]
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="cannot tell the format of .*notes.txt"):
        detect_format(tmp_path / "notes.txt")
    save_checkpoint(tmp_path / "ours.pt", ckpt)
    with pytest.raises(UserError, match="already a vggnet checkpoint"):
        detect_format(tmp_path / "ours.pt")


# --------------------------------------------------------------------------- safetensors header


def test_safetensors_export_header_alone_is_enough(tmp_path, capsys):
    ckpt = make_checkpoint(vgg("A", num_classes=3, **TINY), preprocessing=CAFFE_PREPROCESSING,
                           classes=["cat", "dog", "emu"], meta={"scale": [32, 48]})
    weights, sidecar = export_safetensors(ckpt, tmp_path / "a.safetensors")
    sidecar.unlink()  # the file alone
    back = import_safetensors(weights)
    assert back["build"] == ckpt["build"] and back["classes"] == ["cat", "dog", "emu"]
    assert back["preprocessing"] == CAFFE_PREPROCESSING and back["meta"]["scale"] == [32, 48]
    assert all(torch.equal(back["state_dict"][k], v) for k, v in ckpt["state_dict"].items())
    assert main(["import", str(weights), "--out", str(tmp_path / "a.pt")]) == 0
    assert "detected format: safetensors" in capsys.readouterr().out
    # an older export: the header holds the build only, the sidecar everything
    from safetensors.torch import save_file

    old = tmp_path / "old.safetensors"
    save_file({k: v.contiguous() for k, v in ckpt["state_dict"].items()}, str(old),
              metadata={"format": "pt", "vggnet": json.dumps(ckpt["build"])})
    info = {"format": "vggnet.weights", "version": 1, "weights": old.name, "build": ckpt["build"],
            "preprocessing": CAFFE_PREPROCESSING, "classes": ["x", "y", "z"], "meta": {}}
    (tmp_path / "old.json").write_text(json.dumps(info))
    assert import_safetensors(old)["classes"] == ["x", "y", "z"]
    (tmp_path / "old.json").unlink()
    with pytest.raises(CheckpointError, match="has no JSON sidecar"):
        import_safetensors(old)


# --------------------------------------------------------------------------- class names


def test_synset_and_class_index_files_name_the_classes(tmp_path, capsys):
    source = vgg("D", num_classes=3, **TINY)
    write_keras_h5(source, tmp_path / "k.h5")
    synsets = ["n01440764 tench, Tinca tinca", "n01443537 goldfish, Carassius auratus", "n01484850 great white shark"]
    (tmp_path / "synset_words.txt").write_text("\n".join(synsets) + "\n")
    assert main(["import", "keras", str(tmp_path / "k.h5"), "--out", str(tmp_path / "k.pt"),
                 "--classes", str(tmp_path / "synset_words.txt")]) == 0
    ckpt = load_checkpoint(tmp_path / "k.pt")
    assert ckpt["classes"] == ["n01440764", "n01443537", "n01484850"]  # ImageNet's folder names
    assert ckpt["meta"]["class_descriptions"][0] == "tench, Tinca tinca"
    write_caffemodel(source, tmp_path / "c.caffemodel")
    index = {"0": ["n01440764", "tench"], "1": ["n01443537", "goldfish"], "2": ["n01484850", "great_white_shark"]}
    (tmp_path / "imagenet_class_index.json").write_text(json.dumps(index))
    caffe = import_weights("caffe", tmp_path / "c.caffemodel", classes=tmp_path / "imagenet_class_index.json")
    assert caffe["classes"][2] == "n01484850" and caffe["meta"]["class_descriptions"][2] == "great_white_shark"
    # vgg predict shows the words beside the id
    from PIL import Image

    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(tmp_path / "x.png")
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(tmp_path / "k.pt"), str(tmp_path / "x.png"), "--json",
                 "--amp", "off"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    assert {t["description"] for t in top} == {"tench, Tinca tinca", "goldfish, Carassius auratus",
                                                 "great white shark"}


# --------------------------------------------------------------------------- torch.hub variants


def test_hub_entry_points_refuse_weights_of_the_other_variant(tmp_path):
    plain = vgg("A", num_classes=4, **TINY)
    torch.save(plain.state_dict(), tmp_path / "a.pth")
    with_bn = vgg("A", num_classes=4, batch_norm=True, **TINY)
    torch.save(with_bn.state_dict(), tmp_path / "a_bn.pth")
    load = lambda entry, path: torch.hub.load(str(REPO), entry, source="local", weights=str(path), trust_repo=True)
    assert load("vgg11", tmp_path / "a.pth").build_args["batch_norm"] is False
    assert load("vgg11_bn", tmp_path / "a_bn.pth").build_args["batch_norm"] is True
    with pytest.raises(UserError, match="holds vgg11_bn weights .*not vgg11: load them with vgg11_bn"):
        load("vgg11", tmp_path / "a_bn.pth")
    with pytest.raises(UserError, match="holds vgg11 weights .*not vgg11_bn: load them with vgg11"):
        load("vgg11_bn", tmp_path / "a.pth")
    with pytest.raises(UserError, match="holds configuration A, not D"):
        create_model("vgg16", pretrained=tmp_path / "a.pth")
    assert create_model("vgg11", pretrained=tmp_path / "a_bn.pth").build_args["batch_norm"] is True  # not asked
    write_keras_h5(plain, tmp_path / "a.h5")  # A and A-LRN have the same weights: the name asked decides
    assert create_model("A-LRN", pretrained=tmp_path / "a.h5").name == "A-LRN"
    assert create_model("A", pretrained=tmp_path / "a.h5").name == "A"
