"""The YAML presets in configs/: every key is a `vgg train` setting and every preset validates."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from vggnet.arguments import parse_args_with_config
from vggnet.errors import UserError
from vggnet.engine import TrainConfig, add_train_arguments
from vggnet.engine.config import NET_DEFAULTS

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


# What each preset must say (§3.1), setting by setting; a preset added without a row here fails.
PAPER = dict(crop_size=224, width=1.0, batch_norm=False, batch_size=256, lr=0.01, momentum=0.9,
             weight_decay=5e-4, dropout=0.5, pca_std=0.1, lr_factor=0.1, lr_drops=3, epochs=74)
EXPECTED = {
    "s256": dict(PAPER, model="D", scale=(256, 256), val_scale=256, init="glorot"),
    "s384": dict(PAPER, model="D", scale=(384, 384), val_scale=384, lr=1e-3, init="from:runs/s256/best.pt"),
    "multiscale": dict(PAPER, model="D", scale=(256, 512), val_scale=384, lr=1e-3, init="from:runs/s384/best.pt"),
    "net_a": dict(PAPER, model="A", scale=(256, 256), val_scale=256, init="gaussian"),
    "from_a": dict(PAPER, model="E", scale=(256, 256), val_scale=256, init="from:runs/net_a/best.pt",
                   init_rest="gaussian"),
    # the laptop run: narrow, batch norm, no dropout (its header says why), 64-pixel crops, fewer epochs
    "quickstart": dict(PAPER, model="A", scale=(64, 96), val_scale=80, crop_size=64, width=0.125, batch_norm=True,
                       batch_size=64, dropout=0.0, epochs=30, init="glorot"),
}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_presets_follow_the_paper(preset: Path):
    from vggnet.data.transforms import parse_scale

    assert preset.stem in EXPECTED, f"{preset.name}: add its expected settings to EXPECTED"
    cfg = _parse(["--config-file", str(preset)])
    # a net setting a preset leaves unset comes from its --init from: stage (checked here as a preset
    # too), else it is the paper's (NET_DEFAULTS)
    got = {key: getattr(cfg, key) if getattr(cfg, key) is not None else NET_DEFAULTS[key]
           for key in EXPECTED[preset.stem]}
    got["scale"] = parse_scale(got["scale"])
    assert got == EXPECTED[preset.stem]


def test_the_chains_link_up():
    """Each `from:` preset starts from another preset's output: the S=256 -> 384 -> [256;512]
    fine-tuning chain keeps net D, and from_a starts from net A."""
    cfgs = {p.stem: _parse(["--config-file", str(p)]) for p in PRESETS}
    by_output = {Path(c.output_dir): name for name, c in cfgs.items()}
    links = {}
    for name, cfg in cfgs.items():
        if cfg.init.startswith("from:"):
            source = Path(cfg.init[len("from:"):])
            assert source.name == "best.pt" and source.parent in by_output, f"{name}: {cfg.init}"
            links[name] = by_output[source.parent]
    assert links == {"s384": "s256", "multiscale": "s384", "from_a": "net_a"}
    assert cfgs["s384"].model == cfgs["s256"].model == cfgs["multiscale"].model == "D"
    assert cfgs["net_a"].model == "A" and cfgs["from_a"].model != "A"


def test_flags_win_over_the_preset():
    cfg = _parse(["--config-file", str(CONFIGS / "s256.yaml"), "--lr", "0.05", "--model", "E"])
    assert cfg.lr == 0.05 and cfg.model == "E"
