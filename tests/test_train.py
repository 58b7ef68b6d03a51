"""Training (§3.1): exact resume, checkpoints, numerical faults, settings, outputs, learning.

Every run here is tiny (net A or D at 1/16 width, 32-pixel crops, a few dozen
synthetic images, one loader process) so that the whole file runs in seconds on
a CPU; the properties tested do not depend on size.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
import yaml

import vggnet.engine.loop as train_module
import vggnet.classification.task as task_module
from vggnet.cli import main
from vggnet.arguments import parse_args_with_config
from vggnet.errors import CheckpointError, UserError
from vggnet import TrainConfig, train
from vggnet.engine import TrainingError, add_train_arguments, find_checkpoints

# 32 images of 4 classes, batch 8: 4 optimizer steps per epoch, 8 in the 2 epochs.
# Scale jittering, crops, flips, the PCA colour shift and dropout are all on, so
# every random stream of a real run takes part in the exactness tests.
TINY = dict(model="A", width=1 / 16, fc_width=16, crop_size=32, scale=[32, 48], synthetic_classes=4,
            synthetic_train=32, synthetic_val=8, synthetic_image_size=[32, 48], batch_size=8, epochs=2,
            workers=0, progress=False, stats_sample=16, device="cpu", amp="off")  # exactness needs fp32 everywhere
STEPS_PER_EPOCH = 4


def tiny(out, **overrides) -> TrainConfig:
    return TrainConfig(**{**TINY, "output_dir": str(out), **overrides})


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_training_state(a_path, b_path):
    """Bitwise: weights, SGD momentum, RNG streams, position and the metrics of every epoch."""
    a, b = load(a_path), load(b_path)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    differ = {k: float((a["state_dict"][k] - b["state_dict"][k]).abs().max()) for k in a["state_dict"]
              if not torch.equal(a["state_dict"][k], b["state_dict"][k])}
    assert not differ, f"weights differ (max abs difference): {differ}"
    sa, sb = a["train"]["optimizer"]["state"], b["train"]["optimizer"]["state"]
    assert sa.keys() == sb.keys() and len(sa) == len(a["state_dict"])
    differ = [i for i in sa if not torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"])]
    assert not differ, f"momentum of parameters {differ} differs"
    assert torch.equal(a["train"]["rng"][0]["torch"], b["train"]["rng"][0]["torch"])
    for key in ("epoch", "step_in_epoch", "global_step", "sampler", "scheduler", "best_top1_error"):
        assert a["train"][key] == b["train"][key], key
    ha, hb = a["train"]["history"], b["train"]["history"]
    assert len(ha) == len(hb)
    for ra, rb in zip(ha, hb):
        for key in ("epoch", "global_step", "lr", "train_loss", "val_loss", "val_top1_error", "val_top5_error"):
            assert ra[key] == rb[key], (ra["epoch"], key)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Straight runs of TINY, by number of epochs: {epochs: run directory} (computed once each)."""
    runs: dict[int, Path] = {}

    def get(epochs: int = 2) -> Path:
        if epochs not in runs:
            out = tmp_path_factory.mktemp(f"straight_{epochs}_epochs_")
            result = train(tiny(out, epochs=epochs))
            if epochs <= 2:  # (longer runs may end earlier on a validation plateau, resumed or not)
                assert result["global_step"] == epochs * STEPS_PER_EPOCH and result["stopped"] == "epochs"
            runs[epochs] = out
        return runs[epochs]

    return get


@pytest.fixture(scope="module")
def every_step(tmp_path_factory):
    """TINY with a checkpoint after every step, all kept."""
    out = tmp_path_factory.mktemp("every_step")
    train(tiny(out, checkpoint_every=1, keep=100))
    return out


# --------------------------------------------------------------------------- exact resume (item 5)


def test_same_seed_same_weights_other_seed_other_weights(reference, every_step, tmp_path):
    # every_step is a second run with the same seed (and a checkpoint after every step, which changes nothing)
    assert sorted(p.name for p in every_step.glob("checkpoint_*.pt")) == [
        f"checkpoint_{s:08d}.pt" for s in range(1, 2 * STEPS_PER_EPOCH + 1)]
    assert_same_training_state(reference() / "last.pt", every_step / "last.pt")
    train(tiny(tmp_path, seed=1))
    a, b = load(reference() / "last.pt")["state_dict"], load(tmp_path / "last.pt")["state_dict"]
    assert not any(torch.equal(a[k], b[k]) for k in a if k.endswith("weight"))


@pytest.mark.parametrize("split,epoch,step_in_epoch", [(2, 0, 2), (4, 0, 4), (6, 1, 2)],
                         ids=["mid-epoch", "end-of-epoch-before-validation", "second-epoch"])
def test_resume_auto_is_bitwise_exact(reference, tmp_path, split, epoch, step_in_epoch):
    """N/2 steps, stop, `--resume auto`, the rest == N steps straight (weights, momentum, RNG, metrics)."""
    first = train(tiny(tmp_path, max_steps=split))
    assert first["stopped"] == "max_steps" and first["global_step"] == split
    ckpt = load(tmp_path / "last.pt")["train"]
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == (epoch, step_in_epoch)
    second = train(tiny(tmp_path, resume="auto"))
    assert second["global_step"] == 2 * STEPS_PER_EPOCH and second["stopped"] == "epochs"
    assert "resuming" in (tmp_path / "train.log").read_text()
    assert_same_training_state(reference() / "last.pt", tmp_path / "last.pt")
    # metrics.csv after the resume holds every epoch once, as in the straight run
    assert [r["epoch"] for r in read_metrics(tmp_path)] == ["1", "2"]


def test_resume_from_a_periodic_checkpoint_path(reference, every_step, tmp_path):
    """`--checkpoint-every` checkpoints are exact too; `--resume PATH` continues one into a new directory."""
    result = train(tiny(tmp_path, resume=str(every_step / "checkpoint_00000003.pt")))
    assert result["global_step"] == 2 * STEPS_PER_EPOCH
    assert_same_training_state(reference() / "last.pt", tmp_path / "last.pt")


def test_resuming_a_finished_run_does_nothing(reference, tmp_path, capsys):
    run = shutil.copytree(reference(), tmp_path / "run")
    result = train(tiny(run, resume="auto"))
    assert "already finished" in capsys.readouterr().out
    assert result["global_step"] == 8 and result["epochs"] == 2
    # no checkpoint written (--keep 1: the newest resumable one only)
    assert sorted(p.name for p in run.glob("checkpoint_*.pt")) == ["checkpoint_00000008.pt"]
    assert_same_training_state(reference() / "last.pt", run / "last.pt")


def test_mid_epoch_checkpoint_records_the_sampler_position(every_step):
    from vggnet.distributed import ResumableDistributedSampler

    t = load(every_step / "checkpoint_00000003.pt")["train"]
    assert (t["epoch"], t["step_in_epoch"], t["global_step"]) == (0, 3, 3)
    assert t["sampler"] == {"epoch": 0, "position": 24, "seed": 0, "global_batch": 8}
    sampler = ResumableDistributedSampler(range(32), global_batch=8, num_replicas=1, rank=0, seed=0)
    sampler.load_state_dict(t["sampler"])
    full = ResumableDistributedSampler(range(32), global_batch=8, num_replicas=1, rank=0, seed=0)
    full.set_epoch(0)
    assert list(sampler) == list(full)[24:]


# --------------------------------------------------------------------------- signals and kill -9 (item 5)


def launch(out, *extra):
    """`vgg train` in its own process, long enough to be stopped from outside (200 epochs).
    Its output goes to files (a pipe nobody reads could fill up and block it)."""
    args = cli_args(out, epochs=200)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / "stdout.txt", "w") as stdout, open(out.parent / "stderr.txt", "w") as stderr:
        return subprocess.Popen([sys.executable, "-m", "vggnet.cli", *args, *extra], stdout=stdout, stderr=stderr,
                                env=env)


def output_of(out):
    return (out.parent / "stdout.txt").read_text(), (out.parent / "stderr.txt").read_text()


def wait_for(path: Path, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"vgg train exited early ({proc.returncode}): {output_of(path.parent)}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {path.name} after {timeout} s: {output_of(path.parent)}")
        time.sleep(0.01)


def finish_and_compare(out, reference, capsys):
    """`--resume auto` from what is on disk, to the end of an epoch; the same state as a straight run."""
    newest = load(find_checkpoints(out)[0])["train"]
    epochs = newest["epoch"] + 1
    capsys.readouterr()
    assert main(["train", "--config-file", str(out / "config.yaml"), "--resume", "auto",
                 "--epochs", str(epochs)]) == 0
    log = capsys.readouterr().out
    assert f"(global step {newest['global_step']})" in log.split("resuming", 1)[1].splitlines()[0]
    assert "done (" in log
    assert_same_training_state(reference(epochs) / "last.pt", out / "last.pt")
    return newest


def test_sigterm_finishes_the_step_checkpoints_and_says_how_to_resume(tmp_path, reference, capsys):
    out = tmp_path / "run"
    proc = launch(out, "--checkpoint-every", "2")
    wait_for(out / "checkpoint_00000002.pt", proc)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    stdout, stderr = output_of(out)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "received SIGTERM" in stdout and "stopped by SIGTERM" in stdout
    assert f"resume with:  vgg train --config-file {out / 'config.yaml'} --resume auto" in stdout
    stopped = load(out / "last.pt")["train"]
    assert stopped["global_step"] >= 2
    # the stop came at a step boundary and nothing after it is lost: exact continuation
    newest = finish_and_compare(out, reference, capsys)
    assert newest["global_step"] == stopped["global_step"]


def test_kill_9_loses_at_most_the_steps_since_the_last_checkpoint(tmp_path, reference, capsys):
    out = tmp_path / "run"
    proc = launch(out, "--checkpoint-every", "1")
    wait_for(out / "checkpoint_00000003.pt", proc)
    proc.kill()
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    steps = sorted(int(p.stem.split("_")[1]) for p in out.glob("checkpoint_*.pt"))
    newest = finish_and_compare(out, reference, capsys)
    # resumed from the newest checkpoint on disk, not an older one
    assert newest["global_step"] == steps[-1] >= 3


def test_resume_auto_takes_the_newest_checkpoint_even_if_last_pt_lags(reference, tmp_path):
    """A kill between writing checkpoint N and pointing last.pt at it leaves last.pt at N-1."""
    train(tiny(tmp_path, checkpoint_every=1, max_steps=3, keep=3))  # N-1 still on disk, as after such a kill
    (tmp_path / "last.pt").unlink()
    shutil.copyfile(tmp_path / "checkpoint_00000002.pt", tmp_path / "last.pt")
    train(tiny(tmp_path, resume="auto"))
    assert "(global step 3)" in (tmp_path / "train.log").read_text().split("resuming", 1)[1].splitlines()[0]
    assert_same_training_state(reference() / "last.pt", tmp_path / "last.pt")


def test_resume_removes_the_partial_file_of_an_interrupted_save(reference, tmp_path):
    """kill -9 during a save leaves `.checkpoint_N.pt.XXXX.tmp` (a GB for VGG-16); the next start removes it."""
    train(tiny(tmp_path, checkpoint_every=1, max_steps=3))
    stale = tmp_path / ".checkpoint_00000004.pt.abc123.tmp"
    stale.write_bytes(b"partial")
    train(tiny(tmp_path, resume="auto"))
    assert not stale.exists()
    assert "partial file of a checkpoint" in (tmp_path / "train.log").read_text()
    assert_same_training_state(reference() / "last.pt", tmp_path / "last.pt")


# --------------------------------------------------------------------------- bad checkpoints (item 5)


def test_keeps_only_the_last_k_numbered_checkpoints(tmp_path):
    train(tiny(tmp_path, checkpoint_every=1, keep=2))
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*.pt")) == ["checkpoint_00000007.pt",
                                                                       "checkpoint_00000008.pt"]
    assert load(tmp_path / "last.pt")["train"]["global_step"] == 8
    assert (tmp_path / "best.pt").is_file()  # kept whatever its step


def test_checkpoint_every_few_minutes(tmp_path):
    train(tiny(tmp_path, checkpoint_minutes=1e-9, max_steps=3, keep=10))  # due after every step
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*.pt")) == [f"checkpoint_{s:08d}.pt" for s in (1, 2, 3)]


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # in place: last.pt and its numbered twin share the file


def test_resume_auto_skips_a_truncated_checkpoint_with_a_warning(reference, tmp_path, capsys):
    train(tiny(tmp_path, checkpoint_every=1, max_steps=6, keep=3))  # older ones to fall back on
    newest = tmp_path / "checkpoint_00000006.pt"
    truncate(newest)
    truncate(tmp_path / "last.pt")  # no-op if it is a hard link of checkpoint 6, a real truncation if a copy
    capsys.readouterr()
    result = train(tiny(tmp_path, resume="auto"))
    out = capsys.readouterr().out
    assert "warning: --resume auto: skipping" in out and "checkpoint_00000006.pt" in out
    assert f"resuming {tmp_path / 'checkpoint_00000005.pt'}" in out and "(global step 5)" in out
    # one step redone, nothing lost: the same final state as the straight run
    assert result["global_step"] == 8
    assert_same_training_state(reference() / "last.pt", tmp_path / "last.pt")


def test_resume_path_of_a_corrupt_checkpoint_names_it_and_keeps_the_others(tmp_path):
    train(tiny(tmp_path, checkpoint_every=1, max_steps=3, keep=3))  # older ones to fall back on
    bad = tmp_path / "checkpoint_00000003.pt"
    truncate(bad)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(CheckpointError) as info:
        train(tiny(tmp_path, resume=str(bad)))
    message = str(info.value)
    assert str(bad) in message and "checkpoint_00000002.pt" in message and "--resume auto" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing deleted or overwritten
    assert load(tmp_path / "checkpoint_00000002.pt")["train"]["global_step"] == 2


def test_resume_auto_when_every_checkpoint_is_corrupt(tmp_path):
    train(tiny(tmp_path, max_steps=2))
    for p in tmp_path.glob("*.pt"):
        p.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="none of the 2 checkpoints"):
        train(tiny(tmp_path, resume="auto"))


@pytest.mark.parametrize("change,flag", [({"width": 1 / 8}, "--width"), ({"model": "B"}, "--model"),
                                         ({"batch_size": 16}, "--batch-size"), ({"seed": 3}, "--seed")])
def test_checkpoint_of_another_configuration_is_refused(tmp_path, change, flag):
    train(tiny(tmp_path / "run", max_steps=1))
    path = tmp_path / "run" / "last.pt"
    with pytest.raises(CheckpointError) as info:
        train(tiny(tmp_path / "other", resume=str(path), **change))
    message = str(info.value)
    assert str(path) in message and flag in message and "other settings" in message
    assert not (tmp_path / "other").exists()
    # --resume auto in the run's own directory: every checkpoint is skipped, the error says why
    with pytest.raises(CheckpointError, match=f"(?s)none of the .* checkpoints.*{flag}"):
        train(tiny(tmp_path / "run", resume="auto", **change))


def test_weights_only_checkpoint_cannot_be_resumed(tmp_path):
    from vggnet.checkpoint import CAFFE_PREPROCESSING, make_checkpoint, save_checkpoint
    from vggnet.models import vgg

    path = save_checkpoint(tmp_path / "w.pt", make_checkpoint(vgg("A", 4, width=1 / 16, fc_width=16, crop_size=32),
                                                              preprocessing=CAFFE_PREPROCESSING))
    with pytest.raises(CheckpointError, match=r"weights only.*--init from:"):
        train(tiny(tmp_path / "run", resume=str(path)))


# --------------------------------------------------------------------------- numerical faults (item 6)


def nan_at_step(monkeypatch, bad_step: int) -> None:
    """The training loss of optimizer step `bad_step` (1-based, one micro-batch per step) becomes NaN."""
    calls = []

    def cross_entropy(logits, target, **kw):
        calls.append(None)
        loss = torch.nn.functional.cross_entropy(logits, target, **kw)
        return loss * float("nan") if len(calls) == bad_step else loss

    monkeypatch.setattr(task_module, "F", types.SimpleNamespace(cross_entropy=cross_entropy))


def test_nan_loss_stops_with_the_step_lr_and_last_good_checkpoint(tmp_path, monkeypatch):
    nan_at_step(monkeypatch, 6)
    with pytest.raises(TrainingError) as info:
        train(tiny(tmp_path, lr=0.02))
    message = str(info.value)
    assert "nan" in message and "step 6" in message and "lr 0.02" in message
    assert str(tmp_path / "checkpoint_00000004.pt") in message
    # the epoch-1 checkpoint is the newest: no checkpoint was written for the bad step
    assert [p.name for p in find_checkpoints(tmp_path)] == ["checkpoint_00000004.pt", "last.pt"]
    ckpt = load(tmp_path / "last.pt")
    assert ckpt["train"]["global_step"] == 4
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())


def test_nan_before_any_checkpoint_says_so(tmp_path, monkeypatch):
    nan_at_step(monkeypatch, 1)
    with pytest.raises(TrainingError, match=r"step 1 .*none written yet"):
        train(tiny(tmp_path))
    assert find_checkpoints(tmp_path) == []


@pytest.mark.parametrize("lr,what", [(1e12, "the loss became nan at step 2"),  # huge but finite weights first
                                     (1e38, "the weights became non-finite")])  # inf weights, finite loss
def test_diverging_lr_never_writes_non_finite_weights(tmp_path, lr, what):
    with pytest.raises(TrainingError) as info:
        train(tiny(tmp_path, lr=lr, checkpoint_every=1))
    assert what in str(info.value) and f"lr {lr:g}" in str(info.value) and "Last good checkpoint" in str(info.value)
    for path in tmp_path.glob("*.pt"):
        assert all(torch.isfinite(t).all() for t in load(path)["state_dict"].values()), path


# --------------------------------------------------------------------------- invalid settings (item 7)

BAD_SETTINGS = [
    ({"scale": "48:32"}, "--scale"),
    ({"scale": 16}, "--crop-size"),
    ({"scale": [16, 48]}, "--scale"),
    ({"val_scale": 16}, "--val-scale"),
    ({"crop_size": 40, "scale": 48}, "--crop-size"),
    ({"init": "xavier"}, "--init"),
    ({"init": "from:/no/such/net.pt"}, "--init"),
    ({"model": "vgg17"}, "--model"),
    ({"amp": "fp8"}, "--amp"),
    ({"micro_batch_size": 16}, "--micro-batch-size"),
    ({"lr": -0.1}, "--lr"),
    ({"momentum": 1.5}, "--momentum"),
    ({"resume": "/no/such/checkpoint.pt"}, "--resume"),
]


@pytest.mark.parametrize("change,flag", BAD_SETTINGS, ids=[f for _, f in BAD_SETTINGS])
def test_invalid_settings_are_named_before_any_work(tmp_path, change, flag):
    with pytest.raises(UserError, match=flag):
        tiny(tmp_path, **change).validate()
    with pytest.raises(UserError, match=flag):
        train(tiny(tmp_path / "run", **change))
    assert not (tmp_path / "run").exists()


def test_unknown_model_lists_the_configurations(tmp_path):
    with pytest.raises(UserError, match=r"--model.*vgg17.*A, A-LRN, B"):
        tiny(tmp_path, model="vgg17").validate()


def test_batch_not_divisible_by_micro_batch_fails_before_any_work(tmp_path):
    with pytest.raises(UserError, match=r"--batch-size 8 .*--micro-batch-size 3.*choose one of 1, 2, 4, 8"):
        train(tiny(tmp_path / "run", micro_batch_size=3))
    assert not (tmp_path / "run").exists()


def test_fp16_with_the_gradient_scaler_resumes_bitwise(tmp_path):
    """--amp fp16: autocast to float16 and a GradScaler (on the CPU too), whose state is in the
    checkpoint and restored: 2 + resume + 2 steps == 4 steps straight, scale included."""
    straight = train(tiny(tmp_path / "straight", amp="fp16", max_steps=4))
    assert straight["global_step"] == 4
    assert "amp fp16" in (tmp_path / "straight" / "train.log").read_text()
    train(tiny(tmp_path / "split", amp="fp16", max_steps=2))
    train(tiny(tmp_path / "split", amp="fp16", max_steps=4, resume="auto"))
    a, b = load(tmp_path / "straight" / "last.pt"), load(tmp_path / "split" / "last.pt")
    assert a["train"]["scaler"] == b["train"]["scaler"]
    # This tiny net on 0-255 inputs overflows fp16 in its first steps (here the scale went 65536 -> 16384):
    # skipped steps, which fused SGD used to turn into NaN weights by step 3 (see make_optimizer).
    assert 0 < a["train"]["scaler"]["scale"] <= 65536.0
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert all(torch.isfinite(t).all() for t in a["state_dict"].values())
    assert all(t.dtype == torch.float32 for t in a["state_dict"].values())  # master weights stay fp32


def test_fp16_overflow_skips_the_step_and_backs_off_the_scale(tmp_path, monkeypatch):
    """A loss scale so large that the fp16 gradients overflow: the scaler skips the update
    (weights unchanged, no NaN anywhere, training goes on) and halves the scale each time."""
    real = torch.amp.GradScaler
    monkeypatch.setattr(train_module.torch.amp, "GradScaler", lambda *a, **k: real(*a, **{**k, "init_scale": 2.0 ** 100}))
    result = train(tiny(tmp_path / "run", amp="fp16", max_steps=2))
    assert result["global_step"] == 2
    ckpt = load(tmp_path / "run" / "last.pt")
    assert ckpt["train"]["scaler"]["scale"] == 2.0 ** 98  # two overflows, two back-offs
    assert ckpt["train"]["optimizer"]["state"] == {}  # SGD never stepped: no momentum buffers
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())


def test_output_dir_with_checkpoints_needs_resume(tmp_path):
    train(tiny(tmp_path, max_steps=1))
    before = load(tmp_path / "last.pt")["train"]["global_step"]
    with pytest.raises(UserError, match=r"--output-dir .* already holds checkpoints.*--resume auto"):
        train(tiny(tmp_path))
    assert load(tmp_path / "last.pt")["train"]["global_step"] == before


def cli_args(out, **overrides):
    settings = {**TINY, "output_dir": str(out), **overrides}
    args = ["train", "--no-progress"]
    for key, value in settings.items():
        if key == "progress":
            continue
        if isinstance(value, list):
            value = ":".join(map(str, value))
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


@pytest.mark.parametrize("change,flag", [({"scale": "48:32"}, "--scale"), ({"scale": "16"}, "--crop-size"),
                                         ({"init": "xavier"}, "--init"), ({"model": "F"}, "--model"),
                                         ({"micro_batch_size": 3}, "--micro-batch-size")])
def test_cli_reports_invalid_settings_naming_the_flag(tmp_path, capsys, change, flag):
    assert main(cli_args(tmp_path / "run", **change)) == 2
    err = capsys.readouterr().err
    assert err.startswith("vgg train: error:") and flag in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_cli_refuses_a_wrong_choice_as_a_usage_error(tmp_path, capsys):
    # a word outside the flag's choices is refused by the parser itself, before torch or any work
    with pytest.raises(SystemExit) as exc:
        main(cli_args(tmp_path / "run", amp="fp8"))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "vgg train: error: argument --amp: invalid choice: 'fp8'" in err
    assert not (tmp_path / "run").exists()


def test_cli_yaml_setting_is_checked_and_flags_win(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("scale: '48:32'\ncrop_size: 64\n")
    args = ["train", "--config-file", str(config), "--crop-size", "32", "--output-dir", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--scale 48:32" in err and "Smin <= Smax" in err
    assert not (tmp_path / "run").exists()
    config.write_text("unknown_setting: 1\n")
    assert main(["train", "--config-file", str(config)]) == 2
    assert "unknown setting 'unknown_setting'" in capsys.readouterr().err


# --------------------------------------------------------------------------- what a user sees (item 7)

METRIC_COLUMNS = ["epoch", "global_step", "lr", "train_loss", "val_loss", "val_top1_error", "val_top5_error",
                  "train_images_per_s", "epoch_time_s", "bad_images", "val_bad_images"]


def read_metrics(out):
    with open(Path(out) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_metrics_csv_has_one_row_per_epoch(reference):
    rows = read_metrics(reference())
    assert list(rows[0]) == METRIC_COLUMNS
    assert [(r["epoch"], r["global_step"]) for r in rows] == [("1", "4"), ("2", "8")]
    for r in rows:
        assert 0 <= float(r["val_top1_error"]) <= 100
        assert r["val_top5_error"] == ""  # 4 classes: top-5 is n/a, an empty cell
        assert math.isfinite(float(r["train_loss"])) and float(r["lr"]) == 0.01
    history = load(reference() / "last.pt")["train"]["history"]
    assert [float(r["train_loss"]) for r in rows] == pytest.approx([h["train_loss"] for h in history], rel=1e-5)


def test_curves_png_and_train_log(reference):
    png = (reference() / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    log = (reference() / "train.log").read_text()
    assert "batch 8 = 1 process x 8 images x 1 accumulation step" in log
    assert log.count("train loss") == 2  # one summary line per epoch


def test_config_yaml_is_the_resolved_config_and_is_accepted(reference, tmp_path, capsys):
    path = reference() / "config.yaml"
    saved = yaml.safe_load(path.read_text())
    expected = tiny(reference()).validate().to_dict()
    assert saved == expected
    assert saved["val_scale"] == 40 and saved["scale"] == [32, 48] and saved["model"] == "A"
    # the file as --config-file: the same settings come back through the command line's parser
    import argparse

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    parsed = TrainConfig.from_args(parse_args_with_config(parser, ["--config-file", str(path)])).validate()
    assert parsed.to_dict() == expected
    # ... and `vgg train --config-file run/config.yaml --resume auto` accepts it (the run is finished)
    assert main(["train", "--config-file", str(path), "--resume", "auto"]) == 0
    assert "already finished" in capsys.readouterr().out
    # a new run from it, flags winning over the file
    assert main(["train", "--config-file", str(path), "--output-dir", str(tmp_path), "--max-steps", "1"]) == 0
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["max_steps"] == 1


def test_checkpoint_contents_are_plain_containers(reference):
    ckpt = load(reference() / "last.pt")  # weights_only=True: no pickled objects
    assert ckpt["build"]["name"] == "A" and len(ckpt["classes"]) == 4
    assert set(ckpt["preprocessing"]) == {"pixel_scale", "mean", "std"} and ckpt["preprocessing"]["pixel_scale"] == 255
    t = ckpt["train"]
    for key in ("optimizer", "scheduler", "scaler", "epoch", "step_in_epoch", "global_step", "sampler", "rng",
                "config", "stats", "history"):
        assert key in t, key
    assert (t["epoch"], t["step_in_epoch"], t["global_step"]) == (2, 0, 8) and t["finished"] is True
    assert t["sampler"] == {"epoch": 2, "position": 0, "seed": 0, "global_batch": 8}
    assert set(t["rng"][0]) == {"python", "numpy", "torch", "cuda"}
    assert t["config"]["batch_size"] == 8 and t["config"]["scale"] == [32, 48]
    assert t["optimizer"]["param_groups"][0]["momentum"] == 0.9
    assert t["optimizer"]["param_groups"][0]["weight_decay"] == 5e-4
    assert t["scheduler"]["patience"] == 2 and t["scheduler"]["factor"] == 0.1
    # the best checkpoint is an ordinary model checkpoint for `vgg eval`
    from vggnet.checkpoint import model_from_checkpoint

    model, _ = model_from_checkpoint(reference() / "best.pt")
    assert model.num_classes == 4


# --------------------------------------------------------------------------- protocol details (item 1)


def test_gradient_accumulation_equals_the_whole_batch(tmp_path):
    """Batch 16 as 2 micro-batches of 8 gives the parameters of one pass of 16 (dropout off)."""
    common = dict(batch_size=16, max_steps=2, dropout=0.0)
    train(tiny(tmp_path / "whole", **common))
    train(tiny(tmp_path / "accum", micro_batch_size=8, **common))
    train(tiny(tmp_path / "accum4", micro_batch_size=4, **common))
    assert "16 = 1 process x 8 images x 2 accumulation steps" in (tmp_path / "accum" / "train.log").read_text()
    whole = load(tmp_path / "whole" / "last.pt")["state_dict"]
    for name in ("accum", "accum4"):
        other = load(tmp_path / name / "last.pt")["state_dict"]
        for key in whole:
            torch.testing.assert_close(other[key], whole[key], rtol=1e-5, atol=1e-6, msg=key)


def test_bf16_autocast_on_cpu_trains(tmp_path, monkeypatch):
    """--amp bf16: the forward pass really runs in bfloat16 (the net's outputs are bf16), the weights stay
    float32, and one epoch lands near the float32 run of the same seed without equalling it (bf16
    rounding). CPU autocast works with or without native bf16 instructions; only the speed differs."""
    dtypes = []
    real_loss = task_module.ClassificationTask.loss

    def recording_loss(self, output, targets):
        dtypes.append(output.dtype)
        return real_loss(self, output, targets)

    monkeypatch.setattr(task_module.ClassificationTask, "loss", recording_loss)
    common = dict(epochs=1, dropout=0.0)
    bf16 = train(tiny(tmp_path / "bf16", amp="bf16", **common))
    assert set(dtypes) == {torch.bfloat16}
    dtypes.clear()
    fp32 = train(tiny(tmp_path / "fp32", amp="off", **common))
    assert set(dtypes) == {torch.float32}
    assert "amp bf16" in (tmp_path / "bf16" / "train.log").read_text()
    a, b = load(tmp_path / "bf16" / "last.pt")["state_dict"], load(tmp_path / "fp32" / "last.pt")["state_dict"]
    assert all(t.dtype == torch.float32 for t in a.values())
    assert any(not torch.equal(a[k], b[k]) for k in a)  # bf16 rounding changed the steps ...
    flat_a = torch.cat([a[k].flatten() for k in a if a[k].is_floating_point()])
    flat_b = torch.cat([b[k].flatten() for k in b if b[k].is_floating_point()])
    # ... by little: 2.9% (relative L2 distance of all weights after the epoch's 4 steps) on our CPU
    assert float((flat_a - flat_b).norm() / flat_b.norm()) < 0.1
    loss_bf16, loss_fp32 = bf16["history"][0]["train_loss"], fp32["history"][0]["train_loss"]
    assert math.isfinite(loss_bf16) and loss_bf16 == pytest.approx(loss_fp32, rel=0.15)  # native bf16 (AVX512-BF16) rounds otherwise than emulated: 8% apart on one such CPU


def test_compile_trains_the_same_net_and_writes_plain_checkpoints(tmp_path, monkeypatch):
    """--compile: torch.compile around the training net. TorchDynamo's capture and AOT autograd
    are what is tested (the "aot_eager" backend: the same graphs as inductor, without minutes of
    C++ code generation on a 2-core CPU). Checkpoints keep the bare model's keys, so eager runs,
    evaluation and --resume read them; the weights match an eager run's after 3 steps."""
    compiled = []
    real_compile = torch.compile

    def compile_aot_eager(model, **kwargs):
        compiled.append(type(model).__name__)
        return real_compile(model, backend="aot_eager")

    monkeypatch.setattr(train_module.torch, "compile", compile_aot_eager)
    train(tiny(tmp_path / "eager", max_steps=3, dropout=0.0))
    train(tiny(tmp_path / "compiled", max_steps=3, dropout=0.0, compile=True))
    assert compiled == ["VGG"]
    assert "compile on" in (tmp_path / "compiled" / "train.log").read_text()
    a, b = load(tmp_path / "eager" / "last.pt"), load(tmp_path / "compiled" / "last.pt")
    assert a["state_dict"].keys() == b["state_dict"].keys()  # no "_orig_mod." prefixes
    for k in a["state_dict"]:
        assert torch.allclose(a["state_dict"][k], b["state_dict"][k], rtol=1e-3, atol=1e-4), k
    # and a compiled run resumes from its own checkpoint
    result = train(tiny(tmp_path / "compiled", max_steps=4, dropout=0.0, compile=True, resume="auto"))
    assert result["global_step"] == 4


def test_lr_is_divided_by_10_on_a_plateau_three_times_then_training_stops(tmp_path, monkeypatch):
    """§3.1's schedule, with a validation error that never improves after the first epoch."""
    import vggnet.classification.evaluate

    monkeypatch.setattr(vggnet.classification.evaluate, "validate",
                        lambda *a, **k: {"loss": 1.0, "top1_error": 50.0, "top5_error": 0.0, "images": 8})
    result = train(tiny(tmp_path, synthetic_train=8, epochs=20, lr_patience=1, lr_drops=3))
    lrs = [h["lr"] for h in result["history"]]
    # epoch 1 sets the best; each reduction needs patience+1 = 2 epochs without improvement
    assert lrs == pytest.approx([1e-2, 1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5])
    assert result["stopped"] == "plateau" and result["epochs"] == 9
    assert "plateau after 3 lr reductions" in (tmp_path / "train.log").read_text()


# --------------------------------------------------------------------------- deep nets learn (item 1)


def shapes_folder(root: Path, distinct: int = 8, copies: int = 16, seed: int = 0) -> Path:
    """An image-folder dataset (ImageNet layout) of `distinct` synthetic 32x32 images, 2 per class,
    each `copies` times in train/ (so that an epoch has many steps) and once in val/."""
    from vggnet.data.synthetic import SyntheticShapes

    shapes = SyntheticShapes(distinct, classes=4, image_size=(32, 32), seed=seed)
    for i in range(distinct):
        image, label, _ = shapes.generate(i)
        for split, n in (("train", copies), ("val", 1)):
            folder = root / split / shapes.classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            for c in range(n):
                image.save(folder / f"{i}_{c}.png")
    return root


@pytest.mark.parametrize("model", ["D", "E"])
def test_deep_nets_learn_from_scratch_with_the_default_settings(tmp_path, model):
    """§3.1 with its defaults — Glorot init, lr 1e-2, momentum 0.9, weight decay 5e-4, dropout 0.5 —
    trains the 16- and 19-layer nets from scratch, at 1/16 width (where N(0, 0.01^2) stalls at
    chance forever): the training loss leaves chance, ln 4, and falls well below it.

    The lr schedule is held off (patience 100): the plateau at chance lasts about 50-150 steps at this
    size, longer than the paper's patience in these short epochs. The lowest epoch is tested, not the
    last: at batch 8 with 0-255 pixel inputs the loss of so narrow a net spikes back now and then.
    """
    data = shapes_folder(tmp_path / "data")
    result = train(TrainConfig(model=model, width=1 / 16, fc_width=64, crop_size=32, scale=32, data=str(data),
                               batch_size=8, epochs=16, lr_patience=100, workers=0, progress=False,
                               stats_sample=16, device="cpu", amp="off", output_dir=str(tmp_path / "run")))
    defaults = TrainConfig().validate()  # the net's settings resolved: the paper's D
    cfg = load(tmp_path / "run" / "last.pt")["train"]["config"]
    assert (cfg["init"], cfg["lr"], cfg["momentum"], cfg["weight_decay"], cfg["dropout"]) == (
        defaults.init, defaults.lr, defaults.momentum, defaults.weight_decay, defaults.dropout) == (
        "glorot", 0.01, 0.9, 5e-4, 0.5)
    losses = [h["train_loss"] for h in result["history"]]
    assert len(losses) == 16 and all(math.isfinite(v) for v in losses)
    assert losses[0] == pytest.approx(math.log(4), abs=0.1)  # chance
    assert min(losses) < 0.8 * losses[0], losses
