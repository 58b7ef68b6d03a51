"""Defaults that fit: a batch larger than the training set becomes the training set (with a note, also
when resumed); best.pt holds weights, EMA and settings but no optimizer state; a run keeps one resumable
checkpoint (`--keep`), so two model-sized files in all."""

from __future__ import annotations

from pathlib import Path

import torch

from vggnet import TrainConfig, train
from vggnet.engine.loop import RESUME_ONLY

TINY = dict(model="A", width=1 / 16, fc_width=16, crop_size=32, scale=[32, 40], synthetic_classes=3,
            synthetic_train=12, synthetic_val=6, synthetic_image_size=[32, 48], workers=0, progress=False,
            stats_sample=8, device="cpu", amp="off")


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_a_batch_larger_than_the_training_set_is_reduced_with_a_note_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    train(TrainConfig(**TINY, batch_size=256, epochs=1, output_dir=str(out)))
    log = (out / "train.log").read_text()
    assert "--batch-size 256 is larger than the training set (12 images): batch 12" in log
    last = load(out / "last.pt")
    assert last["train"]["config"]["batch_size"] == 12 and last["train"]["batch_reduced_from"] == 256
    # the same command again, one more epoch: resumes (the reduced batch is the run's own)
    train(TrainConfig(**TINY, batch_size=256, epochs=2, resume="auto", output_dir=str(out)))
    assert load(out / "last.pt")["train"]["epoch"] == 2


def test_best_pt_has_no_optimizer_state_and_one_resumable_checkpoint_is_kept(tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(**TINY, batch_size=4, epochs=3, lr_patience=5, ema_decay=0.9, output_dir=str(out)))
    best, last = load(out / "best.pt"), load(out / "last.pt")
    assert not set(RESUME_ONLY) & set(best["train"]) and "optimizer" in last["train"]
    assert "ema" in best["train"] and best["train"]["config"]["batch_size"] == 4  # EMA and settings stay
    assert set(best["state_dict"]) == set(last["state_dict"])
    numbered = sorted(out.glob("checkpoint_*.pt"))
    assert len(numbered) == 1 and numbered[0].samefile(out / "last.pt")
    # momentum buffers double the resumable file; best.pt is about the model's size
    assert (out / "best.pt").stat().st_size < 0.8 * (out / "last.pt").stat().st_size
    # what best.pt is for: inference and --init from:
    from vggnet.checkpoint import model_from_checkpoint

    model_from_checkpoint(best)
