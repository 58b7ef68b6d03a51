"""Table 12: action classification on the VOC-2012 action layout (synthetic stick persons)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import vggnet
from vggnet.checkpoint import make_checkpoint, save_checkpoint
from vggnet.cli import main
from vggnet.data.synthetic_action import ACTIONS, write_actions
from vggnet.data.voc_action import is_voc_action, read_action_split
from vggnet.errors import DataError
from vggnet.transfer.action import action_descriptors, crop_boxes, fit_action
from vggnet.transfer.descriptors import DescriptorExtractor, ImageSet

PRE = {"pixel_scale": 1.0, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = vggnet.vgg("A", 4, width=1 / 16, fc_width=16, crop_size=32)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "a.pt",
                           make_checkpoint(model, preprocessing=PRE, classes=list("abcd")))


@pytest.fixture(scope="module")
def actions(tmp_path_factory):
    out = tmp_path_factory.mktemp("act") / "voc12"
    write_actions(out, train=16, val=10, image_size=48, seed=3)
    return out


def test_synth_writes_the_voc2012_action_layout(actions, tmp_path, capsys):
    assert is_voc_action(actions)
    train = read_action_split(actions, "train")
    val = read_action_split(actions, "val", actions=train.actions)
    assert train.actions == sorted(ACTIONS)
    # one action per person; 1 or 2 persons per image; the box inside the image
    assert (np.sort(train.labels, axis=1) == [-1, -1, -1, 1]).all()
    assert 16 <= len(train) <= 32 and len(set(train.paths)) == 16 and len(set(val.paths)) == 10
    assert not set(train.paths) & set(val.paths)
    w, h = Image.open(train.paths[0]).size
    assert (train.boxes[:, 0] >= 0).all() and (train.boxes[:, 2] <= w).all() and (train.boxes[:, 3] <= h).all()
    assert (train.boxes[:, 2] > train.boxes[:, 0]).all()
    assert main(["synth", "--action", str(tmp_path / "a"), "--train", "2", "--val", "2", "--min-size", "40"]) == 0
    assert "VOC-2012 action layout" in capsys.readouterr().out
    assert main(["synth", "--action", "--multi-label", str(tmp_path / "b")]) == 2


def test_action_lists_errors_name_the_file(actions, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(actions, bad)
    listing = bad / "ImageSets" / "Action" / "pointing-up_train.txt"
    listing.write_text(listing.read_text() + "2012_000001 9 1\n")
    with pytest.raises(DataError, match=r"2012_000001.xml: object 9 is listed"):
        read_action_split(bad, "train")
    with pytest.raises(DataError, match=r"no <action>_test.txt lists"):
        read_action_split(bad, "test")


def test_box_descriptor_is_the_crop_described_like_an_image(ckpt, actions, tmp_path):
    work = action_descriptors([str(ckpt)], actions, output_dir=tmp_path / "o", setting="image+box", scales=[32, 40],
                              device="cpu")
    train = work.train
    crops = crop_boxes(train, tmp_path / "crops")
    x0, y0, x1, y1 = train.boxes[0]
    assert Image.open(crops[0]).size == (int(np.ceil(x1)) - int(np.floor(x0)), int(np.ceil(y1)) - int(np.floor(y0)))
    ex = DescriptorExtractor([str(ckpt)], scales=[32, 40], device="cpu")
    image = ex.compute(ImageSet(train.paths[:3], np.zeros(3, dtype=np.int64), ["?"])).numpy()
    box = ex.compute(ImageSet(crops[:3], np.zeros(3, dtype=np.int64), ["?"])).numpy()
    stacked = np.concatenate([image, box], axis=1)
    stacked /= np.linalg.norm(stacked, axis=1, keepdims=True)
    assert work.X_train.shape == (len(train), 32)
    assert np.allclose(work.X_train[:3], stacked, atol=1e-5)
    # the image setting: the persons of one image share its descriptor; with the box they differ
    image_only = action_descriptors([str(ckpt)], actions, output_dir=tmp_path / "o", setting="image", scales=[32, 40],
                                    device="cpu")
    assert image_only.X_train.shape == (len(train), 16)
    two = next(p for p in train.paths if train.paths.count(p) == 2)   # an image with two persons
    first = [i for i, p in enumerate(train.paths) if p == two]
    assert np.array_equal(image_only.X_train[first[0]], image_only.X_train[first[1]])
    assert not np.allclose(work.X_train[first[0]], work.X_train[first[1]])
    report = fit_action(work, c_grid=[0.1, 10.0])
    assert report["actions"] == sorted(ACTIONS) and set(report["ap"]) == set(ACTIONS)
    assert 0 <= report["mAP"] <= 100 and report["test_instances"] == len(work.test)
    assert json.loads((tmp_path / "o" / "results.json").read_text())["setting"] == "image+box"


def test_cli_transfer_task_action(ckpt, actions, tmp_path, capsys):
    base = ["transfer", str(ckpt), "--task", "action", "--data", str(actions), "--test-scales", "32",
            "--workers", "0", "--C-grid", "1", "--output-dir", str(tmp_path / "o")]
    assert main(base + ["--action-setting", "image", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["setting"] == "image" and report["descriptor"]["dim"] == 16
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "action classification (image+box): mAP" in out and "train on train, test on val" in out
    assert main(base + ["--train-per-class", "3"]) == 2
    assert "--train-per-class does not apply" in capsys.readouterr().err
    assert main(base + ["--test-split", "train"]) == 2
    assert "must not be tested on its training images" in capsys.readouterr().err
    assert main(base[:2] + base[4:]) == 2     # without --task action: named, not mistaken for class folders
    assert "with --task action" in capsys.readouterr().err


def test_cli_transfer_task_action_passes_the_execution_flags(ckpt, actions, tmp_path, monkeypatch):
    """`--channels-last` reaches the descriptor extractor of `--task action` as it does for `vgg transfer`."""
    from vggnet.transfer import action

    seen = {}
    real = action.DescriptorExtractor

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(action, "DescriptorExtractor", spy)
    assert main(["transfer", str(ckpt), "--task", "action", "--data", str(actions), "--test-scales", "32",
                 "--workers", "0", "--C-grid", "1", "--action-setting", "image", "--channels-last", "on",
                 "--json", "--output-dir", str(tmp_path / "o")]) == 0
    assert seen["channels_last"] == "on" and seen["amp"] == "auto"
