"""The `vgg` command's frame: dispatch, `vgg info`, YAML config precedence, errors."""

import argparse
import json
import subprocess
import sys

import pytest

from vggnet.cli import main
from vggnet.arguments import parse_args_with_config
from vggnet.errors import UserError


def test_info_json_reports_table2_and_gmacs(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {k: v["parameters"] for k, v in info.items()} == {
        "A": 132_863_336, "A-LRN": 132_863_336, "B": 133_047_848, "B-5x5": 134_503_528,
        "C": 133_638_952, "D": 138_357_544, "E": 143_667_240}
    assert info["D"]["gmacs"] == 15.47 and info["E"]["gmacs"] == 19.63
    assert info["C"]["layers"][8] == "conv1-256" and info["D"]["layers"][-4:] == ["FC-4096", "FC-4096", "FC-1000",
                                                                                   "soft-max"]
    assert info["E"]["weight_layers"] == 19


def test_info_table_for_one_config(capsys):
    assert main(["info", "vgg16", "--num-classes", "10", "--crop-size", "64", "--width", "0.0625"]) == 0
    out = capsys.readouterr().out
    assert "Table 1" in out and "conv3-64" in out and "FC-10" in out
    line = [ln for ln in out.splitlines() if ln.startswith("D ")][0]
    assert line.split()[1] == "16"  # weight layers, computed


def test_unknown_command_and_model_are_named(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert main(["info", "F"]) == 2
    err = capsys.readouterr().err
    assert "vgg info: error: unknown VGG configuration 'F'" in err and "vgg19" in err


def test_usage_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("train", "eval", "predict", "import", "demo"):
        assert f"  {cmd}" in out


def make_parser():
    p = argparse.ArgumentParser()
    p.add_argument("--config-file")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--epochs", type=int, default=74)
    p.add_argument("--amp", choices=["off", "bf16"], default="off")
    return p


def test_config_precedence_yaml_then_defaults_then_flags(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("lr: 0.001\nepochs: 5\n")
    args = parse_args_with_config(make_parser(), ["--config-file", str(cfg), "--epochs", "9"])
    assert args.lr == 0.001 and args.epochs == 9 and args.amp == "off"
    assert parse_args_with_config(make_parser(), []).lr == 0.01


@pytest.mark.parametrize("text,match", [
    ("learning_rate: 0.1\n", "unknown setting 'learning_rate'.*known settings: amp, epochs, lr"),
    ("- 1\n- 2\n", "expected a mapping"),
    ("lr: [\n", "not valid YAML"),
    ("amp: fp8\n", "'amp' must be one of off, bf16"),
    ("epochs: many\n", "bad value for 'epochs'"),
])
def test_config_file_errors_name_the_file_and_key(tmp_path, text, match):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(UserError, match=match):
        parse_args_with_config(make_parser(), ["--config-file", str(cfg)])


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="--config-file .*nope.yaml: no such file"):
        parse_args_with_config(make_parser(), ["--config-file", str(tmp_path / "nope.yaml")])


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "vggnet.cli", "info", "A", "--json"], capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out)["A"]["parameters"] == 132_863_336


def test_config_file_ranges_stay_ranges(tmp_path):
    """YAML 1.1 would read `32:48` as the base-60 number 1968."""
    from vggnet.arguments import load_config_file

    path = tmp_path / "c.yaml"
    path.write_text("scale: 32:48\nsynthetic_image_size: 40:56\nlr: 0.01\nepochs: 3\n", encoding="utf-8")
    values = load_config_file(path)
    assert values == {"scale": "32:48", "synthetic_image_size": "40:56", "lr": 0.01, "epochs": 3}
