"""Appendix B's protocols as the paper runs them: train and test images never overlap, in every
layout, and C is chosen on a 20% hold-out of the training images (cross-validation as an option)."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import vggnet
from vggnet.checkpoint import make_checkpoint, save_checkpoint
from vggnet.cli import main
from vggnet.data.synthetic import write_multilabel
from vggnet.errors import UserError
from vggnet.transfer.pipeline import select_C, transfer_descriptors

PRE = {"pixel_scale": 1.0, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
CLASSES = ["circle", "cross", "square", "star", "triangle"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = vggnet.vgg("A", len(CLASSES), width=1 / 16, fc_width=16, crop_size=32)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "a.pt",
                           make_checkpoint(model, preprocessing=PRE, classes=CLASSES))


def write_png(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (36, 36, 3)).astype(np.uint8), "RGB").save(path)


def class_folders(root, splits=(None,), per_class=6):
    k = 0
    for split in splits:
        for name in ("a", "b", "c"):
            for i in range(per_class):
                write_png((root / split if split else root) / name / f"{i}.png", k)
                k += 1
    return root


def _runs(ckpt, data, out, **kw):
    args = dict(scales=[32], flip=True, aggregation="average", train_split=None, test_split=None,
                train_per_class=None, test_per_class=None, splits=1, exclude=(), c_grid=[1.0], folds=3,
                train_features=None, test_features=None, device="cpu", amp="off", batch_size=8, workers=0,
                progress=False)
    args.update(kw)
    return transfer_descriptors([str(ckpt)], data, output_dir=out, **args).runs


def _assert_disjoint(runs):
    assert runs
    for tr, _, te, _ in runs:
        assert tr.paths and te.paths
        assert not set(map(os.path.realpath, tr.paths)) & set(map(os.path.realpath, te.paths))


def test_every_layout_gives_disjoint_train_and_test_sets(ckpt, tmp_path):
    # ImageFolder train/val and train/test
    _assert_disjoint(_runs(ckpt, class_folders(tmp_path / "tv", ("train", "val")), tmp_path / "o1"))
    _assert_disjoint(_runs(ckpt, class_folders(tmp_path / "tt", ("train", "test")), tmp_path / "o2"))
    # class folders split per class (Caltech), several splits
    _assert_disjoint(_runs(ckpt, class_folders(tmp_path / "cal"), tmp_path / "o3", train_per_class=3,
                           test_per_class=2, splits=3))
    # VOC devkit trainval/test and train/val
    voc = tmp_path / "voc"
    write_multilabel(voc, classes=CLASSES[:2], trainval=12, test=6, image_size=(40, 48), seed=1)
    _assert_disjoint(_runs(ckpt, voc, tmp_path / "o4"))
    _assert_disjoint(_runs(ckpt, voc, tmp_path / "o5", train_split="train", test_split="val"))


def test_class_folders_without_split_are_refused_naming_the_flags(ckpt, tmp_path, capsys):
    root = class_folders(tmp_path / "cal")
    with pytest.raises(UserError, match=r"no train/ and test/ .*--train-per-class N .*--test-per-class M"):
        _runs(ckpt, root, tmp_path / "o")
    assert main(["transfer", str(ckpt), "--data", str(root), "--test-scales", "32", "--workers", "0",
                 "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "own training images" in err and "Traceback" not in err


def test_overlapping_splits_are_refused(ckpt, tmp_path):
    voc = tmp_path / "voc"
    write_multilabel(voc, classes=CLASSES[:2], trainval=12, test=6, image_size=(40, 48), seed=1)
    with pytest.raises(UserError, match=r"\(trainval\) and the test set \(val\) share 6 image"):
        _runs(ckpt, voc, tmp_path / "o", train_split="trainval", test_split="val")
    # an ImageFolder whose val/ is a link to train/
    root = class_folders(tmp_path / "d", ("train",))
    (root / "val").symlink_to(root / "train", target_is_directory=True)
    with pytest.raises(UserError, match="share 18 image"):
        _runs(ckpt, root, tmp_path / "o2")


def _separable(n_per_class=20, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(3 * n_per_class, 6)).astype(np.float32)
    labels = np.repeat(np.arange(3), n_per_class)
    X[np.arange(len(X)), labels] += 2.0
    Y = np.full((len(X), 3), -1, dtype=np.int8)
    Y[np.arange(len(X)), labels] = 1
    return X, Y


def test_C_is_chosen_on_a_20_percent_holdout_by_default(monkeypatch):
    from vggnet.transfer import pipeline

    X, Y = _separable()
    fits = []
    real_fit = pipeline.LinearSVMs.fit
    monkeypatch.setattr(pipeline.LinearSVMs, "fit", lambda self, X_, Y_: fits.append(len(X_)) or real_fit(self, X_, Y_))
    C, scores = select_C(X, Y, multi_label=False, grid=[0.01, 1.0, 100.0])
    assert C in (0.01, 1.0, 100.0) and set(scores) == {"0.01", "1", "100"}
    assert fits == [48, 48, 48]               # one fit per C, on 80% of the 60 training rows
    fits.clear()
    select_C(X, Y, multi_label=False, grid=[0.01, 1.0], selection="cv", folds=4)
    assert fits == [45] * 8                   # 4 folds x 2 values of C, on 3/4 of the rows
    fits.clear()
    select_C(X, Y, multi_label=True, grid=[1.0, 10.0], holdout=0.25)
    assert fits == [45, 45]
    with pytest.raises(UserError, match="--C-selection"):
        select_C(X, Y, multi_label=False, selection="loo")
    with pytest.raises(UserError, match="--holdout"):
        select_C(X, Y, multi_label=False, holdout=1.5)


def test_cli_reports_how_C_was_chosen(ckpt, tmp_path, capsys):
    root = class_folders(tmp_path / "cal", per_class=6)
    base = ["transfer", str(ckpt), "--data", str(root), "--train-per-class", "5", "--test-scales", "32",
            "--workers", "0", "--C-grid", "0.1,10", "--json"]
    assert main(base + ["--output-dir", str(tmp_path / "h")]) == 0
    assert json.loads(capsys.readouterr().out)["C_selection"] == "20% hold-out of the training images"
    assert main(base + ["--output-dir", str(tmp_path / "c"), "--C-selection", "cv", "--folds", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["C_selection"] == "2-fold cross-validation on the training images"
