"""Fine-tuning to a new set of classes, what users do first: a 10-class net fine-tuned on a 4-class image
folder end to end through the `vgg` command (train -> eval -> predict), the conv layers frozen with
`--freeze features`, and `create_model(name, pretrained=PATH)`.

Tiny nets (A at 1/16 width, FC 16, 32-px crops) and a folder of PNGs written here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from vggnet.cli import main
from vggnet import TrainConfig, train
from vggnet.errors import UserError

NET = dict(model="A", width=1 / 16, fc_width=16, crop_size=32, scale=[32, 40])
COLOURS = {"blue": (30, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30), "yellow": (230, 220, 40)}


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def ten_classes(tmp_path_factory) -> Path:
    """A 10-class checkpoint (synthetic shapes), trained for one short epoch."""
    out = tmp_path_factory.mktemp("ten")
    train(TrainConfig(**NET, synthetic_classes=10, synthetic_train=24, synthetic_val=10,
                      synthetic_image_size=[32, 48], batch_size=8, epochs=1, workers=0, progress=False,
                      stats_sample=8, device="cpu", amp="off", batch_norm=True, output_dir=str(out)))
    return out / "last.pt"


@pytest.fixture(scope="module")
def four_classes(tmp_path_factory) -> Path:
    """DIR/train and DIR/val, 4 colour classes of 40x40 PNGs with a lighter square at a random place."""
    root = tmp_path_factory.mktemp("four")
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 6), ("val", 2)):
        for name, rgb in COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                img = Image.new("RGB", (40, 40), rgb)
                x, y = (int(v) for v in torch.randint(0, 24, (2,), generator=g))
                img.paste(tuple(min(255, c + 35) for c in rgb), (x, y, x + 16, y + 16))
                img.save(root / split / name / f"{i}.png")
    return root


def cli_train(data: Path, out: Path, init: Path, *extra: str) -> int:
    return main(["train", "--data", str(data), "--init", f"from:{init}", "--model", "A", "--width", "0.0625",
                 "--fc-width", "16", "--crop-size", "32", "--scale", "32:40", "--batch-norm", "--batch-size", "8",
                 "--epochs", "2", "--lr", "0.01", "--workers", "0", "--stats-sample", "8", "--device", "cpu",
                 "--amp", "off", "--no-progress", "--output-dir", str(out), *extra])


def test_fine_tune_a_10_class_net_on_a_4_class_folder_then_eval_and_predict(ten_classes, four_classes, tmp_path,
                                                                            capsys):
    out = tmp_path / "run"
    assert cli_train(four_classes, out, ten_classes) == 0
    log = (out / "train.log").read_text()
    # one log line names the layer that did not fit, with both shapes; nothing else is re-initialised
    assert f"init {ten_classes}, except classifier.6 (re-initialised gaussian: classifier.6 (10, 16) -> (4, 16))" \
        in log
    best = load(out / "best.pt")
    assert best["classes"] == sorted(COLOURS) and best["build"]["num_classes"] == 4
    assert best["state_dict"]["classifier.6.weight"].shape == (4, 16)
    assert len(load(out / "last.pt")["train"]["history"]) == 2
    capsys.readouterr()

    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--data", str(four_classes), "--workers", "0",
                 "--device", "cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    overall = report["overall"]
    assert overall["images"] == 8
    assert overall["top1_error"] * 8 / 100 == pytest.approx(round(overall["top1_error"] * 8 / 100))

    image = four_classes / "val" / "red" / "0.png"
    assert main(["predict", str(out / "best.pt"), str(image), "--topk", "4", "--device", "cpu", "--json"]) == 0
    (pred,) = json.loads(capsys.readouterr().out)
    assert sorted(t["class"] for t in pred["top"]) == sorted(COLOURS)  # the new classes, by name
    assert sum(t["probability"] for t in pred["top"]) == pytest.approx(1.0, abs=1e-4)


def test_fine_tune_at_another_crop_reinitialises_fc1_too(ten_classes, four_classes, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", str(four_classes), "--init", f"from:{ten_classes}", "--model", "A",
                 "--width", "0.0625", "--fc-width", "16", "--crop-size", "64", "--batch-norm", "--batch-size", "8",
                 "--epochs", "1", "--max-steps", "1", "--workers", "0", "--stats-sample", "8", "--device", "cpu",
                 "--no-progress", "--output-dir", str(out)]) == 0
    assert "except classifier.0, classifier.6 (re-initialised gaussian: classifier.0 (16, 32) -> (16, 128), " \
           "classifier.6 (10, 16) -> (4, 16))" in (out / "train.log").read_text()
    # the scale followed the crop: S = round(64 x 256/224) = 73
    assert load(out / "last.pt")["train"]["config"]["scale"] == 73


def test_freeze_features_keeps_the_conv_layers_bitwise_and_trains_the_fc_layers(ten_classes, four_classes,
                                                                               tmp_path):
    out = tmp_path / "run"
    assert cli_train(four_classes, out, ten_classes, "--freeze", "features", "--epochs", "1") == 0
    before, after = load(ten_classes)["state_dict"], load(out / "last.pt")["state_dict"]
    features = [k for k in after if k.startswith("features.")]
    assert any("running_mean" in k for k in features)  # BatchNorm statistics are kept as well
    changed = [k for k in features if not torch.equal(before[k], after[k])]
    assert not changed, f"frozen layers changed: {changed}"
    for k in ("classifier.0.weight", "classifier.3.weight"):
        assert not torch.equal(before[k], after[k]), k
    assert "conv layers frozen (--freeze features)" in (out / "train.log").read_text()
    # only the FC layers are in the optimizer
    groups = load(out / "last.pt")["train"]["optimizer"]["param_groups"]
    assert sum(len(g["params"]) for g in groups) == 6  # 3 FC layers x (weight, bias)


def test_create_model_takes_a_path_and_refuses_pretrained_true(ten_classes):
    from vggnet.hub import create_model

    with pytest.raises(UserError, match=r"pretrained=True.*downloads no weights.*vgg import torchvision"):
        create_model("A", pretrained=True)
    with pytest.raises(UserError, match="path of a weights file"):
        create_model("A", pretrained=3)
    model = create_model("A", pretrained=ten_classes, num_classes=4)
    state = load(ten_classes)["state_dict"]
    assert torch.equal(model.features[0].weight, state["features.0.weight"])
    assert model.classifier[-1].out_features == 4 and model.pretrained_cfg["classes"] is None
    assert create_model("A", pretrained=False, width=1 / 16, fc_width=16, num_classes=3).num_classes == 3


def test_the_readme_recipe_from_a_torchvision_weights_file(four_classes, tmp_path, capsys):
    """import torchvision's layout -> train --init from: -> predict; the fine-tuned net keeps feeding its
    layers the inputs they were trained on (torchvision's 0-1 pixels, ImageNet mean and std)."""
    import vggnet

    tv = vggnet.vgg("A", 1000, width=1 / 16, fc_width=16, crop_size=32)  # torchvision's keys and shapes
    torch.save(tv.state_dict(), tmp_path / "vgg11-tiny.pth")
    assert main(["import", "torchvision", str(tmp_path / "vgg11-tiny.pth"), "--out", str(tmp_path / "vgg11.pt")]) == 0
    out = tmp_path / "run"
    assert main(["train", "--data", str(four_classes), "--init", f"from:{tmp_path / 'vgg11.pt'}", "--model", "A",
                 "--width", "0.0625", "--fc-width", "16", "--crop-size", "32", "--batch-size", "8", "--epochs", "1",
                 "--lr", "0.001", "--workers", "0", "--stats-sample", "8", "--device", "cpu", "--no-progress",
                 "--output-dir", str(out)]) == 0
    log = (out / "train.log").read_text()
    assert "re-initialised gaussian: classifier.6 (1000, 16) -> (4, 16)" in log
    assert "inputs normalised as the initial net's: pixels x 1, mean 0.485, 0.456, 0.406, std 0.229" in log
    ckpt = load(out / "best.pt")
    assert ckpt["preprocessing"] == load(tmp_path / "vgg11.pt")["preprocessing"]
    capsys.readouterr()
    image = four_classes / "val" / "blue" / "1.png"
    assert main(["predict", str(out / "best.pt"), str(image), "--topk", "1", "--device", "cpu", "--json"]) == 0
    (pred,) = json.loads(capsys.readouterr().out)
    assert pred["top"][0]["class"] in COLOURS
