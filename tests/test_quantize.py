"""`vgg export onnx --int8`: static int8 quantisation of the crop classifier, its accuracy check and its
refusal to write a model that lost too much accuracy. A tiny net; images written by the test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from vggnet.checkpoint import make_checkpoint, save_checkpoint  # noqa: E402
from vggnet.cli import main  # noqa: E402
from vggnet.interop.quantize import QuantizationRejected, crop_transform, quantize_onnx  # noqa: E402
from vggnet.models import vgg  # noqa: E402

CLASSES = ["c0", "c1", "c2", "c3"]
CAFFE = {"pixel_scale": 255.0, "mean": [120.0, 110.0, 100.0], "std": [60.0, 60.0, 60.0]}


def pictures(n: int, seed: int) -> list[np.ndarray]:
    """Smooth random colour fields, 40x48: JPEG-friendly, and varied enough to spread a net's outputs."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        small = torch.rand(1, 3, 4, 5, generator=g) * 255
        img = torch.nn.functional.interpolate(small, size=(40, 48), mode="bilinear", align_corners=False)[0]
        out.append(img.permute(1, 2, 0).byte().numpy())
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A random tiny net and a validation folder labelled with the fp32 net's own answers (fp32 top-1 is
    100% by construction, so any int8 error shows as a drop)."""
    root = tmp_path_factory.mktemp("q")
    torch.manual_seed(0)
    model = vgg("A", num_classes=4, width=1 / 16, fc_width=32, crop_size=32, dropout=0.0).eval()
    for m in model.modules():  # He-scaled weights: features that differ from picture to picture
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            torch.nn.init.normal_(m.bias, std=0.1)
    transform = crop_transform(make_checkpoint(model, preprocessing=CAFFE, classes=CLASSES, meta={"scale": 32}))
    val = pictures(16, seed=2)
    x = torch.stack([transform(Image.fromarray(px)) for px in val])
    with torch.no_grad():  # centre the class scores over the pictures, so that every class wins some
        model.classifier[-1].bias -= model(x).mean(0)
        labels = model(x).argmax(1).tolist()
    ckpt = make_checkpoint(model, preprocessing=CAFFE, classes=CLASSES, meta={"scale": 32})
    path = save_checkpoint(root / "a.pt", ckpt)
    cal = root / "cal" / "any"
    cal.mkdir(parents=True)
    for i, px in enumerate(pictures(16, seed=1)):
        Image.fromarray(px).save(cal / f"{i}.jpg", quality=95)
    for i, (px, label) in enumerate(zip(val, labels)):
        (root / "val" / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(px).save(root / "val" / CLASSES[label] / f"{i}.png")  # lossless: the labels hold for the decoded pixels
    return path, root


def test_int8_export_is_per_channel_qdq_and_reports_accuracy_and_speed(setup, tmp_path, capsys):
    ckpt, root = setup
    out = tmp_path / "a-int8.onnx"
    assert main(["export", "onnx", str(ckpt), "--out", str(out), "--int8", "--calibration", str(root / "cal"),
                 "--val", str(root / "val"), "--max-drop", "30"]) == 0
    printed = capsys.readouterr().out
    assert "int8 check on 16 images (16 calibration images)" in printed
    assert "fp32 ONNX 100.00%" in printed and "images/s: int8 ONNX" in printed and "PyTorch fp32" in printed
    assert "top-5 n/a (5 classes or fewer)" in printed and "top-5 100.00%" not in printed  # 4 classes
    proto = onnx.load(str(out))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear")
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    int8_weights = [name for name, a in inits.items() if a.dtype == np.int8 and a.ndim == 4]
    assert len(int8_weights) == 8  # net A's 8 conv layers, int8
    first = next(n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == int8_weights[0])
    assert inits[first.input[1]].shape == (inits[int8_weights[0]].shape[0],)  # one scale per output channel
    meta = {p.key: p.value for p in proto.metadata_props}
    assert "vggnet.quantization" in meta and meta["vggnet.classes"] == '["c0", "c1", "c2", "c3"]'


def test_int8_matches_fp32_on_most_images_and_is_refused_when_calibration_is_useless(setup, tmp_path):
    ckpt, root = setup
    report = quantize_onnx(ckpt, tmp_path / "ok.onnx", root / "cal", val=root / "val", max_drop=30, rounds=1)
    assert report.top1["fp32"] == 100.0 and report.top1["int8"] >= 75.0  # 12 of 16
    assert report.top1_drop == pytest.approx(100.0 - report.top1["int8"])
    assert set(report.images_per_s) == {"int8", "fp32", "pytorch_fp32"} and min(report.images_per_s.values()) > 0
    # calibrated on black images only, the activation ranges cannot hold real pictures' values
    black = tmp_path / "black"
    black.mkdir()
    for i in range(4):
        Image.new("RGB", (40, 48)).save(black / f"{i}.png")
    bad = tmp_path / "bad.onnx"
    with pytest.raises(QuantizationRejected, match=r"dropped by .* points .* more than --max-drop 1; .*bad.onnx "
                                                   r"was not written"):
        quantize_onnx(ckpt, bad, black, val=root / "val", max_drop=1, rounds=1)
    assert not bad.exists()


def test_int8_flag_errors(setup, tmp_path, capsys):
    ckpt, root = setup
    out = str(tmp_path / "x.onnx")
    assert main(["export", "onnx", str(ckpt), "--out", out, "--int8"]) == 2
    assert "--int8 needs --calibration DIR" in capsys.readouterr().err
    assert main(["export", "onnx", str(ckpt), "--out", out, "--int8", "--calibration", str(root / "cal"),
                 "--dense"]) == 2
    assert "drop --dense" in capsys.readouterr().err
    assert main(["export", "onnx", str(ckpt), "--out", out, "--int8", "--calibration", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert f"--calibration {tmp_path / 'nope'}: no such directory" in err
