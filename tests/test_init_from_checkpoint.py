"""`--init from:CKPT` takes the net's shape from the checkpoint: configuration, widths, batch norm, crop
size, dropout and training scale, unless a flag says otherwise where that is meaningful; a real
conflict names both values and the flag to drop; a mismatch names the actual difference.

Tiny nets (A at 1/16 width, FC 16, 32-px crops), trained for one short epoch on synthetic data.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from vggnet import TrainConfig, train
from vggnet.cli import main

NET = dict(model="A", width=1 / 16, fc_width=16, crop_size=32, scale=[32, 40], batch_norm=True, dropout=0.0)
RUN = ["--batch-size", "8", "--epochs", "1", "--workers", "0", "--stats-sample", "8", "--device", "cpu",
       "--amp", "off", "--no-progress"]


@pytest.fixture(scope="module")
def net_a(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("a")
    train(TrainConfig(**NET, synthetic_classes=10, synthetic_train=16, synthetic_val=8, synthetic_image_size=[32, 48],
                      batch_size=8, epochs=1, workers=0, progress=False, stats_sample=8, device="cpu", amp="off",
                      output_dir=str(out)))
    return out / "best.pt"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from vggnet.data.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("data")
    write_synthetic(root, classes=3, train=12, val=6, seed=0, force=True, image_size=(32, 48))
    return root


def build_of(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["build"]


def test_train_init_from_without_model_flags_takes_the_checkpoints_net(net_a, data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--init", f"from:{net_a}", *RUN, "--output-dir", str(out)]) == 0
    build = build_of(out / "best.pt")
    assert (build["name"], build["width"], build["fc_width"], build["crop_size"], build["batch_norm"],
            build["num_classes"]) == ("A", 1 / 16, 16, 32, True, 3)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["scale"] in ([32, 40], "32:40") and saved["dropout"] == 0.0
    assert (f"settings from {net_a}: model A, width 0.0625, fc width 16, batch norm True, crop size 32"
            in (out / "train.log").read_text())


def test_an_explicit_crop_size_overrides_and_scale_follows_it(net_a, data, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--init", f"from:{net_a}", "--crop-size", "64", *RUN,
                 "--output-dir", str(out)]) == 0
    assert build_of(out / "best.pt")["crop_size"] == 64
    assert yaml.safe_load((out / "config.yaml").read_text())["scale"] in (73, [73, 73])  # round(64 x 256/224)


def test_a_conflicting_width_names_both_values_and_the_flag_to_drop(net_a, data, tmp_path, capsys):
    assert main(["train", "--data", str(data), "--init", f"from:{net_a}", "--width", "0.125", *RUN,
                 "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "--width 0.125" in err and "width 0.0625" in err and "drop --width" in err
    assert not (tmp_path / "run").exists()


def test_model_d_from_a_is_the_papers_pre_initialisation(net_a, data, tmp_path, capsys):
    # A's 10 classes, 3 here: FC3 is re-initialised (was an error naming classifier.6); the rest is A's shape
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--init", f"from:{net_a}", "--model", "D", *RUN,
                 "--output-dir", str(out)]) == 0
    build = build_of(out / "best.pt")
    assert (build["name"], build["width"], build["fc_width"], build["batch_norm"]) == ("D", 1 / 16, 16, True)
    log = (out / "train.log").read_text()
    assert "net A's first 4 conv and 3 FC layers" in log and "classifier.6 re-initialised" in log
    assert "classes 10 vs 3" in log


def test_model_d_from_a_net_b_is_a_conflict(tmp_path, data, capsys):
    import vggnet
    from vggnet.checkpoint import make_checkpoint, save_checkpoint

    model = vggnet.vgg("B", num_classes=3, width=1 / 16, fc_width=16, crop_size=32)
    path = save_checkpoint(tmp_path / "b.pt", make_checkpoint(
        model, preprocessing={"pixel_scale": 255.0, "mean": [120.0, 115.0, 100.0], "std": [1.0, 1.0, 1.0]}))
    assert main(["train", "--data", str(data), "--init", f"from:{path}", "--model", "D", *RUN,
                 "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "--model D" in err and "configuration B" in err and "drop --model" in err


def test_the_mismatch_message_names_the_difference_not_a_tensor(net_a):
    import vggnet
    from vggnet.engine.state import init_from
    from vggnet.errors import UserError

    ckpt = torch.load(net_a, map_location="cpu", weights_only=True)
    wider = vggnet.vgg("A", num_classes=10, width=1 / 8, fc_width=16, crop_size=32, batch_norm=True)
    with pytest.raises(UserError, match=r"width 0.0625 vs 0.125") as exc:
        init_from(wider, ckpt, str(net_a), rest="gaussian")
    assert "features.0.weight" not in str(exc.value)
    deeper = vggnet.vgg("D", num_classes=10, width=1 / 16, fc_width=32, crop_size=32, batch_norm=True)
    with pytest.raises(UserError, match=r"fc width 16 vs 32"):
        init_from(deeper, ckpt, str(net_a), rest="gaussian")


def test_localize_train_init_from_without_repeating_the_shape_flags(net_a, data, tmp_path):
    out = tmp_path / "loc"
    assert main(["localize", "train", "--data", str(data), "--init", f"from:{net_a}", *RUN,
                 "--output-dir", str(out)]) == 0
    build = build_of(out / "best.pt")
    assert (build["name"], build["width"], build["fc_width"], build["crop_size"], build["batch_norm"]) == (
        "A", 1 / 16, 16, 32, True)
    assert json.loads(json.dumps(yaml.safe_load((out / "config.yaml").read_text())))["dropout"] == 0.0


# --------------------------------------------------------------------------- the same from Python

API = dict(batch_size=4, epochs=3, workers=0, stats_sample=8, device="cpu", amp="off", progress=False)


def test_the_python_api_takes_the_checkpoints_net(net_a, data, tmp_path):
    out = tmp_path / "run"
    config = TrainConfig(data=str(data), init=f"from:{net_a}", **API, max_steps=1, output_dir=str(out))
    train(config)
    build = build_of(out / "last.pt")
    assert (build["name"], build["width"], build["fc_width"], build["crop_size"], build["batch_norm"],
            build["dropout"], build["num_classes"]) == ("A", 1 / 16, 16, 32, True, 0.0, 3)
    assert yaml.safe_load((out / "config.yaml").read_text())["scale"] in ([32, 40], "32:40")
    assert f"settings from {net_a}: model A, width 0.0625" in (out / "train.log").read_text()
    assert config.model is None and config.width is None  # the caller's config is left as given


def test_without_init_from_the_unset_net_settings_are_the_papers():
    config = TrainConfig().validate()
    assert (config.model, config.width, config.fc_width, config.crop_size, config.dropout, config.batch_norm,
            config.scale) == ("D", 1.0, 4096, 224, 0.5, False, 256)


def test_a_conflicting_width_from_python_names_both_values(net_a, data, tmp_path):
    from vggnet.errors import UserError

    with pytest.raises(UserError, match=r"--width 0.125 and from:.*'s width 0.0625 differ: .*drop --width"):
        train(TrainConfig(data=str(data), init=f"from:{net_a}", width=0.125, **API, output_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_model_d_from_a_in_python_is_the_papers_pre_initialisation(net_a, data, tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(model="D", data=str(data), init=f"from:{net_a}", **API, max_steps=1, output_dir=str(out)))
    build = build_of(out / "last.pt")
    assert (build["name"], build["width"], build["fc_width"], build["batch_norm"], build["dropout"]) == (
        "D", 1 / 16, 16, True, 0.5)  # A's shape; the paper's dropout for the deeper net, not A's 0
    assert "net A's first 4 conv and 3 FC layers" in (out / "train.log").read_text()


@pytest.mark.parametrize("model, again", [(None, "python"), ("D", "config.yaml")])
def test_a_run_that_took_its_net_from_the_checkpoint_resumes_bitwise(net_a, data, tmp_path, model, again):
    """2 steps + resume + 2 steps == 4 steps straight, mid-epoch (3 steps an epoch), resumed either with the
    same Python settings or from the run's config.yaml."""
    def config(out: Path, **more) -> TrainConfig:
        given = {"model": model} if model else {}
        return TrainConfig(**given, data=str(data), init=f"from:{net_a}", **API, output_dir=str(out), **more)

    train(config(tmp_path / "straight", max_steps=4))
    train(config(tmp_path / "split", max_steps=2))
    if again == "python":
        second = config(tmp_path / "split", max_steps=4, resume="auto")
    else:
        saved = yaml.safe_load((tmp_path / "split" / "config.yaml").read_text())
        second = TrainConfig.from_dict({**saved, "max_steps": 4, "resume": "auto"})
    result = train(second)
    assert result["global_step"] == 4
    assert "resuming" in (tmp_path / "split" / "train.log").read_text()
    a, b = (torch.load(tmp_path / run / "last.pt", map_location="cpu", weights_only=True)
            for run in ("straight", "split"))
    assert a["build"] == b["build"] and a["build"]["name"] == (model or "A")
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def test_localize_train_from_python_takes_the_classification_nets_shape(net_a, data, tmp_path):
    from vggnet.localisation.cli import localize_train

    out = tmp_path / "loc"
    localize_train(TrainConfig(data=str(data), init=f"from:{net_a}", lr=1e-3, **API, max_steps=1,
                               output_dir=str(out)), head="scr")
    build = build_of(out / "last.pt")
    assert (build["name"], build["width"], build["fc_width"], build["crop_size"], build["batch_norm"],
            build["num_classes"]) == ("A", 1 / 16, 16, 32, True, 4)  # SCR: one box, 4 outputs
