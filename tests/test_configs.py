"""The YAML presets in configs/: every key is a `vgg train` setting and every preset validates."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from vggnet.cli import parse_args_with_config
from vggnet.errors import UserError
from vggnet.train import TrainConfig, add_train_arguments

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = sorted(CONFIGS.glob("*.yaml"))


def _parse(argv: list[str]) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="vgg train")
    add_train_arguments(parser)
    return TrainConfig.from_args(parse_args_with_config(parser, argv))


def test_the_paper_regimes_and_quickstart_are_there():
    names = {p.stem for p in PRESETS}
    assert {"s256", "s384", "multiscale", "net_a", "from_a", "quickstart"} <= names


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_validates(preset: Path, tmp_path: Path):
    cfg = _parse(["--config-file", str(preset)])
    if cfg.init.startswith("from:"):
        # the chain's earlier stage does not exist here: a clear error naming the file...
        with pytest.raises(UserError, match=r"--init from:.*no such file"):
            TrainConfig.from_dict(cfg.to_dict()).validate()
        # ...and with it in place, the preset is valid
        fake = tmp_path / "stage.pt"
        fake.write_bytes(b"")
        cfg = _parse(["--config-file", str(preset), "--init", f"from:{fake}"])
    cfg.validate()
    assert cfg.batch_size % (cfg.micro_batch_size or cfg.batch_size) == 0


def test_presets_follow_the_paper():
    s256 = _parse(["--config-file", str(CONFIGS / "s256.yaml")])
    assert (s256.scale, s256.crop_size, s256.batch_size, s256.lr) == (256, 224, 256, 0.01)
    assert (s256.momentum, s256.weight_decay, s256.dropout, s256.lr_drops) == (0.9, 5e-4, 0.5, 3)
    s384 = _parse(["--config-file", str(CONFIGS / "s384.yaml")])
    assert s384.scale == 384 and s384.lr == 1e-3 and s384.init == "from:runs/s256/best.pt"
    ms = _parse(["--config-file", str(CONFIGS / "multiscale.yaml")])
    assert ms.init == "from:runs/s384/best.pt"
    from vggnet.data.transforms import parse_scale

    assert parse_scale(ms.scale) == (256, 512)
    a = _parse(["--config-file", str(CONFIGS / "net_a.yaml")])
    assert a.model == "A" and a.init == "gaussian"
    deep = _parse(["--config-file", str(CONFIGS / "from_a.yaml")])
    assert deep.init == "from:runs/net_a/best.pt" and deep.init_rest == "gaussian"


def test_flags_win_over_the_preset():
    cfg = _parse(["--config-file", str(CONFIGS / "s256.yaml"), "--lr", "0.05", "--model", "E"])
    assert cfg.lr == 0.05 and cfg.model == "E"
