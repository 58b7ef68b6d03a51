"""Faults during training (docs/reliability.md): bad files in a step, shared or foreign run folders,
settings that fail late, damaged checkpoints, full disks, and what the run's log says about them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from vggnet.engine import TrainConfig, train
from vggnet.errors import CheckpointError, UserError

TINY = dict(model="A", width=1 / 16, fc_width=16, crop_size=32, scale=32, dropout=0.0, pca_std=0.0, workers=0,
            progress=False, stats_sample=8, device="cpu", amp="off", epochs=1)


def _flat_images(root: Path, layout: dict[str, list[str]]) -> Path:
    """root/{train,val}/<class>/<name>: uniform 32x32 images (a flip or a crop cannot change them);
    names starting with "bad" are zero-byte files."""
    colours = {"a": (200, 40, 40), "b": (40, 40, 200)}
    for split in ("train", "val"):
        for cls, names in layout.items():
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for name in (names if split == "train" else ["v0.png"]):
                if name.startswith("bad"):
                    (folder / name).write_bytes(b"")
                else:
                    Image.new("RGB", (32, 32), colours[cls]).save(folder / name)
    return root


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pt", map_location="cpu", weights_only=True)["state_dict"]


# --------------------------------------------------------------------------- 1: bad files in a step


def test_all_bad_micro_batch_runs_a_zero_weight_step_and_the_step_is_the_mean_of_what_was_read(tmp_path,
                                                                                                  monkeypatch):
    """Micro-batch 1, batch 2, and the second micro-batch is a zero-byte file. Both forward passes run
    (the blank one with weight 0, which keeps DDP ranks in step), and the step is the mean over the one
    image read. Known answer: the only image is uniform, so after subtracting the training mean the net
    sees zeros; with zero biases every logit is 0, the loss is ln 2 and the last layer's bias gradient
    is softmax - onehot = (-0.5, +0.5). One SGD step of lr 0.1 moves that bias to (+0.05, -0.05); a
    divisor that counted the bad file would give half of it."""
    import vggnet.engine.task as task_module

    data = _flat_images(tmp_path / "data", {"a": ["x.png"], "b": ["bad.jpg"]})
    calls = []
    real_loss = task_module.ClassificationTask.loss

    def counting_loss(self, output, targets):
        calls.append(int(output.shape[0]))
        return real_loss(self, output, targets)

    monkeypatch.setattr(task_module.ClassificationTask, "loss", counting_loss)
    train(TrainConfig(**TINY, batch_size=2, micro_batch_size=1, max_steps=1, max_bad_fraction=1.0, lr=0.1,
                      momentum=0.0, weight_decay=0.0, init="glorot", data=str(data),
                      output_dir=str(tmp_path / "run")))
    assert calls == [1, 1]  # the read image and the zero-weight blank, in either order
    ckpt = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)
    totals = ckpt["train"]["epoch_totals"]
    assert (totals["bad"], totals["seen"], totals["steps"]) == (1, 2, 1)
    assert totals["loss_sum"] == pytest.approx(0.693147, abs=1e-4)  # ln 2: the mean over the image read
    bias = ckpt["state_dict"]["classifier.6.bias"]
    torch.testing.assert_close(bias, torch.tensor([0.05, -0.05]), atol=1e-5, rtol=0)
