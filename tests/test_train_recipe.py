"""The modern recipe, opt-in extensions beyond the paper (lr schedules with warm-up, AdamW, no decay on
biases and norms, label smoothing, mixup/cutmix, RandAugment/TrivialAugment, no flip, EMA of the weights):
each changes what it should and survives a resume bitwise. And the defaults that follow the data and the
machine: S from the crop, loader workers and threads from the cores, no validation on the training images,
an epoch-time estimate for a big net on a CPU.

Tiny runs as in tests/test_train.py: net A at 1/16 width, 32-pixel crops, 32 synthetic images, batch 8.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

import vggnet.engine.setup as setup
from vggnet import ClassificationTask, TrainConfig, train
from vggnet.errors import CheckpointError, UserError

TINY = dict(model="A", width=1 / 16, fc_width=16, crop_size=32, scale=[32, 48], synthetic_classes=4,
            synthetic_train=32, synthetic_val=8, synthetic_image_size=[32, 48], batch_size=8, epochs=3,
            workers=0, progress=False, stats_sample=16, device="cpu", amp="off")
STEPS_PER_EPOCH = 4


def tiny(out, **overrides) -> TrainConfig:
    return TrainConfig(**{**TINY, "output_dir": str(out), **overrides})


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_tensors_equal(a, b, what):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), what
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for k in a:
            assert_tensors_equal(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            assert_tensors_equal(x, y, f"{what}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{what}: {a!r} != {b!r}"


def assert_same_run(a_path, b_path):
    """Bitwise: weights, the whole optimizer state (SGD or AdamW), schedulers, EMA, RNG, history."""
    a, b = load(a_path), load(b_path)
    assert_tensors_equal(a["state_dict"], b["state_dict"], "state_dict")
    ta, tb = a["train"], b["train"]
    for key in ("optimizer", "scheduler", "warmup", "ema", "rng", "epoch", "step_in_epoch", "global_step"):
        assert (key in ta) == (key in tb), key
        if key in ta:
            assert_tensors_equal(ta[key], tb[key], key)
    timings = ("train_images_per_s", "epoch_time_s")
    assert_tensors_equal([{k: v for k, v in row.items() if k not in timings} for row in ta["history"]],
                         [{k: v for k, v in row.items() if k not in timings} for row in tb["history"]], "history")


# (option, its settings): every one resumed in the middle of the second epoch, after the first epoch's
# end (validation, schedule step, checkpoint) — the cases where hidden state would be lost.
OPTIONS = {
    "cosine+warmup": dict(lr_scheduler="cosine", warmup_epochs=1),
    "step": dict(lr_scheduler="step", lr_step_size=1),
    "adamw": dict(optimizer="adamw", lr=1e-3, weight_decay=0.05),
    "no-decay-norm-bias": dict(decay_norm_bias=False, batch_norm=True),
    "label-smoothing+mixup+cutmix": dict(label_smoothing=0.1, mixup_alpha=0.2, cutmix_alpha=1.0),
    "randaugment+no-hflip": dict(auto_augment="randaugment", hflip=False),
    "trivialaugment": dict(auto_augment="trivialaugment"),
    "ema": dict(ema_decay=0.9, batch_norm=True),
}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    runs: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in runs:
            out = tmp_path_factory.mktemp(f"straight_{name.replace('+', '_')}")
            result = train(tiny(out, keep=3, **OPTIONS[name]))  # the epoch checkpoints, for the resume tests
            assert result["global_step"] == 3 * STEPS_PER_EPOCH and result["stopped"] == "epochs"
            runs[name] = out
        return runs[name]

    return get


@pytest.mark.parametrize("name", list(OPTIONS))
def test_each_option_resumes_bitwise(straight, tmp_path, name):
    first = train(tiny(tmp_path, max_steps=6, **OPTIONS[name]))
    assert first["stopped"] == "max_steps"
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    for key, value in OPTIONS[name].items():  # the option is in the run's settings
        assert saved[key] == value, key
    train(tiny(tmp_path, resume="auto", **OPTIONS[name]))
    assert_same_run(straight(name) / "last.pt", tmp_path / "last.pt")


@pytest.mark.parametrize("name", ["cosine+warmup", "label-smoothing+mixup+cutmix", "ema"])
def test_resuming_without_the_option_is_refused(straight, tmp_path, name):
    import shutil

    run = shutil.copytree(straight(name), tmp_path / "run")
    key = next(iter(OPTIONS[name]))
    with pytest.raises(CheckpointError, match=f"--{key.replace('_', '-')}"):
        train(tiny(run, resume=str(run / "checkpoint_00000004.pt"), output_dir=str(tmp_path / "new")))


# --------------------------------------------------------------------------- what each option changes


def lrs(run: Path) -> list[float]:
    return [row["lr"] for row in load(run / "last.pt")["train"]["history"]]


def test_cosine_with_warmup_and_step_schedules(straight, tmp_path):
    # warm-up: epoch 1 at 1% of the lr; then cosine over the 2 remaining epochs: lr, lr/2
    assert lrs(straight("cosine+warmup")) == pytest.approx([1e-4, 1e-2, 5e-3])
    # step every epoch by --lr-factor; never ends the run the way a plateau does
    assert lrs(straight("step")) == pytest.approx([1e-2, 1e-3, 1e-4])
    # the paper's plateau rule after a warm-up
    train(tiny(tmp_path, epochs=2, warmup_epochs=1))
    assert lrs(tmp_path) == pytest.approx([1e-4, 1e-2])
    assert load(tmp_path / "last.pt")["train"]["scheduler"]["last_epoch"] == 1  # stepped after the warm-up only


def test_adamw_and_no_decay_on_biases_and_norms(straight):
    opt = load(straight("adamw") / "last.pt")["train"]["optimizer"]
    assert "exp_avg_sq" in opt["state"][0] and opt["param_groups"][0]["weight_decay"] == 0.05
    ckpt = load(straight("no-decay-norm-bias") / "last.pt")
    groups = ckpt["train"]["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    one_dim = sum(1 for k, v in ckpt["state_dict"].items() if v.ndim == 1 and not k.endswith(
        ("running_mean", "running_var", "num_batches_tracked")))
    assert len(groups[1]["params"]) == one_dim > 0  # every bias and BN weight/bias, nothing else


def test_label_smoothing_and_mixup_live_in_the_task():
    task = ClassificationTask()
    task.configure(TrainConfig(label_smoothing=0.1, mixup_alpha=0.4))
    assert task.output_size(5) == 5
    logits, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    assert torch.equal(task.loss(logits, y), F.cross_entropy(logits, y, label_smoothing=0.1, reduction="sum"))
    x = torch.randn(6, 3, 8, 8)
    torch.manual_seed(0)
    mx, my = task.inputs_targets((x, y), torch.device("cpu"))
    assert my.shape == (6, 5) and torch.allclose(my.sum(1), torch.ones(6))
    assert not torch.equal(mx, x) and not torch.equal(my, F.one_hot(y, 5).float())
    assert task.settings() == {"label_smoothing": 0.1, "mixup_alpha": 0.4}
    # the same seed, the same mix: the mixing draws from the checkpointed process RNG
    torch.manual_seed(0)
    mx2, _ = task.inputs_targets((x, y), torch.device("cpu"))
    assert torch.equal(mx, mx2)
    # the paper's loss, and no mixing, by default
    plain = ClassificationTask()
    plain.configure(TrainConfig())
    plain.output_size(5)
    assert plain.inputs_targets((x, y), torch.device("cpu"))[1] is y and plain.settings() == {}


def test_a_task_without_classes_refuses_classification_settings():
    from vggnet.engine import Task

    with pytest.raises(UserError, match="--label-smoothing.*task does not use it"):
        Task().configure(TrainConfig(label_smoothing=0.1))


def test_auto_augment_and_no_hflip_in_the_train_preset():
    from torchvision.transforms import v2

    from vggnet.data.transforms import Preprocessing, TrainPreset

    def kinds(**kw):
        preset = TrainPreset(crop_size=32, scale=40, preprocessing=Preprocessing.caffe(mean=[0, 0, 0]), **kw)
        return [type(t) for t in preset.transforms.transforms]

    assert v2.RandomHorizontalFlip in kinds() and v2.RandAugment not in kinds()
    assert v2.RandomHorizontalFlip not in kinds(hflip=False)
    assert v2.RandAugment in kinds(auto_augment="randaugment")
    assert v2.TrivialAugmentWide in kinds(auto_augment="trivialaugment")
    # and the engine builds what the settings say
    img = torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8)
    img[:, :, :24] = 0  # left half black: a mirror image is visible
    p = TrainPreset(crop_size=48, scale=48, preprocessing=Preprocessing.caffe(mean=[0, 0, 0]), hflip=False)
    for seed in range(8):
        torch.manual_seed(seed)
        assert float(p(img)[:, :, :24].abs().max()) == 0.0  # never mirrored


def test_ema_is_validated_and_saved(straight, tmp_path):
    from vggnet.checkpoint import load_checkpoint

    run = straight("ema")
    ckpt = load(run / "last.pt")
    ema = load_checkpoint(run / "ema.pt")
    # ema.pt is the averaged net of the last checkpoint, a net of its own (vgg eval / predict read it)
    assert {f"module.{k}" for k in ema["state_dict"]} | {"n_averaged"} == set(ckpt["train"]["ema"])
    for k, v in ema["state_dict"].items():
        assert torch.equal(v, ckpt["train"]["ema"][f"module.{k}"]), k
    assert int(ckpt["train"]["ema"]["n_averaged"]) == 3 * STEPS_PER_EPOCH
    differ = [k for k, v in ema["state_dict"].items() if v.is_floating_point()
              and not torch.equal(v, ckpt["state_dict"][k])]
    assert differ  # an average, not a copy of the weights
    row = ckpt["train"]["history"][-1]
    assert {"val_ema_loss", "val_ema_top1_error", "val_ema_top5_error"} <= set(row)
    assert "EMA top-1 err" in (run / "train.log").read_text()
    # a decay of ~0 follows the weights themselves
    train(tiny(tmp_path, epochs=1, ema_decay=1e-12))
    near = load_checkpoint(tmp_path / "ema.pt")["state_dict"]
    last = load(tmp_path / "last.pt")["state_dict"]
    for k in last:
        torch.testing.assert_close(near[k].float(), last[k].float(), msg=k)


BAD = [({"lr_scheduler": "linear"}, "--lr-scheduler"), ({"optimizer": "adam"}, "--optimizer"),
       ({"warmup_epochs": 3}, "--warmup-epochs"), ({"label_smoothing": 1.0}, "--label-smoothing"),
       ({"mixup_alpha": -1.0}, "--mixup-alpha"), ({"auto_augment": "autoaugment"}, "--auto-augment"),
       ({"ema_decay": 1.0}, "--ema-decay"), ({"sync_bn": True}, "--sync-bn"), ({"threads": 0}, "--threads"),
       ({"lr_step_size": 0}, "--lr-step-size")]


@pytest.mark.parametrize("change,flag", BAD, ids=[f for _, f in BAD])
def test_bad_extension_settings_name_the_flag(tmp_path, change, flag):
    with pytest.raises(UserError, match=flag):
        train(tiny(tmp_path, **change))
    assert not (tmp_path / "config.yaml").exists()


def test_flags_reach_the_config():
    import argparse

    from vggnet.engine import add_train_arguments

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--lr-scheduler", "cosine", "--warmup-epochs", "2", "--optimizer", "adamw",
                              "--no-decay-norm-bias", "--label-smoothing", "0.1", "--mixup-alpha", "0.2",
                              "--cutmix-alpha", "1", "--auto-augment", "trivialaugment", "--no-hflip",
                              "--ema-decay", "0.999", "--sync-bn", "--threads", "2", "--lr-step-size", "5"])
    cfg = TrainConfig.from_args(args)
    assert (cfg.lr_scheduler, cfg.warmup_epochs, cfg.optimizer, cfg.decay_norm_bias, cfg.label_smoothing,
            cfg.mixup_alpha, cfg.cutmix_alpha, cfg.auto_augment, cfg.hflip, cfg.ema_decay, cfg.sync_bn,
            cfg.threads, cfg.lr_step_size) == ("cosine", 2, "adamw", False, 0.1, 0.2, 1.0, "trivialaugment",
                                               False, 0.999, True, 2, 5)
    defaults = TrainConfig.from_args(parser.parse_args([]))
    assert (defaults.lr_scheduler, defaults.optimizer, defaults.decay_norm_bias, defaults.hflip,
            defaults.ema_decay, defaults.auto_augment, defaults.scale, defaults.workers) == (
        "plateau", "sgd", True, True, 0.0, "none", None, None)


# --------------------------------------------------------------------------- defaults that fit the data and machine


@pytest.mark.parametrize("crop,scale", [(224, 256), (32, 37), (64, 73), (384, 439)])
def test_the_scale_follows_the_crop_when_not_given(crop, scale):
    cfg = TrainConfig(crop_size=crop).validate()
    assert cfg.scale == scale and cfg.val_scale == scale
    assert TrainConfig(crop_size=crop, scale=400 if crop < 400 else 512).validate().scale != scale


def test_presets_resolve_to_the_scale_they_state(tmp_path):
    from vggnet.data.transforms import parse_scale

    for preset in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")):
        values = yaml.safe_load(preset.read_text())
        fake = tmp_path / "stage.pt"
        fake.write_bytes(b"")
        if str(values.get("init", "")).startswith("from:"):
            values["init"] = f"from:{fake}"
        cfg = TrainConfig.from_dict(values).validate()
        lo, hi = parse_scale(values["scale"])
        assert cfg.scale == (lo if lo == hi else [lo, hi]), preset.name


def test_workers_follow_the_cores(monkeypatch):
    import os

    for cores, workers in ((1, 0), (2, 1), (4, 3), (64, 4)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=cores: set(range(n)), raising=False)
        assert TrainConfig().validate().workers == workers
    assert TrainConfig(workers=0).validate().workers == 0


def write_images(folder: Path, classes=("a", "b"), n=2) -> None:
    from PIL import Image

    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (40, 40), (40 * i, 100, 200)).save(folder / c / f"{i}.png")


def test_data_pointing_at_one_split_is_refused(tmp_path):
    write_images(tmp_path / "ds" / "train")
    write_images(tmp_path / "ds" / "val")
    with pytest.raises(UserError, match=r"--data .*train: no train/ and val/ .*--data .*ds"):
        TrainConfig(data=str(tmp_path / "ds" / "train")).validate()
    with pytest.raises(UserError, match="same folder"):
        TrainConfig(train_dir=str(tmp_path / "ds" / "train"), val_dir=str(tmp_path / "ds" / "train")).validate()
    with pytest.raises(UserError, match="same folder"):
        TrainConfig(data=str(tmp_path / "ds"), val_dir=str(tmp_path / "ds" / "train")).validate()
    assert TrainConfig(data=str(tmp_path / "ds")).validate().data == str(tmp_path / "ds")


def test_threads_set_the_torch_threads(tmp_path):
    before = torch.get_num_threads()
    try:
        train(tiny(tmp_path, epochs=1, max_steps=1, threads=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_big_net_on_a_cpu_says_what_an_epoch_will_take(tmp_path, monkeypatch, capsys):
    from vggnet.models import count_macs, vgg

    with torch.device("meta"):  # a plain `vgg train` (D at 224) is above the threshold; the quickstart's net is not
        assert count_macs(vgg("D"), 224) >= setup.CPU_NOTE_MACS
        assert count_macs(vgg("A", width=0.125, fc_width=256, crop_size=64), 64) < setup.CPU_NOTE_MACS
    train(tiny(tmp_path / "small", epochs=1))
    assert "s per step on this CPU" not in capsys.readouterr().out  # the tiny net: no note
    monkeypatch.setattr(setup, "CPU_NOTE_MACS", 0)  # every net counts as big
    train(tiny(tmp_path / "big", epochs=1))
    out = capsys.readouterr().out
    assert "note: this trains A at width 0.0625" in out and "on a CPU" in out
    assert "s per step on this CPU, about" in out and "per epoch (4 steps)" in out
    assert "vgg demo" in out and "configs/quickstart.yaml" in out


def test_a_checkpoint_from_before_these_settings_resumes(tmp_path):
    """A checkpoint whose saved settings lack the new keys had their defaults: it resumes."""
    train(tiny(tmp_path, epochs=1, max_steps=2))
    path = tmp_path / "last.pt"
    ckpt = load(path)
    new = ("lr_scheduler", "lr_step_size", "warmup_epochs", "optimizer", "decay_norm_bias", "label_smoothing",
           "mixup_alpha", "cutmix_alpha", "auto_augment", "hflip", "ema_decay", "sync_bn", "threads")
    for key in new:
        del ckpt["train"]["config"][key]
    torch.save(ckpt, path)
    assert train(tiny(tmp_path, epochs=1, resume=str(path)))["global_step"] == STEPS_PER_EPOCH
    with pytest.raises(CheckpointError, match="--ema-decay 0.0 in the checkpoint, 0.5 now"):
        train(tiny(tmp_path, epochs=1, resume=str(path), ema_decay=0.5))
