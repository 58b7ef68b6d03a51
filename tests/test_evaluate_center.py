"""`vgg eval --method center` against torchvision itself, and what the report shows a user.

A tiny VGG is built with torchvision's own `VGG` class (its forward: features ->
avgpool -> flatten -> classifier), its state dict imported with `vgg import
torchvision`, and evaluated by `vgg eval --method center`; the reference is
`torchvision.transforms` Resize + CenterCrop + ToTensor + Normalize and
torchvision's forward on the same image files.
"""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vggnet.cli import main
from vggnet.classification.evaluate import center_resize, evaluate

torchvision = pytest.importorskip("torchvision")

CROP = 64              # FC1 sees a 2x2 grid of the last conv map: the flatten order matters
CLASSES = list("abcde")  # 5 classes: top-5 is n/a
# (width, height) of the test images: non-square, both orientations, one already small
SIZES = [(90, 120), (150, 100), (80, 80), (97, 131), (120, 75), (70, 100), (133, 89), (100, 140)]


def tiny_torchvision_vgg(num_classes: int) -> nn.Module:
    """torchvision's VGG class with configuration A's layer list at 1/16 width and a 32-wide head."""
    from torchvision.models.vgg import VGG, make_layers

    cfg = [4, "M", 8, "M", 16, 16, "M", 32, 32, "M", 32, 32, "M"]
    model = VGG(make_layers(cfg), num_classes=num_classes)
    # crop 64 leaves a 2x2 map; torchvision's classifier takes 512*7*7 inputs: give it ours (same keys)
    model.avgpool = nn.AdaptiveAvgPool2d((2, 2))  # identity on the 2x2 map of a 64-px crop
    model.classifier = nn.Sequential(nn.Linear(32 * 2 * 2, 32), nn.ReLU(True), nn.Dropout(),
                                     nn.Linear(32, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, num_classes))
    for m in model.classifier:  # He-scaled: O(1) class scores, so the posteriors are not all equal
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=(2.0 / m.in_features) ** 0.5)
            nn.init.normal_(m.bias, std=0.5)
    return model.eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("center")
    torch.manual_seed(3)
    tv = tiny_torchvision_vgg(len(CLASSES))
    torch.save(tv.state_dict(), root / "tiny.pth")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(SIZES):
        # smooth gradients plus noise: resizing interpolates real structure
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(xx * (3 + i)) % 256, (yy * (5 + i)) % 256, (xx + yy) * 2 % 256], -1)
        img = (img + rng.integers(0, 40, img.shape)).clip(0, 255).astype(np.uint8)
        path = root / f"img{i}.png"
        Image.fromarray(img).save(path)
        # labelled so that torchvision gets every other image right: accuracy 50%, errors in the matrix
        guess = int(torchvision_posteriors(tv, [path]).argmax())
        folder = root / "val" / CLASSES[guess if i % 2 == 0 else (guess + 1 + i % 3) % len(CLASSES)]
        folder.mkdir(parents=True, exist_ok=True)
        path.rename(folder / path.name)
    assert main(["import", "torchvision", str(root / "tiny.pth"), "--out", str(root / "tiny.pt"),
                 "--classes", str(root / "classes.txt")]) == 0
    return root, tv


def torchvision_posteriors(tv, paths, crop_pct=0.875):
    from torchvision import transforms

    resize = int(CROP / crop_pct)
    t = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(CROP), transforms.ToTensor(),
                            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    x = torch.stack([t(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        return tv(x).softmax(dim=1)


def test_center_resize_follows_crop_pct():
    assert center_resize(224) == 256 and center_resize(224, 0.95) == 235 and center_resize(64) == 73
    with pytest.raises(ValueError, match="crop-pct"):
        center_resize(224, 1.5)


def test_center_crop_eval_equals_torchvision_preprocessing_and_forward(setup):
    root, tv = setup
    result = evaluate(str(root / "tiny.pt"), str(root / "val"), method="center", device="cpu", amp="off")
    assert result.flip is False and result.nets[0]["test_scales"] == [73]
    want = torchvision_posteriors(tv, result.paths)
    got = result.final_posterior()
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert not torch.allclose(want, want.mean(0, keepdim=True), atol=1e-2)  # the images are told apart
    # another crop_pct is another resize, and still torchvision's
    other = evaluate(str(root / "tiny.pt"), str(root / "val"), method="center", device="cpu", crop_pct=0.75)
    assert other.nets[0]["test_scales"] == [85]
    assert torch.allclose(other.final_posterior(), torchvision_posteriors(tv, other.paths, 0.75), atol=1e-5)


def test_center_eval_report_accuracy_top5_na_per_class_and_confusion_matrix(setup, capsys):
    from sklearn.metrics import confusion_matrix

    root, tv = setup
    ckpt, data = str(root / "tiny.pt"), str(root / "val")
    cm_path = root / "cm.csv"
    assert main(["eval", "--checkpoint", ckpt, "--data", data, "--method", "center", "--amp", "off",
                 "--workers", "0", "--json", "--confusion-matrix", str(cm_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    paths = [p for p in sorted((root / "val").rglob("*.png"))]
    want = torchvision_posteriors(tv, paths)
    labels = torch.tensor([CLASSES.index(p.parent.name) for p in paths])
    predicted = want.argmax(dim=1)
    accuracy = 100.0 * float((predicted == labels).float().mean())
    o = report["overall"]
    assert accuracy == 50.0
    assert o["top1_accuracy"] == pytest.approx(accuracy) and o["top1_error"] == pytest.approx(100 - accuracy)
    assert report["top5_applicable"] is False and o["top5_error"] is None and o["top5_accuracy"] is None
    assert report["rows"][0]["top1_accuracy"] == pytest.approx(accuracy) and report["rows"][0]["top5_error"] is None
    assert report["method"] == "center"
    # confusion matrix: scikit-learn's, rows = true class, in the checkpoint's class order
    with open(cm_path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == CLASSES and [r[0] for r in rows[1:]] == CLASSES
    expected = confusion_matrix(labels.numpy(), predicted.numpy(), labels=list(range(len(CLASSES))))
    assert np.array_equal(np.array([[int(v) for v in r[1:]] for r in rows[1:]]), expected)
    png = cm_path.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(png).size[0] > 100


def test_center_eval_table_shows_accuracy_top5_na_and_names_per_class_accuracy(setup, capsys):
    root, tv = setup
    paths = sorted((root / "val").rglob("*.png"))
    labels = torch.tensor([CLASSES.index(p.parent.name) for p in paths])
    accuracy = 100.0 * float((torchvision_posteriors(tv, paths).argmax(dim=1) == labels).float().mean())
    assert main(["eval", "--checkpoint", str(root / "tiny.pt"), "--data", str(root / "val"), "--method", "center",
                 "--amp", "off", "--workers", "0", "--per-class"]) == 0
    out = capsys.readouterr().out
    assert "top-1 acc (%)" in out and "| n/a " in out and f"top-1 accuracy {accuracy:.2f}%" in out
    assert "top-5 n/a (5 classes" in out
    assert "per-class accuracy (recall: correct top-1 / images of the class)" in out


def test_eval_writes_one_line_per_pass_without_a_terminal(setup, capsys):
    root, _ = setup
    assert main(["eval", "--checkpoint", str(root / "tiny.pt"), "--data", str(root / "val"), "--amp", "off",
                 "--workers", "0", "--test-scales", "64,80"]) == 0
    err = capsys.readouterr().err  # capsys: stderr is not a terminal
    assert "%|" not in err and "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("evaluated ")]
    assert [line.split()[1] for line in lines] == ["Q=64", "Q=80"] and "8 images" in lines[0]


def test_predict_takes_checkpoint_flag_a_folder_and_center(setup, capsys):
    root, tv = setup
    ckpt = str(root / "tiny.pt")
    assert main(["predict", "--checkpoint", ckpt, str(root / "val"), "--method", "center", "--json",
                 "--amp", "off", "--channels-last", "off"]) == 0
    out = json.loads(capsys.readouterr().out)
    paths = sorted((root / "val").rglob("*.png"))
    assert [r["image"] for r in out] == [str(p) for p in paths]  # every image of the folder, sorted
    want = torchvision_posteriors(tv, paths)
    for r, p in zip(out, want):
        assert r["top"][0]["index"] == int(p.argmax()) and r["top"][0]["probability"] == pytest.approx(
            float(p.max()), abs=1e-5)
    # the old positional form still works, with a note saying what replaces it
    assert main(["predict", ckpt, str(paths[0]), "--json", "--amp", "off"]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)) == 1 and "deprecated; use `vgg predict --checkpoint" in captured.err
    (root / "empty").mkdir(exist_ok=True)
    assert main(["predict", "--checkpoint", ckpt, str(root / "empty")]) == 2
    assert "a folder with no image files" in capsys.readouterr().err
