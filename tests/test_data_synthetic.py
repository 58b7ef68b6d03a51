"""The synthetic shapes dataset: deterministic, varied in scale and size, colour not
predictive of class, and written to disk in a real dataset's layout."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vggnet.cli import main
from vggnet.data import SHAPES, SyntheticShapes, build_dataset, read_voc_xml, write_synthetic
from vggnet.errors import UserError

SMALL = (48, 96)  # image sides for fast tests


def test_deterministic_by_seed_and_index():
    a = SyntheticShapes(30, seed=3, image_size=SMALL)
    b = SyntheticShapes(30, seed=3, image_size=SMALL)
    c = SyntheticShapes(30, seed=4, image_size=SMALL)
    for i in (7, 0, 29):  # any order gives the same image
        ia, la, ba = a.generate(i)
        ib, lb, bb = b.generate(i)
        assert np.array_equal(np.asarray(ia), np.asarray(ib)) and la == lb and ba == bb
    assert not np.array_equal(np.asarray(a.generate(7)[0]), np.asarray(c.generate(7)[0]))
    val = SyntheticShapes(30, seed=3, split="val", image_size=SMALL)
    assert not np.array_equal(np.asarray(a.generate(0)[0]), np.asarray(val.generate(0)[0]))


def test_classes_sorted_balanced_and_bounded():
    ds = SyntheticShapes(40, classes=10)
    assert len(ds.classes) == 10 and ds.classes == sorted(ds.classes)
    assert np.bincount(ds.targets).tolist() == [4] * 10
    assert len(SyntheticShapes(16, classes=len(SHAPES)).classes) == len(SHAPES) >= 16
    with pytest.raises(UserError, match="--classes: expected 2 to"):
        SyntheticShapes(10, classes=1)
    with pytest.raises(UserError, match="classes"):
        SyntheticShapes(10, classes=["circle", "blob"])


def test_sizes_scales_and_boxes_vary_widely():
    ds = SyntheticShapes(200, image_size=(160, 400))
    sizes, fractions = [], []
    for i in range(0, 200, 2):
        img, _, (x0, y0, x1, y1) = ds.generate(i)
        w, h = img.size
        assert 160 <= w <= 400 and 160 <= h <= 400
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        sizes.append((w, h))
        fractions.append(max(x1 - x0, y1 - y0) / min(w, h))  # extent of the shape vs the image
    aspects = [w / h for w, h in sizes]
    assert min(aspects) < 0.75 and max(aspects) > 1.33  # varied, photo-like: within 16:10 either way
    assert 1 / 1.61 < min(aspects) and max(aspects) < 1.61
    assert max(fractions) > 0.75
    assert len(set(sizes)) > 80
    # about a seventh to most of the image; larger shapes are more frequent (extent ~ sqrt of uniform)
    small = SyntheticShapes(800, image_size=(96, 128))
    fractions = []
    for i in range(len(small)):
        img, _, (x0, y0, x1, y1) = small.generate(i)
        fractions.append(max(x1 - x0, y1 - y0) / min(img.size))
    assert min(fractions) < 0.2 and max(fractions) > 0.8
    assert 0.45 < float(np.median(fractions)) < 0.8


def test_mean_colour_does_not_predict_the_class():
    # nearest class-mean classifier on mean RGB: chance is 10%
    train = SyntheticShapes(400, image_size=(32, 48), seed=1)
    test = SyntheticShapes(200, image_size=(32, 48), seed=1, split="val")

    def feats(ds):
        return np.stack([np.asarray(ds.generate(i)[0], dtype=np.float32).mean((0, 1)) for i in range(len(ds))])

    xt, yt = feats(train), np.array(train.targets)
    centroids = np.stack([xt[yt == c].mean(0) for c in range(10)])
    xv, yv = feats(test), np.array(test.targets)
    pred = np.argmin(((xv[:, None] - centroids[None]) ** 2).sum(-1), 1)
    assert (pred == yv).mean() < 0.2


def test_in_memory_items_with_transform_and_boxes():
    seen = []

    def transform(img, boxes=None):
        seen.append(img.size)
        return (img, boxes) if boxes is not None else img

    img, label, boxes = SyntheticShapes(5, transform=transform, boxes=True, image_size=SMALL)[2]
    assert tuple(boxes.canvas_size) == (img.height, img.width) and boxes.shape == (1, 4)
    img2, label2 = SyntheticShapes(5, transform=transform, image_size=SMALL)[2]
    assert label == label2 == 2 and seen[0] == seen[1]


def test_write_synthetic_layout_and_boxes_round_trip(tmp_path):
    out = tmp_path / "shapes"
    params = write_synthetic(out, classes=10, train=20, val=10, seed=5, image_size=SMALL)
    assert sorted(p.name for p in out.iterdir()) == ["annotations", "synthetic.json", "train", "val"]
    train = build_dataset(out, split="train", boxes=True)
    val = build_dataset(out, split="val", boxes=True)
    assert len(train) == 20 and len(val) == 10 and train.classes == params["classes"] == val.classes
    mem = SyntheticShapes(20, classes=10, seed=5, image_size=SMALL)
    for i, (path, label) in enumerate(train.samples[:5]):
        stem = path.rsplit("/", 1)[-1][:-4]
        index = int(stem.rsplit("_", 1)[1])
        img, mlabel, box = mem.generate(index)
        assert label == mlabel
        boxes, names = train.raw_boxes(i)
        assert boxes.tolist() == [list(map(float, box))] and names == [train.classes[label]]
        disk = np.asarray(Image.open(path), dtype=np.int16)
        assert disk.shape[:2] == (img.height, img.width)
        # the JPEG of the same image (noise costs some fidelity, the content is the same)
        assert np.corrcoef(disk.ravel(), np.asarray(img, dtype=np.int16).ravel())[0, 1] > 0.9
    xml = out / "annotations" / "train" / train.classes[0] / f"{train.classes[0]}_00000.xml"
    assert read_voc_xml(xml)[1] == [train.classes[0]]


def test_write_synthetic_refuses_to_overwrite_without_force(tmp_path):
    out = tmp_path / "shapes"
    write_synthetic(out, train=20, val=0, image_size=SMALL)
    with pytest.raises(UserError, match=f"{out}: exists and is not empty; pass --force"):
        write_synthetic(out, train=10, val=0, image_size=SMALL)
    write_synthetic(out, train=10, val=0, image_size=SMALL, force=True)
    assert len(list((out / "train").rglob("*.jpg"))) == 10  # the old 20 are gone, not mixed in


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "s"
    argv = ["synth", str(out), "--classes", "10", "--train", "20", "--val", "10", "--min-size", "48",
            "--max-size", "64"]
    assert main(argv) == 0
    assert len(list((out / "val").rglob("*.jpg"))) == 10
    assert main(argv) == 2
    assert "pass --force" in capsys.readouterr().err
    assert main(argv + ["--force"]) == 0
    assert main(["synth", str(tmp_path / "t"), "--classes", "99"]) == 2
    assert "--classes: expected 2 to" in capsys.readouterr().err



def test_a_small_cnn_learns_it_well_above_chance():
    """Learnable: a 4-layer CNN trained for ~20 s on a CPU (240 SGD steps, 4 classes, 48 px)
    is far above chance on held-out images; the mean-colour test above shows it is not trivial."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from vggnet.data.transforms import DenseEvalPreset, Preprocessing, TrainPreset

    pre = Preprocessing.caffe(mean=[127.0, 127.0, 127.0])
    train = SyntheticShapes(1200, classes=4, split="train", seed=0, image_size=(48, 64))
    train.transform = TrainPreset(crop_size=48, scale=48, preprocessing=pre)
    val = SyntheticShapes(300, classes=4, split="val", seed=0, image_size=(48, 48))
    val.transform = DenseEvalPreset(scale=48, preprocessing=pre)
    x = torch.stack([train[i][0] for i in range(len(train))])
    y = torch.tensor(train.targets)
    xv = torch.stack([val[i][0] for i in range(len(val))])
    yv = torch.tensor(val.targets)

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    torch.manual_seed(0)
    net = nn.Sequential(*block(3, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2), *block(32, 64),
                        nn.MaxPool2d(2), *block(64, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 4))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for _ in range(240):
        idx = torch.randint(0, len(x), (64,))
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(xv).argmax(1) == yv).float().mean().item()
    assert accuracy > 0.55, f"validation accuracy {accuracy:.2f} (chance 0.25; measured 0.70)"


def test_synth_help_knows_how_many_shapes_there_are():
    """`vgg synth --help` names the most classes without importing the generator (no torch): the two agree."""
    from vggnet.data.cli import MAX_SHAPE_CLASSES
    from vggnet.data.synthetic import SHAPES

    assert MAX_SHAPE_CLASSES == len(SHAPES)
