"""BatchNorm under DDP (an extension: the paper's nets have no BatchNorm): 2 CPU processes under torchrun
(gloo). Each rank's running statistics come from its own micro-batches; before validation and before
saving they are averaged over the ranks (as timm's `distribute_bn` does), so the number reported for an
epoch is that of the saved checkpoint. `--sync-bn` turns the layers into `SyncBatchNorm`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_train_distributed import flags, skip_without_gloo, torchrun_env

# 32 images, global batch 16 = 2 processes x 4 images x 2 accumulation steps; one epoch.
SETTINGS = dict(model="A", width=1 / 16, fc_width=16, crop_size=32, scale=[32, 48], synthetic_classes=4,
                synthetic_train=32, synthetic_val=9, synthetic_image_size=[32, 48], batch_size=16, epochs=1,
                micro_batch_size=4, val_batch_size=2, workers=0, stats_sample=16, device="cpu", amp="off")

# Runs `vgg train` with a spy around the BN synchronisation: every rank writes its running statistics
# before and after each synchronisation, and the kinds of its BN layers.
SPY = r'''
import sys
from pathlib import Path

import torch

import vggnet.engine.loop as loop
from vggnet.cli import main

spied = Path(sys.argv[1])
original = loop.Trainer.sync_batch_norm
calls = []


def spy(self):
    stats = lambda: {k: v.clone() for k, v in self.model.state_dict().items() if "running" in k}
    before = stats()
    original(self)
    torch.save({"before": before, "after": stats(),
                "kinds": sorted({type(m).__name__ for m in self.model.modules() if "Norm" in type(m).__name__})},
               spied / f"rank{self.info.rank}_call{len(calls)}.pt")
    calls.append(1)


loop.Trainer.sync_batch_norm = spy
sys.exit(main(sys.argv[2:]))
'''


def run_two_processes(root: Path, *extra: str) -> Path:
    skip_without_gloo()
    spied = root / "spied"
    spied.mkdir()
    script = root / "spy_train.py"
    script.write_text(SPY)
    out = root / "run"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(script), str(spied), "train", *flags({**SETTINGS, "output_dir": str(out)}),
                           "--batch-norm", "--no-progress", *extra],
                          capture_output=True, text=True, env=torchrun_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def bn_run(tmp_path_factory):
    return run_two_processes(tmp_path_factory.mktemp("ddp_bn"))


def test_bn_statistics_are_averaged_over_the_ranks_before_validation(bn_run):
    spied = bn_run / "spied"
    # one synchronisation before the epoch's validation, one in the checkpoint's save
    assert sorted(p.name for p in spied.iterdir()) == ["rank0_call0.pt", "rank0_call1.pt", "rank1_call0.pt",
                                                       "rank1_call1.pt"]
    r0, r1 = torch.load(spied / "rank0_call0.pt"), torch.load(spied / "rank1_call0.pt")
    assert r0["kinds"] == ["BatchNorm2d"]
    keys = sorted(r0["before"])
    assert keys and all(k.endswith(("running_mean", "running_var")) for k in keys)
    # each rank saw its own images: different statistics before, their average after, on both ranks
    assert any(not torch.equal(r0["before"][k], r1["before"][k]) for k in keys)
    for k in keys:
        assert torch.equal(r0["after"][k], r1["after"][k]), k
        torch.testing.assert_close(r0["after"][k], (r0["before"][k] + r1["before"][k]) / 2, msg=k)


def test_the_ddp_validation_is_that_of_the_saved_checkpoint(bn_run):
    """The epoch's validation under DDP equals a single-process `validate` of last.pt."""
    from vggnet.checkpoint import load_checkpoint, model_from_checkpoint
    from vggnet.data.synthetic import SyntheticShapes
    from vggnet.classification.evaluate import validate

    ckpt = load_checkpoint(bn_run / "run" / "last.pt")
    saved = torch.load(bn_run / "spied" / "rank0_call1.pt")["after"]
    for k, v in saved.items():  # what was saved is what was validated
        assert torch.equal(ckpt["state_dict"][k], v), k
    model, _ = model_from_checkpoint(ckpt)
    val = SyntheticShapes(9, classes=4, split="val", seed=0, image_size=(32, 48))
    metrics = validate(model, val, preprocessing=ckpt["preprocessing"], scale=ckpt["meta"]["val_scale"],
                       device="cpu", batch_size=2, workers=0)
    (row,) = ckpt["train"]["history"]
    assert row["val_top1_error"] == metrics["top1_error"] and row["val_top5_error"] == metrics["top5_error"]
    assert row["val_loss"] == pytest.approx(metrics["loss"], rel=1e-5)


def test_sync_bn_on_cpu_processes_is_refused_naming_the_flag(tmp_path):
    """torch's SyncBatchNorm runs on CUDA only (DDP refuses it on CPU modules): said before any step."""
    skip_without_gloo()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "vggnet.cli", "train", *flags({**SETTINGS, "output_dir": str(tmp_path / "run")}),
                           "--batch-norm", "--sync-bn", "--no-progress"],
                          capture_output=True, text=True, env=torchrun_env(), timeout=300)
    assert proc.returncode != 0
    assert "--sync-bn: torch's SyncBatchNorm runs on CUDA devices only" in proc.stdout + proc.stderr
    assert not list((tmp_path / "run").glob("checkpoint_*.pt"))
