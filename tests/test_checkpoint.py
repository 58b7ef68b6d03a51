"""The checkpoint format: safe to load, atomic to write, clear about bad files."""

import os

import pytest
import torch

from vggnet.checkpoint import (
    CAFFE_PREPROCESSING,
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from vggnet.errors import CheckpointError
from vggnet.models import vgg

BUILD = dict(num_classes=4, width=1 / 16, fc_width=16, crop_size=32)


def tiny_ckpt(**kw):
    model = vgg("A", **BUILD)
    return model, make_checkpoint(model, preprocessing=CAFFE_PREPROCESSING, classes=list("wxyz"), **kw)


def test_round_trip_rebuilds_model_with_same_logits(tmp_path):
    model, ckpt = tiny_ckpt(meta={"scale": [256, 512]})
    path = save_checkpoint(tmp_path / "a.pt", ckpt)
    # plain containers only: weights_only loading works
    raw = torch.load(path, weights_only=True)
    assert raw["build"]["name"] == "A" and raw["classes"] == ["w", "x", "y", "z"]
    rebuilt, loaded = model_from_checkpoint(path)
    x = torch.randn(2, 3, 32, 32)
    model.eval(), rebuilt.eval()
    assert torch.equal(model(x), rebuilt(x))
    assert loaded["meta"]["scale"] == [256, 512] and loaded["preprocessing"]["pixel_scale"] == 255.0


def test_save_is_atomic_and_keeps_old_file_on_failure(tmp_path):
    _, ckpt = tiny_ckpt()
    path = save_checkpoint(tmp_path / "last.pt", ckpt)
    good = path.read_bytes()

    class Boom:  # torch.save of this fails part-way through pickling
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {**ckpt, "meta": {"x": Boom()}})
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_class_names_must_match_outputs():
    with pytest.raises(ValueError, match="3 class names for a model with 4 outputs"):
        make_checkpoint(vgg("A", **BUILD), preprocessing=CAFFE_PREPROCESSING, classes=["a", "b", "c"])


@pytest.mark.parametrize("damage,match", [
    ("missing", "does not exist"),
    ("empty", "is empty"),
    ("truncated", "cannot be read"),
    ("text", "cannot be read"),
    ("bare", "not a vggnet checkpoint.*vgg import torchvision"),
    ("future", "format version 99"),
])
def test_bad_checkpoints_are_named(tmp_path, damage, match):
    model, ckpt = tiny_ckpt()
    path = tmp_path / "c.pt"
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        save_checkpoint(path, ckpt)
        path.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
    elif damage == "text":
        path.write_text("hello")
    elif damage == "bare":
        torch.save(model.state_dict(), path)
    elif damage == "future":
        save_checkpoint(path, {**ckpt, "version": 99})
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_checkpoint_of_another_configuration(tmp_path):
    _, ckpt = tiny_ckpt()
    ckpt["build"]["name"] = "D"
    save_checkpoint(tmp_path / "c.pt", ckpt)
    with pytest.raises(CheckpointError, match="does not match the model it describes"):
        model_from_checkpoint(tmp_path / "c.pt")
