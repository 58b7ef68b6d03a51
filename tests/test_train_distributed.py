"""Synchronous data parallelism (§3.3): 2 CPU processes under torchrun (gloo) train
exactly what one process trains on the same global batch; the sampler and the
batch arithmetic behind it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from vggnet import distributed
from vggnet.distributed import ResumableDistributedSampler, accumulation_steps
from vggnet.errors import UserError
from vggnet.train import TrainConfig, train

# 32 images, global batch 16: 2 optimizer steps per epoch. Dropout off: each
# process draws its own dropout masks, so only without dropout are the two runs
# the same computation (the data — order, crops, flips, colour shifts — are
# seeded per image and identical). 9 validation images: an odd number, split 5/4.
SETTINGS = dict(model="A", width=1 / 16, fc_width=16, crop_size=32, scale=[32, 48], synthetic_classes=4,
                synthetic_train=32, synthetic_val=9, synthetic_image_size=[32, 48], batch_size=16, epochs=1,
                dropout=0.0, val_batch_size=2, workers=0, stats_sample=16, device="cpu", checkpoint_every=1)


def flags(settings):
    args = []
    for key, value in settings.items():
        if isinstance(value, list):
            value = ":".join(map(str, value))
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_close_weights(a_path, b_path):
    a, b = load(a_path)["state_dict"], load(b_path)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """The run under `torchrun --nproc-per-node=2` (gloo) with micro-batch 4:
    2 processes x 4 images x 2 accumulation steps per step of 16."""
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available in this PyTorch build")
    out = tmp_path_factory.mktemp("ddp")
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([*torchrun, "--standalone", "--nproc-per-node=2", "-m", "vggnet.cli", "train",
                           *flags({**SETTINGS, "micro_batch_size": 4, "output_dir": str(out)}), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    train(TrainConfig(**SETTINGS, output_dir=str(out), progress=False))
    return out


def test_two_processes_train_the_same_parameters_as_one(two_processes, one_process):
    ddp, stdout = two_processes
    assert "batch 16 = 2 processes x 4 images x 2 accumulation steps" in stdout
    assert "(gloo)" in stdout
    for step in (1, 2):  # after one step, and after a second (momentum) step
        assert_close_weights(one_process / f"checkpoint_{step:08d}.pt", ddp / f"checkpoint_{step:08d}.pt")
        a, b = (load(d / f"checkpoint_{step:08d}.pt")["train"]["optimizer"]["state"] for d in (one_process, ddp))
        for i in a:
            torch.testing.assert_close(a[i]["momentum_buffer"], b[i]["momentum_buffer"], rtol=1e-5, atol=1e-6)
    # a checkpoint keeps every process's RNG state
    t = load(ddp / "last.pt")["train"]
    assert t["world_size"] == 2 and len(t["rng"]) == 2


def test_sharded_validation_equals_the_single_process_metric(two_processes, one_process):
    ddp, _ = two_processes
    (h2,), (h1,) = load(ddp / "last.pt")["train"]["history"], load(one_process / "last.pt")["train"]["history"]
    assert h2["val_top1_error"] == h1["val_top1_error"] and h2["val_top5_error"] == h1["val_top5_error"]
    assert h2["val_loss"] == pytest.approx(h1["val_loss"], rel=1e-5)
    assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-5)
    # 9 images, each counted once: the error is a multiple of 1/9
    assert (h1["val_top1_error"] * 9 / 100) == pytest.approx(round(h1["val_top1_error"] * 9 / 100))


def test_only_rank_0_writes(two_processes):
    ddp, stdout = two_processes
    log = (ddp / "train.log").read_text()
    assert log.count("vgg train: A") == 1 and stdout.count("vgg train: A") == 1
    # one of each file, no temporary files left behind (TensorBoard's folder when it is installed)
    assert sorted(p.name for p in ddp.iterdir() if p.name != "tensorboard") == [
        "best.pt", "checkpoint_00000001.pt", "checkpoint_00000002.pt", "config.yaml", "curves.png", "last.pt",
        "metrics.csv", "train.log"]
    assert len((ddp / "metrics.csv").read_text().splitlines()) == 2  # header + 1 epoch, written once


def test_a_two_process_checkpoint_resumes_in_one_process(two_processes, one_process, tmp_path):
    """The global batches are the same whatever the number of processes: an epoch checkpointed by
    2 processes continues in 1 exactly as the 1-process run does."""
    ddp, _ = two_processes
    run = shutil.copytree(ddp, tmp_path / "run")
    train(TrainConfig(**{**SETTINGS, "epochs": 2}, output_dir=str(run), resume="auto", progress=False))
    straight = tmp_path / "straight"
    train(TrainConfig(**{**SETTINGS, "epochs": 2}, output_dir=str(straight), progress=False))
    assert_close_weights(straight / "last.pt", run / "last.pt")
    assert "written by 2 process(es), this run has 1" in (run / "train.log").read_text()


# --------------------------------------------------------------------------- the pieces


@pytest.mark.parametrize("world", [1, 2, 4])
def test_sampler_gives_the_same_global_batches_for_any_number_of_processes(world):
    data, batch = range(50), 8  # 6 whole batches, 2 images dropped
    single = ResumableDistributedSampler(data, global_batch=batch, num_replicas=1, rank=0, seed=3)
    single.set_epoch(5)
    order = list(single)
    assert len(order) == 48 == len(set(order))
    ranks = []
    for r in range(world):
        s = ResumableDistributedSampler(data, global_batch=batch, num_replicas=world, rank=r, seed=3)
        s.set_epoch(5)
        ranks.append(list(s))
        assert len(s) == 48 // world
    per_step = batch // world
    for step in range(6):
        together = [i for r in ranks for i in r[step * per_step:(step + 1) * per_step]]
        assert sorted(together) == sorted(order[step * batch:(step + 1) * batch])  # disjoint shards of one batch
    # resuming after 2 steps: the rest of the epoch, rank by rank
    for r in range(world):
        s = ResumableDistributedSampler(data, global_batch=batch, num_replicas=world, rank=r, seed=3)
        s.load_state_dict({"epoch": 5, "position": 16, "seed": 3, "global_batch": 8})
        assert list(s) == ranks[r][2 * per_step:]


def test_sampler_epochs_differ_and_bad_positions_are_refused():
    s = ResumableDistributedSampler(range(32), global_batch=8, num_replicas=1, rank=0, seed=0)
    s.set_epoch(0)
    first = list(s)
    s.set_epoch(1)
    assert list(s) != first and sorted(list(s)) == sorted(first)
    with pytest.raises(ValueError, match="whole number of global batches"):
        s.set_position(12)
    with pytest.raises(ValueError, match="global batch 16"):
        s.load_state_dict({"epoch": 0, "position": 0, "seed": 0, "global_batch": 16})
    with pytest.raises(ValueError, match="multiple of the 3 processes"):
        ResumableDistributedSampler(range(32), global_batch=8, num_replicas=3, rank=0)


@pytest.mark.parametrize("batch,micro,world,steps", [(256, 256, 1, 1), (256, 32, 1, 8), (256, 32, 4, 2),
                                                     (256, 64, 4, 1), (16, 4, 2, 2)])
def test_accumulation_steps(batch, micro, world, steps):
    assert accumulation_steps(batch, micro, world) == steps


@pytest.mark.parametrize("batch,micro,world,flag", [(256, 48, 1, "--micro-batch-size 48"),
                                                    (256, 64, 3, "over 3 processes"),
                                                    (256, 128, 4, "--micro-batch-size 128")])
def test_accumulation_steps_that_do_not_divide_name_the_flags(batch, micro, world, flag):
    with pytest.raises(UserError, match="--batch-size 256") as info:
        accumulation_steps(batch, micro, world)
    assert flag in str(info.value)


def test_setup_without_torchrun_is_one_process(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    info = distributed.setup("cpu")
    assert (info.rank, info.world_size, info.is_main, info.distributed, info.backend) == (0, 1, True, False, None)
    assert distributed.all_reduce_sum([1.5, 2.0]) == [1.5, 2.0]
    assert distributed.all_gather_object({"a": 1}) == [{"a": 1}]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(UserError, match="RANK=2 and WORLD_SIZE=2"):
        distributed.setup("cpu")
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(UserError, match="RANK='one'"):
        distributed.setup("cpu")
