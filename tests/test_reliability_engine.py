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

from vggnet import TrainConfig, train
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
    import vggnet.classification.task as task_module

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


def _tiny_synthetic(out: Path, **overrides) -> TrainConfig:
    return TrainConfig(**{**TINY, "scale": [32, 48], "synthetic_classes": 3, "synthetic_train": 12,
                          "synthetic_val": 3, "synthetic_image_size": [32, 48], "batch_size": 4, **overrides,
                          "output_dir": str(out)})


# --------------------------------------------------------------------------- 3, 4, 8: the run folder


def test_a_second_run_in_a_locked_folder_is_refused_naming_the_holder(tmp_path):
    from vggnet.engine.state import claim_run_folder

    holder = claim_run_folder(tmp_path / "run")  # as a running `vgg train` holds it
    try:
        with pytest.raises(UserError, match=rf"run is in use by another run \(process {os.getpid()}"):
            train(_tiny_synthetic(tmp_path / "run"))
    finally:
        holder.release()
    assert train(_tiny_synthetic(tmp_path / "run", max_steps=1))["global_step"] == 1


def test_the_lock_of_a_killed_run_does_not_block_its_resume(tmp_path):
    """kill -9 while holding the lock: the lock file stays, the lock does not (the kernel drops it)."""
    code = ("import sys, os; from pathlib import Path; from vggnet.engine.state import claim_run_folder; "
            "lock = claim_run_folder(Path(sys.argv[1])); print(os.getpid(), flush=True); os.kill(os.getpid(), 9)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == -9 and (tmp_path / "run" / ".vggnet.lock").read_text().strip() == proc.stdout.strip()
    assert train(_tiny_synthetic(tmp_path / "run", max_steps=1))["global_step"] == 1


def test_a_folder_of_other_files_is_not_overwritten(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("my: own settings\n")
    (out / "metrics.csv").write_text("a,b\n1,2\n")
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match=r"mine is not a vggnet run folder but holds config.yaml, metrics.csv, "
                                        r"notes.txt; the run would overwrite config.yaml, metrics.csv"):
        train(_tiny_synthetic(out, max_steps=1))
    assert (out / "config.yaml").read_text() == "my: own settings\n"
    # a folder of unrelated things that the run does not write over is fine (data beside the run)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data").mkdir()
    assert train(_tiny_synthetic(tmp_path / "other", max_steps=1))["global_step"] == 1


def test_output_dir_that_is_a_file_or_unwritable(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"--output-dir .*file is a file, not a folder"):
        train(_tiny_synthetic(tmp_path / "file"))
    real_open = open

    def read_only(path, *args, **kwargs):  # root ignores chmod: the OS's refusal is simulated
        if ".vggnet-write-test" in str(path):
            raise OSError(30, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    import builtins

    monkeypatch.setattr(builtins, "open", read_only)
    with pytest.raises(UserError, match=r"--output-dir .*ro: cannot write there \(Read-only file system\)"):
        train(_tiny_synthetic(tmp_path / "ro"))


def test_disk_full_while_saving_names_the_file_and_the_last_good_checkpoint(tmp_path, monkeypatch):
    import vggnet.checkpoint as checkpoint_module

    out = tmp_path / "run"
    real_save = torch.save
    saves = []

    def full_disk(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) == 3:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing "
                               "file data/12: file write failed")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    from vggnet.engine import TrainingError

    with pytest.raises(TrainingError) as info:
        train(_tiny_synthetic(out, checkpoint_every=1, max_steps=5))
    message = str(info.value)
    assert "cannot write" in message and "checkpoint_00000003.pt" in message and "no space left" in message
    assert "Last good checkpoint: " + str(out / "checkpoint_00000002.pt") in message
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    assert torch.load(out / "last.pt", weights_only=True)["train"]["global_step"] == 2  # intact, resumable
    assert train(_tiny_synthetic(out, checkpoint_every=1, max_steps=3, resume="auto"))["global_step"] == 3


# --------------------------------------------------------------------------- 5: settings, and the epoch's work


@pytest.mark.parametrize("change,match", [
    ({"val_scale": 40.5}, "--val-scale must be an integer"), ({"batch_norm": "no"}, "--batch-norm must be true"),
    ({"lr": "0.1"}, "--lr must be a number"), ({"seed": 1.5}, "--seed must be an integer"),
    ({"data": 12}, "--data must be text"), ({"epochs": True}, "--epochs must be an integer")])
def test_every_setting_is_type_checked_before_any_work(tmp_path, change, match):
    with pytest.raises(UserError, match=match):
        train(_tiny_synthetic(tmp_path / "run", **change))
    assert not (tmp_path / "run").exists()


def test_integral_float_settings_are_taken_as_integers(tmp_path):
    result = train(_tiny_synthetic(tmp_path / "run", val_scale=40.0, max_steps=1))
    assert result["global_step"] == 1
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["meta"]["val_scale"] == 40


def test_too_many_bad_images_stop_the_run_after_the_epochs_checkpoint(tmp_path):
    data = _flat_images(tmp_path / "data", {"a": ["x.png", "bad1.jpg"], "b": ["y.png", "bad2.jpg"]})
    from vggnet.engine import TrainingError

    with pytest.raises(TrainingError, match=r"could not be decoded.*The epoch's checkpoint is written \(.*"
                                            r"checkpoint_00000001.pt\)"):
        train(TrainConfig(**TINY, batch_size=4, micro_batch_size=2, max_bad_fraction=0.1, data=str(data),
                          output_dir=str(tmp_path / "run")))
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["train"]["epoch"] == 1 and ckpt["train"]["history"][0]["bad_images"] == 2


# --------------------------------------------------------------------------- 12, 13: what the run says


def test_bad_validation_images_are_counted_in_metrics_csv(tmp_path):
    data = _flat_images(tmp_path / "data", {"a": ["x.png", "x2.png"], "b": ["y.png", "y2.png"]})
    (data / "val" / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    result = train(TrainConfig(**TINY, batch_size=4, data=str(data), output_dir=str(tmp_path / "run")))
    row = result["history"][0]
    assert (row["bad_images"], row["val_bad_images"]) == (0, 1)
    text = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert text[0].split(",")[-2:] == ["bad_images", "val_bad_images"] and text[1].split(",")[-2:] == ["0", "1"]


def test_left_out_files_are_named_in_train_log_even_with_warnings_silenced(tmp_path):
    data = _flat_images(tmp_path / "data", {"a": ["x.png", "x2.png"], "b": ["y.png", "y2.png"]})
    os.mkfifo(data / "train" / "a" / "pipe.jpg")
    (data / "train" / "b" / "loop").symlink_to("..")
    code = ("import sys; from vggnet import TrainConfig, train; "
            f"train(TrainConfig(**{TINY!r}, batch_size=4, max_steps=1, data=sys.argv[1], output_dir=sys.argv[2]))")
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code, str(data), str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"{data / 'train' / 'a' / 'pipe.jpg'}: a FIFO (named pipe), not a regular file" in log
    assert f"{data / 'train' / 'b' / 'loop'}: a link to {data / 'train'}, a folder already listed" in log
    assert "2 file(s) of" in proc.stdout and "Warning" not in proc.stderr


def test_unreadable_training_files_are_named_once_per_run_in_train_log_with_warnings_silenced(tmp_path):
    """A file that fails to decode in a loader worker: named in the console and train.log through the run's
    own logger, once in a run of two epochs, also under `-W ignore` (a warning in a worker would be lost)."""
    data = _flat_images(tmp_path / "data", {"a": ["x.png", "x2.png", "bad.jpg"], "b": ["y.png", "y2.png"]})
    code = ("import sys; from vggnet import TrainConfig, train; "
            f"train(TrainConfig(**{{**{TINY!r}, 'epochs': 2, 'workers': 1}}, batch_size=5, max_bad_fraction=0.5, "
            f"data=sys.argv[1], output_dir=sys.argv[2]))")
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code, str(data), str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr
    bad = str(data / "train" / "a" / "bad.jpg")
    log = (tmp_path / "run" / "train.log").read_text()
    lines = [line for line in log.splitlines() if bad in line]
    assert len(lines) == 1 and lines[0].startswith("warning: skipping bad image") and "empty file" in lines[0], lines
    assert sum(bad in line for line in proc.stdout.splitlines()) == 1
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
    assert [r.split(",")[-2] for r in rows] == ["1", "1"]  # counted in both epochs, named once


def test_resume_with_changed_settings_says_it_once_naming_the_setting(tmp_path, capsys):
    out = tmp_path / "run"
    train(_tiny_synthetic(out, checkpoint_every=1, max_steps=3, keep=3))
    capsys.readouterr()
    with pytest.raises(CheckpointError) as info:
        train(_tiny_synthetic(out, lr=0.1, resume="auto"))
    printed = capsys.readouterr().out
    assert printed.count("warning: --resume auto: skipping") == 1
    assert "--lr 0.01 in the checkpoint, 0.1 now" in printed
    message = str(info.value)
    assert message.count("--lr 0.01 in the checkpoint, 0.1 now") == 1
    assert "(also checkpoint_00000002.pt, checkpoint_00000001.pt, last.pt)" in message


def test_a_run_finished_at_its_last_plateau_points_at_lr_drops():
    from types import SimpleNamespace

    from vggnet.engine import Trainer

    plateau = SimpleNamespace(stopped="plateau", cfg=SimpleNamespace(lr_drops=3))
    assert "raise --lr-drops" in Trainer._train_on_hint(plateau) and "--epochs" not in Trainer._train_on_hint(plateau)
    assert Trainer._train_on_hint(SimpleNamespace(stopped="epochs", cfg=None)) == "raise --epochs to train on"


# --------------------------------------------------------------------------- 6: bit flips


def test_a_flipped_bit_in_a_checkpoints_weights_is_an_error_naming_the_file(tmp_path, monkeypatch):
    from vggnet.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
    from vggnet.models import vgg

    model = vgg("A", num_classes=3, width=1 / 16, fc_width=16, crop_size=32)
    with torch.no_grad():
        model.classifier[6].bias.copy_(torch.tensor([1.25, 2.5, 3.75]))
    path = save_checkpoint(tmp_path / "c.pt", make_checkpoint(model, preprocessing={
        "pixel_scale": 255.0, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}))
    assert len(load_checkpoint(path)["weights_sha256"]) == 64
    raw = bytearray(path.read_bytes())
    at = raw.find(torch.tensor([1.25, 2.5, 3.75]).numpy().tobytes())
    assert at > 0
    raw[at + 5] ^= 0x01  # one bit of 2.5's mantissa
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"c.pt: its weights do not match the checksum.*VGGNET_SKIP_CHECKSUM=1"):
        load_checkpoint(path)
    monkeypatch.setenv("VGGNET_SKIP_CHECKSUM", "1")  # the escape hatch, for a deliberate edit
    assert load_checkpoint(path)["state_dict"]["classifier.6.bias"][1] != 2.5
