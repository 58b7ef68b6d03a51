"""Exported files stand alone: the ONNX and safetensors metadata spell out the evaluation
preprocessing, so that onnxruntime + Pillow + numpy (no vggnet, no torch) reproduce
`vgg predict --method center`; `create_model(...).pretrained_cfg` uses timm's field names.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vggnet.checkpoint import make_checkpoint, save_checkpoint
from vggnet.cli import main
from vggnet.data.transforms import Preprocessing
from vggnet.hub import create_model
from vggnet.interop import export_onnx, export_safetensors
from vggnet.models import vgg

CLASSES = [f"c{i}" for i in range(7)]
TIMM_FIELDS = ("input_size", "crop_pct", "crop_mode", "interpolation", "mean", "std", "num_classes", "label_names")


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory):
    torch.manual_seed(0)
    model = vgg("A", len(CLASSES), width=1 / 16, fc_width=32, crop_size=64)
    # He init: a tiny net with the paper's N(0, 0.01^2) gives nearly uniform probabilities, which
    # would make a 1e-4 comparison meaningless
    for layer in model.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(layer.weight)
    with torch.no_grad():
        model.classifier[-1].weight.mul_(0.3)
    # a non-trivial mean and std, in 0-255 units, to check the units the metadata uses
    pre = Preprocessing(pixel_scale=255.0, mean=(120.0, 110.0, 100.0), std=(60.0, 58.0, 57.0)).to_dict()
    path = tmp_path_factory.mktemp("deploy") / "tiny.pt"
    save_checkpoint(path, make_checkpoint(model, preprocessing=pre, classes=CLASSES))
    return path


def _images(folder):
    """Non-square PNGs (lossless, decoded alike by every reader) with odd sizes, so that rounding in the
    resize and the crop position matters."""
    rng = np.random.default_rng(3)
    paths = []
    for i, (w, h) in enumerate([(97, 71), (60, 133), (80, 80)]):
        # smooth content plus noise: the resize filter matters
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], -1)
        pixels = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        path = folder / f"img{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def _standalone_probabilities(onnx_path, image_path):
    """What a deployment without vggnet or torch does: read the metadata, preprocess with Pillow and numpy,
    run onnxruntime, softmax."""
    import onnx
    import onnxruntime

    meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    cfg = json.loads(meta["vggnet.pretrained_cfg"])
    assert cfg["interpolation"] == "bilinear" and cfg["antialias"] and cfg["crop_mode"] == "center"
    _, crop, _ = cfg["input_size"]
    img = Image.open(image_path).convert("RGB")
    w, h = img.size
    r = cfg["resize"]
    size = (r, int(r * h / w)) if w <= h else (int(r * w / h), r)
    img = img.resize(size, Image.BILINEAR)  # Pillow's bilinear is antialiased when downscaling
    w, h = img.size
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    img = img.crop((left, top, left + crop, top + crop))
    x = (np.asarray(img, dtype=np.float32) / 255.0 - np.array(cfg["mean"], np.float32)) / np.array(cfg["std"],
                                                                                                    np.float32)
    x = x.transpose(2, 0, 1)[None]
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0][0].astype(np.float64)
    e = np.exp(logits - logits.max())
    return cfg["label_names"], e / e.sum()


def test_onnx_metadata_alone_reproduces_vgg_predict_center(ckpt_path, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    onnx_path = export_onnx(ckpt_path, tmp_path / "tiny.onnx")
    images = _images(tmp_path)
    assert main(["predict", "--checkpoint", str(ckpt_path), "--method", "center", "--amp", "off", "--json", "--topk", "7",
                 *map(str, images)]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == len(images)
    for result, image in zip(results, images):
        names, probs = _standalone_probabilities(onnx_path, image)
        assert names == CLASSES
        for top in result["top"]:
            assert abs(probs[names.index(top["class"])] - top["probability"]) <= 1e-4, (image, top)
        assert [t["class"] for t in result["top"]][0] == names[int(probs.argmax())]
        assert 0.2 < probs.max() < 0.999  # neither uniform nor saturated: the comparison has teeth


def test_the_resize_rule_matters(ckpt_path, tmp_path, capsys):
    """The comparison above can fail: without the metadata's resize (cropping at the raw size) the
    probabilities differ by far more than 1e-4."""
    pytest.importorskip("onnxruntime")
    onnx_path = export_onnx(ckpt_path, tmp_path / "tiny.onnx")
    image = _images(tmp_path)[0]
    _, right = _standalone_probabilities(onnx_path, image)
    import onnx

    proto = onnx.load(str(onnx_path))
    for p in proto.metadata_props:
        if p.key == "vggnet.pretrained_cfg":
            cfg = json.loads(p.value)
            cfg["resize"] = 97  # what a user who skipped the resize would see
            p.value = json.dumps(cfg)
    wrong_path = tmp_path / "wrong.onnx"
    onnx.save(proto, str(wrong_path))
    _, wrong = _standalone_probabilities(wrong_path, image)
    assert np.abs(right - wrong).max() > 1e-3


def test_safetensors_header_carries_the_same_config(ckpt_path, tmp_path):
    from safetensors import safe_open

    path, sidecar = export_safetensors(ckpt_path, tmp_path / "tiny.safetensors")
    with safe_open(str(path), framework="np") as f:
        cfg = json.loads(f.metadata()["vggnet.pretrained_cfg"])
    assert cfg["input_size"] == [3, 64, 64] and cfg["resize"] == 73 and cfg["crop_pct"] == 0.875
    assert cfg["interpolation"] == "bilinear" and cfg["antialias"] is True
    assert cfg["mean"] == pytest.approx([120 / 255, 110 / 255, 100 / 255])
    assert cfg["std"] == pytest.approx([60 / 255, 58 / 255, 57 / 255])
    assert cfg["label_names"] == CLASSES and cfg["num_classes"] == 7
    assert json.loads(sidecar.read_text())["pretrained_cfg"] == cfg


def test_create_model_pretrained_cfg_has_timms_fields(ckpt_path):
    model = create_model("A", pretrained=ckpt_path)
    cfg = model.pretrained_cfg
    for field in TIMM_FIELDS:
        assert field in cfg, field
    assert tuple(cfg["input_size"]) == (3, 64, 64) and cfg["num_classes"] == 7 and cfg["label_names"] == CLASSES
    head = create_model("A", pretrained=ckpt_path, num_classes=3).pretrained_cfg
    assert head["num_classes"] == 3 and head["label_names"] is None
