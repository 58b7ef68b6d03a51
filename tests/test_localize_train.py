"""Training a localisation net (Appendix A.1) with the shared engine: exact resume, two
processes equal to one, the command line end to end, a net that learns boxes, and the
errors of a localisation run (images without boxes, checkpoints of the wrong kind).

Runs are tiny (net A at 1/16 width, 32-pixel crops, a few dozen synthetic images).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vggnet.cli import main
from vggnet.data.synthetic import write_synthetic
from vggnet import TrainConfig, train
from vggnet.errors import CheckpointError
from vggnet.localisation.task import LocalisationTask
from vggnet.localisation.cli import localize_train

TINY = dict(model="A", width=1 / 16, fc_width=16, crop_size=32, scale=[32, 48], synthetic_classes=4,
            synthetic_train=32, synthetic_val=8, synthetic_image_size=[32, 48], batch_size=8, epochs=2,
            workers=0, progress=False, stats_sample=16, device="cpu", amp="off")
STEPS_PER_EPOCH = 4


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A classification net of TINY's shape, trained one epoch: what localisation starts from."""
    out = tmp_path_factory.mktemp("cls")
    train(TrainConfig(**{**TINY, "epochs": 1}, output_dir=str(out)))
    return out / "last.pt"


def loc_config(out, classifier, **overrides) -> TrainConfig:
    return TrainConfig(**{**TINY, "init": f"from:{classifier}", "lr": 1e-3, "output_dir": str(out), **overrides})


def assert_same_weights(a_path, b_path):
    a, b = load(a_path), load(b_path)
    differ = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not differ, f"weights differ: {differ}"


@pytest.fixture(scope="module")
def straight(tmp_path_factory, classifier):
    out = tmp_path_factory.mktemp("loc_straight")
    result = train(loc_config(out, classifier), task=LocalisationTask("pcr"))
    assert result["global_step"] == 2 * STEPS_PER_EPOCH
    return out


def test_checkpoints_are_localisation_nets_started_from_the_classifier(straight, classifier):
    ckpt = load(straight / "last.pt")
    assert ckpt["meta"]["task"] == "localisation"
    assert ckpt["meta"]["task_settings"] == {"head": "pcr", "box_mode": "whole", "target": "overlap"}
    assert ckpt["build"]["num_classes"] == 16 and len(ckpt["classes"]) == 4          # PCR: 4 x classes
    assert ckpt["state_dict"]["classifier.6.weight"].shape == (16, 16)
    history = ckpt["train"]["history"]
    assert len(history) == 2 and all(0.0 <= h["val_localisation_error"] <= 100.0 for h in history)
    assert "empty crops" in (straight / "train.log").read_text()


def test_resume_is_bitwise_exact(straight, classifier, tmp_path):
    first = train(loc_config(tmp_path, classifier, max_steps=STEPS_PER_EPOCH + 2), task=LocalisationTask("pcr"))
    assert first["stopped"] == "max_steps"
    train(loc_config(tmp_path, classifier, resume="auto"), task=LocalisationTask("pcr"))
    assert_same_weights(straight / "last.pt", tmp_path / "last.pt")
    ha, hb = load(straight / "last.pt")["train"]["history"], load(tmp_path / "last.pt")["train"]["history"]
    for ra, rb in zip(ha, hb):
        for key in ("train_loss", "val_loss", "val_localisation_error"):
            assert ra[key] == rb[key], key


def test_resume_refuses_another_head_and_a_classification_checkpoint(straight, classifier, tmp_path):
    run = shutil.copytree(straight, tmp_path / "run")
    with pytest.raises(CheckpointError, match="PCR localisation checkpoint and this run trains SCR"):
        train(loc_config(run, classifier, resume="auto", epochs=3), task=LocalisationTask("scr"))
    with pytest.raises(CheckpointError, match="classification checkpoint and cannot resume a localisation run"):
        train(loc_config(tmp_path / "other", classifier, resume=str(classifier)), task=LocalisationTask("pcr"))


def test_finetune_fc_freezes_the_conv_layers(classifier, tmp_path):
    localize_train(loc_config(tmp_path, classifier, epochs=1), head="scr", finetune="fc")
    before, after = load(classifier)["state_dict"], load(tmp_path / "last.pt")["state_dict"]
    convs = [k for k in after if k.startswith("features.") and k.endswith("weight")]
    assert convs and all(torch.equal(before[k], after[k]) for k in convs)
    assert not torch.equal(before["classifier.0.weight"], after["classifier.0.weight"])
    assert after["classifier.6.weight"].shape[0] == 4                                # SCR


@pytest.mark.slow
def test_two_processes_train_the_same_localisation_net_as_one(classifier, tmp_path):
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("gloo not available")
    settings = {**TINY, "synthetic_val": 9, "batch_size": 16, "epochs": 1, "dropout": 0.0,
                "checkpoint_every": 1, "val_batch_size": 2, "keep": 10}
    one = tmp_path / "one"
    train(TrainConfig(**settings, init=f"from:{classifier}", lr=1e-3, output_dir=str(one)),
          task=LocalisationTask("pcr"))
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    flags = []
    for key, value in {**settings, "micro_batch_size": 4, "output_dir": str(tmp_path / "two"),
                       "init": f"from:{classifier}"}.items():
        if key == "progress":
            continue
        flags += [f"--{key.replace('_', '-')}", ":".join(map(str, value)) if isinstance(value, list) else str(value)]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "vggnet.cli", "localize", "train", *flags, "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    two = tmp_path / "two"
    for step in (1, 2):
        a, b = load(one / f"checkpoint_{step:08d}.pt"), load(two / f"checkpoint_{step:08d}.pt")
        for k in a["state_dict"]:
            torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=1e-5, atol=1e-6, msg=k)
    (h1,), (h2,) = load(one / "last.pt")["train"]["history"], load(two / "last.pt")["train"]["history"]
    assert h1["val_localisation_error"] == h2["val_localisation_error"]
    assert h2["val_loss"] == pytest.approx(h1["val_loss"], rel=1e-5)


# --------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_synthetic(root, classes=4, train=16, val=8, seed=0, force=True, image_size=(32, 48))
    return root


def test_cli_train_then_eval_end_to_end(shapes, classifier, tmp_path, capsys):
    # the classifier was trained on in-memory shapes of the same 4 classes, in the same order
    out = tmp_path / "loc"
    code = main(["localize", "train", "--data", str(shapes), "--init", f"from:{classifier}", "--head", "pcr",
                 "--model", "A", "--width", "0.0625", "--fc-width", "16", "--crop-size", "32", "--scale", "32:48",
                 "--epochs", "1", "--batch-size", "8", "--workers", "0", "--stats-sample", "8", "--device", "cpu",
                 "--output-dir", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert load(out / "best.pt")["train"]["config"]["lr"] == pytest.approx(1e-3)   # the localisation default
    capsys.readouterr()
    assert main(["localize", "eval", "--checkpoint", str(out / "best.pt"), "--classifier", str(classifier),
                 "--data", str(shapes), "--protocol", "full", "--workers", "0", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["protocol"] == "full" and report["images"] == 8
    assert {r["method"] for r in report["rows"]} >= {"greedy merge", "best window", "mean training box"}


def test_cli_train_names_images_without_boxes(shapes, classifier, tmp_path, capsys):
    data = shutil.copytree(shapes, tmp_path / "data")
    xml = sorted((data / "annotations" / "train").rglob("*.xml"))
    for f in xml[:3]:
        f.unlink()
    code = main(["localize", "train", "--data", str(data), "--init", f"from:{classifier}", "--model", "A",
                 "--width", "0.0625", "--fc-width", "16", "--crop-size", "32", "--scale", "32:48", "--epochs", "1",
                 "--workers", "0", "--device", "cpu", "--output-dir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "3 of 16 train images have no box" in err and "annotations" in err and "LOC_train_solution.csv" in err


def test_cli_train_refuses_a_localisation_checkpoint_as_classifier_for_eval(straight, capsys, shapes):
    assert main(["localize", "eval", "--checkpoint", str(straight / "best.pt"), "--classifier",
                 str(straight / "best.pt"), "--data", str(shapes), "--protocol", "full"]) == 2
    assert "is a localisation checkpoint, not a classification net" in capsys.readouterr().err


# --------------------------------------------------------------------------- it learns


@pytest.mark.slow
def test_a_short_run_localises_far_better_than_the_mean_box(tmp_path):
    """From scratch (BN, no dropout, SCR) on synthetic shapes: after a short run the
    protocol-1 error is far below that of the mean training box on the same images."""
    from vggnet.localisation.task import raw_boxes, mean_box, mean_box_error
    from vggnet.data.synthetic import SyntheticShapes

    cfg = TrainConfig(model="A", width=0.125, fc_width=64, crop_size=32, scale=[32, 40], synthetic_classes=2,
                      synthetic_train=256, synthetic_val=64, synthetic_image_size=[32, 64], batch_size=32,
                      epochs=6, lr=0.01, batch_norm=True, dropout=0.0, init="kaiming", workers=0,
                      progress=False, stats_sample=64, device="cpu", amp="off", output_dir=str(tmp_path),
                      val_scale=32)
    result = train(cfg, task=LocalisationTask("scr"))
    learned = min(h["val_localisation_error"] for h in result["history"])
    val = SyntheticShapes(64, classes=2, split="val", seed=0, image_size=(32, 64))
    box = mean_box(SyntheticShapes(256, classes=2, split="train", seed=0, image_size=(32, 64)))
    gts, sizes = zip(*[raw_boxes(val, i) for i in range(len(val))])
    baseline = mean_box_error(box, gts, sizes)
    assert learned < baseline - 20, (learned, baseline)


def test_demo_stage_fine_tunes_the_classifier_and_reports_both_protocols(shapes, classifier, tmp_path, capsys):
    from vggnet.localisation.cli import demo_localize

    out = demo_localize(classifier, shapes, tmp_path, quick=True, workers=0, device="cpu", progress=False,
                        eval_images=4)
    assert load(tmp_path / "localize" / "best.pt")["meta"]["task_settings"]["head"] == "pcr"
    for key in ("protocol1_error", "full_error", "mean_box_error"):
        assert 0.0 <= out[key] <= 100.0 and out[key] * 4 / 100 == pytest.approx(round(out[key] * 4 / 100))
    assert len(out["predictions"]) == 4 and all(Path(p).is_file() for p in out["predictions"])
    text = (tmp_path / "localisation.md").read_text()
    assert "protocol 1" in text and "full protocol" in text and "mean training box" in text
    assert "localisation error on 4 validation images" in capsys.readouterr().out
